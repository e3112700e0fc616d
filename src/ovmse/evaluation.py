"""Greedy episodes: the tests' win rate, return and length the paper reports (Table 1: 640
episodes per seed; during training: 32 every test interval), and the recorded episodes of a
fine-tuning run's probe."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse import compiler
from ovmse.buffers.episode import EpisodeBatch
from ovmse.envs import SmaxEnv, make_env
from ovmse.networks import RNNAgent
from ovmse.rollout import run_episodes


class TestStats(NamedTuple):
    """Greedy test results (per seed): win rate, mean return, mean episode length."""

    win_rate: jax.Array
    mean_return: jax.Array
    mean_length: jax.Array


def greedy_test(key: jax.Array, agent: RNNAgent, agent_params, env: SmaxEnv,
                num_episodes: int) -> TestStats:
    """`num_episodes` episodes of the greedy joint policy (per-agent argmax over available
    actions), played in parallel."""
    _, stats = run_episodes(key, agent, agent_params, env, num_episodes, jnp.zeros(()), "greedy",
                            record=False)
    return TestStats(stats.won.mean(), stats.returns.mean(), stats.lengths.mean())


def greedy_episodes(key: jax.Array, agent: RNNAgent, agent_params, env: SmaxEnv,
                    num_episodes: int) -> EpisodeBatch:
    """`num_episodes` recorded episodes of the greedy joint policy (rollout.run_episodes)."""
    return run_episodes(key, agent, agent_params, env, num_episodes, jnp.zeros(()), "greedy")[0]


@functools.cache
def greedy_test_program(map_name: str, episode_limit: int, reward_scale: float,
                        agent_hidden_dim: int):
    """The jitted greedy test of S seeds' agents: `(agent_params [S, ...], keys [S],
    num_episodes) -> TestStats [S]` (num_episodes static). It depends only on the environment
    and the agent's size, so every trainer of this process shares one program, and through the
    persistent compilation cache every process does: a study compiles its tests once per map
    (about 15 s each for 32 and for 640 episodes on the CPU), not once per cell."""
    return _per_seed_program(greedy_test, map_name, episode_limit, reward_scale,
                             agent_hidden_dim)


@functools.cache
def greedy_episodes_program(map_name: str, episode_limit: int, reward_scale: float,
                            agent_hidden_dim: int):
    """The jitted, recorded greedy episodes of S seeds' agents: `(agent_params [S, ...],
    keys [S], num_episodes) -> EpisodeBatch [S, T(+1), E, ...]` (num_episodes static). Shared,
    like `greedy_test_program`, by every fine-tuning run of a map (their probe episodes),
    whatever their method."""
    return _per_seed_program(greedy_episodes, map_name, episode_limit, reward_scale,
                             agent_hidden_dim)


def _per_seed_program(play, map_name: str, episode_limit: int, reward_scale: float,
                      agent_hidden_dim: int):
    """`play(key, agent, agent_params, env, num_episodes)` on the map's environment with an
    agent of this size, jitted and vmapped over seeds' agents and keys."""
    env = make_env(map_name, episode_limit, reward_scale)
    agent = RNNAgent(agent_hidden_dim, env.spec.num_actions)

    def seed_play(agent_params, key: jax.Array, num_episodes: int):
        return play(key, agent, agent_params, env, num_episodes)

    return compiler.jit(jax.vmap(seed_play, in_axes=(0, 0, None)), static_argnums=2)
