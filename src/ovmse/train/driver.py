"""The Python side of online training: run folder, chunks, tests, checkpoints, resume, summary.

Python runs once per test interval (one jitted chunk, one jitted test); everything per env step
happens inside the jitted programs of train/online.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse import compiler
from ovmse.config import TrainConfig, from_dict, to_dict, validate_train
from ovmse.errors import UserError, warn_user
from ovmse.evaluation import TestStats
from ovmse.metrics_log import LogSettings, MetricsLog
from ovmse.plots import plot_learning_curve
from ovmse.progress import advance, announce_final_test, progress_bar
from ovmse.provenance import code_version
from ovmse.runs import (CHECKPOINT_FILE, device_name, load_checkpoint, new_run_dir,
                        read_checkpoint_meta, read_json, removed_if_unfinished, save_checkpoint,
                        write_json)
from ovmse.snapshots import save_policy_snapshot
from ovmse.train.health import check_finite
from ovmse.train.keys import FINAL_TEST_INDEX
from ovmse.train.online import ChunkStats, OnlineTrainer


def chunk_ends(cfg: TrainConfig) -> list[int]:
    """The env steps at which chunks end and tests run: every test_interval, and at `steps`."""
    count = math.ceil(cfg.steps / cfg.test_interval)
    return [min((k + 1) * cfg.test_interval, cfg.steps) for k in range(count)]


def _records(chunk: int, states, stats: ChunkStats | None, test: TestStats, trainer,
             wall_s: float) -> list[dict]:
    """One metrics record per seed; fine-tuning runs add lam (OVM's memory weight) and
    probe_q (mean Q_tot of the current network on the offline policy's probe episodes)."""
    probe = trainer.probe_values(states) if states.probe is not None else None
    host = jax.device_get((states.t_env, states.episodes, states.learner.updates, stats, test,
                           probe))
    t_env, episodes, updates, stats, test, probe = host
    records = []
    for i in range(len(t_env)):
        rec = dict(seed=trainer.cfg.seed + i, chunk=chunk, t_env=int(t_env[i]),
                   episodes=int(episodes[i]), updates=int(updates[i]),
                   epsilon=float(trainer.epsilon(int(t_env[i]))), wall_s=round(wall_s, 3),
                   test_win_rate=float(test.win_rate[i]), test_return=float(test.mean_return[i]),
                   test_ep_length=float(test.mean_length[i]))
        if trainer.cfg.learner.memory.use_memory:
            rec["lam"] = float(trainer.memory_weight(int(t_env[i])))
        if probe is not None:
            rec["probe_q"] = float(probe[i])
        if stats is not None and stats.episodes[i] > 0:
            n_ep, n_up = float(stats.episodes[i]), max(float(stats.updates[i]), 1.0)
            rec.update(train_return=float(stats.returns[i]) / n_ep,
                       train_win_rate=float(stats.wins[i]) / n_ep,
                       train_ep_length=float(stats.lengths[i]) / n_ep,
                       explored_agents=float(stats.explored_agents[i]) / n_ep)
            if stats.updates[i] > 0:
                rec.update({f"{k}": float(v[i]) / n_up
                            for k, v in stats.update_metrics._asdict().items()})
                rec["unroll_length"] = float(stats.unroll_steps[i]) / n_up
        records.append(rec)
    return records


def _save_snapshot(run_dir: Path, chunk: int, states, records: list[dict],
                   cfg: TrainConfig) -> None:
    """The online networks of every seed at this test point (snapshots.py)."""
    save_policy_snapshot(run_dir, chunk, states.learner.params, dict(
        config=to_dict(cfg), t_env=[r["t_env"] for r in records],
        test_win_rate=[r["test_win_rate"] for r in records]))


def _checkpoint_meta(cfg: TrainConfig, chunk: int, wall_s: float) -> dict:
    return dict(kind="online-train-state", config=to_dict(cfg), chunk=chunk, wall_s=wall_s)


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True,
          stop_after_chunks: int | None = None, log: LogSettings = LogSettings()) -> dict | None:
    """Train (or resume) online QMIX into `run_dir`; returns the summary dict.

    `stop_after_chunks` pauses the run after that many chunks (test intervals) in total, with a
    checkpoint, and returns None: `resume=True` later continues it exactly. Resuming a folder
    that has no checkpoint yet (its run was killed early) starts it again from its config.json.
    The inputs (pre-trained checkpoint, offline data) are loaded before the folder is made, and
    a run that fails before its first checkpoint leaves no folder behind. Paths are stored
    resolved, so the run folder works from any directory. UserError when a seed's loss or
    networks become non-finite (the last good checkpoint is kept). Metrics go to
    metrics.jsonl and, as `log` says, to TensorBoard and W&B (metrics_log.py).
    """
    run_dir = Path(run_dir)
    if resume:
        cfg, from_checkpoint = _resumable_config(run_dir)
    else:
        cfg, from_checkpoint = cfg.resolved(), False
        validate_train(cfg)
    trainer = OnlineTrainer(cfg)
    pretrained, data = offline_inputs(cfg, trainer)
    if not resume:
        new_run_dir(run_dir)
        write_json(run_dir / "config.json", to_dict(cfg))
    with removed_if_unfinished(run_dir):
        return _train_loop(cfg, trainer, pretrained, data, run_dir, from_checkpoint, progress,
                           stop_after_chunks, log)


def _train_loop(cfg: TrainConfig, trainer: OnlineTrainer, pretrained, data, run_dir: Path,
                from_checkpoint: bool, progress: bool, stop_after_chunks: int | None,
                log_settings: LogSettings) -> dict | None:
    ckpt_path = run_dir / CHECKPOINT_FILE
    ends = chunk_ends(cfg)
    if from_checkpoint:
        if pretrained is None:
            template = jax.eval_shape(trainer.init, trainer.seed_keys())
        else:
            template = trainer.init_pretrained_shapes(trainer.seed_keys(), pretrained)
        states, meta = load_checkpoint(ckpt_path, template)
        start_chunk, wall_offset = meta["chunk"], meta["wall_s"]
        log = MetricsLog(run_dir, "t_env", start_chunk, log_settings, to_dict(cfg))
    else:
        states = (trainer.init(trainer.seed_keys()) if pretrained is None
                  else trainer.init_pretrained(trainer.seed_keys(), pretrained))
        test = trainer.evaluate(states, trainer.test_keys(0), cfg.test_episodes)
        start_chunk, wall_offset = 0, 0.0
        log = MetricsLog(run_dir, "t_env", None, log_settings, to_dict(cfg))
        log.extend(_records(0, states, None, test, trainer, 0.0))
        _save_snapshot(run_dir, 0, states, log.records, cfg)
        warn_if_few_updates(cfg, trainer.offline_share(),
                            float(np.mean([r["test_ep_length"] for r in log.records])))
    with log:
        return _train_chunks(cfg, trainer, states, data, run_dir, ends, start_chunk,
                             wall_offset, log, progress, stop_after_chunks)


def _train_chunks(cfg: TrainConfig, trainer: OnlineTrainer, states, data, run_dir: Path,
                  ends: list[int], start_chunk: int, wall_offset: float, log: MetricsLog,
                  progress: bool, stop_after_chunks: int | None) -> dict | None:
    ckpt_path = run_dir / CHECKPOINT_FILE
    if stop_after_chunks is not None and start_chunk >= stop_after_chunks:
        save_checkpoint(ckpt_path, states, _checkpoint_meta(cfg, start_chunk, wall_offset))
        return None
    start = time.perf_counter()
    bar = progress_bar(cfg.steps, min(int(np.min(jax.device_get(states.t_env))), cfg.steps),
                       "step", f"{cfg.env.map} x{cfg.num_seeds}", progress)
    last_saved_step = ends[start_chunk - 1] if start_chunk else 0
    for chunk in range(start_chunk + 1, len(ends) + 1):
        until = ends[chunk - 1]
        states, stats = trainer.run_chunk(states, jnp.int32(until), data)
        check_finite(states.learner, stats.update_metrics, cfg.seed,
                     f"env steps {ends[chunk - 2] if chunk > 1 else 0}-{until}", run_dir,
                     f"env step {last_saved_step}" if ckpt_path.exists() else None)
        test = trainer.evaluate(states, trainer.test_keys(chunk), cfg.test_episodes)
        wall_s = wall_offset + time.perf_counter() - start
        new = _records(chunk, states, stats, test, trainer, wall_s)
        log.extend(new)
        _save_snapshot(run_dir, chunk, states, new, cfg)
        pausing = chunk == stop_after_chunks
        if until - last_saved_step >= cfg.checkpoint_interval or chunk == len(ends) or pausing:
            save_checkpoint(ckpt_path, states, _checkpoint_meta(cfg, chunk, wall_s))
            last_saved_step = until
        advance(bar, min(r["t_env"] for r in new))
        bar.set_postfix(win=f"{np.mean([r['test_win_rate'] for r in new]):.2f}",
                        ret=f"{np.mean([r['test_return'] for r in new]):.1f}")
        if pausing:
            bar.close()
            return None
    bar.close()
    wall_s = wall_offset + time.perf_counter() - start
    records = log.records

    announce_final_test(progress, cfg.final_test_episodes, cfg.num_seeds)
    final = jax.device_get(trainer.evaluate(states, trainer.test_keys(FINAL_TEST_INDEX),
                                            cfg.final_test_episodes))
    summary = _summary(cfg, records, final, wall_s, trainer.seed_loop)
    write_json(run_dir / "summary.json", summary)
    plot_learning_curve(records, run_dir / "learning_curve.png",
                        f"{run_title(cfg)} on SMAX {cfg.env.map}, {cfg.num_seeds} seed(s)")
    return summary


def _iterations(cfg: TrainConfig, episode_length: float) -> int:
    """Rounds of num_envs episodes a seed plays if its episodes last `episode_length` steps."""
    return math.ceil(cfg.steps / (cfg.num_envs * max(episode_length, 1.0)))


def expected_updates(cfg: TrainConfig, offline_share: int, episode_length: float) -> int:
    """About how many gradient steps a seed makes over the run, if its episodes last
    `episode_length` steps: one round of num_envs episodes per iteration, updates once the
    online buffer holds batch_size - offline_share episodes."""
    filling = math.ceil((cfg.learner.batch_size - offline_share) / cfg.num_envs)
    return (max(_iterations(cfg, episode_length) - filling + 1, 0)
            * cfg.learner.updates_per_iteration)


def warn_if_few_updates(cfg: TrainConfig, offline_share: int, episode_length: float) -> None:
    """Say before training when the settings leave (almost) no gradient step: the buffer must
    hold a batch of episodes first. The length is the first greedy test's (an estimate)."""
    updates = expected_updates(cfg, offline_share, episode_length)
    iterations = _iterations(cfg, episode_length)
    if updates >= iterations * cfg.learner.updates_per_iteration / 2:
        return
    needed = cfg.learner.batch_size - offline_share
    steps_needed = math.ceil(needed * max(episode_length, 1.0))
    outcome = ("no gradient update at all" if updates == 0 else
               f"only about {updates} gradient updates in {iterations} iterations")
    warn_user(f"{cfg.steps} env steps play about {cfg.steps / max(episode_length, 1.0):.0f} "
              f"episodes (~{episode_length:.0f} steps each at the first test), and learning "
              f"starts once {needed} are stored (--batch-size {cfg.learner.batch_size}): expect "
              f"{outcome}; give --steps well above {steps_needed} or a smaller --batch-size")


def run_title(cfg: TrainConfig) -> str:
    """What a run trains, in a few words: "QMIX" or the fine-tuning switches."""
    if not cfg.finetune.checkpoint:
        return "QMIX"
    parts = ["OVM" if cfg.learner.memory.use_memory else "TD"]
    if cfg.learner.cql.alpha > 0:
        parts.append(("Cal-QL" if cfg.learner.cql.calibrated else "CQL")
                     + f" {cfg.learner.cql.alpha:g}")
    if cfg.learner.action_proposal:
        parts.append("action proposal")
    parts.append("SE" if cfg.explore.exploration == "sequential" else "eps-greedy")
    return "fine-tuning (" + ", ".join(parts) + ")"


def offline_inputs(cfg: TrainConfig, trainer: OnlineTrainer):
    """The pre-trained LearnerState of every seed (seed i starts from the pre-training's seed
    i mod its seed count) and the offline dataset on the device (when offline_ratio > 0);
    (None, None) for a run from scratch."""
    from ovmse.datasets.store import load_dataset
    from ovmse.train.pretrain import load_pretrained

    if not cfg.finetune.checkpoint:
        return None, None
    learner, meta = load_pretrained(Path(cfg.finetune.checkpoint), trainer.spec)
    if meta["config"]["network"] != to_dict(cfg.network):
        raise UserError(f"checkpoint {cfg.finetune.checkpoint} has network sizes "
                        f"{meta['config']['network']}, this run {to_dict(cfg.network)}")
    count = jax.tree.leaves(learner)[0].shape[0]
    index = np.arange(cfg.num_seeds) % count
    learner = jax.tree.map(lambda x: x[index], learner)
    data = None
    if cfg.finetune.offline_ratio > 0:
        batch, _ = load_dataset(Path(cfg.finetune.dataset), trainer.spec)
        data = jax.device_put(batch)
    return learner, data


def _resumable_config(run_dir: Path) -> tuple[TrainConfig, bool]:
    """The config of an interrupted run, checked against its checkpoint, and whether there is a
    checkpoint to continue from (False: the run was killed before its first one)."""
    if not run_dir.is_dir():
        raise UserError(f"cannot resume {run_dir}: no such run folder")
    cfg = from_dict(TrainConfig, read_json(run_dir / "config.json"))
    validate_train(cfg)
    if not (run_dir / CHECKPOINT_FILE).exists():
        return cfg, False
    meta = read_checkpoint_meta(run_dir / CHECKPOINT_FILE)
    if meta.get("kind") != "online-train-state" or meta.get("config") != to_dict(cfg):
        raise UserError(f"checkpoint in {run_dir} was not written by the run of its config.json "
                        f"(kind {meta.get('kind')!r}); it cannot be resumed")
    return cfg, True


def _summary(cfg: TrainConfig, records: list[dict], final: TestStats, wall_s: float,
             seed_loop: str) -> dict:
    last = {r["seed"]: r for r in records}
    seeds = sorted(last)
    win = [float(w) for w in final.win_rate]
    t_env = [last[s]["t_env"] for s in seeds]
    return dict(
        map=cfg.env.map, seeds=seeds, t_env=t_env, wall_s=round(wall_s, 2), device=device_name(),
        seed_loop=seed_loop, compiler_options=compiler.compiler_options(),
        code=code_version(),
        env_steps_per_s=round(sum(t_env) / max(wall_s, 1e-9), 1),
        final_test=dict(episodes=cfg.final_test_episodes, win_rate=win,
                        mean_return=[float(x) for x in final.mean_return],
                        mean_ep_length=[float(x) for x in final.mean_length],
                        median_win_rate=float(np.median(win)), mean_win_rate=float(np.mean(win))),
        config=to_dict(cfg),
    )


def format_table(records: list[dict], summary: dict, rows: int = 8) -> str:
    """A plain-text table of the median test win rate / return over seeds along training, and
    the final test."""
    from ovmse.plots import median_curve

    steps, wins = median_curve(records, "test_win_rate")
    _, rets = median_curve(records, "test_return")
    pick = np.unique(np.linspace(0, len(steps) - 1, min(rows, len(steps))).round().astype(int))
    lines = [f"{'env steps':>10}  {'median test win rate':>20}  {'median test return':>18}"]
    lines += [f"{int(steps[i]):>10}  {wins[i]:>20.3f}  {rets[i]:>18.2f}" for i in pick]
    final = summary["final_test"]
    lines.append(f"final test ({final['episodes']} episodes per seed): median win rate "
                 f"{final['median_win_rate']:.3f}, per seed "
                 + ", ".join(f"{w:.3f}" for w in final["win_rate"]))
    return "\n".join(lines)

