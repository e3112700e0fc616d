"""Offline pre-training (MACQL / MACal-QL, paper section 4.3) as one jitted program, vectorised
over seeds.

The dataset sits on the device once, shared by every seed, cut to its longest episode. One
*update* (per seed): draw `batch_size` distinct episodes uniformly, take a gradient step on
eq. 10 (TD loss + alpha * CQL), and copy the online network into the target every
`target_update_every` updates. One *chunk* runs updates until the next test point inside a
`lax.while_loop`; the Python driver (train/pretrain.py) calls one chunk per test interval.
`load_pretrained` reads a pre-training's checkpoint back, for the online phase.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse import compiler
from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import PretrainConfig, from_dict
from ovmse.envs import EnvSpec, make_env
from ovmse.errors import UserError
from ovmse.evaluation import TestStats, greedy_test_program
from ovmse.learner import (LearnerState, UpdateMetrics, init_learner, learner_update,
                           update_target)
from ovmse.networks.qmix import make_networks
from ovmse.runs import CHECKPOINT_FILE, load_checkpoint, read_checkpoint_meta
from ovmse.train.bucketing import SeedLoop, default_seed_loop, unroll_lengths, update_all_seeds
from ovmse.train.health import nonfinite_part
from ovmse.train.keys import seed_keys, test_keys


CHECKPOINT_KIND = "offline-pretrain-state"
"""The `kind` in the metadata of a pre-training checkpoint (train/pretrain.py writes it)."""


class OfflineState(NamedTuple):
    """Everything a seed's pre-training needs to continue exactly; leaves are per seed."""

    learner: LearnerState
    rng: jax.Array


class OfflineChunkStats(NamedTuple):
    """Sums over the updates of a chunk (per seed); divide by `updates` for means."""

    updates: jax.Array
    unroll_steps: jax.Array
    update_metrics: UpdateMetrics


def trim_to_longest(data: EpisodeBatch) -> EpisodeBatch:
    """The dataset without the time steps past its longest episode (all padding)."""
    longest = int(data.filled.sum(0).max())
    return data.first_steps(max(longest, 1))


