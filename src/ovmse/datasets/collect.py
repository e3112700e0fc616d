"""Collecting episodes for a dataset: a policy (or uniform random play) in SMAX, in jitted batches.

The behaviour policy acts epsilon-greedily on its agents' Q-values with a small behaviour epsilon
(0.05 by default, recorded in the dataset); `random` picks uniformly among available actions.
Episodes are played `batch` at a time by the same runner training uses (rollout.py), so a
dataset is a function of (policy, epsilon, seed, number of episodes).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ovmse import compiler
from ovmse.buffers.episode import EpisodeBatch
from ovmse.envs import SmaxEnv
from ovmse.networks import RNNAgent
from ovmse.rollout import run_episodes


@functools.lru_cache(maxsize=None)
def _player(env: SmaxEnv, agent: RNNAgent, num_episodes: int, record: bool):
    """One jitted program per (env, agent, batch size): params and epsilon are arguments, so
    every snapshot of a run is played by the same compiled code."""
    kind = "epsilon_greedy" if record else "greedy"

    def play(params, key, epsilon):
        return run_episodes(key, agent, params, env, num_episodes, epsilon, kind, record=record)

    return compiler.jit(play)


def collect_episodes(env: SmaxEnv, agent: RNNAgent, agent_params, num_episodes: int,
                     epsilon: float, seed: int, batch: int = 64,
                     progress: bool = False) -> tuple[EpisodeBatch, float | None]:
    """Play num_episodes episodes (epsilon = 1 is uniform random play over available actions).

    Returns (numpy EpisodeBatch [T(+1), num_episodes, ...], episodes per second measured after
    the first batch, which includes compilation; None when one batch played them all).
    """
    play = _player(env, agent, batch, True)
    base = jax.random.PRNGKey(seed)
    parts, start, timed_episodes = [], None, 0
    with tqdm(total=num_episodes, unit="ep", disable=not progress, desc="collecting") as bar:
        for i in range(-(-num_episodes // batch)):
            episodes, _ = jax.device_get(play(agent_params, jax.random.fold_in(base, i),
                                              jnp.float32(epsilon)))
            if start is None:
                start = time.perf_counter()
            else:
                timed_episodes += batch
            parts.append(episodes)
            bar.update(min(batch, num_episodes - i * batch))
    elapsed = time.perf_counter() - start
    rate = round(timed_episodes / elapsed, 1) if timed_episodes else None
    joined = EpisodeBatch(*(np.concatenate(fields, axis=1)[:, :num_episodes]
                            for fields in zip(*parts)))
    return joined, rate


def greedy_win_rate(env: SmaxEnv, agent: RNNAgent, agent_params, num_episodes: int,
                    seed: int) -> float:
    """Greedy win rate of a policy over num_episodes test episodes."""
    _, stats = _player(env, agent, num_episodes, False)(
        agent_params, jax.random.PRNGKey(seed), jnp.float32(0.0))
    return float(jnp.mean(stats.won))
