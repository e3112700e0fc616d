"""A run's metrics log: metrics.jsonl, the canonical record, appended one test point at a time,
and the same scalars as TensorBoard event files (tensorboardX: no TensorFlow needed), one folder
per seed under `tensorboard/`, so that `tensorboard --logdir RUN` overlays the seeds.

A record is one test point of one seed (the drivers' `_records`): its `chunk`, `seed`, x-axis
(`t_env` online, `updates` offline) and scalars. TensorBoard tags group them: `test_win_rate` ->
`test/win_rate`, `wall_s` -> `time/wall_s`, any other number -> `train/<name>`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ovmse.runs import append_jsonl, read_jsonl, write_jsonl

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_NOT_SCALARS = ("chunk", "seed")


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a record field."""
    if name.startswith("test_"):
        return "test/" + name.removeprefix("test_")
    return "time/wall_s" if name == "wall_s" else f"train/{name}"


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl and, unless `tensorboard` is False, to per-seed
    event files. `resume_chunk`: None for a new run (an empty log); else the chunk of the
    checkpoint being resumed, and records of later chunks (logged before the run was stopped)
    are dropped from the JSONL and hidden in TensorBoard (its purge step)."""

    def __init__(self, run_dir: Path, step_key: str, resume_chunk: int | None = None,
                 tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.step_key = step_key
        self.records = ([] if resume_chunk is None else
                        [r for r in read_jsonl(self.path) if r["chunk"] <= resume_chunk])
        write_jsonl(self.path, self.records)
        self._tb_dir = Path(run_dir) / TENSORBOARD_DIR if tensorboard else None
        if resume_chunk is None:     # a run started again from its config: no stale events
            shutil.rmtree(Path(run_dir) / TENSORBOARD_DIR, ignore_errors=True)
        self._purge_step = (max(r[step_key] for r in self.records) + 1
                            if resume_chunk is not None and self.records else None)
        self._writers: dict = {}

    def extend(self, new: list[dict]) -> None:
        """Log the records of one test point (one per seed)."""
        append_jsonl(self.path, new)
        self.records += new
        if self._tb_dir is None:
            return
        for rec in new:
            writer = self._writer(rec["seed"])
            for name, value in rec.items():
                if (name not in _NOT_SCALARS and name != self.step_key
                        and isinstance(value, (int, float)) and not isinstance(value, bool)):
                    writer.add_scalar(scalar_tag(name), value, rec[self.step_key])
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _writer(self, seed: int):
        if seed not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[seed] = SummaryWriter(str(self._tb_dir / f"seed_{seed}"),
                                                purge_step=self._purge_step)
        return self._writers[seed]