class OfflineTrainer:
    """Builds the jitted programs for one config and dataset spec: `init`, `run_chunk`,
    `evaluate`. `run_chunk(states, until, data)` takes the dataset as an argument (not a
    compiled-in constant), trimmed by `trim_to_longest`. `seed_loop`: how the seeds' updates
    run (bucketing.py; default: sequential on a CPU, vmapped elsewhere)."""

    def __init__(self, cfg: PretrainConfig, spec: EnvSpec, data_length: int,
                 seed_loop: SeedLoop | None = None):
        self.cfg = cfg
        self.seed_loop = seed_loop or default_seed_loop()
        self.env = make_env(spec.map_name, spec.episode_limit, cfg.reward_scale)
        self.spec = self.env.spec
        self.nets = make_networks(self.spec, cfg.network)
        self.lengths = unroll_lengths(data_length, cfg.learner.length_buckets)
        self.init = compiler.jit(jax.vmap(self._init_one))
        self.run_chunk = compiler.jit(self._run_chunk, donate_argnums=0)
        self._test = greedy_test_program(self.spec.map_name, self.spec.episode_limit,
                                         self.spec.reward_scale,
                                         cfg.network.agent_hidden_dim)

    def seed_keys(self) -> jax.Array:
        return seed_keys(self.cfg.seed, self.cfg.num_seeds)

    def test_keys(self, test_index: int) -> jax.Array:
        return test_keys(self.cfg.seed, self.cfg.num_seeds, test_index)

    def _init_one(self, seed_key: jax.Array) -> OfflineState:
        key_params, key_run = jax.random.split(jax.random.fold_in(seed_key, 0))
        return OfflineState(init_learner(key_params, self.nets, self.cfg.learner), key_run)

    def _draw(self, state: OfflineState, data: EpisodeBatch):
        """One seed's batch of distinct episodes and the key of its CQL samples."""
        rng, key_batch, key_cql = jax.random.split(state.rng, 3)
        index = jax.random.choice(key_batch, data.num_episodes, (self.cfg.learner.batch_size,),
                                  replace=False)
        return rng, jax.tree.map(lambda x: x[:, index], data), key_cql

    def _update(self, states: OfflineState, data: EpisodeBatch):
        rngs, batches, keys = jax.vmap(self._draw, in_axes=(0, None))(states, data)

        def update(learner, batch, key):
            return learner_update(learner, batch, self.nets, self.cfg.learner, key)

        learners, metrics, length = update_all_seeds(update, states.learner, batches, keys,
                                                     self.lengths, seed_loop=self.seed_loop)
        copy = learners.updates % self.cfg.target_update_every == 0
        learners = jax.vmap(update_target)(learners, copy)
        return OfflineState(learners, rngs), metrics, length

    def _run_chunk(self, states: OfflineState, until: jax.Array,
                   data: EpisodeBatch) -> tuple[OfflineState, OfflineChunkStats]:
        """Update every seed until it has taken `until` gradient steps (all seeds move
        together). states: leaves [S, ...]."""
        num_seeds = states.rng.shape[0]

        def body(_, carry):
            states, totals = carry
            states, metrics, length = self._update(states, data)
            stats = OfflineChunkStats(jnp.ones((num_seeds,)), length, metrics)
            return states, jax.tree.map(jnp.add, totals, stats)

        zero = jnp.zeros((num_seeds,))
        zeros = OfflineChunkStats(zero, zero, UpdateMetrics(*[zero] * len(UpdateMetrics._fields)))
        start = states.learner.updates[0]
        return jax.lax.fori_loop(start, until, body, (states, zeros))

    def evaluate(self, states: OfflineState, keys: jax.Array, num_episodes: int) -> TestStats:
        """Greedy tests of every seed's online agent (evaluation.greedy_test_program):
        keys [S] -> TestStats [S]."""
        return self._test(states.learner.params["agent"], keys, num_episodes)


def pretrained_checkpoint(path: Path) -> tuple[Path, dict]:
    """The checkpoint file of a pre-training run (its folder or the file) and its metadata;
    UserError if it is not one."""
    path = Path(path)
    ckpt = path / CHECKPOINT_FILE if path.is_dir() else path
    meta = read_checkpoint_meta(ckpt)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise UserError(f"{ckpt} is not an offline pre-training checkpoint (kind "
                        f"{meta.get('kind')!r}); make one with `ovmse pretrain`")
    return ckpt, meta


def load_pretrained(path: Path, spec: EnvSpec | None = None) -> tuple[LearnerState, dict]:
    """The LearnerState of every seed of a pre-training run ([S, ...] leaves: online and target
    networks, optimizer state, update count) and the checkpoint's metadata (its config, spec,
    dataset). `path` is the run folder or its checkpoint file; `spec`, when given, must match
    the map and sizes it was trained on."""
    ckpt, meta = pretrained_checkpoint(path)
    trained = EnvSpec(**meta["spec"])
    if spec is not None and trained != spec:
        what = (f"map {trained.map_name}" if trained.map_name != spec.map_name else
                f"sizes {tuple(trained)}")
        raise UserError(f"{ckpt} was pre-trained on {what}, not {spec.map_name} "
                        f"{tuple(spec)}; pre-train on this map's data first")
    cfg = from_dict(PretrainConfig, meta["config"])
    nets = make_networks(trained, cfg.network)

    def init_one(key):
        return OfflineState(init_learner(key, nets, cfg.learner), key)

    keys = seed_keys(cfg.seed, cfg.num_seeds)
    states, _ = load_checkpoint(ckpt, jax.eval_shape(jax.vmap(init_one), keys))
    bad = nonfinite_part(states.learner)
    if bad:
        raise UserError(f"{ckpt} holds non-finite {bad[1]} (seed {cfg.seed + bad[0]}); it "
                        f"cannot start fine-tuning: pre-train again")
    return states.learner, meta
