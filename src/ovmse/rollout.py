"""The runner: E parallel episodes of the current agents in SMAX, recorded as an EpisodeBatch.

All E environments step together for exactly T = episode-limit steps inside one `lax.scan`; an
environment whose episode has ended is frozen (its state and observation no longer change) and
its later steps are marked as padding (`filled` false). This is PyMARL's parallel episode runner
written as one jitted program: no Python per step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.buffers.episode import EpisodeBatch
from ovmse.envs import SmaxEnv
from ovmse.exploration import ExplorationKind, select_actions
from ovmse.networks import RNNAgent, agent_inputs


class EpisodeStats(NamedTuple):
    """Per-episode summaries, each [E]."""

    returns: jax.Array
    won: jax.Array
    lengths: jax.Array
    explored_agents: jax.Array  # mean number of agents taking a random action per step


def run_episodes(key: jax.Array, agent: RNNAgent, agent_params, env: SmaxEnv, num_episodes: int,
                 epsilon: jax.Array, kind: ExplorationKind) -> tuple[EpisodeBatch, EpisodeStats]:
    """Play `num_episodes` episodes with the agents' Q-values and the given exploration.

    Returns the time-major EpisodeBatch ([T(+1), E, ...], see buffers/episode.py) and stats.
    """
    spec = env.spec
    e, n, a = num_episodes, spec.num_agents, spec.num_actions
    key_reset, key_steps = jax.random.split(key)
    env_state, first = jax.vmap(env.reset)(jax.random.split(key_reset, e))
    step_env = jax.vmap(env.step)

    def step(carry, step_key):
        env_state, obs, state, avail, hidden, last_action, done = carry
        key_act, key_env = jax.random.split(step_key)
        inputs = agent_inputs(obs, last_action, a).reshape(1, e * n, -1)
        hidden, q = agent.apply(agent_params, hidden, inputs)
        actions, explored = select_actions(key_act, q.reshape(e, n, a), avail, epsilon, kind)
        next_env_state, result = step_env(jax.random.split(key_env, e), env_state, actions)
        active = ~done
        record = dict(
            obs=obs, state=state, avail=avail, actions=actions,
            rewards=jnp.where(active, result.reward, 0.0),
            terminated=active & result.terminated, truncated=active & result.truncated,
            won=active & result.won, filled=active,
            explored=jnp.where(active, explored.sum(-1), 0),
        )

        def keep_if_done(new, old):  # freeze environments whose episode has ended
            return jnp.where(active.reshape((e,) + (1,) * (new.ndim - 1)), new, old)

        env_state, obs, state, avail = jax.tree.map(
            keep_if_done, (next_env_state, result.obs, result.state, result.avail),
            (env_state, obs, state, avail))
        done = done | (active & (result.terminated | result.truncated))
        return (env_state, obs, state, avail, hidden, actions, done), record

    carry0 = (env_state, first.obs, first.state, first.avail, agent.initial_hidden(e * n),
              jnp.full((e, n), -1, jnp.int32), jnp.zeros((e,), bool))
    (_, obs_final, state_final, avail_final, _, _, _), rec = jax.lax.scan(
        step, carry0, jax.random.split(key_steps, spec.episode_limit))

    def with_final(seq, final):
        return jnp.concatenate([seq, final[None]], axis=0)

    batch = EpisodeBatch(
        obs=with_final(rec["obs"], obs_final),
        state=with_final(rec["state"], state_final),
        avail=with_final(rec["avail"], avail_final),
        actions=rec["actions"], rewards=rec["rewards"], terminated=rec["terminated"],
        truncated=rec["truncated"], won=rec["won"], filled=rec["filled"],
    )
    lengths = batch.episode_lengths()
    stats = EpisodeStats(
        returns=batch.episode_returns(), won=batch.episode_won(), lengths=lengths,
        explored_agents=rec["explored"].sum(0) / jnp.maximum(lengths, 1))
    return batch, stats
