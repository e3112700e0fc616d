"""Benchmark of online QMIX on SMAX: throughput, its split, seed vectorisation, learning curves.

    python benchmarks/bench_online.py throughput --maps 3m 2s3z
    python benchmarks/bench_online.py seeds --maps 3m
    python benchmarks/bench_online.py curves --maps 3m --steps 500000 --seeds 0 1 2

Every section prints a table and writes JSON to benchmarks/results/ (PNG for curves), stamped with
the machine, the device and the versions, so runs can be compared over time. Numbers are measured
after compilation unless a field says otherwise. Learning curves run each seed alone, in its own
process, through `ovmse train`, so their wall-clock times are those a user gets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse.buffers.episode import empty_batch, sample_episodes
from ovmse.config import EnvConfig, TrainConfig
from ovmse.envs import make_env
from ovmse.learner import init_learner, learner_update
from ovmse.networks.qmix import make_networks
from ovmse.runs import read_jsonl, write_json
from ovmse.train.online import OnlineTrainer

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return dict(platform=platform.platform(), cpus=os.cpu_count(), jax=jax.__version__,
                device=str(jax.devices()[0]), python=platform.python_version(),
                date=time.strftime("%Y-%m-%d"))


def timed(fn, *args, repeats: int = 5):
    """Median seconds of fn(*args) after one warm-up call (which compiles)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timed_once(fn, *args) -> float:
    """Seconds of one call of the jitted fn(*args), compiled beforehand."""
    compiled = fn.lower(*args).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def env_only_steps_per_s(map_name: str, num_envs: int, steps: int = 500) -> float:
    """Raw SMAX: num_envs environments, random available actions, reset when done."""
    env = make_env(map_name)

    def run(key):
        env_state, first = jax.vmap(env.reset)(jax.random.split(key, num_envs))

        def step(carry, k):
            env_state, avail = carry
            k_act, k_env, k_reset = jax.random.split(k, 3)
            actions = jax.random.categorical(k_act, jnp.where(avail, 0.0, -jnp.inf))
            env_state, result = jax.vmap(env.step)(jax.random.split(k_env, num_envs),
                                                   env_state, actions)
            fresh_state, fresh = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
            done = result.terminated | result.truncated
            pick = lambda new, old: jnp.where(  # noqa: E731
                done.reshape((num_envs,) + (1,) * (new.ndim - 1)), new, old)
            env_state = jax.tree.map(pick, fresh_state, env_state)
            return (env_state, pick(fresh.avail, result.avail)), result.reward.sum()

        return jax.lax.scan(step, (env_state, first.avail), jax.random.split(key, steps))[1]

    seconds = timed(jax.jit(run), jax.random.PRNGKey(0), repeats=3)
    return num_envs * steps / seconds


def update_seconds_by_length(cfg: TrainConfig, lengths) -> dict[int, float]:
    """Seconds per learner update (batch_size episodes) when the unroll has `length` steps."""
    env = make_env(cfg.env.map, cfg.env.episode_limit)
    nets = make_networks(env.spec, cfg.network)
    state = init_learner(jax.random.PRNGKey(0), nets, cfg.learner)
    out = {}
    for length in lengths:
        batch = empty_batch(env.spec, cfg.learner.batch_size).first_steps(length)
        batch = batch._replace(filled=jnp.ones_like(batch.filled),
                               avail=jnp.ones_like(batch.avail),
                               obs=jax.random.normal(jax.random.PRNGKey(1), batch.obs.shape))
        update = jax.jit(lambda s, b: learner_update(s, b, nets, cfg.learner))
        out[length] = timed(update, state, batch)
    return out


