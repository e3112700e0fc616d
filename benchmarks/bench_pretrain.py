"""Benchmark of offline pre-training: the greedy win rate of MACQL policies vs gradient steps,
for several CQL weights alpha, beside the dataset's own win rate.

    python benchmarks/bench_pretrain.py --data 3m=3m/medium \
        2s3z=datasets-build/2s3z/medium --alphas 0 1 5 --seeds 3 --steps 5000

Each (dataset, alpha) is one `ovmse pretrain` run with its seeds vmapped in one program; alpha 0
is offline QMIX. Writes benchmarks/results/pretrain_<tag>.json and pretrain_<tag>.png (one panel
per dataset: median test win rate over seeds vs gradient steps, one line per alpha, the
dataset's win rate dashed), and prints a table of final 640-episode win rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import jax

from ovmse.config import CqlConfig, PretrainConfig
from ovmse.plots import median_curve
from ovmse.runs import read_jsonl, write_json
from ovmse.train.pretrain import pretrain

RESULTS = Path(__file__).parent / "results"


def run_one(name: str, path: str, alpha: float, args, work_dir: Path) -> dict:
    base = PretrainConfig()
    cfg = dataclasses.replace(
        base, dataset=path, algo=args.algo, steps=args.steps, num_seeds=args.seeds,
        test_interval=args.test_interval, test_episodes=args.test_episodes,
        checkpoint_interval=args.steps,
        learner=dataclasses.replace(base.learner,
                                    cql=dataclasses.replace(CqlConfig(), alpha=alpha)))
    run_dir = work_dir / f"{name}-{args.algo}-alpha{alpha:g}"
    summary = pretrain(cfg, run_dir, progress=args.progress)
    records = read_jsonl(run_dir / "metrics.jsonl")
    steps, wins = median_curve(records, "test_win_rate", x="updates")
    _, returns = median_curve(records, "test_return", x="updates")
    return dict(name=name, dataset=summary["dataset"], alpha=alpha, algo=args.algo,
                seeds=summary["seeds"], wall_s=summary["wall_s"],
                updates_per_s=summary["updates_per_s"],
                curve=dict(updates=steps.tolist(), median_win_rate=wins.tolist(),
                           median_return=returns.tolist()),
                final_test=summary["final_test"])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        runs = [r for r in results if r["name"] == name]
        for r in runs:
            ax.plot(r["curve"]["updates"], r["curve"]["median_win_rate"],
                    label=f"alpha {r['alpha']:g} (final {r['final_test']['median_win_rate']:.2f})")
        data = runs[0]["dataset"]
        ax.axhline(data["win_rate"], ls="--", color="black", lw=1,
                   label=f"dataset ({data['win_rate']:.2f})")
        ax.set_title(f"{name} {data['quality']}: {runs[0]['algo']}, "
                     f"median of {len(runs[0]['seeds'])} seeds")
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("greedy test win rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["3m=3m/medium"],
                        help="NAME=DATASET_PATH pairs")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 1.0, 5.0])
    parser.add_argument("--algo", default="macql", choices=["macql", "macal-ql"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--test-interval", type=int, default=250)
    parser.add_argument("--test-episodes", type=int, default=64)
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="ovmse-pretrain-"))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                            jax=jax.__version__, device=str(jax.devices()[0]),
                            date=time.strftime("%Y-%m-%d")),
               settings=dict(steps=args.steps, seeds=args.seeds, alphas=args.alphas,
                             algo=args.algo, test_interval=args.test_interval,
                             test_episodes=args.test_episodes, final_test_episodes=640),
               runs=[])
    results = out["runs"]
    for pair in args.data:
        name, path = pair.split("=", 1)
        for alpha in args.alphas:
            results.append(run_one(name, path, alpha, args, work_dir))
            r = results[-1]
            print(f"{name} alpha {alpha:g}: final median win rate "
                  f"{r['final_test']['median_win_rate']:.3f} (per seed "
                  f"{', '.join(f'{w:.3f}' for w in r['final_test']['win_rate'])}); dataset "
                  f"{r['dataset']['win_rate']:.3f}; {r['wall_s']} s, "
                  f"{r['updates_per_s']} seed-updates/s", flush=True)
            # written after every run, so an interrupted benchmark keeps what it measured
            stem = args.results_dir / f"pretrain_{args.tag}"
            write_json(stem.with_suffix(".json"), out)
            plot(results, stem.with_suffix(".png"))
    print(f"wrote {args.results_dir / f'pretrain_{args.tag}'}.json and .png")
    print(f"{'dataset':>8} {'alpha':>6} {'final median win':>17} {'dataset win':>12}")
    for r in results:
        print(f"{r['name']:>8} {r['alpha']:>6g} {r['final_test']['median_win_rate']:>17.3f} "
              f"{r['dataset']['win_rate']:>12.3f}")


if __name__ == "__main__":
    main()
