"""Policy snapshots: the networks' parameters of every seed at a test point of a training run.

A run folder keeps one per test point, `policies/chunk_<k>.npz` (a checkpoint file, runs.py),
with the chunk, each seed's env step and test win rate, and the run's config in its header. They
are what datasets are collected with (dataset_build.py) and are small (the agent and mixer
parameters, no optimizer state and no replay buffer).
"""

from __future__ import annotations

from pathlib import Path

import jax

from ovmse.errors import UserError
from ovmse.networks.qmix import QmixNetworks, init_params
from ovmse.runs import load_checkpoint, read_checkpoint_meta, save_checkpoint

KIND = "policy-snapshot"
FOLDER = "policies"


def snapshot_path(run_dir: Path, chunk: int) -> Path:
    return Path(run_dir) / FOLDER / f"chunk_{chunk:05d}.npz"


def save_policy_snapshot(run_dir: Path, chunk: int, params: dict, meta: dict) -> Path:
    """params: the online parameters of all seeds (leading seed axis)."""
    path = snapshot_path(run_dir, chunk)
    save_checkpoint(path, params, dict(meta, kind=KIND, chunk=chunk))
    return path


def list_policy_snapshots(run_dir: Path) -> list[Path]:
    """The run's snapshots in training order; UserError if it has none."""
    paths = sorted((Path(run_dir) / FOLDER).glob("chunk_*.npz"))
    if not paths:
        raise UserError(f"{run_dir} holds no policy snapshots ({FOLDER}/chunk_*.npz); train "
                        f"with `ovmse train` first")
    return paths


def load_policy_snapshot(path: Path, nets: QmixNetworks, seed_index: int = 0) -> dict:
    """One seed's parameters {"agent": ..., "mixer": ...} from a snapshot, checked against the
    networks of `nets` (map and sizes)."""
    meta = read_checkpoint_meta(path)
    if meta.get("kind") != KIND:
        raise UserError(f"{path} is a {meta.get('kind')!r} checkpoint, not a policy snapshot")
    snapshot_map = meta["config"]["env"]["map"]
    if snapshot_map != nets.spec.map_name:
        raise UserError(f"policy snapshot {path} is for map {snapshot_map}, not "
                        f"{nets.spec.map_name}")
    num_seeds = len(meta["t_env"])
    if not 0 <= seed_index < num_seeds:
        raise UserError(f"policy snapshot {path} holds seeds 0..{num_seeds - 1}, "
                        f"not {seed_index}")
    template = jax.eval_shape(
        lambda keys: jax.vmap(lambda k: init_params(k, nets))(keys),
        jax.random.split(jax.random.PRNGKey(0), num_seeds))
    params, _ = load_checkpoint(path, template)
    return jax.tree.map(lambda x: x[seed_index], params)
