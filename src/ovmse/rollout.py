"""The runner: E parallel episodes of the current agents in SMAX, recorded as an EpisodeBatch.

All E environments step together, `BLOCK` steps at a time inside a `lax.scan`, and the blocks
repeat in a `lax.while_loop` until every episode has ended or the episode limit is reached. An
environment whose episode has ended is frozen and its later steps are padding. This is PyMARL's
parallel episode runner as one jitted program: no Python per step, and no steps simulated far past
the longest episode (SMAX episodes are often a fifth of the limit).

Padding (see buffers/episode.py) is all zeros, except the final observation, state and
available actions of an episode of length L, stored at index L.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.buffers.episode import EpisodeBatch, empty_batch
from ovmse.envs import SmaxEnv
from ovmse.exploration import ExplorationKind, select_actions
from ovmse.networks import RNNAgent, agent_inputs

BLOCK = 10
"""Env steps per block of the rollout loop: the loop overshoots the longest episode by < BLOCK."""


class EpisodeStats(NamedTuple):
    """Per-episode summaries, each [E]."""

    returns: jax.Array
    won: jax.Array
    lengths: jax.Array
    explored_agents: jax.Array  # mean number of agents taking a random action per step


def run_episodes(key: jax.Array, agent: RNNAgent, agent_params, env: SmaxEnv, num_episodes: int,
                 epsilon: jax.Array, kind: ExplorationKind,
                 record: bool = True) -> tuple[EpisodeBatch | None, EpisodeStats]:
    """Play `num_episodes` episodes with the agents' Q-values and the given exploration.

    Returns the time-major EpisodeBatch ([T(+1), E, ...], see buffers/episode.py), or None when
    `record` is false (tests need only the stats), and the per-episode stats.
    The result depends only on `key`, not on how the steps are grouped in blocks.
    """
    spec = env.spec
    e, n, a, limit = num_episodes, spec.num_agents, spec.num_actions, spec.episode_limit
    padded_limit = -(-limit // BLOCK) * BLOCK
    key_reset, key_steps = jax.random.split(key)
    env_state, first = jax.vmap(env.reset)(jax.random.split(key_reset, e))
    step_env = jax.vmap(env.step)

    def step(carry, t):
        env_state, obs, state, avail, hidden, last_action, done = carry
        key_act, key_env = jax.random.split(jax.random.fold_in(key_steps, t))
        inputs = agent_inputs(obs, last_action, a).reshape(1, e * n, -1)
        hidden, q = agent.apply(agent_params, hidden, inputs)
        actions, explored = select_actions(key_act, q.reshape(e, n, a), avail, epsilon, kind)
        next_env_state, result = step_env(jax.random.split(key_env, e), env_state, actions)
        active = ~done & (t < limit)

        def padded(x):  # zero this env's record once its episode is over
            return jnp.where(active.reshape((e,) + (1,) * (x.ndim - 1)), x, jnp.zeros_like(x))

        out = dict(rewards=padded(result.reward), terminated=padded(result.terminated),
                   truncated=padded(result.truncated), won=padded(result.won), filled=active,
                   explored=padded(explored.sum(-1)))
        if record:
            out.update(obs=padded(obs), state=padded(state), avail=padded(avail),
                       actions=padded(actions))

        def keep_if_done(new, old):  # freeze environments whose episode has ended
            return jnp.where(active.reshape((e,) + (1,) * (new.ndim - 1)), new, old)

        env_state, obs, state, avail = jax.tree.map(
            keep_if_done, (next_env_state, result.obs, result.state, result.avail),
            (env_state, obs, state, avail))
        done = done | (active & (result.terminated | result.truncated))
        return (env_state, obs, state, avail, hidden, actions, done), out

    carry = (env_state, first.obs, first.state, first.avail, agent.initial_hidden(e * n),
             jnp.full((e, n), -1, jnp.int32), jnp.zeros((e,), bool))
    _, record_shapes = jax.eval_shape(step, carry, jnp.int32(0))
    records = jax.tree.map(lambda s: jnp.zeros((padded_limit,) + s.shape, s.dtype),
                           record_shapes)

    def more_to_play(loop):
        _, _, t0 = loop
        return (t0 < limit) & ~jnp.all(loop[0][-1])

    def block(loop):
        carry, records, t0 = loop
        carry, out = jax.lax.scan(step, carry, t0 + jnp.arange(BLOCK))
        records = jax.tree.map(
            lambda whole, part: jax.lax.dynamic_update_slice_in_dim(whole, part, t0, axis=0),
            records, out)
        return carry, records, t0 + BLOCK

    carry, records, _ = jax.lax.while_loop(more_to_play, block, (carry, records, jnp.int32(0)))
    records = jax.tree.map(lambda x: x[:limit], records)
    lengths = jnp.sum(records["filled"], axis=0, dtype=jnp.int32)
    stats = EpisodeStats(
        returns=records["rewards"].sum(0), won=jnp.any(records["won"], axis=0), lengths=lengths,
        explored_agents=records["explored"].sum(0) / jnp.maximum(lengths, 1))
    if not record:
        return None, stats

    _, obs_final, state_final, avail_final, _, _, _ = carry
    envs = jnp.arange(e)
    template = empty_batch(spec, e)
    batch = EpisodeBatch(
        obs=template.obs.at[:limit].set(records["obs"]).at[lengths, envs].set(obs_final),
        state=template.state.at[:limit].set(records["state"]).at[lengths, envs].set(state_final),
        avail=template.avail.at[:limit].set(records["avail"]).at[lengths, envs].set(avail_final),
        actions=records["actions"], rewards=records["rewards"],
        terminated=records["terminated"], truncated=records["truncated"], won=records["won"],
        filled=records["filled"],
    )
    return batch, stats
