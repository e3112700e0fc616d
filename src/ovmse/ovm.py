"""Offline value function memory (OVM, paper section 4.1), in one module: the frozen memory's
values, the memory target (eq. 4), the loss (eq. 5), its weight schedule (eq. 6) and the loss
term the learner sums (learner.py).

The memory is the pre-training's target network, kept frozen for the whole online phase
(learner.OfflineMemory.target_params): Qbar_offline(tau, a) is that network's Q_tot at the
batch's actions. Shapes: T steps, B episodes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import MemoryConfig
from ovmse.exploration import linear_schedule
from ovmse.losses import masked_mean, masked_mse
from ovmse.networks.qmix import QmixNetworks, q_tot_taken


def memory_values(nets: QmixNetworks, memory_params: dict, batch: EpisodeBatch) -> jax.Array:
    """Qbar_offline(tau_t, a_t) of the frozen memory network at the batch's actions: [T, B],
    gradient stopped (nothing the online phase does may change the memory)."""
    return jax.lax.stop_gradient(q_tot_taken(nets, memory_params, batch))


def ovm_targets(td_target: jax.Array, memory_q: jax.Array) -> jax.Array:
    """Eq. 4: the memory target max(Qbar_offline(tau, a), y), elementwise over [T, B]."""
    return jnp.maximum(memory_q, td_target)


def ovm_loss(q_tot: jax.Array, td_target: jax.Array, memory_q: jax.Array, lam: jax.Array,
             mask: jax.Array) -> jax.Array:
    """Eq. 5: (1 - lam) * mean (Q_tot - y)^2 + lam * mean (Q_tot - max(Qbar_offline, y))^2 over
    real transitions. q_tot, td_target, memory_q, mask: [T, B]; lam: scalar in [0, 1].
    With lam = 0 this is the TD loss of eq. 8 exactly."""
    return ((1.0 - lam) * masked_mse(q_tot, td_target, mask)
            + lam * masked_mse(q_tot, ovm_targets(td_target, memory_q), mask))


def memory_weight(cfg: MemoryConfig, t_env: jax.Array) -> jax.Array:
    """lam of eq. 6 at env step t_env of the online phase: 1 at its start, linearly down to
    cfg.lam_end over cfg.lam_anneal_steps env steps, then held (float32, t_env's shape)."""
    return linear_schedule(1.0, cfg.lam_end, cfg.lam_anneal_steps, t_env)


def ovm_term(values, batch: EpisodeBatch, cfg, key, schedules) -> tuple[jax.Array, dict]:
    """The learner's value term with OVM (a learner.LossTerm): eq. 5 with lam =
    schedules.lam, in place of the TD loss of eq. 8. Metrics: the TD loss, the mean memory
    value and the share of real transitions where the memory wins (Qbar_offline > y)."""
    mask = batch.filled
    loss = ovm_loss(values.q_tot, values.target, values.memory_q, schedules.lam, mask)
    return loss, dict(td_loss=masked_mse(values.q_tot, values.target, mask),
                      memory_q=masked_mean(values.memory_q, mask),
                      memory_wins=masked_mean((values.memory_q > values.target) * 1.0, mask))
