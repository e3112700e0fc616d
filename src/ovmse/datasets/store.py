"""Datasets on disk: one folder per dataset, written atomically, verified by checksums.

Layout of a dataset folder:
  dataset.json            metadata: format version, map and sizes, quality, how it was made
                          (generating checkpoint and its win rate, behaviour epsilon, seed,
                          jaxmarl version), counts, per-episode return/length/win, a SHA-256 of
                          every stored array, and a manifest (size and SHA-256 of every file)
  vault/<quality>/...     a flashbax Vault (the format OG-MARL uses) holding the rows of
                          datasets/layout.py under OG-MARL's field names
  generator.npz           for policy datasets: the policy snapshot that played them
The folder is written under a temporary name beside its destination and renamed into place once
complete, so an interrupted write leaves no dataset (or the earlier one) at the destination.
`verify` checks the manifest first, so a flipped byte or a truncated file is reported by name
before anything is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

from ovmse.buffers.episode import EpisodeBatch
from ovmse.datasets.layout import ROW_FIELDS, episode_bounds, episodes_to_rows, rows_to_episodes
from ovmse.datasets.locate import METADATA_FILE, shipped_names
from ovmse.envs import EnvSpec
from ovmse.errors import UserError
from ovmse.runs import current_umask, json_text

FORMAT = "ovmse-dataset"
FORMAT_VERSION = 1
VAULT_DIR = "vault"
GENERATOR_FILE = "generator.npz"
"""A policy dataset's generating snapshot, copied into its folder."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def array_checksum(x: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes."""
    x = np.ascontiguousarray(x)
    return _sha256_bytes(f"{x.dtype.str}{x.shape}".encode() + x.tobytes())


def _vault_tree(rows: dict[str, np.ndarray]) -> dict:
    """Rows keyed 'a.b' -> the nested experience dict a Vault stores, with its [1, R] axes."""
    tree: dict = {}
    for name, value in rows.items():
        *parents, leaf = name.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value[None]
    return tree


