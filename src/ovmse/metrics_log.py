"""A run's metrics log: metrics.jsonl, the canonical record, appended one test point at a time,
and the same scalars as TensorBoard event files (tensorboardX: no TensorFlow needed), one folder
per seed under `tensorboard/`, so that `tensorboard --logdir RUN` overlays the seeds, and, when
asked, in a Weights & Biases run (the optional `wandb` extra; one W&B run per run folder and
start, named after the folder, the seeds' scalars under `seed_<s>/`, each against its own step).

A record is one test point of one seed (the drivers' `_records`): its `chunk`, `seed`, x-axis
(`t_env` online, `updates` offline) and scalars. TensorBoard tags group them: `test_win_rate` ->
`test/win_rate`, `wall_s` -> `time/wall_s`, any other number -> `train/<name>`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ovmse.errors import UserError
from ovmse.runs import append_jsonl, read_jsonl, write_jsonl

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_NOT_SCALARS = ("chunk", "seed")


@dataclass(frozen=True)
class LogSettings:
    """Where a run's metrics go besides metrics.jsonl."""

    tensorboard: bool = True
    """TensorBoard event files under RUN/tensorboard/."""
    wandb_project: str | None = None
    """A Weights & Biases project to log to as well (WANDB_MODE=offline works offline)."""


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a record field."""
    if name.startswith("test_"):
        return "test/" + name.removeprefix("test_")
    return "time/wall_s" if name == "wall_s" else f"train/{name}"


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl and, as `settings` say, to per-seed TensorBoard
    event files and a W&B run (`config`: the run's config, shown by W&B). `resume_chunk`: None
    for a new run (an empty log); else the chunk of the checkpoint being resumed, and records of
    later chunks (logged before the run was stopped) are dropped from the JSONL and hidden in
    TensorBoard (its purge step)."""

    def __init__(self, run_dir: Path, step_key: str, resume_chunk: int | None = None,
                 settings: LogSettings = LogSettings(), config: dict | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.step_key = step_key
        self.records = ([] if resume_chunk is None else
                        [r for r in read_jsonl(self.path) if r["chunk"] <= resume_chunk])
        write_jsonl(self.path, self.records)
        self._tb_dir = Path(run_dir) / TENSORBOARD_DIR if settings.tensorboard else None
        if resume_chunk is None:     # a run started again from its config: no stale events
            shutil.rmtree(Path(run_dir) / TENSORBOARD_DIR, ignore_errors=True)
        self._purge_step = (max(r[step_key] for r in self.records) + 1
                            if resume_chunk is not None and self.records else None)
        self._writers: dict = {}
        self._wandb = (_wandb_run(Path(run_dir), settings.wandb_project, config)
                       if settings.wandb_project else None)
        self._wandb_seeds: set[int] = set()

    def extend(self, new: list[dict]) -> None:
        """Log the records of one test point (one per seed)."""
        append_jsonl(self.path, new)
        self.records += new
        for rec in new:
            scalars = {scalar_tag(name): value for name, value in rec.items()
                       if name not in _NOT_SCALARS and name != self.step_key
                       and isinstance(value, (int, float)) and not isinstance(value, bool)}
            if self._tb_dir is not None:
                writer = self._writer(rec["seed"])
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, rec[self.step_key])
                writer.flush()
            if self._wandb is not None:
                self._log_wandb(rec["seed"], rec[self.step_key], scalars)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log_wandb(self, seed: int, step: int, scalars: dict) -> None:
        prefix = f"seed_{seed}/"
        if seed not in self._wandb_seeds:      # each seed's scalars against its own step
            self._wandb.define_metric(prefix + self.step_key)
            self._wandb.define_metric(prefix + "*", step_metric=prefix + self.step_key)
            self._wandb_seeds.add(seed)
        self._wandb.log({prefix + self.step_key: step,
                         **{prefix + tag: value for tag, value in scalars.items()}})

    def _writer(self, seed: int):
        if seed not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[seed] = SummaryWriter(str(self._tb_dir / f"seed_{seed}"),
                                                purge_step=self._purge_step)
        return self._writers[seed]


def _wandb_run(run_dir: Path, project: str, config: dict | None):
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install wandb (or the ovmse[wandb] "
                        "extra)") from None
    try:
        return wandb.init(project=project, name=run_dir.name, group=run_dir.name,
                          dir=str(run_dir), config=config or {}, reinit="create_new")
    except Exception as err:  # wandb raises its own kinds (no login, no network, ...)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"W&B could not start a run ({first_line}); run `wandb login`, or set "
                        f"WANDB_MODE=offline to log into the run folder") from None
