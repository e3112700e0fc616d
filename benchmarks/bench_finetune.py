"""Benchmark of online fine-tuning: every method from the same pre-trained networks, several
seeds, on one map and dataset; learning curves, the unlearning probe, the drop at the
transition, steps to win-rate thresholds and throughput.

    python benchmarks/bench_finetune.py --dataset 3m/medium --tag 3m_medium_cpu \
        --methods ovmse ovm se switch-cql macql qmix --seeds 3 --steps 200000
    python benchmarks/bench_finetune.py --throughput --tag 3m_cpu --work-dir DIR \
        --methods qmix switch-cql ovmse action-proposal macql

--throughput times the training program alone (one seed, compiled beforehand, no tests): env
steps per second of each method over --timed-steps after --warmup-steps, run back to back in one
process, so that fine-tuning's cost can be compared with QMIX's on the same machine.

Pre-training: MACQL (alpha 5, the defaults of `ovmse pretrain`) for --pretrain-steps gradient
steps; fine-tuning seed i starts from pre-training seed i. Each phase is a study cell
(study/cells.py) in --work-dir: finished cells are read back, so an interrupted benchmark
continues where it stopped (an unfinished cell resumes from its checkpoint). Writes benchmarks/results/finetune_<tag>.json
and finetune_<tag>.png (median test win rate and the probe's mean Q_tot vs env steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

from ovmse.config import (FinetuneConfig, PretrainConfig, TrainConfig, pretrain_test_interval,
                          with_overrides)
from ovmse.methods import finetune_config
from ovmse.plots import finetune_curves, median_curve, plot_finetune_curves
from ovmse.runs import read_jsonl, write_json
from ovmse.stats import steps_to_threshold, transition_drop
from ovmse.study.cells import FinetuneCell, cell_dir, pretrain_cell, run_cell

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="3m/medium")
    parser.add_argument("--methods", nargs="+",
                        default=["ovmse", "ovm", "se", "switch-cql", "macql", "qmix"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--test-interval", type=int, default=5000)
    parser.add_argument("--offline-ratio", type=float, default=0.0)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="fine-tuning config overrides, e.g. learner.memory.lam_anneal_steps="
                             "50000 (JSON values)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--warmup-steps", type=int, default=20_000)
    parser.add_argument("--timed-steps", type=int, default=30_000)
    args = parser.parse_args()
    work = args.work_dir

    pre = pretrain_cell(PretrainConfig(
        dataset=args.dataset, steps=args.pretrain_steps, num_seeds=args.seeds,
        test_interval=pretrain_test_interval(args.pretrain_steps)))
    pre_result = run_cell(pre, work, args.progress)
    if args.throughput:
        measure_throughput(args, cell_dir(pre, work))
        return
    offline_win = pre_result["final_test"]["median_win_rate"]
    print(f"pre-trained: final median win rate {offline_win:.3f} (dataset "
          f"{pre_result['dataset']['win_rate']:.3f}), {pre_result['wall_s']} s", flush=True)
    base = TrainConfig(steps=args.steps, num_seeds=args.seeds, test_interval=args.test_interval,
                       finetune=FinetuneConfig(offline_ratio=args.offline_ratio))
    base = with_overrides(base, parse_overrides(args.set))
    out = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                            jax=jax.__version__, device=str(jax.devices()[0]),
                            date=time.strftime("%Y-%m-%d")),
               settings=dict(vars(args), work_dir=str(work), results_dir=None),
               pretrain=dict(final_test=pre_result["final_test"],
                             dataset=pre_result["dataset"] | dict(path=pre.config.dataset),
                             wall_s=pre_result["wall_s"]),
               runs=[])
    for method in args.methods:
        cell = FinetuneCell(pre.task, method, base, pre)
        result = run_cell(cell, work, args.progress)
        records = read_jsonl(cell_dir(cell, work) / "metrics.jsonl")
        curve = finetune_curves(records)
        wins = curve["median_win_rate"]
        _, returns = median_curve(records, "test_return")
        row = dict(method=method, env_steps_per_s=result["env_steps_per_s"],
                   wall_s=result["wall_s"], final_test=result["final_test"],
                   drop_at_transition=transition_drop(wins, offline_win),
                   steps_to={str(t): steps_to_threshold(curve["t_env"], wins, t)
                             for t in (0.4, 0.8)},
                   curve=dict(curve, median_return=returns.tolist()))
        out["runs"].append(row)
        print(f"{method}: final median win rate {row['final_test']['median_win_rate']:.3f}, "
              f"drop at transition {row['drop_at_transition']:.3f}, steps to 0.8 "
              f"{row['steps_to']['0.8']}, {row['env_steps_per_s']} env steps/s", flush=True)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stem = args.results_dir / f"finetune_{args.tag}"
        write_json(stem.with_suffix(".json"), out)
        plot(out, offline_win, stem.with_suffix(".png"))
    print(f"wrote {args.results_dir / f'finetune_{args.tag}'}.json and .png")


def parse_overrides(pairs: list[str]) -> dict:
    """{"a.b": value} from ["a.b=VALUE", ...], each VALUE read as JSON (a bare word as text)."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def measure_throughput(args, pre_dir: Path) -> None:
    """Env steps per second of each method's training program (one seed; learning, memory
    network and CQL included; compilation, tests and checkpoints excluded)."""
    import jax.numpy as jnp

    from ovmse.train.driver import offline_inputs
    from ovmse.train.online import OnlineTrainer

    base = TrainConfig(steps=args.warmup_steps + args.timed_steps, num_seeds=1,
                       finetune=FinetuneConfig(checkpoint=str(pre_dir),
                                               offline_ratio=args.offline_ratio))
    rows = []
    for method in args.methods:
        cfg = finetune_config(method, base)
        trainer = OnlineTrainer(cfg)
        pretrained, data = offline_inputs(cfg, trainer)
        states = (trainer.init(trainer.seed_keys()) if pretrained is None
                  else trainer.init_pretrained(trainer.seed_keys(), pretrained))
        states, _ = trainer.run_chunk(states, jnp.int32(args.warmup_steps), data)
        start_steps = int(states.t_env[0])
        jax.block_until_ready(states)
        start = time.perf_counter()
        states, stats = trainer.run_chunk(states, jnp.int32(base.steps), data)
        jax.block_until_ready(states)
        seconds = time.perf_counter() - start
        steps = int(states.t_env[0]) - start_steps
        rows.append(dict(method=method, env_steps=steps, seconds=round(seconds, 2),
                         env_steps_per_s=round(steps / seconds, 1),
                         updates=float(stats.updates[0])))
        print(json.dumps(rows[-1]), flush=True)
    reference = next((r["env_steps_per_s"] for r in rows if r["method"] == "qmix"), None)
    for r in rows:
        r["slowdown_vs_qmix"] = round(reference / r["env_steps_per_s"], 3) if reference else None
    out = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                            jax=jax.__version__, device=str(jax.devices()[0]),
                            date=time.strftime("%Y-%m-%d")),
               settings=dict(warmup_steps=args.warmup_steps, timed_steps=args.timed_steps,
                             offline_ratio=args.offline_ratio, dataset=args.dataset),
               rows=rows)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"finetune_throughput_{args.tag}.json"
    write_json(path, out)
    for r in rows:
        print(f"{r['method']:>16} {r['env_steps_per_s']:>9} env steps/s  "
              f"x{r['slowdown_vs_qmix']} of qmix's time")
    print(f"wrote {path}")


def plot(out: dict, offline_win: float, path: Path) -> None:
    data = out["pretrain"]["dataset"]
    plot_finetune_curves({row["method"]: row["curve"] for row in out["runs"]}, offline_win,
                         f"fine-tuning on {Path(data['path']).parent.name} {data['quality']}, "
                         f"median of {out['settings']['seeds']} seeds", path)


if __name__ == "__main__":
    main()