def _flat_rows(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_rows(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)[0]
    return out


@contextlib.contextmanager
def _quiet():
    """flashbax's Vault prints where it writes; keep the CLI's output to our own lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def write_vault(vault: Path, uid: str, rows: dict[str, np.ndarray],
                metadata: dict | None = None) -> None:
    """Store rows {"a.b": [R, ...]} as the Vault `vault`/<uid> (flashbax: vault name vault.name
    under vault.parent, leading axes [1, R]), with `metadata` in its metadata.json."""
    import jax.numpy as jnp
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    experience = _vault_tree(rows)
    num_rows = len(next(iter(rows.values())))
    state = TrajectoryBufferState(experience=experience, current_index=jnp.int32(num_rows),
                                  is_full=jnp.bool_(False))
    with _quiet():
        vault = Vault(Path(vault).name, experience_structure=experience,
                      rel_dir=str(Path(vault).parent), vault_uid=uid, metadata=metadata)
        written = vault.write(state, source_interval=(0, num_rows), dest_start=0)
    if written != num_rows:
        raise RuntimeError(f"the vault stored {written} of {num_rows} rows")


def read_vault(vault: Path, uid: str) -> dict[str, np.ndarray]:
    """The rows {"a.b": [R, ...]} of the Vault `vault`/<uid>, read on the CPU."""
    import jax
    from flashbax.vault import Vault

    with _quiet(), jax.default_device(jax.devices("cpu")[0]):
        experience = Vault(Path(vault).name, rel_dir=str(Path(vault).parent),
                           vault_uid=uid).read().experience
    return _flat_rows(experience)


def _manifest(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): dict(bytes=p.stat().st_size, sha256=_sha256_file(p))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != METADATA_FILE}


def jaxmarl_version() -> str:
    return package_metadata.version("jaxmarl")


def write_dataset(path: Path, episodes: EpisodeBatch, spec: EnvSpec, quality: str,
                  provenance: dict[str, Any], overwrite: bool = False,
                  extra_files: dict[str, Path] | None = None) -> dict:
    """Store `episodes` (time-major, padded to spec.episode_limit) as a dataset folder.

    provenance: how the data was made (generator, behaviour_epsilon, seed, ...), kept verbatim.
    extra_files: {name in the folder: file to copy there} (e.g. the generating snapshot), covered
    by the manifest like the rest. Returns the metadata written. Refuses an existing
    destination unless `overwrite`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out, or pass --overwrite to "
                        f"replace it")
    rows = episodes_to_rows(episodes)
    bad = first_nonfinite(rows)
    if bad:
        raise UserError(f"refusing to write dataset {path}: {bad}; fix the data it came from")
    batch = rows_to_episodes(rows, spec.episode_limit)  # what a reader gets back
    returns = batch.episode_returns()
    meta = dict(
        format=FORMAT, format_version=FORMAT_VERSION, map=spec.map_name, quality=quality,
        spec=spec._asdict(), jaxmarl_version=jaxmarl_version(), provenance=provenance,
        episodes=int(batch.filled.shape[1]), transitions=int(batch.filled.sum()),
        rows=int(len(rows["infos.filled"])),
        episode_returns=[round(float(r), 6) for r in returns],
        episode_lengths=[int(n) for n in batch.episode_lengths()],
        episode_won=[bool(w) for w in batch.episode_won()],
        win_rate=float(np.mean(batch.episode_won())), mean_return=float(np.mean(returns)),
        array_sha256={name: array_checksum(rows[name]) for name in ROW_FIELDS},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # not mkdtemp's owner-only 0700
        write_vault(staging / VAULT_DIR, quality, rows)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
        meta["manifest"] = _manifest(staging)
        (staging / METADATA_FILE).write_text(json_text(meta, indent=1) + "\n")
        if path.exists():
            retired = path.with_name(f".{path.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


FLOAT_FIELDS = ("observations", "rewards", "infos.state")
"""The stored arrays that can hold a non-finite value (the others are ints and bools)."""

NUMBER = (int, float)
METADATA_KEYS: dict[str, type | tuple[type, ...]] = dict(
    map=str, quality=str, spec=dict, jaxmarl_version=str, provenance=dict, episodes=int,
    transitions=int, rows=int, episode_returns=list, episode_lengths=list, episode_won=list,
    win_rate=NUMBER, mean_return=NUMBER, array_sha256=dict, manifest=dict)
"""Every key of dataset.json (besides format and format_version) and the type it holds."""
SPEC_KEYS: dict[str, type | tuple[type, ...]] = dict(
    map_name=str, num_agents=int, obs_dim=int, state_dim=int, num_actions=int,
    episode_limit=int, reward_scale=NUMBER)


def first_nonfinite(rows: dict[str, np.ndarray]) -> str | None:
    """Where the first NaN or inf of the rows is ("rewards holds nan at row 7 (episode 1, step
    3), index (7, 0)"), or None when every float array is finite."""
    for name in FLOAT_FIELDS:
        bad = np.argwhere(~np.isfinite(rows[name]))
        if bad.size:
            index = tuple(int(i) for i in bad[0])
            row = index[0]
            final_rows = np.flatnonzero(~rows["infos.filled"][:row])  # of earlier episodes
            start = int(final_rows[-1]) + 1 if final_rows.size else 0
            return (f"{name} holds {rows[name][index]} at row {row} (episode "
                    f"{final_rows.size}, step {row - start}), index {index}")
    return None


def _malformed(meta: dict) -> str | None:
    """What is wrong with the structure of a dataset.json (format already checked), or None."""
    for key, kind in METADATA_KEYS.items():
        if key not in meta:
            return f"key {key!r} is missing"
        if kind is not NUMBER and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            return f"key {key!r} holds a {type(meta[key]).__name__}"
    for key, kind in SPEC_KEYS.items():  # files from before reward_scale lack it (EnvSpec)
        if key not in meta["spec"] and key != "reward_scale":
            return f"spec has no {key!r}"
        if key in meta["spec"] and not isinstance(meta["spec"][key], kind):
            return f"spec {key!r} holds a {type(meta['spec'][key]).__name__}"
    if set(meta["spec"]) - set(SPEC_KEYS):
        return f"spec has unknown keys {sorted(set(meta['spec']) - set(SPEC_KEYS))}"
    numbers = {**{f"episode_returns[{i}]": x for i, x in enumerate(meta["episode_returns"])},
               "win_rate": meta["win_rate"], "mean_return": meta["mean_return"]}
    for name, x in numbers.items():
        if not isinstance(x, NUMBER) or isinstance(x, bool) or not math.isfinite(x):
            return f"{name} is {x!r}, not a finite number"
    for key in ("episode_returns", "episode_lengths", "episode_won"):
        if len(meta[key]) != meta["episodes"]:
            return f"{key} has {len(meta[key])} entries for {meta['episodes']} episodes"
    missing = [name for name in ROW_FIELDS if not isinstance(meta["array_sha256"].get(name), str)]
    if missing:
        return f"array_sha256 has no checksum of {missing[0]}"
    for name, entry in meta["manifest"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)):
            return f"manifest entry {name!r} is not {{bytes, sha256}}"
    return None


def read_metadata(path: Path) -> dict:
    """The checked contents of a dataset's dataset.json. UserError when the file is missing,
    not JSON, of another format or version, or lacks a key (or holds the wrong type)."""
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not path.exists():
        raise UserError(f"no dataset at {path}: give a dataset folder or a map/quality name "
                        f"(shipped: {', '.join(shipped_names())}; built ones under "
                        f"datasets-build/)")
    if not meta_path.is_file():
        raise UserError(f"{path} is not a dataset: {METADATA_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is damaged ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an ovmse dataset ({METADATA_FILE} has no format "
                        f"{FORMAT!r})")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise UserError(f"{path} has dataset format version {version!r} "
                        f"({type(version).__name__}); this ovmse reads version {FORMAT_VERSION}")
    problem = _malformed(meta)
    if problem:
        raise UserError(f"{meta_path} is malformed: {problem}; restore it or rebuild the "
                        f"dataset")
    return meta


def check_files(path: Path, meta: dict) -> None:
    """Compare every stored file with the manifest; UserError naming the first that differs."""
    path = Path(path)
    listed = meta["manifest"]
    present = {str(p.relative_to(path)) for p in path.rglob("*")
               if p.is_file() and p.name != METADATA_FILE}
    missing, unexpected = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        raise UserError(f"dataset file {path / missing[0]} is missing; rebuild the dataset")
    if unexpected:
        raise UserError(f"dataset file {path / unexpected[0]} is not in the manifest of {path}")
    for name, want in listed.items():
        file = path / name
        size = file.stat().st_size
        if size != want["bytes"]:
            raise UserError(f"dataset file {file} has {size} bytes, expected {want['bytes']} "
                            f"(truncated or replaced); rebuild the dataset")
        if _sha256_file(file) != want["sha256"]:
            raise UserError(f"dataset file {file} fails its SHA-256 check (damaged); rebuild "
                            f"the dataset")


def read_rows(path: Path, meta: dict) -> dict[str, np.ndarray]:
    """Decode the stored rows and check each array's checksum."""
    path = Path(path)
    try:
        rows = read_vault(path / VAULT_DIR, meta["quality"])
    except (ValueError, OSError, KeyError) as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"dataset {path} cannot be decoded: {first_line}") from None
    for name in ROW_FIELDS:
        if name not in rows:
            raise UserError(f"dataset {path} has no array {name!r}")
        if array_checksum(rows[name]) != meta["array_sha256"][name]:
            raise UserError(f"array {name} of dataset {path} fails its checksum (damaged); "
                            f"rebuild the dataset")
    bad = first_nonfinite(rows)
    if bad:
        raise UserError(f"dataset {path} is unusable: {bad}; rebuild it")
    return rows


