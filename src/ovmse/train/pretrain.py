"""Offline pre-training as a program of the training loop (loop.py), and loading a
pre-trained checkpoint into the online phase.

A pre-training run folder holds config.json (resolved), metrics.jsonl (one line per test point
and seed), checkpoint.npz (every seed's LearnerState: online network, target network, optimizer
state, update count; plus its RNG), summary.json and learning_curve.png. The checkpoint is what
the online phase loads (`train.offline.load_pretrained`): its target network is OVM's frozen
memory.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse.config import PretrainConfig, to_dict, validate_pretrain
from ovmse.datasets.store import check_compatible, dataset_fingerprint, load_dataset
from ovmse.envs import EnvSpec
from ovmse.errors import UserError
from ovmse.evaluation import TestStats
from ovmse.metrics_log import LogSettings
from ovmse.plots import plot_learning_curve
from ovmse.runs import new_run_dir, removed_if_unfinished, write_json
from ovmse.train.loop import (final_test_summary, format_table, resumable, run_facts,
                              run_program)
from ovmse.train.offline import (CHECKPOINT_KIND, OfflineChunkStats, OfflineState,
                                 OfflineTrainer, trim_to_longest)

def _load_data(cfg: PretrainConfig):
    data, meta = load_dataset(Path(cfg.dataset))
    spec = EnvSpec(**meta["spec"])
    if data.num_episodes < cfg.learner.batch_size:
        raise UserError(f"dataset {cfg.dataset} holds {data.num_episodes} episodes, fewer than "
                        f"the batch of {cfg.learner.batch_size}; lower --batch-size")
    return trim_to_longest(data), meta, spec


class OfflineProgram:
    """Offline pre-training on a dataset as a program of the training loop (loop.py): x-axis
    gradient steps; the dataset lives on the device and is an argument of every chunk."""

    x_key, unit, bar_unit = "updates", "gradient step", "update"

    def __init__(self, cfg: PretrainConfig, trainer: OfflineTrainer, data, dataset_meta: dict,
                 spec: EnvSpec):
        self.cfg, self.trainer, self.data = cfg, trainer, data
        self.dataset_meta, self.spec = dataset_meta, spec
        self.label = f"{spec.map_name} {cfg.algo} x{cfg.num_seeds}"

    def init(self) -> OfflineState:
        return self.trainer.init(self.trainer.seed_keys())

    def state_template(self):
        return jax.eval_shape(self.trainer.init, self.trainer.seed_keys())

    def run_chunk(self, states: OfflineState, until: int):
        return self.trainer.run_chunk(states, jnp.int32(until), self.data)

    def evaluate(self, states: OfflineState, test_index: int, episodes: int) -> TestStats:
        return self.trainer.evaluate(states, self.trainer.test_keys(test_index), episodes)

    def records(self, chunk: int, states: OfflineState, stats: OfflineChunkStats | None,
                test: TestStats, wall_s: float) -> list[dict]:
        updates, stats, test = jax.device_get((states.learner.updates, stats, test))
        records = []
        for i in range(len(updates)):
            rec = dict(seed=self.cfg.seed + i, chunk=chunk, updates=int(updates[i]),
                       wall_s=round(wall_s, 3), test_win_rate=float(test.win_rate[i]),
                       test_return=float(test.mean_return[i]),
                       test_ep_length=float(test.mean_length[i]))
            if stats is not None and stats.updates[i] > 0:
                n = float(stats.updates[i])
                rec.update({k: float(v[i]) / n
                            for k, v in stats.update_metrics._asdict().items()})
                rec["unroll_length"] = float(stats.unroll_steps[i]) / n
            records.append(rec)
        return records

    def tested(self, chunk: int, states: OfflineState, records: list[dict]) -> None:
        pass

    def started(self, records: list[dict]) -> None:
        pass

    def postfix(self, records: list[dict]) -> dict:
        return dict(win=f"{np.mean([r['test_win_rate'] for r in records]):.2f}",
                    cql=f"{np.mean([r.get('cql', 0.0) for r in records]):.2f}")

    def checkpoint_meta(self, chunk: int, wall_s: float) -> dict:
        meta = self.dataset_meta
        return dict(kind=CHECKPOINT_KIND, config=to_dict(self.cfg), spec=self.spec._asdict(),
                    chunk=chunk, wall_s=wall_s,
                    dataset=dict(path=self.cfg.dataset, quality=meta["quality"],
                                 fingerprint=dataset_fingerprint(meta)))

    def summary(self, records: list[dict], final: TestStats, wall_s: float) -> dict:
        cfg, meta = self.cfg, self.dataset_meta
        return dict(
            map=self.spec.map_name, algo=cfg.algo, alpha=cfg.learner.cql.alpha,
            seeds=sorted({r["seed"] for r in records}), updates=cfg.steps,
            **run_facts(wall_s, self.trainer.seed_loop),
            updates_per_s=round(cfg.steps * cfg.num_seeds / max(wall_s, 1e-9), 2),
            dataset=dict(path=cfg.dataset, quality=meta["quality"], episodes=meta["episodes"],
                         win_rate=meta["win_rate"], mean_return=meta["mean_return"]),
            final_test=final_test_summary(final, cfg.final_test_episodes), config=to_dict(cfg))

    def plot(self, records: list[dict], path: Path) -> None:
        cfg, meta = self.cfg, self.dataset_meta
        plot_learning_curve(
            records, path,
            f"{cfg.algo} (alpha {cfg.learner.cql.alpha:g}) on {self.spec.map_name} "
            f"{meta['quality']}, {cfg.num_seeds} seed(s)",
            x="updates", x_label="gradient steps",
            references={"test_win_rate": (meta["win_rate"], "dataset win rate"),
                        "test_return": (meta["mean_return"], "dataset mean return")})


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
        cfg, ckpt_meta = resumable(run_dir, PretrainConfig, validate_pretrain, CHECKPOINT_KIND,
                                   "the pre-training run")
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
    program = OfflineProgram(cfg, trainer, jax.device_put(data), dataset_meta, spec)
    with removed_if_unfinished(run_dir):
        return run_program(program, run_dir, ckpt_meta is not None, progress,
                           stop_after_chunks, log)


def format_pretrain_table(records: list[dict], summary: dict, rows: int = 8) -> str:
    """Median test win rate / return over seeds vs gradient steps, the final test, and the
    dataset's own win rate beside it."""
    data = summary["dataset"]
    return (format_table(records, summary, x="updates", x_label="grad steps", rows=rows)
            + f"\ndataset {data['path']} ({data['quality']}, {data['episodes']} episodes): "
              f"win rate {data['win_rate']:.3f}, mean return {data['mean_return']:.2f}")
