"""The random keys of a run: one base key per seed, and the test streams apart from training's.
Shared by the online and offline trainers, so a seed's keys are the same in both."""

from __future__ import annotations

import jax
import jax.numpy as jnp

FINAL_TEST_INDEX = 1 << 30  # test-key index of the final test, apart from periodic tests'


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """[num_seeds] base keys, one per seed (seed, seed+1, ...)."""
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(seed, seed + num_seeds))


def test_keys(seed: int, num_seeds: int, test_index: int) -> jax.Array:
    """Keys of the `test_index`-th test of every seed, a stream apart from training's."""
    return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), test_index))(
        seed_keys(seed, num_seeds))
