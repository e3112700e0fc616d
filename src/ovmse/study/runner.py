"""`ovmse experiment run`: expand a spec's scale into cells and run every cell whose result is not
cached yet, pre-training cells first (fine-tuning cells start from their checkpoints). Runners
sharing a study split its cells between them through per-cell claims (claims.py)."""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ovmse.config import (CALQL, PretrainConfig, TrainConfig, pretrain_test_interval,
                          with_overrides)
from ovmse.datasets.locate import DATA_ROOTS, find_dataset
from ovmse.errors import UserError
from ovmse.methods import method as method_record
from ovmse.runs import CHECKPOINT_FILE, read_json
from ovmse.study.cells import Cell, FinetuneCell, PretrainCell, cell_dir, data_fingerprint
from ovmse.study.claims import Claims
from ovmse.study.spec import Scale, Spec, task_map
from ovmse.study.store import ResultStore

@dataclass(frozen=True)
class Plan:
    pretrain: list[PretrainCell]
    finetune: list[FinetuneCell]


def pretrain_config(scale: Scale, dataset: str, calibrated: bool = False) -> PretrainConfig:
    """The pre-training config a scale gives a dataset: MACQL, or Cal-QL when `calibrated`
    (the start of the methods whose record has calibrated_start)."""
    cfg = PretrainConfig(dataset=dataset, steps=scale.pretrain_steps, num_seeds=scale.seeds,
                         test_interval=pretrain_test_interval(scale.pretrain_steps))
    cfg = with_overrides(cfg, scale.pretrain_settings)
    return (with_overrides(cfg, {"algo": CALQL, "learner.cql.calibrated": True})
            if calibrated else cfg)


def finetune_base(scale: Scale, map_name: str, offline_ratio: float,
                  eps_start: float | None = None, lam_end: float | None = None) -> TrainConfig:
    """The fine-tuning config a scale gives a map, with this mixing ratio and, unless None,
    this epsilon at the start of fine-tuning and this end weight of OVM's memory (else the
    settings' or the defaults, 1.0 and 0.0)."""
    cfg = TrainConfig(steps=scale.steps[map_name], num_seeds=scale.seeds,
                      test_interval=scale.test_interval[map_name])
    cfg = with_overrides(cfg, {**scale.settings, **scale.map_settings.get(map_name, {})})
    cfg = with_overrides(cfg, {"finetune.offline_ratio": float(offline_ratio)})
    if eps_start is not None:
        cfg = with_overrides(cfg, {"explore.eps_start": float(eps_start)})
    if lam_end is not None:
        cfg = with_overrides(cfg, {"learner.memory.lam_end": float(lam_end)})
    return cfg


def plan_cells(spec: Spec, scale_name: str, roots: tuple[Path, ...] = DATA_ROOTS) -> Plan:
    """The cells of a spec's scale, without duplicates (qmix runs once per map): per task a
    MACQL pre-training cell, a Cal-QL one when a method starts from it, and the fine-tuning
    cells. A dataset not found under `roots` leaves its pre-training cells' dataset empty (see
    `require_data`)."""
    scale = spec.scale(scale_name)
    pretrain: dict[str, PretrainCell] = {}
    finetune: dict[str, FinetuneCell] = {}
    for task in scale.tasks:
        dataset = str(find_dataset(task, roots) or "")
        macql = PretrainCell(task, pretrain_config(scale, dataset))
        pretrain.setdefault(macql.key, macql)
        for method in scale.methods:
            record = method_record(method)
            pre = macql
            if record.calibrated_start:
                pre = PretrainCell(task, pretrain_config(scale, dataset, calibrated=True))
                pretrain.setdefault(pre.key, pre)
            scratch = record.from_scratch
            for ratio, eps, lam_end in itertools.product(
                    scale.offline_ratios if not scratch else (0.0,),
                    scale.eps_starts if scale.eps_starts and not scratch else (None,),
                    scale.lam_ends if scale.lam_ends and record.loss == "ovm" else (None,)):
                cell = FinetuneCell(task, method,
                                    finetune_base(scale, task_map(task), ratio, eps, lam_end),
                                    pre,
                                    cql_online=record.study_cql_online
                                    and task_map(task) in scale.cql_online)
                finetune.setdefault(cell.key, cell)
    return Plan(list(pretrain.values()), list(finetune.values()))


