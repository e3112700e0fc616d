"""The QMIX agent network: one GRU shared by all agents (PyMARL2's `RNNAgent`).

Per agent and step: x = relu(W1 [obs, onehot(last action), onehot(agent id)]),
h' = GRUCell(x, h), Q_i(tau_i, .) = W2 h'. The GRU follows PyTorch's `GRUCell` equations, so
parameters mean the same as in PyMARL2. Everything that does not depend on h (the input layer and
the GRU's input projections) is computed for all steps at once, outside the recurrent scan, so the
scan holds only the h -> h matrix product: the same maths, a much shorter sequential part.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def agent_inputs(obs: jax.Array, last_action: jax.Array, num_actions: int) -> jax.Array:
    """Build the agent network's input from obs [..., N, O] and last_action [..., N] (int, -1
    for "none yet"). Returns [..., N, O + A + N]: obs, one-hot last action, one-hot agent id."""
    num_agents = obs.shape[-2]
    last_onehot = jax.nn.one_hot(last_action, num_actions, dtype=obs.dtype)  # -1 -> zeros
    agent_id = jnp.broadcast_to(jnp.eye(num_agents, dtype=obs.dtype),
                                obs.shape[:-2] + (num_agents, num_agents))
    return jnp.concatenate([obs, last_onehot, agent_id], axis=-1)


class RNNAgent(nn.Module):
    """Shared GRU agent. `__call__(hidden [B, H], inputs [T, B, D]) -> (hidden [B, H], q [T, B, A])`.

    B is any flattening of (batch, agents); T = 1 when acting step by step.
    """

    hidden_dim: int
    num_actions: int

    @nn.compact
    def __call__(self, hidden: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h_dim = self.hidden_dim
        x = nn.relu(nn.Dense(h_dim, name="fc1")(inputs))
        gates_x = nn.Dense(3 * h_dim, name="gru_input")(x)  # [T, B, 3H]: r, z, n input parts
        w_h = self.param("gru_hidden_kernel", nn.initializers.lecun_normal(), (h_dim, 3 * h_dim))
        b_h = self.param("gru_hidden_bias", nn.initializers.zeros, (3 * h_dim,))

        def gru_step(h, gx):
            gh = h @ w_h + b_h
            r = jax.nn.sigmoid(gx[..., :h_dim] + gh[..., :h_dim])
            z = jax.nn.sigmoid(gx[..., h_dim:2 * h_dim] + gh[..., h_dim:2 * h_dim])
            n = jnp.tanh(gx[..., 2 * h_dim:] + r * gh[..., 2 * h_dim:])
            h = (1.0 - z) * n + z * h
            return h, h

        hidden, hs = jax.lax.scan(gru_step, hidden, gates_x)
        q = nn.Dense(self.num_actions, name="fc2")(hs)
        return hidden, q

    def initial_hidden(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.hidden_dim))
