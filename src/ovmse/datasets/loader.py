"""Filling the learner's episode buffer from a dataset, on the default device (GPU if any) or
on one chosen."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse.buffers.episode import EpisodeBatch, EpisodeBuffer
from ovmse.datasets.store import load_dataset
from ovmse.envs import EnvSpec
from ovmse.errors import UserError


def load_into_buffer(path: Path, spec: EnvSpec, capacity: int | None = None,
                     device: jax.Device | None = None) -> tuple[EpisodeBuffer, dict]:
    """An EpisodeBuffer holding every episode of the dataset at `path` (checked against
    `spec`), with room for `capacity` episodes (default: exactly the dataset's).
    Returns (buffer, dataset metadata)."""
    batch, meta = load_dataset(path, spec)
    count = batch.num_episodes
    capacity = count if capacity is None else capacity
    if count > capacity:
        raise UserError(f"dataset {path} holds {count} episodes, more than the buffer's "
                        f"capacity {capacity}")
    padded = EpisodeBatch(*(np.concatenate(
        [x, np.zeros((x.shape[0], capacity - count) + x.shape[2:], x.dtype)], axis=1)
        for x in batch))
    data = jax.device_put(padded, device)
    return EpisodeBuffer(data, jnp.asarray(count % capacity, jnp.int32),
                         jnp.asarray(count, jnp.int32)), meta
