import jax
import jax.numpy as jnp
import numpy as np

from ovmse.envs import make_env
from ovmse.networks.qmix import init_params, make_networks
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


def test_padding_is_zero_after_the_final_observation():
    _, (batch, stats) = _rollout()
    for i, length in enumerate(np.asarray(stats.lengths)):
        # the final step is stored (observations of dead agents are zero, the state is not)
        assert np.abs(np.asarray(batch.state[length, i])).sum() > 0
        assert np.asarray(batch.avail[length, i]).any()
        for field in (batch.obs, batch.state, batch.avail):
            assert not np.asarray(field[length + 1:, i]).any()
        for field in (batch.actions, batch.rewards, batch.terminated, batch.won):
            assert not np.asarray(field[length:, i]).any()
    np.testing.assert_allclose(stats.returns, batch.rewards.sum(0), rtol=1e-6)


def test_final_observation_is_what_the_environment_returned_last():
    env, (batch, stats) = _rollout(kind="greedy", episodes=2, limit=30)
    # replay episode 0's actions step by step through the environment itself
    key_reset, key_steps = jax.random.split(jax.random.PRNGKey(1))
    env_state, first = env.reset(jax.random.split(key_reset, 2)[0])
    np.testing.assert_array_equal(first.obs, batch.obs[0, 0])
    length = int(stats.lengths[0])
    for t in range(length):
        key_env = jax.random.split(jax.random.fold_in(key_steps, t))[1]
        env_state, result = env.step(jax.random.split(key_env, 2)[0], env_state,
                                     batch.actions[t, 0])
        np.testing.assert_allclose(result.obs, batch.obs[t + 1, 0], atol=1e-6)
    assert bool(result.terminated | result.truncated)


def test_stats_alone_match_the_recorded_batch():
    env = make_env("3m", episode_limit=30)
    nets = make_networks(env.spec, NetworkConfig(agent_hidden_dim=8))
    params = init_params(jax.random.PRNGKey(0), nets)
    full = run_episodes(jax.random.PRNGKey(2), nets.agent, params["agent"], env, 5,
                        jnp.float32(0.5), "sequential")[1]
    stats_only = run_episodes(jax.random.PRNGKey(2), nets.agent, params["agent"], env, 5,
                              jnp.float32(0.5), "sequential", record=False)
    assert stats_only[0] is None
    for a, b in zip(full, stats_only[1]):
        np.testing.assert_array_equal(a, b)


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
