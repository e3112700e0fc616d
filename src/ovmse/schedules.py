"""The step-dependent settings of online training, as one named structure.

At every iteration the online trainer (train/online.py) asks the run's method for its
`Schedules` at the seeds' env steps: the exploration rate of the episodes it is about to play,
whether updates may run, and the weights of the loss terms (learner.py reads `lam`). A method
with its own timing (a warm-up, a second anneal) supplies its own schedule function
(methods.Method.schedules); every method of the paper uses `standard`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ovmse.config import TrainConfig
from ovmse.exploration import linear_schedule
from ovmse.ovm import memory_weight


class Schedules(NamedTuple):
    """Settings at env step t_env, each of t_env's shape (one value per seed)."""

    epsilon: jax.Array
    """float32: exploration rate of the episodes played from t_env (eq. 7)."""
    lam: jax.Array
    """float32: OVM's memory weight of the updates at t_env (eq. 6; read only with OVM)."""
    learn: jax.Array
    """bool: updates may run at t_env (with a full enough buffer)."""


def standard(cfg: TrainConfig, t_env: jax.Array) -> Schedules:
    """The paper's online phase: epsilon decays linearly from eps_start to eps_end over
    eps_anneal_steps (eq. 7), lam from 1 to lam_end over lam_anneal_steps (eq. 6), both then
    held; updates from the first iteration on."""
    x = cfg.explore
    return Schedules(
        epsilon=linear_schedule(x.eps_start, x.eps_end, x.eps_anneal_steps, t_env),
        lam=memory_weight(cfg.learner.memory, t_env),
        learn=jnp.ones(jnp.shape(t_env), bool))
