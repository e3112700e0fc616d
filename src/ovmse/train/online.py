"""Online QMIX on SMAX as one jitted program, vectorised over seeds.

One *iteration* (per seed): play `num_envs` episodes with the exploring agents, add them to the
episode buffer, then take `updates_per_iteration` gradient steps on batches of whole episodes
once the buffer holds a batch, and copy the online network into the target every
`target_update_interval` episodes (PyMARL2's loop: run, insert, train). Updates unroll the
recurrent networks only as far as the batch's longest episode needs (see `_learn`): SMAX
episodes are mostly far shorter than the limit, and everything beyond them is padding.

One *chunk* runs iterations until every seed has reached a given env step (the next test point):
`lax.while_loop` over `vmap(iteration)`. A seed that is already there does nothing in the
remaining iterations: its updates are discarded and its buffer writes dropped, so a seed's
results do not depend on which other seeds run beside it, and no buffer is ever copied.
The Python driver (train/driver.py) calls one chunk per test interval.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.buffers.episode import EpisodeBuffer, add_episodes, init_buffer, sample_episodes
from ovmse.config import TrainConfig
from ovmse.envs import make_env
from ovmse.evaluation import TestStats, greedy_test
from ovmse.exploration import linear_schedule
from ovmse.learner import (LearnerState, UpdateMetrics, init_learner, learner_update,
                           make_networks, update_target)
from ovmse.rollout import run_episodes
from ovmse.train.bucketing import unroll_lengths, update_all_seeds


class TrainState(NamedTuple):
    """Everything a seed's run needs to continue exactly; leaves are per seed."""

    learner: LearnerState
    buffer: EpisodeBuffer
    rng: jax.Array
    t_env: jax.Array  # int32 [], env steps taken
    episodes: jax.Array  # int32 [], episodes played


class ChunkStats(NamedTuple):
    """Sums over the iterations of a chunk (per seed); divide by the counts to get means."""

    episodes: jax.Array
    returns: jax.Array
    wins: jax.Array
    lengths: jax.Array
    explored_agents: jax.Array
    updates: jax.Array
    unroll_steps: jax.Array  # sum over updates of the unroll length used
    update_metrics: UpdateMetrics


def _select(condition, new, old):
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _zero_stats() -> ChunkStats:
    zero = jnp.zeros((), jnp.float32)
    return ChunkStats(zero, zero, zero, zero, zero, zero, zero,
                      UpdateMetrics(*[zero] * len(UpdateMetrics._fields)))


