"""Summary statistics of learning curves, as the paper reports them (medians over seeds) and as
the study adds them (steps to a threshold, the drop at the offline-to-online transition)."""

from __future__ import annotations

import numpy as np


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
