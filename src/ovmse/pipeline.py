"""`ovmse run`: the whole offline-to-online pipeline at small scale, in one command.

Pre-train MACQL on a dataset, fine-tune the pre-trained networks online with OVMSE and with one
baseline (same checkpoint, seeds and budget), then print a table and write a figure:
  offline win rate     the pre-trained greedy policy's final test (640 episodes per seed)
  fine-tuned win rate  each method's final test after fine-tuning
  drop at transition   offline win rate minus the lowest median test win rate in the first
                       10% of fine-tuning (stats.transition_drop)
  steps to 0.8         first env step at which the median test win rate reaches 0.8
The figure has the median test win rate vs env steps of both methods and, beside it, the
unlearning probe (mean Q_tot of each method's network on the offline policy's own episodes).

The phases are the study's cells (study/cells.py), run into OUT/pretrain/ and OUT/finetune/:
run again into the same OUT, a finished phase is read back and an interrupted one resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ovmse.config import PipelineConfig, validate_pretrain, validate_train
from ovmse.errors import UserError
from ovmse.methods import OVMSE, REGISTRY, check_base, options_set, own_options
from ovmse.metrics_log import LogSettings
from ovmse.plots import finetune_curves, median_curve, plot_finetune_curves
from ovmse.runs import read_jsonl, write_json
from ovmse.stats import steps_to_threshold, transition_drop
from ovmse.study.cells import (FinetuneCell, PretrainCell, cell_dir, data_fingerprint,
                               pretrain_cell, run_cell)


PIPELINE_CHECKPOINT = "(this run's pre-training)"
"""Stands for the fine-tuning checkpoint while the settings are checked, before it exists."""


def pipeline_cells(cfg: PipelineConfig) -> tuple[PretrainCell, list[FinetuneCell]]:
    """The pre-training cell and the fine-tuning cells (OVMSE, then the baseline) of `cfg`,
    every setting checked before anything runs. UserError for an unknown baseline, a missing
    dataset, a phase's copy of a shared field, an invalid value, a setting the methods decide,
    or an option of a method not fine-tuned here."""
    if cfg.baseline not in REGISTRY or REGISTRY[cfg.baseline] is OVMSE:
        raise UserError(f"baseline must be one of "
                        f"{', '.join(m for m, r in REGISTRY.items() if r is not OVMSE)}, got "
                        f"{cfg.baseline!r}")
    pre_cfg, base = cfg.phases()
    methods = (OVMSE.name, cfg.baseline)
    for name in sorted(options_set(base) - {o for m in methods for o in REGISTRY[m].options}):
        raise UserError(f"{name} is an option of a method this run does not fine-tune; "
                        f"leave it out, or choose that method as --baseline")
    validate_pretrain(pre_cfg.resolved())
    validate_train(dataclasses.replace(base, finetune=dataclasses.replace(
        base.finetune, checkpoint=PIPELINE_CHECKPOINT)))   # the checkpoint comes later
    for m in methods:   # before pre-training, not once its checkpoint is there
        check_base(m, own_options(m, base))
    pre = pretrain_cell(pre_cfg)
    return pre, [FinetuneCell(pre.task, m, base, pre) for m in methods]


def run_pipeline(cfg: PipelineConfig, out: Path, progress: bool = True,
                 log: LogSettings = LogSettings()) -> dict:
    """Run every phase into `out` and return the results table as a dict (also written to
    out/results.json). UserError when `out` holds this pre-training computed on other data."""
    out = Path(out)
    pre, cells = pipeline_cells(cfg)
    pre_result = _run(pre, out, progress, log)
    if pre_result["dataset_fingerprint"] != data_fingerprint(pre.config.dataset):
        raise UserError(f"{cell_dir(pre, out)} was pre-trained on other data than "
                        f"{pre.config.dataset}; give a new --out")
    offline_win = pre_result["final_test"]["median_win_rate"]
    rows = []
    for cell in cells:
        result = _run(cell, out, progress, log)
        records = read_jsonl(cell_dir(cell, out) / "metrics.jsonl")
        steps, wins = median_curve(records, "test_win_rate")
        rows.append(dict(method=cell.method, offline_win_rate=offline_win,
                         finetuned_win_rate=result["final_test"]["median_win_rate"],
                         drop_at_transition=transition_drop(wins, offline_win),
                         steps_to_0_8=steps_to_threshold(steps, wins, 0.8),
                         wall_s=result["wall_s"], run=str(cell_dir(cell, out))))
    result = dict(dataset=pre_result["dataset"] | dict(path=pre.config.dataset),
                  seeds=cfg.num_seeds, rows=rows, pretrain_wall_s=pre_result["wall_s"],
                  pretrain_run=str(cell_dir(pre, out)), config=dataclasses.asdict(cfg))
    write_json(out / "results.json", result)
    plot_pipeline({cell.method: cell_dir(cell, out) for cell in cells}, offline_win,
                  out / "offline_to_online.png")
    return result


def _run(cell, out: Path, progress: bool, log: LogSettings) -> dict:
    """run_cell, saying when the cell's finished run is read back rather than trained."""
    if (cell_dir(cell, out) / "summary.json").exists():
        print(f"{cell.name}: finished in {cell_dir(cell, out)}, read back", flush=True)
    return run_cell(cell, out, progress, log)


def format_results(result: dict) -> str:
    data = result["dataset"]
    lines = [f"dataset {data['path']} ({data['quality']}): win rate {data['win_rate']:.3f}; "
             f"median over {result['seeds']} seeds",
             f"{'method':>16} {'offline win':>12} {'fine-tuned win':>15} "
             f"{'drop at transition':>19} {'steps to 0.8':>13}"]
    for r in result["rows"]:
        reach = "never" if r["steps_to_0_8"] is None else f"{r['steps_to_0_8']:.0f}"
        lines.append(f"{r['method']:>16} {r['offline_win_rate']:>12.3f} "
                     f"{r['finetuned_win_rate']:>15.3f} {r['drop_at_transition']:>19.3f} "
                     f"{reach:>13}")
    return "\n".join(lines)


def plot_pipeline(runs: dict[str, Path], offline_win: float, path: Path) -> None:
    """The figure of fine-tuning runs {method: run folder} from one pre-training."""
    curves = {m: finetune_curves(read_jsonl(run / "metrics.jsonl")) for m, run in runs.items()}
    plot_finetune_curves(curves, offline_win, "fine-tuning from the same pre-trained networks",
                         path)
