"""The run folder: resolved config, metrics (JSONL), checkpoints and summary, written atomically.

Layout of a run folder:
  config.json       the resolved config (the run is a function of it)
  metrics.jsonl     one JSON object per log point and seed, appended as the run goes
  tensorboard/      the same scalars as TensorBoard event files, one folder per seed
  checkpoint.npz    the latest resumable state of every seed (see save_checkpoint)
  policies/         the networks of every seed at each test point (snapshots.py)
  summary.json      final results, written once the run has finished
  learning_curve.png
Every file but the appended logs is written to a temporary name beside it and renamed into place,
so a killed run leaves either the previous complete file or the new complete file, never half of
one; a resumed run first cuts its logs back to its checkpoint (metrics_log.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ovmse.errors import UserError
from ovmse.provenance import cpu_model

CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_FORMAT = "ovmse-checkpoint"
CHECKPOINT_VERSION = 2


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


def strict_json_value(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-inf, numpy's too) replaced by None, so that it
    serialises as strict JSON (RFC 8259 has no NaN or Infinity; strict parsers reject them)."""
    if isinstance(obj, dict):
        return {k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def json_text(obj: Any, indent: int | None = 2, sort_keys: bool = True) -> str:
    """Strict JSON for every file the project writes: keys sorted (unless a reader needs their
    order: `sort_keys` False), non-finite floats as null."""
    return json.dumps(strict_json_value(obj), indent=indent, sort_keys=sort_keys,
                      allow_nan=False)


def write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    text = json_text(obj, sort_keys=sort_keys) + "\n"
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
    """Replace `path` by these records, one JSON object per line (atomically)."""
    text = "".join(json_text(r, indent=None) + "\n" for r in records)
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append these records to `path` in one write, flushed to disk. A write cut short leaves a
    last line without its newline, which read_jsonl ignores."""
    text = "".join(json_text(r, indent=None) + "\n" for r in records)
    with open(path, "ab") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file ([] if it does not exist), without a last line that was cut
    short (no newline: an append interrupted by a crash)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def device_name() -> str:
    """Where this process computes, for summaries: e.g. "cpu: AMD EPYC (avx512)" or
    "gpu: NVIDIA H100 80GB HBM3". One config and seed gives different numbers on CPU and GPU,
    and on CPUs of other kinds (floating-point order and fused multiply-adds differ, and the
    trajectories diverge: docs/datasets.md), so a run records its own."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu: {cpu_model()}"
    return f"{device.platform}: {device.device_kind}"


def new_run_dir(path: Path) -> Path:
    """Create an empty run folder; refuse one that already holds files (never overwrite a run)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"run folder {path} already exists and is not empty; choose another "
                        f"--out, or continue it with --resume {path}")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def removed_if_unfinished(run_dir: Path):
    """Delete `run_dir` if the block raises (an error, Ctrl-C) before a checkpoint is in it.

    A run that stops before its first checkpoint has nothing to resume, and a half-made folder
    would block a rerun with the same --out; a folder with a checkpoint is kept for --resume.
    (kill -9 leaves the folder; `--resume` then starts the run again from its config.json.)
    """
    try:
        yield
    except BaseException:
        if not (Path(run_dir) / CHECKPOINT_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


# Version 2 of the checkpoint format (see save_checkpoint): leaves of at least this many bytes are
# stored as their nonzero 64-byte blocks, compressed; smaller ones as plain .npy members. 256 KiB:
# every array of a replay buffer of the default size (a bool [T, B] is 500 KB per seed) is above
# it, the network weights of up to 3 seeds (64 KiB per seed at most, default sizes) are below it.
_COMPACT_MIN_BYTES = 1 << 18
_BLOCK_BYTES = 64
_CHUNK_BLOCKS = 1 << 17  # blocks per compressed chunk: 8 MiB of the array
_ZLIB_LEVEL = 1
_READABLE_VERSIONS = (1, 2)


def save_checkpoint(path: Path, tree: Any, meta: dict) -> None:
    """Write a pytree of arrays and a JSON-able `meta` dict to one .npz (zip) file, atomically.

    Leaf i (in tree-flattening order) is stored under the name leaf_{i:05d}; the member meta.npy
    holds `meta` as JSON, plus the format, its version and, per leaf, its key path, shape, dtype
    and storage, so that loading can check them against the expected structure. Storage is
      "npy"             leaf_XXXXX.npy: the array as np.save writes it. Leaves under 256 KiB,
                        and every leaf of a version-1 file.
      "nonzero-blocks"  the array's bytes (C order) cut into 64-byte blocks (the last one padded
                        with zeros); leaf_XXXXX_mask.npy: one bit per block (np.packbits), set iff
                        a byte of the block is nonzero; leaf_XXXXX_blocks.zlib: the set blocks in
                        order, one zlib stream (level 1) per chunk of 2^17 blocks (8 MiB of the
                        array); leaf_XXXXX_sizes.npy: the chunks' compressed sizes.
    A block left out is all zero bytes, so the encoding is exact for any content (NaN payloads,
    negative zeros); it only pays off when an array is mostly zeros, as a replay buffer is (unused
    episode slots and the steps after each episode's end are zero padding; on a full buffer whose
    episodes use a fifth of the episode limit, four fifths of it). Chunks are compressed and
    decompressed on a few threads. Zip timestamps are fixed, so equal trees give equal files.
    """
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    infos = [{"path": jax.tree_util.keystr(p), "shape": list(np.shape(leaf)),
              "dtype": str(np.asarray(leaf).dtype)} for p, leaf in leaves_with_paths]

    def write(f):
        with zipfile.ZipFile(f, "w", allowZip64=True) as zf:
            for i, ((_, leaf), info) in enumerate(zip(leaves_with_paths, infos)):
                array = np.asarray(leaf)
                if array.nbytes >= _COMPACT_MIN_BYTES:
                    info.update(_write_nonzero_blocks(zf, f"leaf_{i:05d}", array))
                else:
                    _write_npy(zf, f"leaf_{i:05d}.npy", array)
                    info["storage"] = "npy"
            full = dict(meta, format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_VERSION,
                        leaves=infos)
            _write_npy(zf, "meta.npy",
                       np.frombuffer(json_text(full, indent=None).encode(), dtype=np.uint8))

    _atomic_write(Path(path), write)


def _zip_member(zf: zipfile.ZipFile, name: str, compress_type: int):
    info = zipfile.ZipInfo(name)  # the fixed 1980 timestamp: the file depends on the tree alone
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return zf.open(info, "w", force_zip64=True)


def _write_npy(zf: zipfile.ZipFile, name: str, array: np.ndarray,
               compress_type: int = zipfile.ZIP_STORED) -> None:
    with _zip_member(zf, name, compress_type) as f:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)


def _worker_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _ordered_map(fn, items):
    """fn(item) for every item on a thread pool (zlib and numpy release the GIL), yielded in
    order, with a bounded number in flight so that memory stays a few chunks."""
    workers = _worker_count()
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_nonzero_blocks(zf: zipfile.ZipFile, stem: str, array: np.ndarray) -> dict:
    """Store `array` as its nonzero blocks (see save_checkpoint); returns its storage meta."""
    size = _BLOCK_BYTES
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    whole = raw[: raw.size // size * size].reshape(-1, size)
    tail = np.zeros((1 if raw.size % size else 0, size), np.uint8)
    tail.reshape(-1)[: raw.size % size] = raw[whole.size:]
    n_blocks = len(whole) + len(tail)

    def pack(k):
        lo, hi = k * _CHUNK_BLOCKS, min((k + 1) * _CHUNK_BLOCKS, n_blocks)
        part = whole[lo:hi] if hi <= len(whole) else np.concatenate([whole[lo:], tail])
        keep = part.view(np.uint64).any(axis=1)
        return keep, zlib.compress(part[keep], _ZLIB_LEVEL)

    keeps, sizes = [], []
    with _zip_member(zf, f"{stem}_blocks.zlib", zipfile.ZIP_STORED) as f:
        for keep, packed in _ordered_map(pack, range(-(-n_blocks // _CHUNK_BLOCKS))):
            f.write(packed)
            keeps.append(keep)
            sizes.append(len(packed))
    keep = np.concatenate(keeps) if keeps else np.zeros(0, bool)
    _write_npy(zf, f"{stem}_mask.npy", np.packbits(keep), zipfile.ZIP_DEFLATED)
    _write_npy(zf, f"{stem}_sizes.npy", np.asarray(sizes, np.int64))
    return dict(storage="nonzero-blocks", block_bytes=size, chunk_blocks=_CHUNK_BLOCKS,
                stored_blocks=int(keep.sum()), zlib_level=_ZLIB_LEVEL)


def _read_nonzero_blocks(npz, stem: str, info: dict, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """The array stored by _write_nonzero_blocks, built in place: one array of its size plus a
    few chunks in flight (a chunk is decompressed straight into the blocks it fills)."""
    size, chunk = int(info["block_bytes"]), int(info["chunk_blocks"])
    nbytes = math.prod(shape) * dtype.itemsize
    n_blocks = -(-nbytes // size)
    bits, sizes = npz[f"{stem}_mask"], npz[f"{stem}_sizes"]
    if (size <= 0 or size % 8 or chunk <= 0 or bits.dtype != np.uint8
            or bits.shape != (-(-n_blocks // 8),) or sizes.shape != (-(-n_blocks // chunk),)
            or sizes.dtype != np.int64 or np.any(sizes < 0)):
        raise ValueError(f"the block index of {stem} does not fit its shape {list(shape)}")
    keep = np.unpackbits(bits, count=n_blocks).view(bool)
    out = np.zeros((n_blocks, size), np.uint8)

    def unpack(item):
        k, packed = item
        lo, hi = k * chunk, min((k + 1) * chunk, n_blocks)
        rows = keep[lo:hi]
        expected = int(rows.sum()) * size
        inflate = zlib.decompressobj()
        data = inflate.decompress(packed, expected + 1)  # bounded, whatever the damage
        if len(data) != expected or not inflate.eof or inflate.unused_data:
            raise ValueError(f"chunk {k} of {stem} does not hold the {expected} bytes its mask "
                             f"says")
        out[lo:hi][rows] = np.frombuffer(data, np.uint8).reshape(-1, size)

    with npz.zip.open(f"{stem}_blocks.zlib") as f:
        for _ in _ordered_map(unpack, ((k, f.read(int(s))) for k, s in enumerate(sizes))):
            pass
        if f.read(1):
            raise ValueError(f"{stem}_blocks.zlib is longer than its chunks")
    return out.reshape(-1)[:nbytes].view(dtype).reshape(shape)


def _read_leaf(npz, index: int, info: dict, shape: tuple, dtype: np.dtype) -> np.ndarray:
    stem = f"leaf_{index:05d}"
    storage = info.get("storage", "npy")  # version 1 stores every leaf as .npy
    if storage == "nonzero-blocks":
        return _read_nonzero_blocks(npz, stem, info, shape, dtype)
    if storage != "npy":
        raise ValueError(f"{stem} has an unknown storage {storage!r}")
    array = npz[stem]
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(f"{stem} holds {array.dtype}{list(array.shape)}, its meta says "
                         f"{dtype}{list(shape)}")
    return array


def read_checkpoint_meta(path: Path) -> dict:
    """The meta dict of a checkpoint; UserError if the file is missing, damaged or foreign.
    Reads the meta member only, whatever the size of the arrays."""
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
    if meta.get("format_version") not in _READABLE_VERSIONS:
        raise UserError(f"checkpoint {path} has format version {meta.get('format_version')}; "
                        f"this ovmse reads versions "
                        f"{', '.join(map(str, _READABLE_VERSIONS))}")
    return meta


def _under(key_path: str, prefix: str) -> bool:
    return (not prefix or key_path == prefix
            or (key_path.startswith(prefix) and key_path[len(prefix)] in ".["))


def load_checkpoint(path: Path, template: Any, prefix: str = "") -> tuple[Any, dict]:
    """Read a checkpoint into the structure of `template` (arrays or ShapeDtypeStructs).

    With a `prefix` (a stored key path such as ".learner" or ".learner.params"), `template` is
    that subtree and only its leaves are read. Every leaf has members of its own, read only when
    it is loaded: the networks of a training state load without reading its replay buffer.
    The leaves are device arrays (jax.Array; NumPy arrays for a dtype JAX would narrow).
    Raises UserError naming the first leaf whose path, shape or dtype differs from the template,
    or saying that the file is damaged.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    expected, treedef = jax.tree_util.tree_flatten_with_path(template)
    stored = [(i, leaf) for i, leaf in enumerate(meta["leaves"]) if _under(leaf["path"], prefix)]
    if len(stored) != len(expected):
        under = f" under {prefix}" if prefix else ""
        raise UserError(f"checkpoint {path} holds {len(stored)} arrays{under}, this config "
                        f"expects {len(expected)}: it was written by a different program or "
                        f"config")
    leaves = []
    try:
        with np.load(path) as npz:
            for (key_path, want), (i, have) in zip(expected, stored):
                name = prefix + jax.tree_util.keystr(key_path)
                shape, dtype = list(want.shape), str(np.dtype(want.dtype))
                if have["path"] != name or have["shape"] != shape or have["dtype"] != dtype:
                    raise UserError(
                        f"checkpoint {path} does not match this config: {have['path']} is "
                        f"{have['dtype']}{have['shape']}, expected {name} {dtype}{shape}")
                leaf = _read_leaf(npz, i, have, tuple(shape), np.dtype(want.dtype))
                # To the device leaf by leaf: the host copy is freed at once, and the state
                # then owns its buffers, so the first chunk can take them over (donation)
                # instead of a resumed run holding its state twice (docs/benchmarks.md). A
                # dtype JAX would narrow (float64 without x64) stays a NumPy array.
                same = jax.dtypes.canonicalize_dtype(leaf.dtype) == leaf.dtype
                leaves.append(jax.device_put(leaf) if same else leaf)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error) as e:
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from None
    return jax.tree_util.tree_unflatten(treedef, leaves), meta
