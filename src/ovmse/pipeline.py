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
                          PretrainConfig, TrainConfig)
from ovmse.methods import finetune_config
from ovmse.plots import median_curve
from ovmse.runs import read_jsonl, write_json
from ovmse.stats import steps_to_threshold, transition_drop
from ovmse.train.driver import train
from ovmse.train.pretrain import pretrain


def run_pipeline(cfg: PipelineConfig, out: Path, progress: bool = True) -> dict:
    """Run every phase into `out` (pretrain/, ovmse/, <baseline>/) and return the results
    table as a dict (also written to out/results.json)."""
    from ovmse.errors import UserError
    from ovmse.methods import METHODS

    if cfg.baseline not in METHODS or cfg.baseline == "ovmse":
        raise UserError(f"baseline must be one of {', '.join(m for m in METHODS if m != 'ovmse')}"
                        f", got {cfg.baseline!r}")
    out = Path(out)
    pre_cfg = PretrainConfig(
        dataset=cfg.dataset, steps=cfg.pretrain_steps, num_seeds=cfg.num_seeds,
        test_interval=max(cfg.pretrain_steps // 5, 1),
        learner=LearnerConfig(cql=CqlConfig(alpha=cfg.alpha, num_samples=cfg.num_samples)))
    pre = pretrain(pre_cfg, out / "pretrain", progress=progress)
    base = TrainConfig(steps=cfg.finetune_steps, num_seeds=cfg.num_seeds,
                       test_interval=cfg.test_interval,
                       finetune=FinetuneConfig(checkpoint=str(out / "pretrain")))
    base = dataclasses.replace(
        base, explore=dataclasses.replace(base.explore, eps_anneal_steps=cfg.eps_anneal_steps),
        learner=dataclasses.replace(base.learner, memory=dataclasses.replace(
            base.learner.memory, lam_anneal_steps=cfg.lam_anneal_steps)))
    offline_win = pre["final_test"]["median_win_rate"]
    rows = []
    for method in ("ovmse", cfg.baseline):
        summary = train(finetune_config(method, base), out / method, progress=progress)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_win, ax_probe) = plt.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        records = read_jsonl(out / method / "metrics.jsonl")
        steps, wins = median_curve(records, "test_win_rate")
        ax_win.plot(steps, wins, lw=2, label=method)
        steps, probe = median_curve(records, "probe_q")
        if len(steps):
            ax_probe.plot(steps, probe, lw=2, label=method)
    ax_win.axhline(offline_win, ls="--", color="black", lw=1, label="offline policy")
    ax_win.set(xlabel="env steps", ylabel="median test win rate", ylim=(-0.02, 1.02),
               title="fine-tuning from the same pre-trained networks")
    ax_probe.set(xlabel="env steps", ylabel="mean Q_tot on offline-policy episodes",
                 title="unlearning probe (paper Fig. 1)")
    for ax in (ax_win, ax_probe):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
