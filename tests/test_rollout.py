import jax
import jax.numpy as jnp
import numpy as np

from ovmse.envs import make_env
from ovmse.learner import init_params, make_networks
from ovmse.config import NetworkConfig
from ovmse.rollout import run_episodes


def _rollout(kind="epsilon_greedy", eps=1.0, episodes=6, limit=30):
    env = make_env("3m", episode_limit=limit)
    nets = make_networks(env.spec, NetworkConfig(agent_hidden_dim=8))
    params = init_params(jax.random.PRNGKey(0), nets)
    fn = jax.jit(lambda k: run_episodes(k, nets.agent, params["agent"], env, episodes,
                                        jnp.float32(eps), kind))
    return env, fn(jax.random.PRNGKey(1))


def test_batch_is_time_major_and_padding_follows_the_end():
    env, (batch, stats) = _rollout()
    t, e = env.spec.episode_limit, 6
    assert batch.obs.shape == (t + 1, e, 3, 75) and batch.actions.shape == (t, e, 3)
    filled = np.asarray(batch.filled)
    lengths = filled.sum(0)
    for i in range(e):
        assert filled[: lengths[i], i].all() and not filled[lengths[i]:, i].any()
        ended = np.asarray(batch.terminated[:, i] | batch.truncated[:, i])
        assert ended.sum() == 1 and ended[lengths[i] - 1]  # exactly one end, at the last step
    np.testing.assert_array_equal(lengths, stats.lengths)


def test_padding_holds_the_final_observation_and_no_reward():
    _, (batch, stats) = _rollout()
    for i, length in enumerate(np.asarray(stats.lengths)):
        final = np.asarray(batch.obs[length, i])
        np.testing.assert_array_equal(np.asarray(batch.obs[length:, i]),
                                      np.broadcast_to(final, batch.obs[length:, i].shape))
        assert float(jnp.abs(batch.rewards[length:, i]).sum()) == 0.0
    np.testing.assert_allclose(stats.returns, batch.rewards.sum(0), rtol=1e-6)


def test_actions_taken_were_available():
    _, (batch, _) = _rollout()
    taken = np.take_along_axis(np.asarray(batch.avail[:-1]), np.asarray(batch.actions)[..., None],
                               -1)[..., 0]
    assert taken[np.asarray(batch.filled)].all()


def test_greedy_rollout_explores_nobody_and_is_deterministic_in_its_key():
    _, (batch_a, stats) = _rollout(kind="greedy")
    _, (batch_b, _) = _rollout(kind="greedy")
    assert float(stats.explored_agents.sum()) == 0.0
    np.testing.assert_array_equal(batch_a.actions, batch_b.actions)
