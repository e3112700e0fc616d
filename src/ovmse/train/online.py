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

Offline-to-online (paper Algorithm 1): started from a pre-trained LearnerState, a seed also
keeps the frozen OfflineMemory (OVM's Qbar_offline, the action-proposal policy) and the probe
episodes of the offline greedy policy; a share `offline_ratio` of each batch comes from the
offline dataset, which the chunk takes as an argument.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse import compiler
from ovmse.buffers.episode import (EpisodeBatch, EpisodeBuffer, add_episodes, init_buffer,
                                   sample_episodes)
from ovmse.config import TrainConfig
from ovmse.envs import make_env
from ovmse.evaluation import TestStats, greedy_episodes_program, greedy_test_program
from ovmse.learner import (LearnerState, OfflineMemory, UpdateMetrics, init_learner,
                           learner_update, update_target)
from ovmse.methods import method
from ovmse.networks.qmix import make_networks, q_tot_taken
from ovmse.rollout import run_episodes
from ovmse.schedules import Schedules
from ovmse.train.bucketing import SeedLoop, default_seed_loop, unroll_lengths, update_all_seeds
from ovmse.train.keys import seed_keys, test_keys


class TrainState(NamedTuple):
    """Everything a seed's run needs to continue exactly; leaves are per seed."""

    learner: LearnerState
    buffer: EpisodeBuffer
    rng: jax.Array
    t_env: jax.Array  # int32 [], env steps taken
    episodes: jax.Array  # int32 [], episodes played
    memory: OfflineMemory | None = None  # frozen, from pre-training (OVM, action proposal)
    probe: EpisodeBatch | None = None  # the offline greedy policy's episodes (unlearning probe)


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


def _zero_stats() -> ChunkStats:
    zero = jnp.zeros((), jnp.float32)
    return ChunkStats(zero, zero, zero, zero, zero, zero, zero,
                      UpdateMetrics(*[zero] * len(UpdateMetrics._fields)))


class OnlineTrainer:
    """Builds the jitted programs for one config: `init`, `run_chunk`, `evaluate`, `epsilon`.
    `seed_loop`: how the seeds' updates run (bucketing.py; default: sequential on a CPU,
    vmapped elsewhere)."""

    def __init__(self, cfg: TrainConfig, seed_loop: SeedLoop | None = None):
        self.cfg = cfg
        self.seed_loop = seed_loop or default_seed_loop()
        self.env = make_env(cfg.env.map, cfg.env.episode_limit, cfg.env.reward_scale)
        self.spec = self.env.spec
        self.nets = make_networks(self.spec, cfg.network)
        record = method(cfg.finetune.method)
        self._schedules = record.schedule_function()
        self.terms = record.terms_function()(cfg.learner)
        """The summands of the online loss (the method record's `terms`)."""
        self.init = compiler.jit(jax.vmap(self._init_one))
        self._init_pretrained = compiler.jit(jax.vmap(self._init_pretrained_one))
        self.probe_values = compiler.jit(jax.vmap(self._probe_value_one))
        self.run_chunk = compiler.jit(self._run_chunk, donate_argnums=0)
        programs = (self.spec.map_name, self.spec.episode_limit, self.spec.reward_scale,
                    cfg.network.agent_hidden_dim)
        self._test = greedy_test_program(*programs)
        self._play_greedy = greedy_episodes_program(*programs)

    def seed_keys(self) -> jax.Array:
        return seed_keys(self.cfg.seed, self.cfg.num_seeds)

    def test_keys(self, test_index: int) -> jax.Array:
        return test_keys(self.cfg.seed, self.cfg.num_seeds, test_index)

    def schedules(self, t_env) -> Schedules:
        """The run's method's settings at env step t_env (schedules.py), t_env's shape."""
        return self._schedules(self.cfg, t_env)

    def _init_one(self, seed_key: jax.Array) -> TrainState:
        key_params, key_run = jax.random.split(jax.random.fold_in(seed_key, 0))
        zero = jnp.zeros((), jnp.int32)
        return TrainState(init_learner(key_params, self.nets, self.cfg.learner),
                          init_buffer(self.spec, self.cfg.learner.buffer_size), key_run,
                          zero, zero)

    def init_pretrained(self, seed_keys: jax.Array, learners: LearnerState) -> TrainState:
        """Every seed starting from its pre-trained learner (online and target networks,
        optimizer state), with its frozen memory and its probe episodes: the pre-trained greedy
        policy's `probe_episodes` episodes, played by the map's shared program
        (evaluation.greedy_episodes_program). seed_keys [S]; learners: leaves [S, ...]."""
        probes = self._play_greedy(learners.params["agent"], self._probe_keys(seed_keys),
                                   self.cfg.finetune.probe_episodes)
        return self._init_pretrained(seed_keys, learners, probes)

    def init_pretrained_shapes(self, seed_keys: jax.Array, learners: LearnerState) -> TrainState:
        """The shapes and dtypes of `init_pretrained`'s states, computing nothing (a template
        for reading a checkpoint)."""
        probes = self._play_greedy.eval_shape(learners.params["agent"],
                                              self._probe_keys(seed_keys),
                                              self.cfg.finetune.probe_episodes)
        return self._init_pretrained.eval_shape(seed_keys, learners, probes)

    @staticmethod
    def _probe_keys(seed_keys: jax.Array) -> jax.Array:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(seed_keys, 2)

    def _init_pretrained_one(self, seed_key: jax.Array, learner: LearnerState,
                             probe: EpisodeBatch) -> TrainState:
        state = self._init_one(seed_key)
        lcfg = self.cfg.learner
        memory = (OfflineMemory(learner.target_params, learner.params["agent"])
                  if lcfg.memory.use_memory or lcfg.action_proposal else None)
        return state._replace(learner=learner, memory=memory, probe=probe)

    def _probe_value_one(self, state: TrainState) -> jax.Array:
        """Mean Q_tot(tau, a) of the current online network over the probe's transitions."""
        probe = state.probe
        q_tot = q_tot_taken(self.nets, state.learner.params, probe)
        return jnp.sum(jnp.where(probe.filled, q_tot, 0.0)) / jnp.maximum(probe.filled.sum(), 1)

    def offline_share(self) -> int:
        """Episodes of each batch drawn from the offline dataset."""
        return round(self.cfg.finetune.offline_ratio * self.cfg.learner.batch_size)

    def _draw_batch(self, buffer: EpisodeBuffer, data: EpisodeBatch | None, key: jax.Array):
        """A batch of `batch_size` episodes: `offline_share()` from the dataset, the rest from
        the online buffer (uniformly, with replacement, as PyMARL's buffer samples)."""
        n_offline = self.offline_share()
        online = sample_episodes(buffer, key, self.cfg.learner.batch_size - n_offline)
        if n_offline == 0:
            return online
        index = jax.random.randint(jax.random.fold_in(key, 1), (n_offline,), 0,
                                   data.num_episodes)
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b[:, index]], axis=1),
                            online, data)

    def _collect(self, state: TrainState, until: jax.Array, data: EpisodeBatch | None):
        """Play num_envs episodes, store them, and draw the batches of this iteration's updates.

        Returns (state, batches [U, T(+1), B, ...], update keys [U], learning [], stats without
        update metrics).
        """
        cfg, lcfg = self.cfg, self.cfg.learner
        active = state.t_env < until
        rng, key_rollout, key_sample = jax.random.split(state.rng, 3)
        batch, episode_stats = run_episodes(
            key_rollout, self.nets.agent, state.learner.params["agent"], self.env,
            cfg.num_envs, self.schedules(state.t_env).epsilon, cfg.explore.exploration)
        buffer = add_episodes(state.buffer, batch, active)
        t_env = state.t_env + jnp.where(active, episode_stats.lengths.sum(), 0)
        batches = jax.vmap(lambda k: self._draw_batch(buffer, data, k))(
            jax.random.split(key_sample, lcfg.updates_per_iteration))
        update_keys = jax.random.split(jax.random.fold_in(key_sample, 1),
                                       lcfg.updates_per_iteration)  # the CQL term's samples
        learning = (active & (buffer.size >= lcfg.batch_size - self.offline_share())
                    & self.schedules(t_env).learn)
        new_state = state._replace(
            buffer=buffer, rng=jnp.where(active, rng, state.rng), t_env=t_env,
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

    def _learn(self, states: TrainState, batches, keys: jax.Array, learning: jax.Array):
        """The iteration's gradient steps for all seeds. states: [S, ...]; batches:
        [S, U, T(+1), B, ...]; keys [S, U]; learning: [S] (false: the seed does not update).
        Each update unrolls only as far as its batches need (bucketing.py).
        Returns (learners, summed metrics, summed unroll lengths)."""
        lengths = self.unroll_lengths()
        schedules = self.schedules(states.t_env)  # leaves [S]

        def update(learner, batch, key, memory, schedules):
            return learner_update(learner, batch, self.nets, self.cfg.learner, key, memory,
                                  schedules, self.terms)

        def one_update(learners, batch_and_keys):
            batch, keys = batch_and_keys
            learners, metrics, length = update_all_seeds(
                update, learners, batch, keys, lengths, states.memory, schedules,
                learning=learning, seed_loop=self.seed_loop)
            return learners, (metrics, length)

        per_update = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (batches, keys))  # [U, S]
        learners, (metrics, unrolled) = jax.lax.scan(one_update, states.learner, per_update)
        return learners, jax.tree.map(lambda m: m.sum(0), metrics), unrolled.sum(0)

    def _iteration(self, states: TrainState, until: jax.Array,
                   data: EpisodeBatch | None) -> tuple[TrainState, ChunkStats]:
        """One iteration of every seed: collect (vmapped), learn, update targets."""
        interval = self.cfg.learner.target_update_interval
        episodes_before = states.episodes
        states, batches, keys, learning, stats = jax.vmap(
            self._collect, in_axes=(0, None, None))(states, until, data)
        learners, metrics, unrolled = self._learn(states, batches, keys, learning)
        crossed = states.episodes // interval > episodes_before // interval
        learners = jax.vmap(update_target)(learners, crossed)
        return (states._replace(learner=learners),
                stats._replace(update_metrics=metrics, unroll_steps=unrolled))

    def _run_chunk(self, states: TrainState, until: jax.Array,
                   data: EpisodeBatch | None = None) -> tuple[TrainState, ChunkStats]:
        """Iterate every seed until its t_env >= until. states: TrainState with leaves [S, ...];
        data: the offline dataset mixed into batches (needed when offline_ratio > 0)."""
        num_seeds = states.t_env.shape[0]

        def not_done(carry):
            return jnp.any(carry[0].t_env < until)

        def body(carry):
            states, totals = carry
            states, stats = self._iteration(states, until, data)
            return states, jax.tree.map(jnp.add, totals, stats)

        zeros = jax.tree.map(lambda z: jnp.zeros((num_seeds,), z.dtype), _zero_stats())
        return jax.lax.while_loop(not_done, body, (states, zeros))

    def evaluate(self, states: TrainState, keys: jax.Array, num_episodes: int) -> TestStats:
        """Greedy tests of every seed's online agent (evaluation.greedy_test_program):
        keys [S] -> TestStats [S]."""
        return self._test(states.learner.params["agent"], keys, num_episodes)