def throughput(map_name: str, measure_steps: int, warmup_steps: int) -> dict:
    cfg = TrainConfig(env=EnvConfig(map=map_name))
    trainer = OnlineTrainer(cfg)
    states = trainer.init(trainer.seed_keys())
    start = time.perf_counter()
    states, _ = trainer.run_chunk(states, jnp.int32(warmup_steps))
    jax.block_until_ready(states)
    warmup_s = time.perf_counter() - start
    t0, updates0, episodes0 = (int(states.t_env[0]), int(states.learner.updates[0]),
                               int(states.episodes[0]))
    start = time.perf_counter()
    states, stats = trainer.run_chunk(states, jnp.int32(warmup_steps + measure_steps))
    jax.block_until_ready(states)
    train_s = time.perf_counter() - start
    steps = int(states.t_env[0]) - t0
    updates = int(states.learner.updates[0]) - updates0
    iterations = (int(states.episodes[0]) - episodes0) // cfg.num_envs
    mean_unroll = float(stats.unroll_steps[0]) / max(float(stats.updates[0]), 1.0)

    # The two real costs, each alone in a jitted loop of the same length as the window:
    # acting (rollouts, buffer writes, batch sampling) with the agents as they are now, and the
    # same number of updates on batches from the same buffer (same unroll-length choice).
    far = jnp.int32(2 ** 30)

    def collect_only(states, iterations):
        body = lambda _, st: jax.vmap(trainer._collect, in_axes=(0, None))(st, far)[0]  # noqa
        return jax.lax.fori_loop(0, iterations, body, states)

    def learn_only(states, key, num_updates):
        def body(i, learners):
            keys = jax.random.split(jax.random.fold_in(key, i), states.t_env.shape[0])
            batches = jax.vmap(lambda b, k: jax.vmap(
                lambda kk: sample_episodes(b, kk, cfg.learner.batch_size))(k[None]))(
                states.buffer, keys)
            learning = jnp.ones(states.t_env.shape, bool)
            return trainer._learn(learners, batches, learning)[0]
        return jax.lax.fori_loop(0, num_updates, body, states.learner)

    collect_s = timed_once(jax.jit(collect_only), states, iterations)
    learn_s = timed_once(jax.jit(learn_only), states, jax.random.PRNGKey(9), updates)
    ideal_s = collect_s + learn_s
    by_length = update_seconds_by_length(cfg, trainer.unroll_lengths())
    return dict(
        map=map_name, num_envs=cfg.num_envs, batch_size=cfg.learner.batch_size,
        env_only_steps_per_s={n: round(env_only_steps_per_s(map_name, n)) for n in (8, 64)},
        acting_ms_per_iteration=round(collect_s / iterations * 1e3, 2),
        update_ms_in_loop=round(learn_s / max(updates, 1) * 1e3, 2),
        update_ms_by_unroll_length={k: round(v * 1e3, 2) for k, v in by_length.items()},
        measured=dict(env_steps=steps, iterations=iterations, updates=updates,
                      seconds=round(train_s, 2), warmup_env_steps=warmup_steps,
                      warmup_seconds_with_compile=round(warmup_s, 1),
                      mean_unroll_length=round(mean_unroll, 1),
                      mean_episode_length=round(steps / max(iterations * cfg.num_envs, 1), 1)),
        train_env_steps_per_s=round(steps / train_s, 1),
        updates_per_env_step=round(updates / max(steps, 1), 5),
        updates_per_episode=round(updates / max(iterations * cfg.num_envs, 1), 4),
        split=dict(acting_fraction=round(collect_s / ideal_s, 3),
                   learner_fraction=round(learn_s / ideal_s, 3)),
        ideal_env_steps_per_s=round(steps / ideal_s, 1),
        efficiency=round(ideal_s / train_s, 3),
    )


