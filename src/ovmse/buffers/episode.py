"""A replay buffer of whole episodes, padded to the episode limit, stored time-major.

Whole episodes (not transitions) because the recurrent agents, the offline data and the OVM
target all work on histories tau: every sample is unrolled from the episode's first step.

Layout of an `EpisodeBatch` with T = episode limit, B episodes, N agents:
  obs        [T+1, B, N, O] float32  o_t for t = 0..T (index T holds the final observation)
  state      [T+1, B, S]    float32  global state s_t
  avail      [T+1, B, N, A] bool     available actions at t
  actions    [T, B, N]      int32    a_t
  rewards    [T, B]         float32  r_t (SMAC scale)
  terminated [T, B]         bool     the episode ended at t by a team's death (no bootstrap)
  truncated  [T, B]         bool     the episode ended at t by the step limit (bootstrap)
  won        [T, B]         bool     the episode was won at t
  filled     [T, B]         bool     transition t is real, not padding
An episode of length L fills t < L; step L holds its final observation, later steps repeat it.

The buffer is a fixed-capacity ring over the B axis (oldest episodes overwritten first); its state
is a pytree, so it lives inside the jitted training program and vmaps over seeds.
This is hand-written rather than flashbax's item buffer because training needs an add that can be
switched off per seed without copying the buffer (vmapped seeds end a chunk at different
iterations) and the time-major layout the recurrent unroll scans over.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.envs import EnvSpec


class EpisodeBatch(NamedTuple):
    obs: jax.Array
    state: jax.Array
    avail: jax.Array
    actions: jax.Array
    rewards: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    won: jax.Array
    filled: jax.Array

    @property
    def num_episodes(self) -> int:
        return self.filled.shape[1]

    def episode_returns(self) -> jax.Array:
        """[B] undiscounted return of each episode."""
        return jnp.sum(jnp.where(self.filled, self.rewards, 0.0), axis=0)

    def episode_lengths(self) -> jax.Array:
        """[B] number of real transitions of each episode."""
        return jnp.sum(self.filled, axis=0, dtype=jnp.int32)

    def episode_won(self) -> jax.Array:
        """[B] whether each episode was won."""
        return jnp.any(self.won & self.filled, axis=0)

    def first_steps(self, length: int) -> "EpisodeBatch":
        """The first `length` transitions (and `length` + 1 observations) of every episode.

        When no episode is longer than `length`, everything cut off is padding, and losses
        computed on the result equal those on the whole batch (the unroll is causal).
        """
        return EpisodeBatch(*(x[: length + 1] if name in ("obs", "state", "avail") else x[:length]
                              for name, x in zip(self._fields, self)))


def empty_batch(spec: EnvSpec, num_episodes: int) -> EpisodeBatch:
    """An all-padding batch of `num_episodes` episodes for the sizes in `spec`."""
    t, b, n = spec.episode_limit, num_episodes, spec.num_agents
    return EpisodeBatch(
        obs=jnp.zeros((t + 1, b, n, spec.obs_dim), jnp.float32),
        state=jnp.zeros((t + 1, b, spec.state_dim), jnp.float32),
        avail=jnp.zeros((t + 1, b, n, spec.num_actions), bool),
        actions=jnp.zeros((t, b, n), jnp.int32),
        rewards=jnp.zeros((t, b), jnp.float32),
        terminated=jnp.zeros((t, b), bool),
        truncated=jnp.zeros((t, b), bool),
        won=jnp.zeros((t, b), bool),
        filled=jnp.zeros((t, b), bool),
    )


class EpisodeBuffer(NamedTuple):
    """Ring buffer state. data: an EpisodeBatch with B = capacity; insert_pos, size: int32 []."""

    data: EpisodeBatch
    insert_pos: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        return self.data.num_episodes


def init_buffer(spec: EnvSpec, capacity: int) -> EpisodeBuffer:
    return EpisodeBuffer(empty_batch(spec, capacity), jnp.zeros((), jnp.int32),
                         jnp.zeros((), jnp.int32))


def add_episodes(buffer: EpisodeBuffer, episodes: EpisodeBatch,
                 enabled: jax.Array | bool = True) -> EpisodeBuffer:
    """Append the E episodes of `episodes` (the oldest are overwritten once full).

    `enabled` false makes this a no-op without copying the buffer (the writes are dropped).
    """
    capacity, num_new = buffer.capacity, episodes.num_episodes
    slots = (buffer.insert_pos + jnp.arange(num_new)) % capacity
    slots = jnp.where(enabled, slots, capacity)  # out of range: dropped
    data = jax.tree.map(lambda store, new: store.at[:, slots].set(new, mode="drop"),
                        buffer.data, episodes)
    added = jnp.where(enabled, num_new, 0)
    return EpisodeBuffer(data, (buffer.insert_pos + added) % capacity,
                         jnp.minimum(buffer.size + added, capacity))


def sample_episodes(buffer: EpisodeBuffer, key: jax.Array, batch_size: int) -> EpisodeBatch:
    """`batch_size` episodes drawn uniformly with replacement from those stored."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda store: store[:, idx], buffer.data)
