"""Benchmark of dataset collection and storage: episodes per second, bytes per transition,
write / load / verify times.

    python benchmarks/bench_datasets.py --maps 3m 2s3z --episodes 1000

Collection plays `batch` episodes at a time with random initial networks and behaviour epsilon
0.05 (a policy's cost does not depend on its weights); uniform random play is timed too. Writes
JSON to benchmarks/results/datasets_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax

from ovmse.runs import write_json
from ovmse.config import NetworkConfig
from ovmse.datasets.collect import collect_episodes
from ovmse.datasets.store import load_dataset, verify_dataset, write_dataset
from ovmse.envs import make_env
from ovmse.networks.qmix import init_params, make_networks

RESULTS = Path(__file__).parent / "results"


def measure(map_name: str, episodes: int, batch: int) -> dict:
    env = make_env(map_name)
    nets = make_networks(env.spec, NetworkConfig())
    params = init_params(jax.random.PRNGKey(0), nets)["agent"]
    out = dict(map=map_name, episodes=episodes, batch=batch)
    for name, eps in (("policy_eps_0.05", 0.05), ("random", 1.0)):
        start = time.perf_counter()
        batch_data, rate = collect_episodes(env, nets.agent, params, episodes, eps, seed=0,
                                            batch=batch)
        out[f"{name}_episodes_per_s"] = round(rate, 1)
        out[f"{name}_seconds_with_compile"] = round(time.perf_counter() - start, 1)
        out[f"{name}_mean_length"] = round(float(batch_data.filled.sum(0).mean()), 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds"
        start = time.perf_counter()
        meta = write_dataset(path, batch_data, env.spec, "random", {})
        out["write_s"] = round(time.perf_counter() - start, 2)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        out["bytes_on_disk"] = size
        out["bytes_per_transition"] = round(size / meta["transitions"], 1)
        start = time.perf_counter()
        load_dataset(path, env.spec)
        out["load_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        verify_dataset(path)
        out["verify_s"] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", nargs="+", default=["3m", "2s3z"])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    result = dict(device=str(jax.devices()[0]), jax=jax.__version__,
                  date=time.strftime("%Y-%m-%d"),
                  maps=[measure(m, args.episodes, args.batch) for m in args.maps])
    for r in result["maps"]:
        print(json.dumps(r))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"datasets_{args.tag}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
