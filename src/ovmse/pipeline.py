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
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ovmse.config import (CqlConfig, FinetuneConfig, LearnerConfig, PipelineConfig,
                          PretrainConfig, TrainConfig, pretrain_test_interval)
from ovmse.methods import finetune_config
from ovmse.metrics_log import LogSettings
from ovmse.plots import finetune_curves, median_curve, plot_finetune_curves
from ovmse.runs import read_jsonl, write_json
from ovmse.stats import steps_to_threshold, transition_drop
from ovmse.train.driver import train
from ovmse.train.pretrain import pretrain


def run_pipeline(cfg: PipelineConfig, out: Path, progress: bool = True,
                 log: LogSettings = LogSettings()) -> dict:
    """Run every phase into `out` (pretrain/, ovmse/, <baseline>/) and return the results
    table as a dict (also written to out/results.json)."""
    from ovmse.errors import UserError
    from ovmse.methods import OVMSE, REGISTRY

    if cfg.baseline not in REGISTRY or REGISTRY[cfg.baseline] is OVMSE:
        raise UserError(f"baseline must be one of "
                        f"{', '.join(m for m, r in REGISTRY.items() if r is not OVMSE)}, got "
                        f"{cfg.baseline!r}")
    out = Path(out)
    pre_cfg = PretrainConfig(
        dataset=cfg.dataset, steps=cfg.pretrain_steps, num_seeds=cfg.num_seeds,
        test_interval=pretrain_test_interval(cfg.pretrain_steps),
        learner=LearnerConfig(cql=CqlConfig(alpha=cfg.alpha, num_samples=cfg.num_samples)))
    pre = pretrain(pre_cfg, out / "pretrain", progress=progress, log=log)
    base = TrainConfig(steps=cfg.finetune_steps, num_seeds=cfg.num_seeds,
                       test_interval=cfg.test_interval,
                       finetune=FinetuneConfig(checkpoint=str(out / "pretrain")))
    base = dataclasses.replace(
        base, explore=dataclasses.replace(base.explore, eps_anneal_steps=cfg.eps_anneal_steps),
        learner=dataclasses.replace(base.learner, memory=dataclasses.replace(
            base.learner.memory, lam_anneal_steps=cfg.lam_anneal_steps)))
    offline_win = pre["final_test"]["median_win_rate"]
    rows = []
    for method in (OVMSE.name, cfg.baseline):
        summary = train(finetune_config(method, base), out / method, progress=progress,
                        log=log)
        records = read_jsonl(out / method / "metrics.jsonl")
        steps, wins = median_curve(records, "test_win_rate")
        rows.append(dict(method=method, offline_win_rate=offline_win,
                         finetuned_win_rate=summary["final_test"]["median_win_rate"],
                         drop_at_transition=transition_drop(wins, offline_win),
                         steps_to_0_8=steps_to_threshold(steps, wins, 0.8),
                         wall_s=summary["wall_s"]))
    result = dict(dataset=pre["dataset"], seeds=cfg.num_seeds, rows=rows,
                  pretrain_wall_s=pre["wall_s"], config=dataclasses.asdict(cfg))
    write_json(out / "results.json", result)
    plot_pipeline(out, [r["method"] for r in rows], offline_win, out / "offline_to_online.png")
    return result


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


def plot_pipeline(out: Path, methods: list[str], offline_win: float, path: Path) -> None:
    curves = {m: finetune_curves(read_jsonl(out / m / "metrics.jsonl")) for m in methods}
    plot_finetune_curves(curves, offline_win, "fine-tuning from the same pre-trained networks",
                         path)
