"""WSRL, warm-start RL (Zhou et al., ICLR 2025, "Efficient Online RL Fine-Tuning Need Not
Retain Offline Data"), on the QMIX backbone: `ovmse finetune --algo wsrl`.

WSRL keeps no offline data online. Instead, before the first update, a warm-up of K env steps
(`FinetuneConfig.warmup_steps`, default 5,000 as in WSRL's public runs) is played by the frozen
pre-trained policy and fills the empty online buffer, so that the first updates see data of the
policy the networks were trained to value, not of a random one; then ordinary online
fine-tuning follows (TD loss of eq. 8, no CQL, epsilon-greedy).

Here the pre-trained policy is the greedy one of the MACQL pre-training (WSRL's is its SAC
actor, sampled). No update runs during the warm-up, so the online agent that plays it is the
pre-trained agent itself. The warm-up's env steps count in the run's budget as in WSRL, and
epsilon then follows the other methods' schedule by env step (eq. 7), from where that schedule
stands at K. Target-network copies keep their episode count, as in every method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ovmse.config import TrainConfig
from ovmse.schedules import Schedules, standard


def schedules(cfg: TrainConfig, t_env: jax.Array) -> Schedules:
    """The standard schedules, but while t_env < warmup_steps: epsilon 0 (the greedy
    pre-trained policy plays) and no update. An iteration whose episodes reach K may update
    once they are stored; the episodes after it explore."""
    base = standard(cfg, t_env)
    warming_up = jnp.asarray(t_env) < cfg.finetune.warmup_steps
    return base._replace(epsilon=jnp.where(warming_up, 0.0, base.epsilon),
                         learn=base.learn & ~warming_up)
