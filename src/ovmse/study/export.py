"""The study's results in marl-eval's JSON layout (instadeepai/marl-eval, Gorsane et al. 2022),
so that they can be aggregated and plotted beside OG-MARL's and Mava's with marl-eval's tools:

    {"smax": {TASK: {ALGORITHM: {RUN: {"step_0": {"step_count": t, "win_rate": [w],
                                                  "return": [r]}, ..., "step_K": {...},
                                       "absolute_metrics": {"win_rate": [w], "return": [r]}}}}}}

TASK is the cell's "map_quality" (qmix, trained once per map, appears under each task of its
map, as in the reports), ALGORITHM the report's label of the cell (its method, "+ CQL online",
"mix 0.1", "eps0 0.05"), RUN the seed. Each step holds one seed's greedy test at that point
(win rate and mean return over the spec's test episodes, one-element lists as marl-eval allows
for rates), `step_count` its env steps; `absolute_metrics` hold the final 640-episode test.
Returns are on SMAC's scale (0-20).
"""

from __future__ import annotations

from ovmse.errors import UserError
from ovmse.study.report import by_task, cell_label
from ovmse.study.runner import plan_cells
from ovmse.study.spec import Spec
from ovmse.study.store import ResultStore

ENVIRONMENT = "smax"


def marl_eval_data(spec: Spec, scale_name: str, store: ResultStore,
                   algorithms: tuple[str, ...] = (), tasks: tuple[str, ...] = ()) -> dict:
    """The stored fine-tuning results of a spec's scale in marl-eval's layout (see the module
    docstring; keys in the order marl-eval reads them: steps in time order, absolute_metrics
    last, so the file must be written unsorted), only of these `algorithms` (labels) and
    `tasks` ("map/quality") if any are given; cells without a result are left out. UserError
    for an algorithm or task the spec's scale does not have."""
    plan = plan_cells(spec, scale_name)
    known_tasks = list(dict.fromkeys(c.task for c in plan.finetune))
    known_labels = list(dict.fromkeys(cell_label(c) for c in plan.finetune))
    for wanted, known, what in ((tasks, known_tasks, "tasks"),
                                (algorithms, known_labels, "algorithms")):
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise UserError(f"{spec.name} ({scale_name}) has no {what} {', '.join(unknown)}; "
                            f"it has {', '.join(known)}")
    results = {c.key: store.load(c) for c in plan.finetune if store.has(c)}
    out = {}
    for task, runs in by_task(plan, results).items():
        chosen = {label: _runs(result) for label, result in runs.items()
                  if not algorithms or label in algorithms}
        if chosen and (not tasks or task in tasks):
            out[task.replace("/", "_")] = chosen
    return {ENVIRONMENT: out}


def _runs(result: dict) -> dict:
    final = result["final_test"]
    runs = {}
    for index, seed in enumerate(sorted(result["curves"], key=int)):
        curve = result["curves"][seed]
        steps = {f"step_{k}": {"step_count": int(t), "win_rate": [curve["test_win_rate"][k]],
                               "return": [curve["test_return"][k]]}
                 for k, t in enumerate(curve["t_env"])}
        steps["absolute_metrics"] = {"win_rate": [final["win_rate"][index]],
                                     "return": [final["mean_return"][index]]}
        runs[f"seed_{seed}"] = steps
    return runs


def ragged(data: dict) -> list[str]:
    """What keeps marl-eval from aggregating `data` (it needs every task to have the same
    algorithms, every algorithm the same runs, every run the same number of steps, across
    tasks too): one line per difference, [] if none."""
    problems = []
    for env, tasks in data.items():
        step_counts = {task: sorted({len(steps) - 1 for runs in algos.values()
                                     for steps in runs.values()})
                       for task, algos in tasks.items()}
        if len({str(counts) for counts in step_counts.values()}) > 1:
            problems.append(f"{env}: test points per run differ between tasks {step_counts} "
                            f"(marl-eval's curves read one count; export one map at a time "
                            f"with --tasks)")
        algorithm_sets = {task: sorted(algos) for task, algos in tasks.items()}
        first_task, first = next(iter(algorithm_sets.items()), (None, None))
        for task, algos in algorithm_sets.items():
            if algos != first:
                problems.append(f"{env}/{task} has algorithms {algos}, {first_task} {first}")
        for task, algos in tasks.items():
            shapes = {algo: (len(runs), sorted({len(steps) for steps in runs.values()}))
                      for algo, runs in algos.items()}
            if len(set(map(str, shapes.values()))) > 1:
                problems.append(f"{env}/{task}: runs and steps per algorithm differ: {shapes}")
    return problems
