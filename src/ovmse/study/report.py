"""`ovmse experiment report`: a spec's tables (Markdown) and figures (PNG), built from the
stored cell results alone (no dataset, checkpoint or run folder is read).

Statistics per (task, method), over the seeds of its cell:
  final median      median of the per-seed final greedy win rates (640 episodes each), the
                    paper's Table 1 statistic
  IQM [95% CI]      interquartile mean with a stratified percentile bootstrap interval
                    (stats.interquartile_mean, stats.bootstrap_ci; rliable's method)
  drop              its own pre-training's final win rate minus the lowest median test win
                    rate in the first 10% of fine-tuning (stats.transition_drop)
  lowest            the lowest median test win rate over the whole run and the first env
                    step it is reached at: a fall after the first 10% shows here, not in drop
  steps to X        first env step after the start at which the median test win rate reaches
                    X (stats.steps_to_threshold on the tests after step 0, so that a pre-trained
                    policy already above X does not count as having reached it at 0)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ovmse.methods import method
from ovmse.plots import plot_panels
from ovmse.runs import write_text
from ovmse.stats import bootstrap_ci, interquartile_mean, steps_to_threshold, transition_drop
from ovmse.study.cells import variants
from ovmse.study.runner import plan_cells
from ovmse.study.spec import Scale, Spec, task_map
from ovmse.study.store import ResultStore

THRESHOLDS = (0.4, 0.8)


def build_report(spec: Spec, scale_name: str, store: ResultStore, out_dir: Path) -> Path:
    """Write out_dir/<spec>-<scale>.md and its PNGs; return the Markdown file's path. Cells
    without a stored result are listed as missing and left out of tables and figures."""
    scale = spec.scale(scale_name)
    plan = plan_cells(spec, scale_name)
    results = {c.key: store.load(c) for c in plan.pretrain + plan.finetune if store.has(c)}
    stem = f"{spec.name}-{scale_name}"
    out_dir = Path(out_dir)
    lines = [f"# {spec.title} (paper's {spec.paper}), SMAX, `{scale_name}` scale", "",
             f"Regenerate: `ovmse experiment run {spec.name} --scale {scale_name}`, then "
             f"`ovmse experiment report {spec.name} --scale {scale_name}`.", "",
             _scale_text(scale), ""]
    if results:
        lines += [_devices_text(results), "", _code_text(results), ""]
    missing = [c.name for c in plan.pretrain + plan.finetune if c.key not in results]
    if missing:
        lines += [f"**Not run yet ({len(missing)} cells):** {', '.join(missing)}.", ""]
    section = {"final_table": _final_table, "curves": _curves_section, "probe": _probe_section,
               "mixing": _mixing_section}[spec.report]
    lines += section(plan, results, scale, out_dir, stem)
    if spec.paper_values:
        lines += ["", f"The paper's numbers (SC2, not SMAX; quoted from its {spec.paper}):", "",
                  *_markdown_table(spec.paper_values["columns"], spec.paper_values["rows"])]
    path = out_dir / f"{stem}.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(path, "\n".join(lines) + "\n")
    return path


def _scale_text(scale: Scale) -> str:
    steps = ", ".join(f"{m} {scale.steps[m]:,}" for m in scale.maps)
    text = (f"Scale: {scale.seeds} seeds per cell; fine-tuning env steps: {steps}; MACQL "
            f"pre-training {scale.pretrain_steps:,} gradient steps")
    if scale.settings:
        text += "; settings " + _settings_text(scale.settings)
    for map_name in scale.maps:
        if scale.map_settings.get(map_name):
            text += f"; on {map_name} " + _settings_text(scale.map_settings[map_name])
    cql_online = [m for m in scale.cql_online if m in scale.maps]
    if cql_online:
        text += f"; ovmse keeps CQL online on {', '.join(cql_online)}"
    return text + "."


def _settings_text(settings: dict) -> str:
    """'`key=value`, ...' of config settings, in their order."""
    return ", ".join(f"`{k}={v}`" for k, v in settings.items())


def _cells_by(heading: str, values) -> str:
    """'heading: value (n cells), ...' over the stored cells' values, in sorted order."""
    counts = Counter(values)
    return f"{heading}: " + ", ".join(f"{v} ({n} cells)" for v, n in sorted(counts.items()))


def _devices_text(results: dict[str, dict]) -> str:
    """Which devices computed the stored cells (CPU and GPU runs of one seed differ)."""
    return _cells_by("Computed on", (r.get("device") or "not recorded"
                                     for r in results.values()))


