"""One fine-tuning figure from several `bench_finetune.py` results, e.g. a schedule sweep:

    python benchmarks/plot_finetune.py --out benchmarks/results/finetune_3m_lam_sweep.png \
        --title "3m medium: OVM memory-weight anneal" \
        "3m_medium_cpu:ovmse=ovmse, lam 200k" "3m_medium_lam100000_cpu:ovmse=ovmse, lam 100k" \
        "3m_medium_lam50000_cpu:ovmse=ovmse, lam 50k" 3m_medium_cpu:se 3m_medium_cpu:qmix

Each curve is TAG:METHOD[=LABEL], read from benchmarks/results/finetune_TAG.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ovmse.plots import plot_finetune_curves

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", nargs="+", metavar="TAG:METHOD[=LABEL]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    curves, offline = {}, None
    for item in args.curves:
        source, _, label = item.partition("=")
        tag, _, method = source.partition(":")
        result = json.loads((RESULTS / f"finetune_{tag}.json").read_text())
        row = next(r for r in result["runs"] if r["method"] == method)
        curves[label or method] = row["curve"]
        offline = result["pretrain"]["final_test"]["median_win_rate"]
    plot_finetune_curves(curves, offline, args.title, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
