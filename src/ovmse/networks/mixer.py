"""The QMIX mixing network (paper eq. 1 and 2; Rashid et al. 2018; PyMARL2's `QMixer`).

Q_tot(tau, a) = w_2(s)^T elu(W_1(s)^T q + b_1(s)) + V(s), where q = [Q_1(tau_1, a_1), ...,
Q_N(tau_N, a_N)] and W_1, w_2 come from hypernetworks of the global state s and pass through
abs(), so dQ_tot/dQ_i >= 0 (eq. 2) and the greedy joint action is the per-agent argmax (eq. 3).

The hypernetworks depend on the state only, so a caller that mixes many joint actions of one
state (the CQL push-down term samples up to 100) computes `hypernet(state)` once and calls
`mix_with` for each.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class MixerWeights(NamedTuple):
    """The state-dependent weights of the mixer, for states of shape [..., S]."""

    w1: jax.Array  # [..., N, E], non-negative
    b1: jax.Array  # [..., E]
    w2: jax.Array  # [..., E], non-negative
    v: jax.Array  # [...]


def mix_with(weights: MixerWeights, agent_qs: jax.Array) -> jax.Array:
    """Q_tot from per-agent Q's [..., N] and weights of the same leading shape: [...]."""
    hidden = nn.elu(jnp.einsum("...n,...ne->...e", agent_qs, weights.w1) + weights.b1)
    return jnp.einsum("...e,...e->...", hidden, weights.w2) + weights.v


class QMixer(nn.Module):
    """`__call__(agent_qs [..., N], state [..., S]) -> q_tot [...]`;
    `apply(params, state, method="hypernet") -> MixerWeights`."""

    num_agents: int
    embed_dim: int = 32
    hypernet_hidden_dim: int = 64

    def setup(self):
        hidden, n, e = self.hypernet_hidden_dim, self.num_agents, self.embed_dim
        self.hyper_w1_0 = nn.Dense(hidden)
        self.hyper_w1_1 = nn.Dense(n * e)
        self.hyper_b1 = nn.Dense(e)
        self.hyper_w2_0 = nn.Dense(hidden)
        self.hyper_w2_1 = nn.Dense(e)
        self.hyper_v_0 = nn.Dense(e)
        self.hyper_v_1 = nn.Dense(1)

    def hypernet(self, state: jax.Array) -> MixerWeights:
        w1 = jnp.abs(self.hyper_w1_1(nn.relu(self.hyper_w1_0(state))))
        w2 = jnp.abs(self.hyper_w2_1(nn.relu(self.hyper_w2_0(state))))
        v = self.hyper_v_1(nn.relu(self.hyper_v_0(state)))[..., 0]
        return MixerWeights(w1.reshape(state.shape[:-1] + (self.num_agents, self.embed_dim)),
                            self.hyper_b1(state), w2, v)

    def __call__(self, agent_qs: jax.Array, state: jax.Array) -> jax.Array:
        return mix_with(self.hypernet(state), agent_qs)
