"""Stopping a training program whose numbers have gone non-finite, before it saves them.

A NaN or inf in the loss or the networks never recovers, and a checkpoint holding one would
start every later phase (fine-tuning from a pre-training) from garbage. The drivers check each
chunk's result here before writing anything of it, so the last checkpoint on disk stays the last
good state.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse.errors import UserError
from ovmse.learner import LearnerState, UpdateMetrics


@jax.jit
def finite_per_seed(tree) -> jax.Array:
    """bool [S]: every floating-point value of seed s in `tree` (leaves [S, ...]) is finite."""
    flags = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
             for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(flags), axis=0)


def nonfinite_part(learner: LearnerState, metrics: UpdateMetrics | None = None
                   ) -> tuple[int, str] | None:
    """(index of the first seed, what is non-finite) or None when everything is finite.
    learner: leaves [S, ...]; metrics: the chunk's summed update metrics [S] (or None)."""
    parts = [("loss", metrics)] if metrics is not None else []
    parts += [("network parameters", (learner.params, learner.target_params))]
    for what, tree in parts:
        bad = np.flatnonzero(~np.asarray(finite_per_seed(tree)))
        if bad.size:
            return int(bad[0]), what
    return None


def check_finite(learner: LearnerState, metrics: UpdateMetrics, first_seed: int, span: str,
                 run_dir: Path, last_checkpoint: str | None) -> None:
    """UserError if a seed's loss or networks are non-finite after a chunk.

    span: what the chunk covered (e.g. "env steps 10000-20000"); last_checkpoint: where the
    last good checkpoint stands (e.g. "env step 10000"), None if none was written (the run
    folder is then removed, runs.removed_if_unfinished).
    """
    found = nonfinite_part(learner, metrics)
    if found is None:
        return
    seed, what = found
    kept = (f"its last good checkpoint ({last_checkpoint}) is kept in {run_dir}"
            if last_checkpoint else f"no checkpoint had been written, so {run_dir} is removed")
    raise UserError(f"seed {first_seed + seed}: the {what} became non-finite (NaN or inf) in "
                    f"{span}; the run stopped before saving them and {kept}. Lower --lr, or "
                    f"check the data with `ovmse dataset verify`")
