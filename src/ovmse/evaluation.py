"""Greedy test episodes: the win rate, return and length the paper reports (Table 1: 640
episodes per seed; during training: 32 every test interval)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.envs import SmaxEnv
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