def _code_text(results: dict[str, dict]) -> str:
    """Which code computed the stored cells: ovmse's version and commit (provenance.py);
    "modified" when the code's tracked files differed from that commit; cells stored before
    results recorded it are "not recorded"."""
    def describe(code: dict | None) -> str:
        if not code:
            return "not recorded"
        where = f" at {code['commit'][:7]}" if code.get("commit") else ""
        return f"{code['version']}{where}" + (", modified" if code.get("dirty") else "")

    return _cells_by("Code", (describe(r.get("code")) for r in results.values()))


def _markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(map(str, header)) + " |",
             "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def seed_curves(result: dict, key: str, x: str = "t_env") -> tuple[np.ndarray, np.ndarray]:
    """(steps [S, K], values [S, K]) of a result's per-seed test curves, cut to the shortest;
    steps are env steps (`x` "t_env") or gradient steps ("updates", pre-training); a value the
    result lacks (an older result's curve) or did not record is NaN."""
    curves = [result["curves"][seed] for seed in sorted(result["curves"], key=int)]
    length = min(len(c[x]) for c in curves)
    steps = np.array([c[x][:length] for c in curves], float)
    values = np.array([[np.nan if v is None else v for v in c.get(key, [None] * length)[:length]]
                       for c in curves], float)
    return steps, values


def by_task(plan, results) -> dict[str, dict[str, dict]]:
    """{task: {method label: result}} for the stored fine-tuning results of the plan, each
    task's methods in the spec's order (a from-scratch cell, planned once per map under its
    first task, takes its method's place in every task of its map)."""
    out: dict[str, dict[str, dict]] = {t: {} for t in dict.fromkeys(c.task for c in
                                                                       plan.finetune)}
    methods = list(dict.fromkeys(c.method for c in plan.finetune))
    for cell in sorted(plan.finetune, key=lambda c: methods.index(c.method)):
        if cell.key in results:
            label = cell_label(cell)
            for task in out:
                if task == cell.task or (cell.record.from_scratch
                                         and task_map(task) == task_map(cell.task)):
                    out[task][label] = results[cell.key]
    return out


def cell_label(cell) -> str:
    """A fine-tuning cell's name in figures and tables: its method, "+ CQL online" where the
    spec keeps CQL online for a method that drops it by default, its offline mixing ratio, its
    starting epsilon and OVM's end weight where they are not the defaults."""
    return (cell.method + (" + CQL online" if cell.cql_online else "")
            + "".join(f" {label} {value:g}" for _, label, value in variants(cell.base)))


def _offline_win(plan, results, task: str) -> float | None:
    cell = next(c for c in plan.pretrain if c.task == task
                and not c.config.learner.cql.calibrated)   # MACQL's, where most methods start
    return results[cell.key]["final_test"]["median_win_rate"] if cell.key in results else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _lowest(steps: np.ndarray, values: np.ndarray, digits: int = 3) -> str:
    """The lowest of values [K] and the first of steps [K] it is at: "0.000 at 40,181"."""
    low = int(np.argmin(values))
    return f"{values[low]:.{digits}f} at {steps[low]:,.0f}"


def _iqm_ci(scores) -> str:
    low, high = bootstrap_ci(np.asarray(scores))
    return f"{interquartile_mean(scores):.3f} [{low:.3f}, {high:.3f}]"


def _final_table(plan, results, scale, out_dir, stem) -> list[str]:
    # columns are methods: a task's cell of a method is its cell without offline mixing, at
    # the default starting epsilon, whether or not it keeps CQL online
    columns = {task: {r["method"]: r for label, r in runs.items()
                      if label.removesuffix(" + CQL online") == r["method"]}
               for task, runs in by_task(plan, results).items()}
    methods = list(scale.methods)
    median_rows, iqm_rows = [], []
    for task, runs in columns.items():
        offline = _fmt(_offline_win(plan, results, task))
        median_rows.append([task, offline] + [
            _fmt(runs[m]["final_test"]["median_win_rate"]) if m in runs else "-"
            for m in methods])
        iqm_rows.append([task] + [_iqm_ci(runs[m]["final_test"]["win_rate"]) if m in runs
                                  else "-" for m in methods])
    aggregate = ["all tasks"]
    for m in methods:
        if all(m in runs for runs in columns.values()):
            scores = np.array([runs[m]["final_test"]["win_rate"] for runs in columns.values()]).T
            aggregate.append(_iqm_ci(scores))
        else:
            aggregate.append("-")
    iqm_rows.append(aggregate)
    return (["Final median win rate over seeds (the paper's statistic; 640 greedy episodes per "
             "seed); `offline` is the pre-trained policy's:", "",
             *_markdown_table(["task", "offline"] + methods, median_rows), "",
             "Interquartile mean over seeds of the final win rate [95% stratified bootstrap "
             "interval]; the last row pools all tasks:", "",
             *_markdown_table(["task"] + methods, iqm_rows),
             *_pretraining_section(plan, results, out_dir, stem)])


