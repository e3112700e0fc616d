"""The run folder: resolved config, metrics (JSONL), checkpoints and summary, written atomically.

Layout of a run folder:
  config.json       the resolved config (the run is a function of it)
  metrics.jsonl     one JSON object per log point and seed
  checkpoint.npz    the latest resumable state of every seed (see save_checkpoint)
  policies/         the networks of every seed at each test point (snapshots.py)
  summary.json      final results, written once the run has finished
  learning_curve.png
Every file is written to a temporary name beside it and renamed into place, so a killed run leaves
either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ovmse.errors import UserError

CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_FORMAT = "ovmse-checkpoint"
CHECKPOINT_VERSION = 1


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write `path` through a temporary file in its folder, renamed into place once complete,
    with the permissions a plain `open` would give (mkstemp's are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the file is damaged") from None


def write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def device_name() -> str:
    """Where this process computes, for summaries: "cpu" or e.g. "gpu: NVIDIA H100 80GB HBM3".
    One config and seed gives different numbers on CPU and GPU (floating-point order differs
    and the trajectories diverge), so a run records its own."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return "cpu"
    return f"{device.platform}: {device.device_kind}"


def new_run_dir(path: Path) -> Path:
    """Create an empty run folder; refuse one that already holds files (never overwrite a run)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"run folder {path} already exists and is not empty; choose another "
                        f"--out, or continue it with --resume {path}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_checkpoint(path: Path, tree: Any, meta: dict) -> None:
    """Write a pytree of arrays and a JSON-able `meta` dict to one .npz file, atomically.

    Leaves are stored as leaf_00000, leaf_00001, ... in tree-flattening order; meta records their
    key paths, shapes and dtypes so that loading can check them against the expected structure.
    """
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, (_, leaf) in enumerate(leaves_with_paths)}
    meta = dict(meta, format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_VERSION,
                leaves=[{"path": jax.tree_util.keystr(p), "shape": list(np.shape(leaf)),
                         "dtype": str(np.asarray(leaf).dtype)}
                        for p, leaf in leaves_with_paths])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def read_checkpoint_meta(path: Path) -> dict:
    """The meta dict of a checkpoint; UserError if the file is missing, damaged or foreign."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); it is "
                        f"damaged or not an ovmse checkpoint") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an ovmse checkpoint")
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise UserError(f"checkpoint {path} has format version {meta.get('format_version')}; "
                        f"this ovmse reads version {CHECKPOINT_VERSION}")
    return meta


def load_checkpoint(path: Path, template: Any) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of `template` (arrays or ShapeDtypeStructs).

    Raises UserError naming the first leaf whose path, shape or dtype differs from the template.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    expected, treedef = jax.tree_util.tree_flatten_with_path(template)
    stored = meta["leaves"]
    if len(stored) != len(expected):
        raise UserError(f"checkpoint {path} holds {len(stored)} arrays, this config expects "
                        f"{len(expected)}: it was written by a different program or config")
    leaves = []
    try:
        with np.load(path) as npz:
            for i, ((key_path, want), have) in enumerate(zip(expected, stored)):
                name = jax.tree_util.keystr(key_path)
                shape, dtype = list(want.shape), str(np.dtype(want.dtype))
                if have["path"] != name or have["shape"] != shape or have["dtype"] != dtype:
                    raise UserError(
                        f"checkpoint {path} does not match this config: {have['path']} is "
                        f"{have['dtype']}{have['shape']}, expected {name} {dtype}{shape}")
                leaves.append(npz[f"leaf_{i:05d}"])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from None
    return jax.tree_util.tree_unflatten(treedef, leaves), meta
