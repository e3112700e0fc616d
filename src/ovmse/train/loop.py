"""The one loop of every training program (online QMIX and fine-tuning, offline pre-training):
chunks, tests, metrics records, checkpoints, resume, the progress bar, the final test and the
summary.

Python runs once per test interval; everything per env step or gradient step happens inside the
program's jitted chunk. A program (`Program`) says what its chunks, tests and records are; this
module owns when they run and what is written to the run folder:

  config.json       the resolved config (written by the caller before the loop starts)
  metrics.jsonl     one record per seed at test 0 and after every chunk (appended)
  checkpoint.npz    every seed's state, every checkpoint_interval units and at the end
  summary.json      the final test (final_test_episodes per seed) and the run's facts
  learning_curve.png
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import jax
import numpy as np

from ovmse import compiler
from ovmse.config import from_dict, to_dict
from ovmse.errors import UserError
from ovmse.evaluation import TestStats
from ovmse.metrics_log import LogSettings, MetricsLog
from ovmse.progress import advance, announce_final_test, progress_bar
from ovmse.provenance import code_version
from ovmse.runs import (CHECKPOINT_FILE, device_name, load_checkpoint, read_checkpoint_meta,
                        read_json, save_checkpoint, write_json)
from ovmse.train.health import check_finite
from ovmse.train.keys import FINAL_TEST_INDEX


class Program(Protocol):
    """What the loop needs of a training program. `cfg` holds the run fields (steps,
    test_interval, checkpoint_interval, test_episodes, final_test_episodes, seed, num_seeds);
    `x_key` is the record field that counts progress ("t_env" or "updates"), `unit` its name
    ("env step", "gradient step"), `bar_unit` and `label` the progress bar's."""

    cfg: Any
    x_key: str
    unit: str
    bar_unit: str
    label: str

    def init(self) -> Any:
        """Every seed's fresh state (leaves [S, ...])."""

    def state_template(self) -> Any:
        """The states' structure (ShapeDtypeStructs), to read a checkpoint into."""

    def run_chunk(self, states: Any, until: int) -> tuple[Any, Any]:
        """(states, chunk stats with .update_metrics) once every seed has reached `until`."""

    def evaluate(self, states: Any, test_index: int, episodes: int) -> TestStats:
        """Greedy test `test_index` (0 before training, chunk k after it, FINAL_TEST_INDEX)."""

    def records(self, chunk: int, states: Any, stats: Any | None, test: TestStats,
                wall_s: float) -> list[dict]:
        """One metrics record per seed (stats None at test 0)."""

    def tested(self, chunk: int, states: Any, records: list[dict]) -> None:
        """Called with each test point's records once they are logged (e.g. policy snapshots)."""

    def started(self, records: list[dict]) -> None:
        """Called once after test 0 of a new run (e.g. a warning about the settings)."""

    def postfix(self, records: list[dict]) -> dict:
        """The progress bar's figures after a chunk."""

    def checkpoint_meta(self, chunk: int, wall_s: float) -> dict:
        """The checkpoint's metadata: its kind, the config, the chunk and wall time at least."""

    def summary(self, records: list[dict], final: TestStats, wall_s: float) -> dict:
        """summary.json's content (see run_facts and final_test_summary)."""

    def plot(self, records: list[dict], path: Path) -> None:
        """The learning-curve figure."""


def chunk_ends(steps: int, test_interval: int) -> list[int]:
    """The units (env steps or gradient steps) at which chunks end and tests run: every
    test_interval, and at `steps`."""
    count = math.ceil(steps / test_interval)
    return [min((k + 1) * test_interval, steps) for k in range(count)]


def run_program(program: Program, run_dir: Path, from_checkpoint: bool, progress: bool,
                stop_after_chunks: int | None, log_settings: LogSettings) -> dict | None:
    """Run `program` in `run_dir` to its last chunk and final test; returns the summary, or None
    when paused by `stop_after_chunks` (chunks done in total; a checkpoint is written).
    `from_checkpoint`: continue from run_dir's checkpoint (its records of later chunks are
    dropped) instead of starting at test 0. UserError (health.check_finite) when a seed's loss
    or networks become non-finite; nothing of that chunk is written."""
    # The code that runs is the code this process imported: read its commit now (cached for
    # the process), not when the summary is written hours later, after the checkout may have
    # moved on.
    code_version()
    cfg = program.cfg
    if from_checkpoint:
        states, meta = load_checkpoint(run_dir / CHECKPOINT_FILE, program.state_template())
        start_chunk, wall_offset = meta["chunk"], meta["wall_s"]
        log = MetricsLog(run_dir, program.x_key, start_chunk, log_settings, to_dict(cfg))
    else:
        states = program.init()
        test = program.evaluate(states, 0, cfg.test_episodes)
        start_chunk, wall_offset = 0, 0.0
        log = MetricsLog(run_dir, program.x_key, None, log_settings, to_dict(cfg))
        first = program.records(0, states, None, test, 0.0)
        log.extend(first)
        program.tested(0, states, first)
        program.started(first)
    with log:
        return _chunks(program, states, run_dir, start_chunk, wall_offset, log, progress,
                       stop_after_chunks)


