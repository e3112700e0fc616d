"""The QMIX mixing network (paper eq. 1 and 2; Rashid et al. 2018; PyMARL2's `QMixer`).

Q_tot(tau, a) = w_2(s)^T elu(W_1(s)^T q + b_1(s)) + V(s), where q = [Q_1(tau_1, a_1), ...,
Q_N(tau_N, a_N)] and W_1, w_2 come from hypernetworks of the global state s and pass through
abs(), so dQ_tot/dQ_i >= 0 (eq. 2) and the greedy joint action is the per-agent argmax (eq. 3).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class QMixer(nn.Module):
    """`__call__(agent_qs [..., N], state [..., S]) -> q_tot [...]`."""

    num_agents: int
    embed_dim: int = 32
    hypernet_hidden_dim: int = 64

    @nn.compact
    def __call__(self, agent_qs: jax.Array, state: jax.Array) -> jax.Array:
        n, e = self.num_agents, self.embed_dim
        w1 = nn.Dense(self.hypernet_hidden_dim, name="hyper_w1_0")(state)
        w1 = jnp.abs(nn.Dense(n * e, name="hyper_w1_1")(nn.relu(w1)))
        w1 = w1.reshape(state.shape[:-1] + (n, e))
        b1 = nn.Dense(e, name="hyper_b1")(state)
        w2 = nn.Dense(self.hypernet_hidden_dim, name="hyper_w2_0")(state)
        w2 = jnp.abs(nn.Dense(e, name="hyper_w2_1")(nn.relu(w2)))
        v = nn.Dense(1, name="hyper_v_1")(nn.relu(nn.Dense(e, name="hyper_v_0")(state)))[..., 0]
        hidden = nn.elu(jnp.einsum("...n,...ne->...e", agent_qs, w1) + b1)
        return jnp.einsum("...e,...e->...", hidden, w2) + v