PRETRAIN_POINTS = (0.25, 0.5, 0.75, 1.0)
"""Where a pre-training's curve is read in the table: the tests nearest these fractions of its
gradient steps."""


def _pretraining_section(plan, results, out_dir, stem) -> list[str]:
    """The stored pre-trainings' curves (issue 18: pre-trained to their plateau): per map a
    figure of the median greedy win rate and the median Q_tot(tau, a) on the data over the
    data's discounted return-to-go, against gradient steps; and a table of both, read at
    PRETRAIN_POINTS, beside the data's win rate and return-to-go. Q_tot is '-' for results
    stored before pre-trainings recorded it."""
    stored = [c for c in plan.pretrain if c.key in results]
    if not stored:
        return []
    lines = ["", "## Pre-training", "",
             "Each pre-training's greedy tests (median over seeds) and its Q_tot(tau, a) on the "
             "data's actions (median over seeds of the mean over the batches since the previous "
             "test), read at about a quarter, half, three quarters and all of its gradient steps; "
             "`return-to-go` is the data's discounted return-to-go averaged over its steps, the "
             "level a calibrated Q_tot of the data's actions is near. A pre-training is at its "
             "plateau where both stop rising.", ""]
    rows = []
    for map_name in dict.fromkeys(task_map(c.task) for c in stored):
        win_lines, q_lines = {}, {}
        for cell in (c for c in stored if task_map(c.task) == map_name):
            result = results[cell.key]
            label = f"{cell.task} {'Cal-QL' if cell.config.learner.cql.calibrated else 'MACQL'}"
            steps, wins = seed_curves(result, "test_win_rate", "updates")
            _, q_tot = seed_curves(result, "q_taken", "updates")
            t, median_win = np.median(steps, 0), np.median(wins, 0)
            median_q = np.median(q_tot, 0)
            rtg = result["dataset"].get("return_to_go")
            win_lines[label] = (t, median_win)
            if rtg and not np.isnan(median_q[1:]).all():
                q_lines[label] = (t[1:], median_q[1:] / rtg)
            points = [int(np.argmin(np.abs(t - f * t[-1]))) for f in PRETRAIN_POINTS]
            rows.append([label, len(result["curves"]), _fmt(result["dataset"]["win_rate"]),
                         " / ".join(f"{t[i]:,.0f}" for i in points),
                         " / ".join(_fmt(median_win[i], 2) for i in points),
                         " / ".join("-" if np.isnan(median_q[i]) else f"{median_q[i]:.1f}"
                                    for i in points),
                         "-" if rtg is None else f"{rtg:.2f}",
                         _fmt(result["final_test"]["median_win_rate"])])
        figure = f"{stem}-pretraining-{map_name}.png"
        panels = [dict(title=f"{map_name}: median greedy win rate", ylabel="test win rate",
                       xlabel="gradient steps", lines=win_lines, ylim=(-0.02, 1.02))]
        if q_lines:
            panels.append(dict(title=f"{map_name}: median Q_tot on the data",
                               ylabel="Q_tot / data's return-to-go", xlabel="gradient steps",
                               lines=q_lines, hline=(1.0, "data's return-to-go")))
        plot_panels(panels, out_dir / figure)
        lines += [f"![{map_name} pre-training]({figure})", ""]
    return lines + _markdown_table(
        ["pre-training", "seeds", "data win rate", "at steps", "greedy win rate", "Q_tot",
         "return-to-go", "final greedy (median)"], rows)


