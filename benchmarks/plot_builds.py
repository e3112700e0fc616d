"""The source runs of the dataset builds: every policy snapshot's re-measured greedy win rate
against the env steps it had trained, one panel per map, with the snapshots the rule picked
(docs/datasets.md: expert = the best, medium = the earlier one closest to half of it):

    python benchmarks/plot_builds.py            # every benchmarks/results/dataset_build_*.json
    python benchmarks/plot_builds.py 5m_vs_6m 6h_vs_8z --out builds.png

Reads the builds' records (`build.json`, kept as benchmarks/results/dataset_build_MAP.json).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def snapshot_steps(path: str, test_interval: int) -> int:
    """Env steps a snapshot had trained: its chunk (policies/chunk_XXXXX.npz) x the run's test
    interval."""
    match = re.search(r"chunk_(\d+)\.npz$", path)
    if not match:
        raise ValueError(f"not a policy snapshot path: {path}")
    return int(match.group(1)) * test_interval


def plot_builds(records: dict[str, dict], out: Path) -> None:
    fig, axes = plt.subplots(1, len(records), figsize=(4.2 * len(records), 3.4), squeeze=False)
    for ax, (name, record) in zip(axes[0], records.items()):
        interval = record["train_config"]["test_interval"]
        steps = [snapshot_steps(s["path"], interval) / 1e6 for s in record["snapshots"]]
        rates = [s["win_rate"] for s in record["snapshots"]]
        ax.plot(steps, rates, color="tab:blue", lw=1.2)
        for pick, colour in (("expert", "tab:green"), ("medium", "tab:orange")):
            x = snapshot_steps(record[pick], interval) / 1e6
            rate = record[f"{pick}_win_rate"]
            ax.plot([x], [rate], "o", color=colour, label=f"{pick}: {rate:.3f} at {x:.2f}M")
        ax.axhline(record["expert_win_rate"] / 2, color="grey", lw=0.8, ls="--",
                   label="half of the expert's")
        ax.set(title=f"{name} (seed {record['seed']}, {record['eval_episodes']} episodes each)",
               xlabel="env steps trained (millions)", ylabel="greedy win rate", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", nargs="*", help="maps (default: every build record)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dataset_builds.png")
    args = parser.parse_args()
    paths = ([RESULTS / f"dataset_build_{m}.json" for m in args.maps] if args.maps
             else sorted(RESULTS.glob("dataset_build_*.json")))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise SystemExit(f"no build record {', '.join(missing) or 'in ' + str(RESULTS)}; "
                         f"a build writes it as build.json (docs/datasets.md)")
    records = {p.stem.removeprefix("dataset_build_"): json.loads(p.read_text()) for p in paths}
    plot_builds(records, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
