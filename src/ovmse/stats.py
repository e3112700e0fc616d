"""Summary statistics of learning curves, as the paper reports them (medians over seeds) and as
the study adds them (steps to a threshold, the drop at the offline-to-online transition, the
interquartile mean with its bootstrap confidence interval, as rliable computes them)."""

from __future__ import annotations

import numpy as np
from scipy.stats import trim_mean


def steps_to_threshold(steps: np.ndarray, values: np.ndarray, threshold: float) -> float | None:
    """The first step at which `values` reaches `threshold` (None if it never does).
    steps, values: [K], in step order (e.g. a median test win rate curve)."""
    hits = np.flatnonzero(np.asarray(values) >= threshold)
    return float(np.asarray(steps)[hits[0]]) if hits.size else None


def transition_drop(values: np.ndarray, offline_value: float, fraction: float = 0.1) -> float:
    """The unlearning at the start of fine-tuning: the offline value minus the lowest value
    among the test points of the first `fraction` of the run, step 0 included (negative when
    fine-tuning improves on the offline policy from the start).

    values: [K] test points in step order, evenly spaced as tests are (every test interval);
    the window is the first ceil(fraction * (K - 1)) + 1 points, so that a test that
    ran a few env steps past the 10% mark still counts."""
    values = np.asarray(values, float)
    count = int(np.ceil(fraction * (len(values) - 1))) + 1
    return float(offline_value - values[:count].min())


def interquartile_mean(scores: np.ndarray) -> float:
    """The mean of the middle 50% of all scores (rliable's IQM: scipy's trim_mean with 25% cut
    from each end of the flattened scores). scores: any shape, e.g. [runs, tasks]."""
    return float(trim_mean(np.asarray(scores, float).ravel(), 0.25))


def bootstrap_ci(scores: np.ndarray, statistic=interquartile_mean, reps: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic` (rliable's stratified bootstrap):
    each replicate resamples the runs of every task with replacement, separately per task.

    scores: [runs] (one task) or [runs, tasks]. Returns (low, high)."""
    scores = np.asarray(scores, float)
    if scores.ndim == 1:
        scores = scores[:, None]
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, runs, size=(reps, runs, tasks))
    replicates = np.array([statistic(np.take_along_axis(scores, idx, axis=0)) for idx in picks])
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)
