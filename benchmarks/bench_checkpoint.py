"""Benchmark of checkpoint files: size, write time and read time of an online training state in
the old format (version 1: every leaf a plain .npy member of np.savez) and the new one (version 2:
large leaves stored as their nonzero blocks, zlib level 1; see ovmse.runs.save_checkpoint).

    python benchmarks/bench_checkpoint.py --maps 3m 2s3z 3s5z 5m_vs_6m 6h_vs_8z --tag cpu

Per map, one seed's TrainState of the default config (replay buffer of 5,000 episodes), its
buffer holding real episodes played by uniform random policies:
  tiny  the episodes of the first ~2,000 env steps (a paused or short run), the rest of the
        buffer empty;
  full  every one of the 5,000 slots filled (the collected episodes repeated), as after
        5,000 episodes of training.
Write times include the fsync of the atomic write; reads follow the write, so the file is in the
page cache (what is timed is decoding). Every read is checked bit for bit against the state.
The tiny state is also written as np.savez_compressed would (the version-1 arrays, deflate level
6) for comparison (write time and size only).
Writes JSON to benchmarks/results/checkpoint_size_<tag>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from ovmse.buffers.episode import EpisodeBatch, EpisodeBuffer
from ovmse.config import EnvConfig, TrainConfig
from ovmse.datasets.collect import collect_episodes
from ovmse.runs import (CHECKPOINT_FORMAT, _atomic_write, json_text, load_checkpoint,
                        save_checkpoint, write_json)
from ovmse.train.online import OnlineTrainer

RESULTS = Path(__file__).parent / "results"


def save_version_1(path: Path, tree, meta: dict, compressed: bool = False) -> None:
    """save_checkpoint as version 1 wrote it (np.savez; np.savez_compressed if `compressed`)."""
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, (_, leaf) in enumerate(leaves_with_paths)}
    meta = dict(meta, format=CHECKPOINT_FORMAT, format_version=1,
                leaves=[{"path": jax.tree_util.keystr(p), "shape": list(np.shape(leaf)),
                         "dtype": str(np.asarray(leaf).dtype)}
                        for p, leaf in leaves_with_paths])
    arrays["meta"] = np.frombuffer(json_text(meta, indent=None).encode(), dtype=np.uint8)
    savez = np.savez_compressed if compressed else np.savez
    _atomic_write(Path(path), lambda f: savez(f, **arrays))


def build_states(map_name: str, episodes: int, tiny_steps: int):
    """(template, tiny state, full state as a function, info) for one seed of the default
    config on `map_name`; numpy leaves."""
    cfg = TrainConfig(env=EnvConfig(map=map_name), num_seeds=1)
    trainer = OnlineTrainer(cfg)
    keys = trainer.seed_keys()
    template = jax.eval_shape(trainer.init, keys)
    # The learner and RNG do not depend on the buffer's capacity: build them with a small one
    # and the 5,000-slot buffer in numpy (no device copy of it).
    small = OnlineTrainer(dataclasses.replace(
        cfg, learner=dataclasses.replace(cfg.learner, buffer_size=cfg.learner.batch_size)))
    state = jax.device_get(small.init(keys))
    played, _ = collect_episodes(trainer.env, trainer.nets.agent,
                                 jax.tree.map(lambda x: x[0], state.learner.params["agent"]),
                                 episodes, 1.0, seed=0, batch=64)
    lengths = played.filled.sum(axis=0)
    tiny = int(np.searchsorted(np.cumsum(lengths), tiny_steps) + 1)
    if tiny > episodes:
        raise SystemExit(f"{episodes} episodes on {map_name} play fewer than {tiny_steps} steps")
    capacity = cfg.learner.buffer_size
    data = EpisodeBatch(*(np.zeros(t.shape, t.dtype) for t in template.buffer.data))
    for store, new in zip(data, played):
        store[0, :, :tiny] = new[:, :tiny]

    def with_buffer(filled: int, steps: int):
        return state._replace(
            buffer=EpisodeBuffer(data, np.full(1, filled % capacity, np.int32),
                                 np.full(1, filled, np.int32)),
            t_env=np.full(1, steps, np.int32), episodes=np.full(1, filled, np.int32))

    tiny_state = with_buffer(tiny, int(lengths[:tiny].sum()))

    def full_state():
        for store, new in zip(data, played):  # in place: the tiny state is not used after this
            for first in range(0, capacity, episodes):
                count = min(episodes, capacity - first)
                store[0, :, first:first + count] = new[:, :count]
        return with_buffer(capacity, int(lengths[np.arange(capacity) % episodes].sum()))

    info = dict(map=map_name, spec=trainer.spec._asdict(), buffer_capacity=capacity,
                collected_episodes=episodes, mean_episode_length=round(float(lengths.mean()), 1),
                tiny_episodes=tiny, tiny_env_steps=int(lengths[:tiny].sum()),
                state_bytes=int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tiny_state))))
    return template, tiny_state, full_state, info


def same_bits(a, b, chunk: int = 1 << 26) -> bool:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        x, y = x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)
        if any(not np.array_equal(x[i:i + chunk], y[i:i + chunk])
               for i in range(0, x.size, chunk)):
            return False
    return True


def measure_format(write, state, template, path: Path, repeats: int = 1,
                   networks_only: bool = False, read: bool = True) -> dict:
    writes, reads = [], []
    for _ in range(repeats):
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        write(path, state)
        writes.append(time.perf_counter() - start)
        if not read:
            continue
        start = time.perf_counter()
        loaded, _ = load_checkpoint(path, template)
        reads.append(time.perf_counter() - start)
        if not same_bits(state, loaded):
            raise SystemExit(f"{path.name}: the loaded state differs from the saved one")
        del loaded
        gc.collect()
    out = dict(bytes=path.stat().st_size, write_s=round(statistics.median(writes), 3))
    if read:
        out["read_s"] = round(statistics.median(reads), 3)
    if networks_only:  # the learner alone (networks, optimizer), as a tool reading params
        start = time.perf_counter()
        load_checkpoint(path, template.learner, prefix=".learner")
        out["read_networks_only_s"] = round(time.perf_counter() - start, 4)
    path.unlink()
    return out


def measure(map_name: str, episodes: int, tiny_steps: int, repeats: int, work: Path) -> dict:
    start = time.perf_counter()
    template, tiny_state, full_state, out = build_states(map_name, episodes, tiny_steps)
    out["build_s"] = round(time.perf_counter() - start, 1)
    meta = dict(kind="online-train-state")
    formats = dict(old=lambda p, s: save_version_1(p, s, meta),
                   new=lambda p, s: save_checkpoint(p, s, meta))
    out["tiny"] = dict(
        old=measure_format(formats["old"], tiny_state, template, work / "old.npz"),
        new=measure_format(formats["new"], tiny_state, template, work / "new.npz", repeats,
                           networks_only=True))
    out["tiny"]["old_savez_compressed"] = measure_format(
        lambda p, s: save_version_1(p, s, meta, compressed=True), tiny_state, template,
        work / "old_compressed.npz", read=False)
    del tiny_state
    state = full_state()
    out["full"] = dict(
        old=measure_format(formats["old"], state, template, work / "old.npz"),
        new=measure_format(formats["new"], state, template, work / "new.npz",
                           networks_only=True))
    for case in ("tiny", "full"):
        out[case]["size_ratio_old_to_new"] = round(
            out[case]["old"]["bytes"] / out[case]["new"]["bytes"], 1)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", nargs="+",
                        default=["3m", "2s3z", "3s5z", "5m_vs_6m", "6h_vs_8z"])
    parser.add_argument("--episodes", type=int, default=256,
                        help="random-policy episodes played per map (the full buffer repeats "
                             "them)")
    parser.add_argument("--tiny-steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings of the tiny state in the new format (median)")
    parser.add_argument("--work-dir", default=None, help="where the files are written "
                        "(default: a temporary folder)")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        maps = [measure(m, args.episodes, args.tiny_steps, args.repeats, Path(work))
                for m in args.maps]
    result = dict(device=str(jax.devices()[0]), jax=jax.__version__, numpy=np.__version__,
                  cores=cores, date=time.strftime("%Y-%m-%d"), episodes=args.episodes,
                  tiny_steps=args.tiny_steps, maps=maps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"checkpoint_size_{args.tag}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
