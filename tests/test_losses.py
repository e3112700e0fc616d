import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.losses import masked_mse, td_lambda_targets

# One hand-made episode of 3 real steps (terminal at t=2) and one padding step; gamma = 0.5.
REWARDS = jnp.array([[1.0], [2.0], [3.0], [0.0]])
TERMINATED = jnp.array([[0], [0], [1], [0]], bool)
FILLED = jnp.array([[1], [1], [1], [0]], bool)
NEXT_Q = jnp.array([[10.0], [20.0], [30.0], [40.0]])


def _targets(td_lambda, terminated=TERMINATED):
    return np.asarray(td_lambda_targets(REWARDS, terminated, FILLED, NEXT_Q, 0.5, td_lambda))


def test_one_step_targets_bootstrap_except_at_terminal():
    # y_t = r_t + gamma * (1 - term_t) * Qbar_{t+1}
    np.testing.assert_allclose(_targets(0.0)[:3, 0], [1 + 5, 2 + 10, 3])


def test_lambda_one_gives_monte_carlo_returns():
    np.testing.assert_allclose(_targets(1.0)[:3, 0], [1 + 0.5 * 3.5, 2 + 0.5 * 3, 3])


def test_lambda_half_mixes_by_hand():
    g2 = 3.0
    g1 = 2 + 0.5 * (0.5 * 20 + 0.5 * g2)
    g0 = 1 + 0.5 * (0.5 * 10 + 0.5 * g1)
    np.testing.assert_allclose(_targets(0.5)[:3, 0], [g0, g1, g2])


def test_episode_cut_by_the_limit_bootstraps_its_last_step():
    not_terminated = jnp.zeros_like(TERMINATED)
    # the last real step (t=2) bootstraps fully from Qbar_3 = 30 even with lambda = 1
    np.testing.assert_allclose(_targets(1.0, not_terminated)[2, 0], 3 + 0.5 * 30)


def test_masked_mse_ignores_padding_even_with_infinite_targets():
    pred = jnp.array([1.0, 2.0, 3.0])
    target = jnp.array([0.0, 4.0, jnp.inf])
    mask = jnp.array([True, True, False])
    assert float(masked_mse(pred, target, mask)) == pytest.approx((1 + 4) / 2)
    grad = jax.grad(lambda p: masked_mse(p, target, mask))(pred)
    np.testing.assert_allclose(grad, [1.0, -2.0, 0.0])