def require_data(plan: Plan, roots: tuple[Path, ...]) -> None:
    """UserError naming the build command for the first pre-training cell without a dataset
    (also those that from-scratch cells read their map from, and those whose data fine-tuning
    cells mix in)."""
    for cell in plan.pretrain + [c.pretrain for c in plan.finetune if _reads_data(c)]:
        if not cell.config.dataset:
            map_name, quality = cell.task.split("/")
            raise UserError(
                f"dataset {cell.task} not found under {' or '.join(map(str, roots))}; build it "
                f"with `ovmse dataset build --map {map_name} --out datasets-build/{map_name}` "
                f"({quality} is one of its outputs)")


def select(plan: Plan, tasks: tuple[str, ...] = (), methods: tuple[str, ...] = ()) -> Plan:
    """The part of `plan` on these tasks and methods (all when empty); qmix cells, which belong
    to a map, are kept when any selected task is on their map."""
    known_tasks = {c.task for c in plan.pretrain}
    known_methods = {c.method for c in plan.finetune}
    for given, known, what in ((tasks, known_tasks, "tasks"), (methods, known_methods,
                                                                 "methods")):
        if set(given) - known:
            raise UserError(f"{what} {sorted(set(given) - known)} are not in this spec; it has "
                            f"{', '.join(sorted(known))}")
    maps = {task_map(t) for t in tasks}

    def keep_task(cell) -> bool:
        if not tasks:
            return True
        scratch = isinstance(cell, FinetuneCell) and cell.record.from_scratch
        return task_map(cell.task) in maps if scratch else cell.task in tasks

    finetune = [c for c in plan.finetune
                if keep_task(c) and (not methods or c.method in methods)]
    starts = {c.start.key for c in finetune if c.start}
    pretrain = [c for c in plan.pretrain if c.key in starts or (keep_task(c) and not methods)]
    return Plan(pretrain, finetune)