def _curves_section(plan, results, scale, out_dir, stem) -> list[str]:
    lines = []
    for task, runs in by_task(plan, results).items():
        if not runs:
            continue
        offline = _offline_win(plan, results, task)
        win_lines, return_lines, probe_lines, rows = {}, {}, {}, []
        win_bands, return_bands, probe_bands = {}, {}, {}
        for label, result in runs.items():
            steps, wins = seed_curves(result, "test_win_rate")
            _, returns = seed_curves(result, "test_return")
            t, median_win = np.median(steps, 0), np.median(wins, 0)
            win_lines[label], win_bands[label] = (t, median_win), (t, *_iqr(wins))
            return_lines[label] = (t, returns.mean(0))
            return_bands[label] = (t, *_iqr(returns))
            scratch = method(result["method"]).from_scratch
            if not scratch:
                probe = seed_curves(result, "probe_q")[1]
                probe_lines[label] = (t, np.median(probe, 0))
                probe_bands[label] = (t, *_iqr(probe))
            final = result["final_test"]
            # from the cell's own pre-training: macal-ql starts from Cal-QL's, not MACQL's
            start = results.get(result.get("pretrain_key"))
            drop = (transition_drop(median_win, start["final_test"]["median_win_rate"])
                    if start is not None and not scratch else None)
            rows.append([label, _fmt(final["median_win_rate"]), _iqm_ci(final["win_rate"]),
                         _fmt(drop), _lowest(t, median_win)]
                        + [_steps(steps_to_threshold(t[1:], median_win[1:], x))
                           for x in THRESHOLDS])
        figure = f"{stem}-{task.replace('/', '-')}.png"
        hline = (offline, "offline policy") if offline is not None else None
        panels = [dict(title=f"{task}: median test win rate", ylabel="test win rate",
                       lines=win_lines, bands=win_bands, hline=hline, ylim=(-0.02, 1.02)),
                  dict(title=f"{task}: mean test return", ylabel="test return (0-20)",
                       lines=return_lines, bands=return_bands, ylim=(0, 20.5))]
        if probe_lines:
            panels.append(dict(title=f"{task}: unlearning probe", lines=probe_lines,
                               bands=probe_bands,
                               ylabel="median Q_tot on offline-policy episodes"))
        plot_panels(panels, out_dir / figure)
        lines += [f"## {task}", "", f"![{task}]({figure})", "", SPREAD_NOTE, "",
                  *_markdown_table(["method", "final median", "final IQM [95% CI]", "drop",
                                    "lowest", *[f"steps to {x:g}" for x in THRESHOLDS]],
                                   rows), ""]
    return lines


def _iqr(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 25th and 75th percentiles over seeds [S, K] -> ([K], [K])."""
    low, high = np.percentile(values, [25, 75], axis=0)
    return low, high


SPREAD_NOTE = ("Lines: median over seeds (mean for the return); shaded: the interquartile range "
               "over seeds (with 3 seeds: from the midpoint of the lowest two to the midpoint "
               "of the highest two).")


def _steps(step: float | None) -> str:
    return "not reached" if step is None else f"{step:,.0f}"


def _probe_section(plan, results, scale, out_dir, stem) -> list[str]:
    lines = []
    for task, runs in by_task(plan, results).items():
        probe_lines, probe_bands, rows = {}, {}, []
        for label, result in runs.items():
            if method(result["method"]).from_scratch:
                continue
            steps, probe = seed_curves(result, "probe_q")
            t, median_probe = np.median(steps, 0), np.median(probe, 0)
            probe_lines[label] = (t, median_probe)
            probe_bands[label] = (t, *_iqr(probe))
            rows.append([label, _fmt(median_probe[0], 2), _lowest(t, median_probe, 2),
                         _fmt(median_probe[-1], 2)])
        if not probe_lines:
            continue
        figure = f"{stem}-{task.replace('/', '-')}.png"
        plot_panels([dict(title=f"{task}: unlearning probe", lines=probe_lines,
                          bands=probe_bands, ylabel="median Q_tot on offline-policy episodes")],
                    out_dir / figure)
        lines += [f"## {task}", "", f"![{task}]({figure})", "", SPREAD_NOTE, "",
                  *_markdown_table(["method", "probe Q_tot at start", "lowest", "end"], rows),
                  ""]
    return lines


def _mixing_section(plan, results, scale, out_dir, stem) -> list[str]:
    budget = scale.budget_step
    header = ["task"] + [f"ratio {r:g}" for r in scale.offline_ratios]
    rows = []
    for task in dict.fromkeys(c.task for c in plan.finetune):
        row = [task]
        for ratio in scale.offline_ratios:
            cell = next((c for c in plan.finetune if c.task == task and not c.record.from_scratch
                         and c.base.finetune.offline_ratio == ratio), None)
            if cell is None or cell.key not in results:
                row.append("-")
                continue
            steps, returns = seed_curves(results[cell.key], "test_return")
            at = [r[np.flatnonzero(s <= budget)[-1]] for s, r in zip(steps, returns)]
            low, high = bootstrap_ci(np.array(at), statistic=np.mean)
            row.append(f"{np.mean(at):.2f} [{low:.2f}, {high:.2f}]")
        rows.append(row)
    return [f"Mean test return over seeds at {budget:,} env steps (the last test at or before "
            f"it) [95% bootstrap interval of the mean], by offline mixing ratio:", "",
            *_markdown_table(header, rows)]