def seeds_wall_time(map_name: str, num_seeds: int, steps: int) -> dict:
    """Wall time of `steps` env steps per seed with num_seeds vmapped seeds (after compile),
    in a fresh process so that its peak memory is its own."""
    code = f"""
import json, resource, time, jax, jax.numpy as jnp
from ovmse.config import TrainConfig, EnvConfig
from ovmse.train.online import OnlineTrainer
cfg = TrainConfig(env=EnvConfig(map={map_name!r}), num_seeds={num_seeds})
tr = OnlineTrainer(cfg)
states = tr.init(tr.seed_keys())
per_seed_bytes = sum(x.nbytes for x in jax.tree.leaves(states)) / {num_seeds}
run = tr.run_chunk.lower(states, jnp.int32(0)).compile()
states, _ = run(states, jnp.int32(2000)); jax.block_until_ready(states)
start = time.perf_counter()
states, _ = run(states, jnp.int32(2000 + {steps})); jax.block_until_ready(states)
print(json.dumps(dict(seconds=time.perf_counter() - start, state_bytes_per_seed=per_seed_bytes,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return dict(map=map_name, num_seeds=num_seeds, env_steps_per_seed=steps,
                seconds=round(result["seconds"], 2),
                state_mb_per_seed=round(result["state_bytes_per_seed"] / 2 ** 20, 1),
                peak_rss_mb=round(result["peak_rss_mb"], 1))


def learning_curve(map_name: str, seeds: list[int], steps: int, work_dir: Path) -> dict:
    """Each seed alone through `ovmse train` in its own process; returns the per-seed curves.
    A seed whose run in work_dir has already finished (summary.json) is read, not rerun."""
    runs = {}
    for seed in seeds:
        run_dir = work_dir / f"{map_name}-{steps}-seed{seed}"
        if not (run_dir / "summary.json").exists():
            cmd = [sys.executable, "-m", "ovmse.cli", "train", "--map", map_name, "--steps",
                   str(steps), "--seed", str(seed), "--out", str(run_dir), "--no-progress"]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        records = read_jsonl(run_dir / "metrics.jsonl")
        summary = json.loads((run_dir / "summary.json").read_text())
        runs[seed] = dict(
            t_env=[r["t_env"] for r in records], wall_s=[r["wall_s"] for r in records],
            test_win_rate=[r["test_win_rate"] for r in records],
            test_return=[r["test_return"] for r in records],
            train_seconds=summary["wall_s"],
            final_test_win_rate=summary["final_test"]["win_rate"][0])
    return runs


def first_crossing(curve: dict, threshold: float):
    """(env steps, wall seconds) of the first test at or above threshold, or None."""
    for t, w, v in zip(curve["t_env"], curve["wall_s"], curve["test_win_rate"]):
        if v >= threshold:
            return t, w
    return None


def threshold_summary(runs: dict, threshold: float) -> dict:
    """Per seed (env steps, wall s) of the first test at or above threshold, and the medians
    over seeds counting a seed that never got there as infinitely late (None if the median
    seed never got there)."""
    hits = {seed: first_crossing(curve, threshold) for seed, curve in runs.items()}

    def median_of(index):
        values = sorted(h[index] if h else float("inf") for h in hits.values())
        mid = len(values) // 2
        median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
        return None if median == float("inf") else float(median)

    return dict(per_seed=hits, median_env_steps=median_of(0), median_wall_s=median_of(1))


def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = list(curves)
    fig, axes = plt.subplots(len(maps), 2, figsize=(11, 3.8 * len(maps)), squeeze=False)
    for row, name in enumerate(maps):
        for col, x_key, x_label in ((0, "t_env", "env steps"), (1, "wall_s", "wall-clock s")):
            ax = axes[row, col]
            for seed, c in curves[name].items():
                ax.plot(c[x_key], c["test_win_rate"], lw=1, alpha=0.7, label=f"seed {seed}")
            ax.axhline(0.8, color="grey", ls=":", lw=1)
            ax.set_xlabel(x_label)
            ax.set_ylabel("greedy test win rate (32 ep.)")
            ax.set_title(f"QMIX from scratch, SMAX {name}")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["throughput", "seeds", "curves"])
    parser.add_argument("--maps", nargs="+", default=["3m", "2s3z"])
    parser.add_argument("--steps", type=int, default=500_000, help="curves: env steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="curves: seeds")
    parser.add_argument("--measure-steps", type=int, default=50_000,
                        help="throughput: env steps timed (after a warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=20_000)
    parser.add_argument("--seed-counts", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--seed-steps", type=int, default=20_000)
    parser.add_argument("--tag", default="cpu", help="suffix of the result files (e.g. cpu, h200)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="curves: run folders (finished runs there are reused)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict = dict(machine=machine(), section=args.section)

    if args.section == "throughput":
        result["maps"] = {m: throughput(m, args.measure_steps, args.warmup_steps)
                          for m in args.maps}
        for m, r in result["maps"].items():
            print(f"{m}: env only {r['env_only_steps_per_s']} steps/s | acting "
                  f"{r['acting_ms_per_iteration']} ms/iteration | update "
                  f"{r['update_ms_in_loop']} ms in loop, alone by unroll length "
                  f"{r['update_ms_by_unroll_length']} | training {r['train_env_steps_per_s']} "
                  f"steps/s, ideal {r['ideal_env_steps_per_s']} (efficiency {r['efficiency']}) "
                  f"| acting {r['split']['acting_fraction']:.0%} / learner "
                  f"{r['split']['learner_fraction']:.0%} | {r['updates_per_env_step']} updates "
                  f"per env step, mean unroll {r['measured']['mean_unroll_length']}")
    elif args.section == "seeds":
        result["runs"] = [seeds_wall_time(m, n, args.seed_steps)
                          for m in args.maps for n in args.seed_counts]
        for r in result["runs"]:
            print(f"{r['map']} x{r['num_seeds']} seeds: {r['seconds']} s for "
                  f"{r['env_steps_per_seed']} env steps per seed; state "
                  f"{r['state_mb_per_seed']} MB per seed; peak RSS {r['peak_rss_mb']} MB")
    else:
        work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="ovmse-curves-"))
        curves = {m: learning_curve(m, args.seeds, args.steps, work_dir) for m in args.maps}
        result.update(steps=args.steps, seeds=args.seeds, curves=curves, to_threshold={})
        for m, runs in curves.items():
            for threshold in (0.5, 0.8):
                result["to_threshold"][f"{m}@{threshold}"] = threshold_summary(runs, threshold)
            finals = [c["final_test_win_rate"] for c in runs.values()]
            print(f"{m}: final 640-episode win rate per seed {finals}; to 0.8: "
                  f"{result['to_threshold'][f'{m}@0.8']}")
        plot_curves(curves, RESULTS / f"learning_curves_{args.tag}.png")
    path = RESULTS / f"online_{args.section}_{args.tag}.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