class OnlineTrainer:
    """Builds the jitted programs for one config: `init`, `run_chunk`, `evaluate`, `epsilon`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.env = make_env(cfg.env.map, cfg.env.episode_limit, cfg.env.reward_scale)
        self.spec = self.env.spec
        self.nets = make_networks(self.spec, cfg.network)
        self.init = jax.jit(jax.vmap(self._init_one))
        self.run_chunk = jax.jit(self._run_chunk, donate_argnums=0)
        self.evaluate = jax.jit(jax.vmap(self._evaluate_one, in_axes=(0, 0, None)),
                                static_argnums=2)

    def seed_keys(self) -> jax.Array:
        """[num_seeds] base keys, one per seed (seed, seed+1, ...)."""
        seeds = jnp.arange(self.cfg.seed, self.cfg.seed + self.cfg.num_seeds)
        return jax.vmap(jax.random.PRNGKey)(seeds)

    def test_keys(self, test_index: int) -> jax.Array:
        """Keys of the `test_index`-th test, a stream apart from training's."""
        return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), test_index))(
            self.seed_keys())

    def epsilon(self, t_env):
        x = self.cfg.explore
        return linear_schedule(x.eps_start, x.eps_end, x.eps_anneal_steps, t_env)

    def _init_one(self, seed_key: jax.Array) -> TrainState:
        key_params, key_run = jax.random.split(jax.random.fold_in(seed_key, 0))
        zero = jnp.zeros((), jnp.int32)
        return TrainState(init_learner(key_params, self.nets, self.cfg.learner),
                          init_buffer(self.spec, self.cfg.learner.buffer_size), key_run,
                          zero, zero)

    def _collect(self, state: TrainState, until: jax.Array):
        """Play num_envs episodes, store them, and draw the batches of this iteration's updates.

        Returns (state, batches [U, T(+1), B, ...], update keys [U], learning [], stats without
        update metrics).
        """
        cfg, lcfg = self.cfg, self.cfg.learner
        active = state.t_env < until
        rng, key_rollout, key_sample = jax.random.split(state.rng, 3)
        batch, episode_stats = run_episodes(
            key_rollout, self.nets.agent, state.learner.params["agent"], self.env,
            cfg.num_envs, self.epsilon(state.t_env), cfg.explore.exploration)
        buffer = add_episodes(state.buffer, batch, active)
        batches = jax.vmap(lambda k: sample_episodes(buffer, k, lcfg.batch_size))(
            jax.random.split(key_sample, lcfg.updates_per_iteration))
        update_keys = jax.random.split(jax.random.fold_in(key_sample, 1),
                                       lcfg.updates_per_iteration)  # the CQL term's samples
        learning = active & (buffer.size >= lcfg.batch_size)
        new_state = state._replace(
            buffer=buffer, rng=jnp.where(active, rng, state.rng),
            t_env=state.t_env + jnp.where(active, episode_stats.lengths.sum(), 0),
            episodes=state.episodes + jnp.where(active, cfg.num_envs, 0))
        weight = active.astype(jnp.float32)
        stats = ChunkStats(
            episodes=weight * cfg.num_envs,
            returns=weight * episode_stats.returns.sum(),
            wins=weight * episode_stats.won.sum(),
            lengths=weight * episode_stats.lengths.sum(),
            explored_agents=weight * episode_stats.explored_agents.sum(),
            updates=learning.astype(jnp.float32) * lcfg.updates_per_iteration,
            unroll_steps=jnp.zeros((), jnp.float32),
            update_metrics=_zero_stats().update_metrics,
        )
        return new_state, batches, update_keys, learning, stats

    def unroll_lengths(self) -> tuple[int, ...]:
        return unroll_lengths(self.spec.episode_limit, self.cfg.learner.length_buckets)

    def _learn(self, learners: LearnerState, batches, keys: jax.Array, learning: jax.Array):
        """The iteration's gradient steps for all seeds. learners: [S, ...]; batches:
        [S, U, T(+1), B, ...]; keys [S, U]; learning: [S] (false: the seed's update is
        discarded). Each update unrolls only as far as its batches need (bucketing.py)."""
        lengths = self.unroll_lengths()

        def update(learner, batch, key):
            return learner_update(learner, batch, self.nets, self.cfg.learner, key)

        def one_update(learners, batch_and_keys):
            batch, keys = batch_and_keys
            updated, metrics, length = update_all_seeds(update, learners, batch, keys, lengths)
            learners = jax.vmap(_select)(learning, updated, learners)
            return learners, (jax.tree.map(lambda m: learning * m, metrics), learning * length)

        per_update = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (batches, keys))  # [U, S]
        learners, (metrics, unrolled) = jax.lax.scan(one_update, learners, per_update)
        return learners, jax.tree.map(lambda m: m.sum(0), metrics), unrolled.sum(0)

    def _iteration(self, states: TrainState, until: jax.Array) -> tuple[TrainState, ChunkStats]:
        """One iteration of every seed: collect (vmapped), learn, update targets."""
        interval = self.cfg.learner.target_update_interval
        episodes_before = states.episodes
        states, batches, keys, learning, stats = jax.vmap(self._collect, in_axes=(0, None))(
            states, until)
        learners, metrics, unrolled = self._learn(states.learner, batches, keys, learning)
        crossed = states.episodes // interval > episodes_before // interval
        learners = jax.vmap(update_target)(learners, crossed)
        return (states._replace(learner=learners),
                stats._replace(update_metrics=metrics, unroll_steps=unrolled))

    def _run_chunk(self, states: TrainState, until: jax.Array) -> tuple[TrainState, ChunkStats]:
        """Iterate every seed until its t_env >= until. states: TrainState with leaves [S, ...]."""
        num_seeds = states.t_env.shape[0]

        def not_done(carry):
            return jnp.any(carry[0].t_env < until)

        def body(carry):
            states, totals = carry
            states, stats = self._iteration(states, until)
            return states, jax.tree.map(jnp.add, totals, stats)

        zeros = jax.tree.map(lambda z: jnp.zeros((num_seeds,), z.dtype), _zero_stats())
        return jax.lax.while_loop(not_done, body, (states, zeros))

    def _evaluate_one(self, state: TrainState, key: jax.Array, num_episodes: int) -> TestStats:
        return greedy_test(key, self.nets.agent, state.learner.params["agent"], self.env,
                           num_episodes)
