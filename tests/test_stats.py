"""Curve statistics against hand computations."""

import numpy as np

from ovmse.stats import steps_to_threshold, transition_drop

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
