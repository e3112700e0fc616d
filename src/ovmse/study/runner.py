"""`ovmse experiment run`: expand a spec's scale into cells and run every cell whose result is not
cached yet, pre-training cells first (fine-tuning cells start from their checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovmse.config import PretrainConfig, TrainConfig, with_overrides
from ovmse.errors import UserError
from ovmse.study.cells import FinetuneCell, PretrainCell, cell_dir, data_fingerprint
from ovmse.datasets.store import METADATA_FILE
from ovmse.study.spec import Scale, Spec, task_map
from ovmse.study.store import ResultStore

DATA_ROOTS = (Path("datasets"), Path("datasets-build"))
"""Where "map/quality" datasets are looked up, in order: the shipped ones, then local builds."""


@dataclass(frozen=True)
class Plan:
    pretrain: list[PretrainCell]
    finetune: list[FinetuneCell]


def find_dataset(task: str, roots: tuple[Path, ...]) -> Path | None:
    for root in roots:
        if (Path(root) / task / METADATA_FILE).exists():
            return Path(root) / task
    return None


def pretrain_config(scale: Scale, dataset: str) -> PretrainConfig:
    cfg = PretrainConfig(dataset=dataset, steps=scale.pretrain_steps, num_seeds=scale.seeds,
                         test_interval=max(scale.pretrain_steps // 10, 1))
    return with_overrides(cfg, scale.pretrain_settings)


def finetune_base(scale: Scale, map_name: str, offline_ratio: float) -> TrainConfig:
    cfg = TrainConfig(steps=scale.steps[map_name], num_seeds=scale.seeds,
                      test_interval=scale.test_interval[map_name])
    cfg = with_overrides(cfg, {**scale.settings, **scale.map_settings.get(map_name, {})})
    return with_overrides(cfg, {"finetune.offline_ratio": float(offline_ratio)})


def plan_cells(spec: Spec, scale_name: str, roots: tuple[Path, ...] = DATA_ROOTS) -> Plan:
    """The cells of a spec's scale, without duplicates (qmix runs once per map). A dataset not
    found under `roots` leaves its pre-training cell's dataset empty (see `require_data`)."""
    scale = spec.scale(scale_name)
    pretrain: dict[str, PretrainCell] = {}
    finetune: dict[str, FinetuneCell] = {}
    for task in scale.tasks:
        found = find_dataset(task, roots)
        pre = PretrainCell(task, pretrain_config(scale, str(found or "")))
        pretrain.setdefault(pre.key, pre)
        for method in scale.methods:
            for ratio in (scale.offline_ratios if method != "qmix" else (0.0,)):
                cell = FinetuneCell(task, method, finetune_base(scale, task_map(task), ratio),
                                    pre, cql_online=method == "ovmse"
                                    and task_map(task) in scale.cql_online)
                finetune.setdefault(cell.key, cell)
    return Plan(list(pretrain.values()), list(finetune.values()))


def require_data(plan: Plan, roots: tuple[Path, ...]) -> None:
    """UserError naming the build command for the first pre-training cell without a dataset."""
    for cell in plan.pretrain:
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
        return (task_map(cell.task) in maps if getattr(cell, "method", "") == "qmix"
                else cell.task in tasks)

    finetune = [c for c in plan.finetune
                if keep_task(c) and (not methods or c.method in methods)]
    starts = {c.pretrain.key for c in finetune}
    pretrain = [c for c in plan.pretrain if c.key in starts or (keep_task(c) and not methods)]
    return Plan(pretrain, finetune)


def run_study(spec: Spec, scale_name: str, store: ResultStore, work_dir: Path, executor,
              roots: tuple[Path, ...] = DATA_ROOTS, log=print, tasks: tuple[str, ...] = (),
              methods: tuple[str, ...] = ()) -> dict:
    """Run the cells of `spec` at `scale_name` that `store` lacks (only those on `tasks` and
    `methods` when given); returns counts {cached, ran}. Pre-training cells also rerun when a
    fine-tuning cell to run needs their checkpoint and `work_dir` no longer has it (the cached
    result is kept and compared)."""
    plan = select(plan_cells(spec, scale_name, roots), tasks, methods)
    require_data(plan, roots)
    todo = [c for c in plan.finetune if not store.has(c)]
    needed = {c.pretrain.key for c in todo}
    for cell in plan.pretrain:
        _check_same_data(cell, store)
    pre_todo = [c for c in plan.pretrain if not store.has(c) or (
        c.key in needed and not (cell_dir(c, work_dir) / "summary.json").exists())]
    cached = len(plan.pretrain) + len(plan.finetune) - len(pre_todo) - len(todo)
    log(f"{spec.name} ({scale_name}): {len(pre_todo)} pre-training and {len(todo)} fine-tuning "
        f"cells to run, {cached} cached in {store.root}")
    for cell, result in executor.run(pre_todo, work_dir):
        if store.has(cell) and store.load(cell)["final_test"] != result["final_test"]:
            log(f"warning: {cell.name} reran with a different final test than its cached result "
                f"(another machine or software version?); fine-tuning starts from the new run")
        elif not store.has(cell):
            store.save(cell, result)
        log(f"done {cell.name} ({cell.key}): final median win rate "
            f"{result['final_test']['median_win_rate']:.3f}")
    for cell, result in executor.run(todo, work_dir):
        store.save(cell, result)
        log(f"done {cell.name} ({cell.key}): final median win rate "
            f"{result['final_test']['median_win_rate']:.3f}, {result['wall_s']:.0f} s")
    return dict(cached=cached, ran=len(pre_todo) + len(todo))


def _check_same_data(cell: PretrainCell, store: ResultStore) -> None:
    if store.has(cell) and cell.config.dataset:
        stored = store.load(cell)["dataset_fingerprint"]
        if stored != data_fingerprint(cell.config.dataset):
            raise UserError(f"dataset {cell.config.dataset} is not the data {cell.name} was "
                            f"computed on (fingerprint {stored[:12]}...); restore that dataset, "
                            f"or delete {store.path(cell)} and the results that build on it")
