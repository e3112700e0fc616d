"""The Python side of offline pre-training: run folder, chunks, tests, checkpoints, resume,
summary, and loading a pre-trained checkpoint into the online phase.

A pre-training run folder holds config.json (resolved), metrics.jsonl (one line per test point
and seed), checkpoint.npz (every seed's LearnerState: online network, target network, optimizer
state, update count; plus its RNG), summary.json and learning_curve.png. The checkpoint is what
the online phase loads (`load_pretrained`): its target network is OVM's frozen memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse import compiler
from ovmse.config import PretrainConfig, from_dict, to_dict, validate_pretrain
from ovmse.datasets.store import check_compatible, load_dataset
from ovmse.envs import EnvSpec
from ovmse.errors import UserError
from ovmse.evaluation import TestStats
from ovmse.learner import LearnerState, init_learner, make_networks
from ovmse.metrics_log import LogSettings, MetricsLog
from ovmse.plots import plot_learning_curve
from ovmse.progress import advance, announce_final_test, progress_bar
from ovmse.provenance import code_version
from ovmse.runs import (CHECKPOINT_FILE, device_name, load_checkpoint, new_run_dir,
                        read_checkpoint_meta, read_json, removed_if_unfinished, save_checkpoint,
                        write_json)
from ovmse.train.health import check_finite, nonfinite_part
from ovmse.train.keys import FINAL_TEST_INDEX, seed_keys
from ovmse.train.offline import OfflineChunkStats, OfflineState, OfflineTrainer, trim_to_longest

CHECKPOINT_KIND = "offline-pretrain-state"


def dataset_fingerprint(meta: dict) -> str:
    """SHA-256 over a dataset's per-array checksums: equal iff the stored arrays are equal."""
    return hashlib.sha256(json.dumps(meta["array_sha256"], sort_keys=True).encode()).hexdigest()


def chunk_ends(cfg: PretrainConfig) -> list[int]:
    count = math.ceil(cfg.steps / cfg.test_interval)
    return [min((k + 1) * cfg.test_interval, cfg.steps) for k in range(count)]


def _load_data(cfg: PretrainConfig):
    data, meta = load_dataset(Path(cfg.dataset))
    spec = EnvSpec(**meta["spec"])
    if data.num_episodes < cfg.learner.batch_size:
        raise UserError(f"dataset {cfg.dataset} holds {data.num_episodes} episodes, fewer than "
                        f"the batch of {cfg.learner.batch_size}; lower --batch-size")
    return trim_to_longest(data), meta, spec


def _records(chunk: int, states: OfflineState, stats: OfflineChunkStats | None,
             test: TestStats, cfg: PretrainConfig, wall_s: float) -> list[dict]:
    host = jax.device_get((states.learner.updates, stats, test))
    updates, stats, test = host
    records = []
    for i in range(len(updates)):
        rec = dict(seed=cfg.seed + i, chunk=chunk, updates=int(updates[i]),
                   wall_s=round(wall_s, 3), test_win_rate=float(test.win_rate[i]),
                   test_return=float(test.mean_return[i]),
                   test_ep_length=float(test.mean_length[i]))
        if stats is not None and stats.updates[i] > 0:
            n = float(stats.updates[i])
            rec.update({k: float(v[i]) / n for k, v in stats.update_metrics._asdict().items()})
            rec["unroll_length"] = float(stats.unroll_steps[i]) / n
        records.append(rec)
    return records


def _checkpoint_meta(cfg: PretrainConfig, spec: EnvSpec, dataset_meta: dict, chunk: int,
                     wall_s: float) -> dict:
    return dict(kind=CHECKPOINT_KIND, config=to_dict(cfg), spec=spec._asdict(), chunk=chunk,
                wall_s=wall_s, dataset=dict(path=cfg.dataset, quality=dataset_meta["quality"],
                                            fingerprint=dataset_fingerprint(dataset_meta)))


def pretrain(cfg: PretrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
             stop_after_chunks: int | None = None, log: LogSettings = LogSettings()) -> dict | None:
    """Pre-train (or resume) offline into `run_dir`; returns the summary dict, or None when
    paused by `stop_after_chunks` (a checkpoint is written; resume=True continues exactly).
    Resuming a folder with no checkpoint yet starts the run again from its config.json. The
    dataset is loaded before the folder is made, and a run that fails before its first
    checkpoint leaves no folder behind. UserError when a seed's loss or networks become
    non-finite (the last good checkpoint is kept)."""
    run_dir = Path(run_dir)
    if resume:
        cfg, ckpt_meta = _resumable(run_dir)
    else:
        cfg, ckpt_meta = cfg.resolved(), None
        validate_pretrain(cfg)
    data, dataset_meta, spec = _load_data(cfg)
    if ckpt_meta and ckpt_meta["dataset"]["fingerprint"] != dataset_fingerprint(dataset_meta):
        raise UserError(f"dataset {cfg.dataset} changed since {run_dir} started; resume needs the "
                        f"same data")
    trainer = OfflineTrainer(cfg, spec, data.filled.shape[0])
    check_compatible(dataset_meta, trainer.spec, Path(cfg.dataset))
    if not resume:
        new_run_dir(run_dir)
        write_json(run_dir / "config.json", to_dict(cfg))
    with removed_if_unfinished(run_dir):
        return _pretrain_loop(cfg, trainer, jax.device_put(data), dataset_meta, spec, run_dir,
                              ckpt_meta is not None, progress, stop_after_chunks, log)