def run_study(spec: Spec, scale_name: str, store: ResultStore, work_dir: Path, executor,
              roots: tuple[Path, ...] = DATA_ROOTS, log=print, tasks: tuple[str, ...] = (),
              methods: tuple[str, ...] = (), kept: Path | None = None) -> dict:
    """Run the cells of `spec` at `scale_name` that `store` lacks (only those on `tasks` and
    `methods` when given); returns counts {cached, ran, running_elsewhere}. A fine-tuning cell
    to run needs its pre-training's checkpoint: when `work_dir` no longer has it, it is
    restored from `kept` (`keep_pretraining`) if there, else the pre-training cell reruns (the
    cached result is kept and compared). Datasets are needed by the pre-training cells that
    run, the from-scratch cells (their map) and the cells that mix offline data in; those
    pre-training cells' cached results must have been computed on the same data.

    Several runners may work on one study at once (processes, machines sharing `work_dir`):
    each cell is claimed (claims.py) right before it starts and released once its result is
    stored, or on any error. A cell another live runner holds is skipped, and so is every
    fine-tuning cell starting from a pre-training cell held elsewhere and not finished; both
    count as running_elsewhere (run again once that runner is done). A cell that another runner
    finished between planning and claiming counts as cached and is not rerun."""
    plan = select(plan_cells(spec, scale_name, roots), tasks, methods)
    todo = [c for c in plan.finetune if not store.has(c)]
    needed = {c.start.key for c in todo if c.start}
    for cell in plan.pretrain:
        if kept is not None and restore_pretraining(cell, store, work_dir, kept, needed):
            log(f"restored {cell.name} ({cell.key}) from {kept}")
    pre_todo = [c for c in plan.pretrain if _to_run(c, store, work_dir, needed)]
    require_data(Plan(pre_todo, todo), roots)
    mixing = {c.start.key for c in todo if c.start and _reads_data(c)}
    for cell in plan.pretrain:
        if cell in pre_todo or cell.key in mixing:   # reruns on, or mixes in, this data
            _check_same_data(cell, store)
    cached = len(plan.pretrain) + len(plan.finetune) - len(pre_todo) - len(todo)
    log(f"{spec.name} ({scale_name}): {len(pre_todo)} pre-training and {len(todo)} fine-tuning "
        f"cells to run, {cached} cached in {store.root}")
    with Claims(work_dir) as claims:
        gate = Gate(claims, lambda c: _to_run(c, store, work_dir, needed), log)
        for cell, result in executor.run(pre_todo, work_dir, gate.start):
            if store.has(cell) and store.load(cell)["final_test"] != result["final_test"]:
                log(f"warning: {cell.name} reran with a different final test than its cached "
                    f"result (another machine or software version?); fine-tuning starts from "
                    f"the new run")
            elif not store.has(cell):
                store.save(cell, result)
            gate.finish(cell)
            log(f"done {cell.name} ({cell.key}): final median win rate "
                f"{result['final_test']['median_win_rate']:.3f}")
        for cell, result in executor.run(todo, work_dir, gate.start):
            store.save(cell, result)
            gate.finish(cell)
            log(f"done {cell.name} ({cell.key}): final median win rate "
                f"{result['final_test']['median_win_rate']:.3f}, {result['wall_s']:.0f} s")
    if gate.elsewhere:
        log(f"{len(gate.elsewhere)} cells skipped: another runner is running them or the "
            f"pre-training cells they start from; run again once it is done")
    return dict(cached=cached + gate.finished_elsewhere, ran=gate.ran,
                running_elsewhere=len(gate.elsewhere))


def _reads_data(cell: FinetuneCell) -> bool:
    """Whether a fine-tuning cell reads its task's dataset: from scratch (its map and sizes)
    or mixing offline data into its batches."""
    return cell.start is None or cell.base.finetune.offline_ratio > 0


PRETRAINING_FILES = ("config.json", "summary.json", "metrics.jsonl", CHECKPOINT_FILE)
"""What a finished pre-training run folder needs for its cell to be read back and fine-tuned
from (its TensorBoard files and policy snapshots are left out)."""


def keep_pretraining(cell: PretrainCell, store: ResultStore, work_dir: Path,
                     kept: Path) -> Path | None:
    """Copy the finished pre-training run of `cell` (its result stored) from `work_dir` into
    `kept`/<name>-<key>/ (PRETRAINING_FILES, ~1-1.5 MB per seed), so that its fine-tuning cells
    can start from it in another sitting or on another machine, whose copy of the dataset may
    differ (docs/datasets.md, "Cards"). Returns the folder (left as it is when it already
    holds this run), or None when `work_dir` has no finished run of it or its result is not
    stored; UserError when the run is not the one the stored result describes (a rerun with
    another final test)."""
    run_dir = cell_dir(cell, work_dir)
    if not store.has(cell) or not (run_dir / "summary.json").exists():
        return None
    if not _is_stored_run(run_dir, cell, store):
        raise UserError(f"{run_dir} is not the run of {cell.name}'s stored result (a rerun "
                        f"with another final test: other data or another CPU?); not kept")
    target = Path(kept) / run_dir.name
    if not _is_stored_run(target, cell, store):   # else already kept
        _copy_run(run_dir, target)
    return target


