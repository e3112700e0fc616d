"""Targets and losses of the QMIX backbone (paper eq. 8), one function per equation.

Shapes: T steps, B episodes. All functions are pure and differentiable where it matters; targets
are returned without stop_gradient, the caller decides (learner.py stops them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def td_lambda_targets(rewards: jax.Array, terminated: jax.Array, filled: jax.Array,
                      next_q_tot: jax.Array, gamma: float, td_lambda: float) -> jax.Array:
    """TD(lambda) targets for Q_tot(tau_t, a_t), the target of eq. 8 with lambda-returns.

    rewards, terminated, filled: [T, B]; next_q_tot: [T, B] = Qbar_tot(tau_{t+1}, a*_{t+1}).
    Recursion, from the last step backwards:
        G_t = r_t + gamma * (1 - terminated_t) * ((1 - lambda) * Qbar_{t+1} + lambda * G'_{t+1})
    with G'_{t+1} = G_{t+1} when step t+1 is a real transition of the episode, else Qbar_{t+1}
    (the episode was cut at t+1: bootstrap fully). td_lambda = 0 gives the one-step target
    r_t + gamma * (1 - terminated_t) * Qbar_{t+1}. Padding steps get meaningless (finite) values
    and must be masked by the caller.
    """
    not_terminal = 1.0 - terminated.astype(rewards.dtype)

    def backward(carry, step):
        next_return, next_filled = carry
        reward, not_term, q_next, is_filled = step
        continued = jnp.where(next_filled, next_return, q_next)
        ret = reward + gamma * not_term * ((1.0 - td_lambda) * q_next + td_lambda * continued)
        return (ret, is_filled), ret

    init = (jnp.zeros_like(rewards[0]), jnp.zeros_like(filled[0]))
    _, returns = jax.lax.scan(backward, init, (rewards, not_terminal, next_q_tot, filled),
                              reverse=True)
    return returns


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """sum(mask * x) / sum(mask) over [T, B]: the mean over real transitions (0 if none)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def masked_mse(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """sum(mask * (prediction - target)^2) / sum(mask), the squared TD error of eq. 8 averaged
    over real transitions. Padding never reaches the gradient, even if its target is not finite."""
    error = jnp.where(mask, prediction - jnp.where(mask, target, 0.0), 0.0)
    return jnp.sum(error ** 2) / jnp.maximum(jnp.sum(mask), 1)

