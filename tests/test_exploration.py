import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.exploration import greedy_actions, linear_schedule, select_actions


@pytest.mark.parametrize("t, expected", [(0, 1.0), (50, 0.525), (100, 0.05), (200, 0.05)])
def test_linear_schedule_decays_then_holds(t, expected):
    # eq. 7 as intended: start at t=0, halfway at T/2, end at T, held at 2T
    assert float(linear_schedule(1.0, 0.05, 100, t)) == pytest.approx(expected, abs=1e-6)


def test_memory_schedule_of_eq6_from_one_to_end():
    values = [float(linear_schedule(1.0, 0.2, 1000, t)) for t in (0, 500, 1000, 2000)]
    assert values == pytest.approx([1.0, 0.6, 0.2, 0.2])


def _explored_per_step(kind, eps, num_agents=5, draws=40_000):
    q = jnp.zeros((draws, num_agents, 6))
    avail = jnp.ones((draws, num_agents, 6), bool)
    _, explored = select_actions(jax.random.PRNGKey(3), q, avail, jnp.float32(eps), kind)
    return float(explored.sum(-1).mean())


def test_sequential_exploration_explores_eps_agents_per_step_not_n_times_eps():
    eps, n = 0.4, 5
    mean_sequential = _explored_per_step("sequential", eps, n)
    assert mean_sequential == pytest.approx(eps, abs=0.02)          # Algorithm 2: eps_t / N each
    assert _explored_per_step("epsilon_greedy", eps, n) == pytest.approx(n * eps, abs=0.05)


def test_greedy_explores_nobody():
    assert _explored_per_step("greedy", 1.0) == 0.0


@pytest.mark.parametrize("kind", ["greedy", "epsilon_greedy", "sequential"])
def test_unavailable_actions_are_never_chosen(kind):
    key_q, key_mask, key_act = jax.random.split(jax.random.PRNGKey(7), 3)
    q = jax.random.normal(key_q, (20_000, 3, 8)) * 10.0
    avail = jax.random.bernoulli(key_mask, 0.3, (20_000, 3, 8)).at[..., 4].set(True)
    actions, _ = select_actions(key_act, q, avail, jnp.float32(1.0), kind)
    chosen_avail = np.take_along_axis(np.asarray(avail), np.asarray(actions)[..., None], -1)
    assert chosen_avail.all()


def test_random_actions_are_uniform_over_available_ones():
    avail = jnp.zeros((30_000, 1, 6), bool).at[..., jnp.array([1, 3, 5])].set(True)
    actions, _ = select_actions(jax.random.PRNGKey(0), jnp.zeros((30_000, 1, 6)), avail,
                                jnp.float32(1.0), "epsilon_greedy")
    counts = np.bincount(np.asarray(actions).ravel(), minlength=6) / 30_000
    assert counts[[0, 2, 4]].sum() == 0
    np.testing.assert_allclose(counts[[1, 3, 5]], 1 / 3, atol=0.02)


def test_greedy_action_is_argmax_over_available():
    q = jnp.array([[[5.0, 1.0, 3.0]]])
    avail = jnp.array([[[False, True, True]]])
    assert greedy_actions(q, avail).tolist() == [[2]]
