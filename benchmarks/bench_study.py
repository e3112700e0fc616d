"""What a study cell costs on this machine, with the code of an earlier commit and with this
checkout's, timed in one run, and where each cell's time goes.

    python benchmarks/bench_study.py --before a6851f2 --tag cpu

The cells are the study's own (`ovmse.study.cells`: `run_cell` of a PretrainCell and of
FinetuneCells, as `ovmse experiment run` runs them): on each map of --maps, MACQL pre-training
(--pretrain-steps gradient steps) and fine-tuning with each of --methods (ovmse, and macql,
which keeps CQL online) for --steps env steps, --seeds seeds per cell, the cpu scale's settings
otherwise (tests every --steps / 4, 640-episode final test, one checkpoint). 3m pre-trains on
the shipped medium dataset; 2s3z, which has no shipped data, on --episodes random episodes
collected by the earlier code (both versions read that format). Each version runs its cells in
a fresh process of its own, with an empty compilation cache, one version after the other.

Per cell: wall time, and where it goes, measured in that process by wrapping the trainers'
jitted programs and the checkpoint writes (each call waits for its result):
  compilation (JAX's tracing, lowering and compiling, from jax.monitoring), init (the seeds'
  starting states; fine-tuning: with the probe episodes of the pre-trained policy), chunks
  (acting and learning), tests (greedy tests, final test included), probe (the probe's Q),
  checkpoints, snapshots, other (the rest: records, metrics files, figures, Python).
Then the learner alone, per update at the cell's mean unroll length: the forward pass of one
agent network (online; target and memory cost the same), the whole loss forward, the update
(forward + backward + Adam), the same without the CQL term; chunk time minus updates x update
time is acting (and whatever else the chunk does).

Writes benchmarks/results/study_throughput_<tag>.json: per version and cell the split above;
"speedup" = cells per hour after / before over all cells, "speedup_cql_online" over the
fine-tuning cells that keep CQL online.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PARTS = ("compilation", "init", "chunks", "tests", "probe", "checkpoints", "snapshots")


# ---------------------------------------------------------------- the parent: both versions

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="a6851f2", help="commit of the earlier code")
    parser.add_argument("--maps", nargs="+", default=["3m", "2s3z"])
    parser.add_argument("--methods", nargs="+", default=["ovmse", "macql"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=300,
                        help="random episodes collected for maps without shipped data")
    parser.add_argument("--jobs", type=int, default=2,
                        help="cells at once with this checkout's code (ovmse experiment run "
                             "--jobs); the earlier code runs them one after the other")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        result = compare(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"study_throughput_{args.tag}.json"
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(format_table(result))
    print(f"wrote {out}")


def compare(args, work: Path) -> dict:
    before_src = checkout(args.before, work / "before-code")
    shipped = [before_src.parent / "datasets", before_src / "ovmse" / "datasets" / "shipped"]
    data = {m: str(root / m / "medium") for root in reversed(shipped) for m in args.maps
            if (root / m / "medium" / "dataset.json").exists()}
    for map_name in args.maps:
        if map_name not in data:
            data[map_name] = str(work / "data" / map_name / "random")
            if not Path(data[map_name], "dataset.json").exists():
                collect_random(before_src, map_name, args.episodes, data[map_name])
    plan = dict(maps=args.maps, methods=args.methods, seeds=args.seeds, steps=args.steps,
                pretrain_steps=args.pretrain_steps, data=data)
    versions = dict(before=run_version(before_src, plan, work / "before", 1),
                    after=run_version(ROOT / "src", plan, work / "after", args.jobs))
    cql_before, cql_after = (sum(p["wall_s"] for p in versions[v]["phases"]
                                 if all(is_cql_online(c) for c in p["cells"]))
                             for v in ("before", "after"))
    return dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                     python=platform.python_version()),
        command=" ".join(["python", "benchmarks/bench_study.py"] + sys.argv[1:]),
        before=dict(commit=git("rev-parse", args.before)),
        after=dict(commit=git("rev-parse", "HEAD"), dirty=bool(git("status", "--porcelain"))),
        plan=plan,
        speedup=round(versions["before"]["wall_s"] / versions["after"]["wall_s"], 3),
        speedup_cql_online=round(cql_before / cql_after, 3),
        versions=versions,
    )


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def checkout(rev: str, dest: Path) -> Path:
    """The source tree of `rev` in dest (src/, and datasets/ where the shipped datasets lived
    outside the package before 0.2); returns dest/src."""
    if not (dest / "src").exists():
        dest.mkdir(parents=True, exist_ok=True)
        paths = ["src"] + (["datasets"] if subprocess.run(
            ["git", "cat-file", "-e", f"{rev}:datasets"], cwd=ROOT).returncode == 0 else [])
        archive = subprocess.run(["git", "archive", rev, *paths], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def collect_random(src: Path, map_name: str, episodes: int, out: str) -> None:
    code = ("import sys; from ovmse.cli import main; sys.argv = ['ovmse'] + sys.argv[1:]; "
            "main()")
    subprocess.run([sys.executable, "-c", code, "dataset", "collect", "--map", map_name,
                    "--quality", "random", "--episodes", str(episodes), "--out", out,
                    "--no-progress"], env=version_env(src, None), check=True)


def version_env(src: Path, cache: Path | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    env["OVMSE_COMPILATION_CACHE"] = str(cache) if cache else "off"
    return env


CQL_ONLINE_METHODS = ("macql", "macal-ql")
"""The methods whose fine-tuning keeps the CQL term."""


def is_cql_online(name: str) -> bool:
    return any(name.endswith(f"-{method}") for method in CQL_ONLINE_METHODS)


def phases(plan: dict) -> list[list[str]]:
    """The cells by phase, as the study runs them: pre-training first (fine-tuning reads its
    checkpoints), then fine-tuning; the CQL-online cells in a phase of their own, so that their
    cells per hour are measured apart."""
    cells = ([f"pretrain-{m}-bench" for m in plan["maps"]],
             [f"{m}-bench-{x}" for m in plan["maps"] for x in plan["methods"]
              if x not in CQL_ONLINE_METHODS],
             [f"{m}-bench-{x}" for m in plan["maps"] for x in plan["methods"]
              if x in CQL_ONLINE_METHODS])
    return [names for names in cells if names]


def run_version(src: Path, plan: dict, work: Path, jobs: int) -> dict:
    """Run the plan's cells with the code in `src`, phase by phase, each phase's cells in
    `jobs` fresh worker processes at once (as `ovmse experiment run --jobs`; 1: one process
    runs them one after the other, as the earlier code's study does); then time the learner
    of each fine-tuning cell alone. Returns the timings."""
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "jax-cache"
    if not (work / "phase-0.json").exists():
        shutil.rmtree(cache, ignore_errors=True)
    (work / "plan.json").write_text(json.dumps(plan, allow_nan=False))
    env = version_env(src, cache)
    cells, walls = [], []
    for index, names in enumerate(phases(plan)):
        groups = [names[i::jobs] for i in range(jobs) if names[i::jobs]]
        phase_file = work / f"phase-{index}.json"
        if not phase_file.exists():   # a rerun with the same --work-dir keeps finished phases
            start = time.perf_counter()
            workers = [subprocess.Popen([sys.executable, __file__, "_cells", str(work),
                                         f"{index}-{i}", *group], env=env)
                       for i, group in enumerate(groups)]
            if any(w.wait() for w in workers):
                raise SystemExit(f"a worker of {work.name} failed")
            phase_file.write_text(json.dumps(dict(
                cells=names, wall_s=round(time.perf_counter() - start, 1)), allow_nan=False))
        walls.append(json.loads(phase_file.read_text()))
        for i in range(len(groups)):
            cells += json.loads((work / f"timings-{index}-{i}.json").read_text())
    if not (work / "learner.json").exists():
        subprocess.run([sys.executable, __file__, "_learner", str(work)], env=env, check=True)
    split = json.loads((work / "learner.json").read_text())
    for cell in cells:
        cell.update(split.get(cell["name"], {}))
    return dict(jobs=jobs, phases=walls, wall_s=round(sum(p["wall_s"] for p in walls), 1),
                cells=cells)


def format_table(result: dict) -> str:
    lines = [f"{'cell':<28} {'before s':>9} {'after s':>8} {'x':>5}   "
             + "  ".join(f"{p[:6]:>6}" for p in PARTS) + "  (after, s)"]
    after = {c["name"]: c for c in result["versions"]["after"]["cells"]}
    for cell in result["versions"]["before"]["cells"]:
        new = after[cell["name"]]
        lines.append(f"{cell['name']:<28} {cell['wall_s']:>9.1f} {new['wall_s']:>8.1f} "
                     f"{cell['wall_s'] / new['wall_s']:>5.2f}   "
                     + "  ".join(f"{new['parts'][p]:>6.1f}" for p in PARTS))
    lines.append(f"speedup (cells per hour, after / before): {result['speedup']:.2f}; "
                 f"CQL-online cells: {result['speedup_cql_online']:.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the worker: one version

class Clock:
    """Seconds per part; compilation is counted apart from the call it happens in."""

    def __init__(self):
        import jax.monitoring

        self.compile_s = 0.0
        self.parts = dict.fromkeys(PARTS, 0.0)
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):  # tracing, lowering, compiling (or reading
            self.compile_s += duration  # the persistent cache, inside backend_compile)

    def wrap(self, part: str, fn):
        import jax

        def timed(*args, **kwargs):
            compiled, start = self.compile_s, time.perf_counter()
            out = fn(*args, **kwargs)
            if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(out)):
                jax.block_until_ready(out)
            spent, compiling = time.perf_counter() - start, self.compile_s - compiled
            self.parts[part] += spent - compiling
            self.parts["compilation"] += compiling
            return out
        return timed

    def reset(self) -> dict:
        parts, self.parts = self.parts, dict.fromkeys(PARTS, 0.0)
        return parts


def instrument(clock: Clock) -> None:
    """Wrap the trainers' programs and the writers of checkpoints and snapshots."""
    from ovmse.train import driver, offline, online, pretrain

    programs = dict(init="init", init_pretrained="init", run_chunk="chunks", evaluate="tests",
                    probe_values="probe")
    for cls in (online.OnlineTrainer, offline.OfflineTrainer):
        original = cls.__init__

        def __init__(self, *args, _original=original, **kwargs):
            _original(self, *args, **kwargs)
            for attr, part in programs.items():
                if hasattr(self, attr):
                    setattr(self, attr, clock.wrap(part, getattr(self, attr)))
        cls.__init__ = __init__
    for module in (driver, pretrain):
        module.save_checkpoint = clock.wrap("checkpoints", module.save_checkpoint)
    driver._save_snapshot = clock.wrap("snapshots", driver._save_snapshot)


def plan_cells(plan: dict) -> dict:
    """The study cells of the plan by name (this version's code)."""
    from ovmse.config import PretrainConfig, TrainConfig, with_overrides
    from ovmse.study.cells import FinetuneCell, PretrainCell

    cells = {}
    for map_name in plan["maps"]:
        steps = plan["pretrain_steps"]
        pre = PretrainCell(f"{map_name}/bench", PretrainConfig(
            dataset=plan["data"][map_name], steps=steps, num_seeds=plan["seeds"],
            test_interval=max(steps // 10, 1)))
        base = with_overrides(TrainConfig(
            steps=plan["steps"], num_seeds=plan["seeds"], test_interval=plan["steps"] // 4),
            {"explore.eps_anneal_steps": 50_000, "learner.memory.lam_anneal_steps": 50_000})
        cells[pre.name] = pre
        for method in plan["methods"]:
            cell = FinetuneCell(f"{map_name}/bench", method, base, pre)
            cells[cell.name] = cell
    return cells


def run_cells(work: Path, label: str, names: list[str]) -> None:
    """Run the named cells one after the other in this process, timing each by part."""
    compilation_cache_enable()
    clock = Clock()
    instrument(clock)
    from ovmse.study.cells import run_cell

    cells = plan_cells(json.loads((work / "plan.json").read_text()))
    timings = []
    for name in names:
        clock.reset()
        start = time.perf_counter()
        result = run_cell(cells[name], work / "cells")
        wall = time.perf_counter() - start
        parts = clock.reset()
        parts["other"] = wall - sum(parts.values())
        timings.append(dict(name=name, kind=result["kind"], wall_s=round(wall, 2),
                            parts={k: round(v, 2) for k, v in parts.items()},
                            env_steps_per_s=result.get("env_steps_per_s")))
        print(f"[{work.name}] {name}: {wall:.1f} s", flush=True)
    (work / f"timings-{label}.json").write_text(json.dumps(timings, indent=2, allow_nan=False))


def time_learners(work: Path) -> None:
    """The learner split of every fine-tuning cell of the plan, one after the other."""
    from ovmse.study.cells import FinetuneCell

    cells = plan_cells(json.loads((work / "plan.json").read_text()))
    chunks = {t["name"]: t["parts"]["chunks"] for f in work.glob("timings-*.json")
              for t in json.loads(f.read_text())}
    split = {name: learner_split(cell, work / "cells", chunks[name])
             for name, cell in cells.items() if isinstance(cell, FinetuneCell)}
    (work / "learner.json").write_text(json.dumps(split, indent=2, allow_nan=False))


def compilation_cache_enable() -> None:
    """The study's `ovmse experiment run` enables JAX's persistent compilation cache where the
    code has one (ovmse.compilation_cache, later versions)."""
    try:
        from ovmse.compilation_cache import enable
    except ImportError:
        return
    enable()


def learner_split(cell, work: Path, chunk_s: float) -> dict:
    """The learner's parts per update at the cell's mean unroll length (ms), and the chunk's
    split into learner and acting (s)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from ovmse.buffers.episode import EpisodeBatch
    from ovmse.config import from_dict, TrainConfig
    from ovmse.learner import OfflineMemory, init_learner, learner_update, qmix_loss
    try:   # the networks' own module and the named schedules (after a06df17)
        from ovmse.networks.qmix import agent_q_values
        from ovmse.schedules import Schedules
    except ImportError:
        from ovmse.learner import agent_q_values
        Schedules = None
    from ovmse.runs import read_jsonl
    from ovmse.study.cells import cell_dir
    from ovmse.train import bucketing
    from ovmse.train.online import OnlineTrainer

    run_dir = cell_dir(cell, work)
    cfg = from_dict(TrainConfig, json.loads((run_dir / "config.json").read_text()))
    everything = read_jsonl(run_dir / "metrics.jsonl")
    records = [r for r in everything if "unroll_length" in r]
    # gradient steps of the slowest seed (the counter starts at the pre-training's count)
    updates = max(r["updates"] for r in everything) - min(r["updates"] for r in everything)
    unroll = float(np.mean([r["unroll_length"] for r in records])) if records else 0.0
    trainer = OnlineTrainer(cfg)
    lengths = trainer.unroll_lengths()
    length = min((n for n in lengths if n >= unroll), default=lengths[-1])
    spec, nets, lcfg, seeds = trainer.spec, trainer.nets, cfg.learner, cfg.num_seeds
    b, n, a = lcfg.batch_size, spec.num_agents, spec.num_actions
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    learners = jax.vmap(lambda k: init_learner(k, nets, lcfg))(keys)
    memory = OfflineMemory(learners.target_params, learners.params["agent"])
    lam = jnp.full((seeds,), 0.5)   # OVM's weight, named in the versions that name it
    if Schedules is not None:
        lam = Schedules(epsilon=jnp.zeros((seeds,)), lam=lam, learn=jnp.ones((seeds,), bool))

    def batch(key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        no = jnp.zeros((length, b), bool)
        return EpisodeBatch(
            obs=jax.random.normal(k1, (length + 1, b, n, spec.obs_dim)),
            state=jax.random.normal(k2, (length + 1, b, spec.state_dim)),
            avail=jnp.ones((length + 1, b, n, a), bool),
            actions=jax.random.randint(k3, (length, b, n), 0, a),
            rewards=jax.random.normal(k4, (length, b)), terminated=no, truncated=no, won=no,
            filled=~no)

    batches = jax.vmap(batch)(keys)
    loop = ({"seed_loop": bucketing.default_seed_loop()}
            if hasattr(bucketing, "default_seed_loop") else {})
    no_cql = dataclasses.replace(lcfg, cql=dataclasses.replace(lcfg.cql, alpha=0.0))
    try:   # the version's own compiler options (ovmse.compiler, after a6851f2)
        from ovmse.compiler import jit
    except ImportError:
        jit = jax.jit

    def forward(learner, batch, key, memory, lam):
        return learner, jnp.sum(agent_q_values(nets, learner.params["agent"], batch))

    def loss(learner, batch, key, memory, lam):
        return learner, qmix_loss(learner.params, learner.target_params, nets, batch, lcfg,
                                  key, memory, lam)[0]

    def update(learner, batch, key, memory, lam):
        return learner_update(learner, batch, nets, lcfg, key, memory, lam)

    def update_no_cql(learner, batch, key, memory, lam):
        return learner_update(learner, batch, nets, no_cql, key, memory, lam)

    def per_call_ms(fn) -> float:
        run = jit(lambda learners, batches, keys, memory, lam: bucketing.update_all_seeds(
            fn, learners, batches, keys, (length,), memory, lam, **loop)[1])
        jax.block_until_ready(run(learners, batches, keys, memory, lam))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            jax.block_until_ready(run(learners, batches, keys, memory, lam))
            times.append(time.perf_counter() - start)
        return 1000 * min(times)

    ms = dict(agent_forward=per_call_ms(forward), loss_forward=per_call_ms(loss),
              update=per_call_ms(update))
    ms["update_without_cql"] = per_call_ms(update_no_cql) if lcfg.cql.alpha > 0 else ms["update"]
    ms = {k: round(v, 1) for k, v in ms.items()}
    learner_s = updates * ms["update"] / 1000
    return dict(unroll_length=length, updates=updates, learner_ms_per_update=ms,
                learner_split_ms=dict(
                    forward_per_network=ms["agent_forward"],
                    loss_forward=ms["loss_forward"],
                    backward_and_adam=round(ms["update"] - ms["loss_forward"], 1),
                    cql_term=round(ms["update"] - ms["update_without_cql"], 1)),
                chunk_split_s=dict(learner=round(learner_s, 1),
                                   acting_and_rest=round(chunk_s - learner_s, 1)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_cells"]:
        run_cells(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
    elif sys.argv[1:2] == ["_learner"]:
        time_learners(Path(sys.argv[2]))
    else:
        main()