def verify_dataset(path: Path) -> dict:
    """Check files, arrays and the episode bookkeeping of a dataset; returns its metadata.
    Raises UserError with the first problem found."""
    meta = read_metadata(path)
    check_files(path, meta)
    rows = read_rows(path, meta)
    spec = EnvSpec(**meta["spec"])
    expected = {"observations": (spec.num_agents, spec.obs_dim), "actions": (spec.num_agents,),
                "infos.legals": (spec.num_agents, spec.num_actions),
                "infos.state": (spec.state_dim,)}
    for name, shape in expected.items():
        if rows[name].shape[1:] != shape:
            raise UserError(f"array {name} of dataset {path} has shape {rows[name].shape}, "
                            f"expected rows x {shape} for {spec.map_name}")
    starts, lengths = episode_bounds(rows["infos.filled"])
    if lengths.tolist() != meta["episode_lengths"]:
        raise UserError(f"dataset {path}: episode boundaries disagree with {METADATA_FILE}")
    batch = rows_to_episodes(rows, spec.episode_limit)
    if not np.allclose(batch.episode_returns(), meta["episode_returns"], atol=1e-4):
        raise UserError(f"dataset {path}: episode returns disagree with {METADATA_FILE}")
    return meta


def load_dataset(path: Path, spec: EnvSpec | None = None) -> tuple[EpisodeBatch, dict]:
    """Read a dataset as a padded, time-major numpy EpisodeBatch after checking it.

    `spec`, when given, must match the dataset's map, sizes and settings (else a UserError says
    which).
    """
    path = Path(path)
    meta = read_metadata(path)
    if spec is not None:
        check_compatible(meta, spec, path)
    check_files(path, meta)
    rows = read_rows(path, meta)
    return rows_to_episodes(rows, meta["spec"]["episode_limit"]), meta


def check_compatible(meta: dict, spec: EnvSpec, path: Path) -> None:
    """UserError naming both values when the dataset was made with another map, size or
    setting (episode limit, reward scale, SMAX version) than the environment `spec`."""
    stored = EnvSpec(**meta["spec"])
    if stored.map_name != spec.map_name:
        raise UserError(f"dataset {path} is from map {stored.map_name}, not {spec.map_name}")
    for field in ("num_agents", "obs_dim", "state_dim", "num_actions", "episode_limit",
                  "reward_scale"):
        if getattr(stored, field) != getattr(spec, field):
            raise UserError(f"dataset {path} has {field} {getattr(stored, field)}, this "
                            f"environment has {getattr(spec, field)}; it was made with another "
                            f"SMAX version or settings")
    if meta["jaxmarl_version"] != jaxmarl_version():
        raise UserError(f"dataset {path} was made with jaxmarl {meta['jaxmarl_version']}, this "
                        f"environment has {jaxmarl_version()} (SMAX differs between versions); "
                        f"install jaxmarl=={meta['jaxmarl_version']} or rebuild the data")


def dataset_fingerprint(meta: dict) -> str:
    """SHA-256 over a dataset's per-array checksums: equal iff the stored arrays are equal."""
    text = json.dumps(meta["array_sha256"], sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
