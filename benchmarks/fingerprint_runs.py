"""Fingerprints of tiny runs of every training program, to show that a refactor keeps results
bit-identical on one machine (issue 16: the committed study must stay valid).

    python benchmarks/fingerprint_runs.py --out /tmp/before.json           # on the old commit
    python benchmarks/fingerprint_runs.py --out /tmp/after.json --compare /tmp/before.json

Runs, on the shipped 3m medium (tiny networks, 2 seeds): MACQL and MACal-QL pre-training, then
fine-tuning from them with every method of `ovmse finetune --algo` (wsrl warming up for 300 of
its 600 steps), plus ovmse with CQL kept online and ovmse with offline data mixed in. Per run it
records the SHA-256 of its metrics (every record but the wall time, floats as stored in
metrics.jsonl), of its final test, and of its final networks (every seed's parameters, read
back from the checkpoint or the last policy snapshot). Equal fingerprints mean equal numbers to
the last bit; --compare names the runs that differ and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

from ovmse.config import (CqlConfig, FinetuneConfig, LearnerConfig, MemoryConfig, NetworkConfig,
                          PretrainConfig, TrainConfig)
from ovmse.methods import METHODS, finetune_config, own_options
from ovmse.runs import read_json, read_jsonl, write_json
from ovmse.train.driver import train
from ovmse.train.pretrain import pretrain
try:   # where the checkpoint reader lives (train/offline.py since the layering change of issue 16)
    from ovmse.train.offline import load_pretrained
except ImportError:
    from ovmse.train.pretrain import load_pretrained

NETWORK = NetworkConfig(agent_hidden_dim=16, mixer_embed_dim=8, hypernet_hidden_dim=16)


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _arrays_digest(arrays) -> str:
    h = hashlib.sha256()
    for leaf in arrays:
        leaf = np.asarray(leaf)
        h.update(f"{leaf.dtype}{leaf.shape}".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _run_fingerprint(run_dir: Path, networks: str) -> dict:
    records = [{k: v for k, v in r.items() if k != "wall_s"}
               for r in read_jsonl(run_dir / "metrics.jsonl")]
    final = read_json(run_dir / "summary.json")["final_test"]
    return dict(metrics=_digest(records), records=len(records), final_test=_digest(final),
                final_win_rate=final["win_rate"], networks=networks)


def _pretrain(out: Path, algo: str, estimator: str = "joint") -> dict:
    cql = CqlConfig(alpha=5.0, estimator=estimator, num_samples=10)
    cfg = PretrainConfig(dataset="3m/medium", algo=algo, network=NETWORK, steps=40,
                         num_seeds=2, test_interval=20, test_episodes=4, final_test_episodes=8,
                         checkpoint_interval=20, learner=LearnerConfig(batch_size=8, cql=cql))
    pretrain(cfg, out, progress=False)
    learner, _ = load_pretrained(out)
    return _run_fingerprint(out, _arrays_digest(jax.tree.leaves(learner.params)))


def _finetune(out: Path, algo: str, checkpoint: Path, cql_online=False, mix=0.0) -> dict:
    base = TrainConfig(steps=600, num_envs=4, num_seeds=2, test_interval=200, test_episodes=4,
                       final_test_episodes=8, checkpoint_interval=200,
                       finetune=FinetuneConfig(checkpoint=str(checkpoint), offline_ratio=mix,
                                               probe_episodes=4, warmup_steps=300))
    base = dataclasses.replace(
        base, explore=dataclasses.replace(base.explore, eps_anneal_steps=500),
        learner=dataclasses.replace(base.learner, batch_size=8, buffer_size=32,
                                    target_update_interval=16, length_buckets=2,
                                    memory=MemoryConfig(lam_anneal_steps=300)))
    train(finetune_config(algo, own_options(algo, base), cql_online=cql_online), out,
          progress=False)
    last = sorted((out / "policies").glob("chunk_*.npz"))[-1]
    with np.load(last) as z:
        arrays = [z[k] for k in sorted(z.files) if k.startswith("leaf_")]
    return _run_fingerprint(out, _arrays_digest(arrays))


def fingerprints(work: Path) -> dict:
    runs = {f"pretrain-{algo}": _pretrain(work / f"pretrain-{algo}", algo)
            for algo in ("macql", "macal-ql")}
    runs["pretrain-macql-counterfactual"] = _pretrain(work / "pretrain-counterfactual", "macql",
                                                      "counterfactual")
    if len({r["networks"] for r in runs.values()}) < len(runs):
        raise AssertionError("two different pre-trainings gave the same networks: the "
                             "fingerprints would not tell the programs apart")
    for algo in METHODS:
        start = work / ("pretrain-macal-ql" if algo == "macal-ql" else "pretrain-macql")
        runs[f"finetune-{algo}"] = _finetune(work / algo, algo, start)
    runs["finetune-ovmse-cql"] = _finetune(work / "ovmse-cql", "ovmse", work / "pretrain-macql",
                                           cql_online=True)
    runs["finetune-ovmse-mix0.25"] = _finetune(work / "ovmse-mix", "ovmse",
                                               work / "pretrain-macql", mix=0.25)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--compare", type=Path, help="an earlier --out to compare with")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        runs = fingerprints(Path(work))
    write_json(args.out, dict(runs=runs, jax=jax.__version__))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())["runs"]
    differ = [name for name in sorted(set(before) | set(runs))
              if before.get(name) != runs.get(name)]
    for name in differ:
        print(f"differs: {name}: before {before.get(name)}, after {runs.get(name)}")
    print(f"{len(runs) - len(differ)} of {len(set(before) | set(runs))} runs bit-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
