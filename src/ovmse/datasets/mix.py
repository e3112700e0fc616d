"""`ovmse dataset mix`: several datasets of one map concatenated into one (quality "mixed")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovmse.buffers.episode import EpisodeBatch
from ovmse.datasets.store import load_dataset, write_dataset
from ovmse.envs import EnvSpec
from ovmse.errors import UserError


def mix_datasets(sources: list[Path], out: Path, overwrite: bool = False) -> dict:
    """Concatenate the episodes of `sources` (in order) into a new dataset at `out`."""
    if len(sources) < 2:
        raise UserError("mix needs at least two datasets")
    batches, metas = [], []
    for path in sources:
        spec = EnvSpec(**metas[0]["spec"]) if metas else None
        batch, meta = load_dataset(path, spec)
        batches.append(batch)
        metas.append(meta)
    mixed = EpisodeBatch(*(np.concatenate(fields, axis=1) for fields in zip(*batches)))
    provenance = dict(generator="ovmse dataset mix",
                      sources=[dict(path=str(p), quality=m["quality"], episodes=m["episodes"])
                               for p, m in zip(sources, metas)])
    return write_dataset(out, mixed, EnvSpec(**metas[0]["spec"]), "mixed", provenance,
                         overwrite=overwrite)