def _pretrain_loop(cfg: PretrainConfig, trainer: OfflineTrainer, data, dataset_meta: dict,
                   spec: EnvSpec, run_dir: Path, from_checkpoint: bool, progress: bool,
                   stop_after_chunks: int | None, log_settings: LogSettings) -> dict | None:
    ckpt_path = run_dir / CHECKPOINT_FILE
    ends = chunk_ends(cfg)
    if from_checkpoint:
        template = jax.eval_shape(trainer.init, trainer.seed_keys())
        states, meta = load_checkpoint(ckpt_path, template)
        start_chunk, wall_offset = meta["chunk"], meta["wall_s"]
        log = MetricsLog(run_dir, "updates", start_chunk, log_settings, to_dict(cfg))
    else:
        states = trainer.init(trainer.seed_keys())
        test = trainer.evaluate(states, trainer.test_keys(0), cfg.test_episodes)
        start_chunk, wall_offset = 0, 0.0
        log = MetricsLog(run_dir, "updates", None, log_settings, to_dict(cfg))
        log.extend(_records(0, states, None, test, cfg, 0.0))

    def checkpoint(chunk, wall_s):
        save_checkpoint(ckpt_path, states,
                        _checkpoint_meta(cfg, spec, dataset_meta, chunk, wall_s))

    with log:
        if stop_after_chunks is not None and start_chunk >= stop_after_chunks:
            checkpoint(start_chunk, wall_offset)
            return None
        start = time.perf_counter()
        bar = progress_bar(cfg.steps, ends[start_chunk - 1] if start_chunk else 0, "update",
                           f"{spec.map_name} {cfg.algo} x{cfg.num_seeds}", progress)
        last_saved = ends[start_chunk - 1] if start_chunk else 0
        for chunk in range(start_chunk + 1, len(ends) + 1):
            until = ends[chunk - 1]
            states, stats = trainer.run_chunk(states, data, jnp.int32(until))
            check_finite(states.learner, stats.update_metrics, cfg.seed,
                         f"gradient steps {ends[chunk - 2] if chunk > 1 else 0}-{until}",
                         run_dir, f"gradient step {last_saved}" if ckpt_path.exists() else None)
            test = trainer.evaluate(states, trainer.test_keys(chunk), cfg.test_episodes)
            wall_s = wall_offset + time.perf_counter() - start
            new = _records(chunk, states, stats, test, cfg, wall_s)
            log.extend(new)
            pausing = chunk == stop_after_chunks
            if until - last_saved >= cfg.checkpoint_interval or chunk == len(ends) or pausing:
                checkpoint(chunk, wall_s)
                last_saved = until
            advance(bar, until)
            bar.set_postfix(win=f"{np.mean([r['test_win_rate'] for r in new]):.2f}",
                            cql=f"{np.mean([r.get('cql', 0.0) for r in new]):.2f}")
            if pausing:
                bar.close()
                return None
    bar.close()
    wall_s = wall_offset + time.perf_counter() - start
    records = log.records

    announce_final_test(progress, cfg.final_test_episodes, cfg.num_seeds)
    final = jax.device_get(trainer.evaluate(states, trainer.test_keys(FINAL_TEST_INDEX),
                                            cfg.final_test_episodes))
    summary = _summary(cfg, spec, dataset_meta, records, final, wall_s, trainer.seed_loop)
    write_json(run_dir / "summary.json", summary)
    plot_learning_curve(
        records, run_dir / "learning_curve.png",
        f"{cfg.algo} (alpha {cfg.learner.cql.alpha:g}) on {spec.map_name} "
        f"{dataset_meta['quality']}, {cfg.num_seeds} seed(s)",
        x="updates", x_label="gradient steps",
        references={"test_win_rate": (dataset_meta["win_rate"], "dataset win rate"),
                    "test_return": (dataset_meta["mean_return"], "dataset mean return")})
    return summary


def _resumable(run_dir: Path) -> tuple[PretrainConfig, dict | None]:
    """The config of an interrupted run and its checkpoint's metadata (None: the run was killed
    before its first checkpoint)."""
    if not run_dir.is_dir():
        raise UserError(f"cannot resume {run_dir}: no such run folder")
    cfg = from_dict(PretrainConfig, read_json(run_dir / "config.json"))
    validate_pretrain(cfg)
    if not (run_dir / CHECKPOINT_FILE).exists():
        return cfg, None
    meta = read_checkpoint_meta(run_dir / CHECKPOINT_FILE)
    if meta.get("kind") != CHECKPOINT_KIND or meta.get("config") != to_dict(cfg):
        raise UserError(f"checkpoint in {run_dir} was not written by the pre-training run of its "
                        f"config.json (kind {meta.get('kind')!r}); it cannot be resumed")
    return cfg, meta