def _chunks(program: Program, states, run_dir: Path, start_chunk: int, wall_offset: float,
            log: MetricsLog, progress: bool, stop_after_chunks: int | None) -> dict | None:
    cfg = program.cfg
    ckpt_path = run_dir / CHECKPOINT_FILE
    ends = chunk_ends(cfg.steps, cfg.test_interval)
    if stop_after_chunks is not None and start_chunk >= stop_after_chunks:
        save_checkpoint(ckpt_path, states, program.checkpoint_meta(start_chunk, wall_offset))
        return None
    start = time.perf_counter()
    done = ends[start_chunk - 1] if start_chunk else 0
    bar = progress_bar(cfg.steps, min(_reached(log.records, program.x_key, done), cfg.steps),
                       program.bar_unit, program.label, progress)
    last_saved = done
    for chunk in range(start_chunk + 1, len(ends) + 1):
        until = ends[chunk - 1]
        states, stats = program.run_chunk(states, until)
        check_finite(states.learner, stats.update_metrics, cfg.seed,
                     f"{program.unit}s {ends[chunk - 2] if chunk > 1 else 0}-{until}", run_dir,
                     f"{program.unit} {last_saved}" if ckpt_path.exists() else None)
        test = program.evaluate(states, chunk, cfg.test_episodes)
        wall_s = wall_offset + time.perf_counter() - start
        new = program.records(chunk, states, stats, test, wall_s)
        log.extend(new)
        program.tested(chunk, states, new)
        pausing = chunk == stop_after_chunks
        if until - last_saved >= cfg.checkpoint_interval or chunk == len(ends) or pausing:
            save_checkpoint(ckpt_path, states, program.checkpoint_meta(chunk, wall_s))
            last_saved = until
        advance(bar, min(r[program.x_key] for r in new))
        bar.set_postfix(**program.postfix(new))
        if pausing:
            bar.close()
            return None
    bar.close()
    wall_s = wall_offset + time.perf_counter() - start
    announce_final_test(progress, cfg.final_test_episodes, cfg.num_seeds)
    final = jax.device_get(program.evaluate(states, FINAL_TEST_INDEX, cfg.final_test_episodes))
    summary = program.summary(log.records, final, wall_s)
    write_json(run_dir / "summary.json", summary)
    program.plot(log.records, run_dir / "learning_curve.png")
    return summary


def _reached(records: list[dict], x_key: str, done: int) -> int:
    """Where the bar starts: the slowest seed's last recorded position (env steps overshoot a
    chunk's end by the episodes in flight), or `done` before any chunk."""
    last = {r["seed"]: r[x_key] for r in records if r["chunk"] > 0}
    return min(last.values()) if last else done


def resumable(run_dir: Path, config_type: type, validate: Callable, kind: str,
              what: str) -> tuple[Any, dict | None]:
    """The config of an interrupted run folder (validated) and its checkpoint's metadata (None:
    the run was killed before its first checkpoint). UserError when the folder is missing or its
    checkpoint is not of `kind` and this config; `what` names the run ("the run",
    "the pre-training run")."""
    if not run_dir.is_dir():
        raise UserError(f"cannot resume {run_dir}: no such run folder")
    cfg = from_dict(config_type, read_json(run_dir / "config.json"))
    validate(cfg)
    if not (run_dir / CHECKPOINT_FILE).exists():
        return cfg, None
    meta = read_checkpoint_meta(run_dir / CHECKPOINT_FILE)
    if meta.get("kind") != kind or meta.get("config") != to_dict(cfg):
        raise UserError(f"checkpoint in {run_dir} was not written by {what} of its config.json "
                        f"(kind {meta.get('kind')!r}); it cannot be resumed")
    return cfg, meta


def run_facts(wall_s: float, seed_loop: str) -> dict:
    """The summary fields every run has: wall time (s), device, how the seeds ran, compiler
    options, the code version."""
    return dict(wall_s=round(wall_s, 2), device=device_name(), seed_loop=seed_loop,
                compiler_options=compiler.compiler_options(), code=code_version())


def final_test_summary(final: TestStats, episodes: int) -> dict:
    """The final test of every seed, and its median and mean win rate."""
    win = [float(w) for w in final.win_rate]
    return dict(episodes=episodes, win_rate=win,
                mean_return=[float(x) for x in final.mean_return],
                mean_ep_length=[float(x) for x in final.mean_length],
                median_win_rate=float(np.median(win)), mean_win_rate=float(np.mean(win)))


def format_table(records: list[dict], summary: dict, x: str = "t_env",
                 x_label: str = "env steps", rows: int = 8) -> str:
    """A plain-text table of the median test win rate / return over seeds along training, and
    the final test."""
    from ovmse.plots import median_curve

    steps, wins = median_curve(records, "test_win_rate", x=x)
    _, rets = median_curve(records, "test_return", x=x)
    pick = np.unique(np.linspace(0, len(steps) - 1, min(rows, len(steps))).round().astype(int))
    lines = [f"{x_label:>10}  {'median test win rate':>20}  {'median test return':>18}"]
    lines += [f"{int(steps[i]):>10}  {wins[i]:>20.3f}  {rets[i]:>18.2f}" for i in pick]
    final = summary["final_test"]
    lines.append(f"final test ({final['episodes']} episodes per seed): median win rate "
                 f"{final['median_win_rate']:.3f}, per seed "
                 + ", ".join(f"{w:.3f}" for w in final["win_rate"]))
    return "\n".join(lines)