def restore_pretraining(cell: PretrainCell, store: ResultStore, work_dir: Path, kept: Path,
                        needed: set[str]) -> bool:
    """Copy `cell`'s kept run (keep_pretraining) into `work_dir` when a fine-tuning cell to
    run needs it (`needed`: their pre-training keys) and `work_dir` has no run folder of it (a
    rerun there, finished or not, is left alone); True if restored. UserError when the kept
    run is not the one the stored result describes (another final test)."""
    source = Path(kept) / cell_dir(cell, work_dir).name
    run_dir = cell_dir(cell, work_dir)
    if (cell.key not in needed or not store.has(cell) or run_dir.exists()
            or not (source / "summary.json").exists()):
        return False
    if not _is_stored_run(source, cell, store):
        raise UserError(f"the kept run {source} is not the run of {cell.name}'s stored result "
                        f"(another final test); delete one of them")
    _copy_run(source, run_dir)
    return True


def _is_stored_run(run_dir: Path, cell: PretrainCell, store: ResultStore) -> bool:
    """Whether `run_dir` holds a finished run whose final test is that of `cell`'s stored
    result (the exact floats of 640 episodes per seed tell runs apart)."""
    return ((run_dir / "summary.json").exists()
            and read_json(run_dir / "summary.json")["final_test"] == store.load(cell)["final_test"])


def _copy_run(source: Path, target: Path) -> None:
    """Copy a pre-training run's PRETRAINING_FILES from `source` to `target` through a staging
    folder beside it, replacing what `target` held."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in PRETRAINING_FILES:
        shutil.copyfile(source / name, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _to_run(cell: Cell, store: ResultStore, work_dir: Path, needed: set[str]) -> bool:
    """Whether `cell` has to run: no stored result, or (pre-training) a checkpoint that a
    fine-tuning cell to run (`needed`: their pre-training keys) needs is gone from work_dir."""
    if not store.has(cell):
        return True
    return (isinstance(cell, PretrainCell) and cell.key in needed
            and not (cell_dir(cell, work_dir) / "summary.json").exists())


class Gate:
    """Decides, right before an executor starts a cell, whether this runner runs it (the
    executor's `start` callback), holds its claim while it runs, and counts what it skipped."""

    def __init__(self, claims: Claims, to_run, log=print):
        self.claims, self.to_run, self.log = claims, to_run, log
        self.elsewhere: set[str] = set()
        """Keys of the cells skipped because another runner holds them or their start."""
        self.finished_elsewhere = 0
        self.ran = 0

    def start(self, cell: Cell) -> bool:
        """True when this runner now holds `cell`'s claim and the cell still has to run (then
        `finish` must follow); False, with one log line, when it must be skipped."""
        start = getattr(cell, "start", None)
        if start is not None and start.key in self.elsewhere and self.to_run(start):
            return self._skip(cell, f"it starts from {start.name}, which is running elsewhere")
        if not self.claims.acquire(cell):
            holder = self.claims.holder(cell)
            return self._skip(cell, "running elsewhere (" + (
                holder.describe() if holder else "just released") + ")")
        if not self.to_run(cell):
            self.claims.release(cell)
            self.finished_elsewhere += 1
            self.log(f"skip {cell.name} ({cell.key}): another runner has just finished it")
            return False
        return True

    def finish(self, cell: Cell) -> None:
        """Release the claim of a cell whose result is stored."""
        self.ran += 1
        if not self.claims.release(cell):
            self.log(f"warning: another runner took over the claim on {cell.name} "
                     f"({cell.key}) while this one ran it (was this process paused for "
                     f"minutes?); it may be running that cell again")

    def _skip(self, cell: Cell, why: str) -> bool:
        self.elsewhere.add(cell.key)
        self.log(f"skip {cell.name} ({cell.key}): {why}")
        return False


def _check_same_data(cell: PretrainCell, store: ResultStore) -> None:
    if store.has(cell) and cell.config.dataset:
        stored = store.load(cell)["dataset_fingerprint"]
        if stored != data_fingerprint(cell.config.dataset):
            raise UserError(f"dataset {cell.config.dataset} is not the data {cell.name} was "
                            f"computed on (fingerprint {stored[:12]}...); restore that dataset, "
                            f"or delete {store.path(cell)} and the results that build on it")
