"""Unrolling a batch only as far as its longest episode needs, and the seeds' updates side by
side (vmapped) or one after the other.

SMAX episodes are mostly far shorter than the episode limit, and every step past the longest
episode of a batch is padding, whose loss terms are masked anyway. An update therefore runs at
one of a few compiled unroll lengths, the shortest that holds the batch's longest episode; the
result equals that of the full unroll (the networks are causal; tested in test_train.py).

Seeds: vmapped updates suit a GPU (one program, many seeds at the cost of about one). On a
CPU they cost more than the seeds one after the other (measured on 3m, 3 seeds, 30 steps: the
agent network's unroll 117 ms vmapped, 55 ms in sequence; docs/benchmarks.md), because every
seed unrolls as far as the longest batch of *any* seed, a seed that is done still computes its
update, and XLA's CPU matrix products batched over seeds are slower than plain ones. So on a
CPU (`default_seed_loop`) each seed updates in turn, at its own unroll length, and a seed that
does not learn skips its update. Both give the same numbers up to float rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

SeedLoop = Literal["vmap", "sequential"]


def unroll_lengths(limit: int, buckets: int) -> tuple[int, ...]:
    """The compiled unroll lengths, shortest first: ceil(limit * (2/3)^k) for k < buckets, so a
    batch never unrolls more than 1.5x its longest episode (above the shortest length)."""
    return tuple(sorted({math.ceil(limit * (2 / 3) ** k) for k in range(buckets)}))


def default_seed_loop() -> SeedLoop:
    """"sequential" on a CPU, "vmap" on a GPU or TPU (see the module docstring)."""
    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def update_all_seeds(update: Callable, learners, batches, keys: jax.Array,
                     lengths: tuple[int, ...], *extras, learning: jax.Array | None = None,
                     seed_loop: SeedLoop = "vmap"):
    """`update(learner, batch, key, *extras) -> (learner, metrics)` for every seed whose
    `learning` flag is set (all when None), on batches cut to the shortest of `lengths` that
    holds their longest episode. A seed that does not learn keeps its learner and gets zero
    metrics and length.

    seed_loop "vmap": all seeds at once, at the length that holds the longest episode of any
    seed's batch (`lax.switch` sits outside the vmap, so it really branches); "sequential":
    one seed after the other (`lax.map`), each at its own length, skipping seeds that do not
    learn. learners, batches ([S, T(+1), B, ...]), keys, extras, learning: leading seed axis.
    Returns (learners, metrics, unroll length used [S]).
    """
    num_seeds = keys.shape[0]
    if learning is None:
        learning = jnp.ones((num_seeds,), bool)
    if seed_loop == "sequential":
        return jax.lax.map(lambda args: _update_one(update, lengths, *args),
                           (learners, batches, keys, learning) + extras)
    longest = jnp.max(jnp.sum(batches.filled, axis=1))
    branch = jnp.searchsorted(jnp.array(lengths), longest)

    def at(length):
        return jax.vmap(lambda learner, batch, key, *extras: update(
            learner, batch.first_steps(length), key, *extras))

    updated, metrics = jax.lax.switch(branch, [at(n) for n in lengths], learners, batches, keys,
                                      *extras)
    updated = jax.vmap(_select)(learning, updated, learners)
    metrics = jax.tree.map(lambda m: learning.reshape((-1,) + (1,) * (m.ndim - 1)) * m, metrics)
    return updated, metrics, learning * jnp.array(lengths, jnp.float32)[branch]


def _update_one(update: Callable, lengths: tuple[int, ...], learner, batch, key, learning,
                *extras):
    """One seed's update at the shortest length that holds its batch, or none (zero metrics)
    when it does not learn: (learner, metrics, length)."""
    longest = jnp.max(jnp.sum(batch.filled, axis=0))
    branch = jnp.where(learning, jnp.searchsorted(jnp.array(lengths), longest), len(lengths))

    def at(length):
        def run(learner, batch, key, *extras):
            updated, metrics = update(learner, batch.first_steps(length), key, *extras)
            return updated, metrics, jnp.float32(length)
        return run

    def skip(learner, batch, key, *extras):
        _, metrics = jax.eval_shape(update, learner, batch.first_steps(lengths[0]), key,
                                    *extras)
        return learner, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics), \
            jnp.float32(0)

    return jax.lax.switch(branch, [at(n) for n in lengths] + [skip], learner, batch, key,
                          *extras)


def _select(condition, new, old):
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)
