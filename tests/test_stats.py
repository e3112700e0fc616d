"""Curve statistics against hand computations."""

import numpy as np
import pytest

from ovmse.stats import (bootstrap_ci, interquartile_mean, steps_to_threshold,
                         transition_drop)

STEPS = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
WINS = np.array([0.6, 0.3, 0.5, 0.2, 0.7, 0.8, 0.9, 0.85, 0.9, 0.95, 0.9])


def test_steps_to_threshold():
    assert steps_to_threshold(STEPS, WINS, 0.8) == 50.0
    assert steps_to_threshold(STEPS, WINS, 0.6) == 0.0
    assert steps_to_threshold(STEPS, WINS, 0.99) is None


def test_transition_drop_uses_the_first_tenth_only():
    # first 10% of 0..100: steps 0 and 10 -> min 0.3 (the 0.2 at step 30 is later)
    assert transition_drop(WINS, 0.65) == 0.65 - 0.3
    assert transition_drop(WINS, 0.65, fraction=0.3) == 0.65 - 0.2
    assert transition_drop(np.full(11, 0.9), 0.65) < 0


def test_interquartile_mean_drops_the_outer_quarters():
    assert interquartile_mean(np.arange(1.0, 9.0)) == pytest.approx(4.5)      # mean of 3..6
    assert interquartile_mean([0.0, 1.0, 1.0, 100.0]) == pytest.approx(1.0)
    assert interquartile_mean(np.array([[1.0, 2.0], [3.0, 4.0]])) == pytest.approx(2.5)


def test_bootstrap_interval_covers_the_true_value_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 500)
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert low_s < 1.0 < high_s and low_l < 1.0 < high_l
    assert high_l - low_l < (high_s - low_s) / 2
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3))


def test_bootstrap_resamples_runs_within_each_task():
    # task 0 always scores 0, task 1 always 1: any stratified resample has IQM 0.5 exactly
    scores = np.array([[0.0, 1.0]] * 5)
    assert bootstrap_ci(scores) == (pytest.approx(0.5), pytest.approx(0.5))
    low, high = bootstrap_ci(scores.reshape(-1))
    assert low < 0.5 < high          # pooled as one task, resamples are unbalanced
