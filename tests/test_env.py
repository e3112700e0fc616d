import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovmse.envs import make_env
from ovmse.errors import UserError

# agents / obs / state / actions of HeuristicEnemySMAX in jaxmarl 0.2.0 (shared/REFERENCE.md)
SIZES = {"3m": (3, 75, 72, 8), "2s3z": (5, 127, 120, 10), "3s5z": (8, 205, 192, 13),
         "5m_vs_6m": (5, 140, 132, 11), "6h_vs_8z": (6, 179, 168, 13)}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_paper_maps_have_the_documented_sizes(name):
    spec = make_env(name).spec
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions) == SIZES[name]
    assert spec.episode_limit == 100


def test_unknown_map_is_a_user_error_listing_known_maps():
    with pytest.raises(UserError, match="unknown map '4m'.*3m, 2s3z"):
        make_env("4m")


def _play(env, policy, steps, seed=0):
    env_state, first = env.reset(jax.random.PRNGKey(seed))
    results = [first]
    step = jax.jit(env.step)
    for t in range(steps):
        env_state, result = step(jax.random.PRNGKey(seed * 1000 + t), env_state,
                                 policy(results[-1]))
        results.append(result)
    return results


def test_state_stays_bounded_when_units_hold_fire():
    # SMAX's raw cooldown feature falls without bound while a unit does not shoot; the adapter
    # normalises it (and positions) so the mixer sees inputs in [0, 1].
    env = make_env("3m", episode_limit=60)
    stop = jnp.full((3,), 4, jnp.int32)
    results = _play(env, lambda r: stop, 40)
    states = np.stack([np.asarray(r.state) for r in results])
    assert states.min() >= 0.0 and states.max() <= 1.0


def test_episode_is_truncated_exactly_at_the_limit():
    env = make_env("3m", episode_limit=5)
    results = _play(env, lambda r: jnp.full((3,), 4, jnp.int32), 5)
    truncated = [bool(r.truncated) for r in results[1:]]
    assert truncated == [False, False, False, False, True]
    assert not any(bool(r.terminated) for r in results)


def test_random_play_return_is_on_the_smac_scale():
    env = make_env("3m")
    key = jax.random.PRNGKey(3)
    env_state, first = env.reset(key)
    total, result = 0.0, first
    step = jax.jit(env.step)
    for t in range(100):
        key, k_act, k_env = jax.random.split(key, 3)
        actions = jax.random.categorical(k_act, jnp.where(result.avail, 0.0, -jnp.inf))
        env_state, result = step(k_env, env_state, actions)
        total += float(result.reward)
        if bool(result.terminated | result.truncated):
            break
    assert 0.0 <= total <= 20.5
    if bool(result.won):
        assert total >= 10.0  # a win adds reward_scale * 1 = 10