def _summary(cfg: PretrainConfig, spec: EnvSpec, dataset_meta: dict, records: list[dict],
             final: TestStats, wall_s: float, seed_loop: str) -> dict:
    win = [float(w) for w in final.win_rate]
    return dict(
        map=spec.map_name, algo=cfg.algo, alpha=cfg.learner.cql.alpha,
        seeds=sorted({r["seed"] for r in records}), updates=cfg.steps, wall_s=round(wall_s, 2),
        device=device_name(), seed_loop=seed_loop, compiler_options=compiler.compiler_options(),
        code=code_version(),
        updates_per_s=round(cfg.steps * cfg.num_seeds / max(wall_s, 1e-9), 2),
        dataset=dict(path=cfg.dataset, quality=dataset_meta["quality"],
                     episodes=dataset_meta["episodes"], win_rate=dataset_meta["win_rate"],
                     mean_return=dataset_meta["mean_return"]),
        final_test=dict(episodes=cfg.final_test_episodes, win_rate=win,
                        mean_return=[float(x) for x in final.mean_return],
                        mean_ep_length=[float(x) for x in final.mean_length],
                        median_win_rate=float(np.median(win)), mean_win_rate=float(np.mean(win))),
        config=to_dict(cfg),
    )


def pretrained_checkpoint(path: Path) -> tuple[Path, dict]:
    """The checkpoint file of a pre-training run (its folder or the file) and its metadata;
    UserError if it is not one."""
    path = Path(path)
    ckpt = path / CHECKPOINT_FILE if path.is_dir() else path
    meta = read_checkpoint_meta(ckpt)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise UserError(f"{ckpt} is not an offline pre-training checkpoint (kind "
                        f"{meta.get('kind')!r}); make one with `ovmse pretrain`")
    return ckpt, meta


def load_pretrained(path: Path, spec: EnvSpec | None = None) -> tuple[LearnerState, dict]:
    """The LearnerState of every seed of a pre-training run ([S, ...] leaves: online and target
    networks, optimizer state, update count) and the checkpoint's metadata (its config, spec,
    dataset). `path` is the run folder or its checkpoint file; `spec`, when given, must match
    the map and sizes it was trained on."""
    ckpt, meta = pretrained_checkpoint(path)
    trained = EnvSpec(**meta["spec"])
    if spec is not None and trained != spec:
        what = (f"map {trained.map_name}" if trained.map_name != spec.map_name else
                f"sizes {tuple(trained)}")
        raise UserError(f"{ckpt} was pre-trained on {what}, not {spec.map_name} "
                        f"{tuple(spec)}; pre-train on this map's data first")
    cfg = from_dict(PretrainConfig, meta["config"])
    nets = make_networks(trained, cfg.network)

    def init_one(key):
        return OfflineState(init_learner(key, nets, cfg.learner), key)

    keys = seed_keys(cfg.seed, cfg.num_seeds)
    states, _ = load_checkpoint(ckpt, jax.eval_shape(jax.vmap(init_one), keys))
    bad = nonfinite_part(states.learner)
    if bad:
        raise UserError(f"{ckpt} holds non-finite {bad[1]} (seed {cfg.seed + bad[0]}); it "
                        f"cannot start fine-tuning: pre-train again")
    return states.learner, meta


def format_pretrain_table(records: list[dict], summary: dict, rows: int = 8) -> str:
    """Median test win rate / return over seeds vs gradient steps, the final test, and the
    dataset's own win rate beside it."""
    from ovmse.plots import median_curve

    steps, wins = median_curve(records, "test_win_rate", x="updates")
    _, rets = median_curve(records, "test_return", x="updates")
    pick = np.unique(np.linspace(0, len(steps) - 1, min(rows, len(steps))).round().astype(int))
    lines = [f"{'grad steps':>10}  {'median test win rate':>20}  {'median test return':>18}"]
    lines += [f"{int(steps[i]):>10}  {wins[i]:>20.3f}  {rets[i]:>18.2f}" for i in pick]
    final, data = summary["final_test"], summary["dataset"]
    lines.append(f"final test ({final['episodes']} episodes per seed): median win rate "
                 f"{final['median_win_rate']:.3f}, per seed "
                 + ", ".join(f"{w:.3f}" for w in final["win_rate"]))
    lines.append(f"dataset {data['path']} ({data['quality']}, {data['episodes']} episodes): "
                 f"win rate {data['win_rate']:.3f}, mean return {data['mean_return']:.2f}")
    return "\n".join(lines)
