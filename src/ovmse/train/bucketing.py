"""Unrolling a batch only as far as its longest episode needs.

SMAX episodes are mostly far shorter than the episode limit, and every step past the longest
episode of a batch is padding, whose loss terms are masked anyway. An update therefore runs at
one of a few compiled unroll lengths, the shortest that holds the batch's longest episode; the
result equals that of the full unroll (the networks are causal; tested in test_train.py).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from ovmse.buffers.episode import EpisodeBatch


def unroll_lengths(limit: int, buckets: int) -> tuple[int, ...]:
    """The compiled unroll lengths, shortest first: ceil(limit * (2/3)^k) for k < buckets, so a
    batch never unrolls more than 1.5x its longest episode (above the shortest length)."""
    return tuple(sorted({math.ceil(limit * (2 / 3) ** k) for k in range(buckets)}))


def update_all_seeds(update: Callable, learners, batches: EpisodeBatch, keys: jax.Array,
                     lengths: tuple[int, ...], *extras):
    """`update(learner, batch, key, *extras) -> (learner, metrics)` for every seed (vmapped),
    on batches cut to the shortest of `lengths` that holds the longest episode of any seed's
    batch.

    learners, batches ([S, T(+1), B, ...]), keys, extras: leading seed axis. `lax.switch` sits outside
    the vmap over seeds, so it really branches. Returns (learners, metrics, unroll length used).
    """
    longest = jnp.max(jnp.sum(batches.filled, axis=1))
    branch = jnp.searchsorted(jnp.array(lengths), longest)

    def at(length):
        return jax.vmap(lambda learner, batch, key, *extras: update(
            learner, batch.first_steps(length), key, *extras))

    updated, metrics = jax.lax.switch(branch, [at(n) for n in lengths], learners, batches, keys,
                                      *extras)
    return updated, metrics, jnp.array(lengths, jnp.float32)[branch]
