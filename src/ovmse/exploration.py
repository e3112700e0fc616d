"""Action selection: greedy, epsilon-greedy and decentralized sequential epsilon-greedy.

Schedules implement the paper's eq. 6 and 7 as intended: a linear decay from `start` to `end`
over `duration` steps, then held at `end` (the paper prints min(end, ...), which read literally
is constant; shared/REFERENCE.md).

Random actions are drawn uniformly among the *available* actions of each agent; greedy actions
are the argmax over available actions only.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

ExplorationKind = Literal["greedy", "epsilon_greedy", "sequential"]
EXPLORATION_KINDS: tuple[str, ...] = ("greedy", "epsilon_greedy", "sequential")


def linear_schedule(start: float, end: float, duration: int, t: jax.Array) -> jax.Array:
    """Eq. 6 / 7: start + (end - start) * min(t / duration, 1). Returns a float32 scalar."""
    frac = jnp.clip(jnp.asarray(t, jnp.float32) / max(duration, 1), 0.0, 1.0)
    return jnp.asarray(start, jnp.float32) + frac * (end - start)


def greedy_actions(q: jax.Array, avail: jax.Array) -> jax.Array:
    """argmax_a Q_i(tau_i, a) over available actions. q, avail: [..., N, A] -> [..., N] int32."""
    return jnp.argmax(jnp.where(avail, q, -jnp.inf), axis=-1).astype(jnp.int32)


def random_available_actions(key: jax.Array, avail: jax.Array) -> jax.Array:
    """One uniformly random available action per agent. avail [..., N, A] -> [..., N] int32."""
    logits = jnp.where(avail, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def exploration_probability(kind: ExplorationKind, epsilon: jax.Array, num_agents: int):
    """Per-agent probability of a random action.

    epsilon_greedy: each agent explores independently with eps_t (eq. 7).
    sequential: Algorithm 2, each agent explores with eps_t / N, so on average eps_t agents
    explore per step instead of N * eps_t.
    """
    if kind == "greedy":
        return jnp.zeros((), jnp.float32)
    if kind == "epsilon_greedy":
        return epsilon
    if kind == "sequential":
        return epsilon / num_agents
    raise ValueError(f"unknown exploration kind {kind!r}; expected one of {EXPLORATION_KINDS}")


def select_actions(key: jax.Array, q: jax.Array, avail: jax.Array, epsilon: jax.Array,
                   kind: ExplorationKind) -> tuple[jax.Array, jax.Array]:
    """Choose a joint action. q, avail: [..., N, A]; epsilon: scalar eps_t.

    Returns (actions [..., N] int32, explored [..., N] bool: which agents took a random action).
    """
    greedy = greedy_actions(q, avail)
    if kind == "greedy":
        return greedy, jnp.zeros(greedy.shape, bool)
    key_explore, key_random = jax.random.split(key)
    p_explore = exploration_probability(kind, epsilon, q.shape[-2])
    explored = jax.random.uniform(key_explore, greedy.shape) < p_explore
    actions = jnp.where(explored, random_available_actions(key_random, avail), greedy)
    return actions, explored
