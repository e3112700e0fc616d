"""Online training as a program of the training loop (loop.py): QMIX from scratch, or
fine-tuning from a pre-trained checkpoint with the offline data and memory it needs.

Everything per env step happens inside the jitted programs of train/online.py; this module says
what a chunk, a test, a record and a summary are, and checks the settings before a run starts.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ovmse.config import TrainConfig, to_dict, validate_train
from ovmse.errors import UserError, warn_user
from ovmse.evaluation import TestStats
from ovmse.metrics_log import LogSettings
from ovmse.plots import plot_learning_curve
from ovmse.runs import new_run_dir, removed_if_unfinished, write_json
from ovmse.snapshots import save_policy_snapshot
from ovmse.train.loop import final_test_summary, resumable, run_facts, run_program
from ovmse.train.online import ChunkStats, OnlineTrainer

CHECKPOINT_KIND = "online-train-state"


class OnlineProgram:
    """Online training (QMIX from scratch, or fine-tuning from a pre-trained checkpoint) as a
    program of the training loop (loop.py): x-axis env steps."""

    x_key, unit, bar_unit = "t_env", "env step", "step"

    def __init__(self, cfg: TrainConfig, trainer: OnlineTrainer, pretrained, data,
                 run_dir: Path):
        self.cfg, self.trainer, self.pretrained, self.data = cfg, trainer, pretrained, data
        self.run_dir = run_dir
        self.label = f"{cfg.env.map} x{cfg.num_seeds}"

    def init(self):
        keys = self.trainer.seed_keys()
        return (self.trainer.init(keys) if self.pretrained is None
                else self.trainer.init_pretrained(keys, self.pretrained))

    def state_template(self):
        keys = self.trainer.seed_keys()
        if self.pretrained is None:
            return jax.eval_shape(self.trainer.init, keys)
        return self.trainer.init_pretrained_shapes(keys, self.pretrained)

    def run_chunk(self, states, until: int):
        return self.trainer.run_chunk(states, jnp.int32(until), self.data)

    def evaluate(self, states, test_index: int, episodes: int) -> TestStats:
        return self.trainer.evaluate(states, self.trainer.test_keys(test_index), episodes)

    def records(self, chunk: int, states, stats: ChunkStats | None, test: TestStats,
                wall_s: float) -> list[dict]:
        """One metrics record per seed; fine-tuning runs add lam (OVM's memory weight) and
        probe_q (mean Q_tot of the current network on the offline policy's probe episodes)."""
        trainer = self.trainer
        probe = trainer.probe_values(states) if states.probe is not None else None
        host = jax.device_get((states.t_env, states.episodes, states.learner.updates, stats,
                               test, probe))
        t_env, episodes, updates, stats, test, probe = host
        records = []
        for i in range(len(t_env)):
            schedules = trainer.schedules(int(t_env[i]))  # as a scalar: the logged rounding
            rec = dict(seed=self.cfg.seed + i, chunk=chunk, t_env=int(t_env[i]),
                       episodes=int(episodes[i]), updates=int(updates[i]),
                       epsilon=float(schedules.epsilon), wall_s=round(wall_s, 3),
                       test_win_rate=float(test.win_rate[i]),
                       test_return=float(test.mean_return[i]),
                       test_ep_length=float(test.mean_length[i]))
            if self.cfg.learner.memory.use_memory:
                rec["lam"] = float(schedules.lam)
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

    def tested(self, chunk: int, states, records: list[dict]) -> None:
        """The online networks of every seed at this test point (snapshots.py)."""
        save_policy_snapshot(self.run_dir, chunk, states.learner.params, dict(
            config=to_dict(self.cfg), t_env=[r["t_env"] for r in records],
            test_win_rate=[r["test_win_rate"] for r in records]))

    def started(self, records: list[dict]) -> None:
        if not bool(self.trainer.schedules(jnp.int32(self.cfg.steps - 1)).learn):
            warn_user(f"this method's schedule allows no gradient update up to the run's "
                      f"{self.cfg.steps} env steps (a warm-up as long as the run?): expect no "
                      f"learning at all; give more steps or a shorter warm-up")
            return
        warn_if_few_updates(self.cfg, self.trainer.offline_share(),
                            float(np.mean([r["test_ep_length"] for r in records])))

    def postfix(self, records: list[dict]) -> dict:
        return dict(win=f"{np.mean([r['test_win_rate'] for r in records]):.2f}",
                    ret=f"{np.mean([r['test_return'] for r in records]):.1f}")

    def checkpoint_meta(self, chunk: int, wall_s: float) -> dict:
        return dict(kind=CHECKPOINT_KIND, config=to_dict(self.cfg), chunk=chunk, wall_s=wall_s)

    def summary(self, records: list[dict], final: TestStats, wall_s: float) -> dict:
        last = {r["seed"]: r for r in records}
        seeds = sorted(last)
        t_env = [last[s]["t_env"] for s in seeds]
        return dict(map=self.cfg.env.map, seeds=seeds, t_env=t_env,
                    **run_facts(wall_s, self.trainer.seed_loop),
                    env_steps_per_s=round(sum(t_env) / max(wall_s, 1e-9), 1),
                    final_test=final_test_summary(final, self.cfg.final_test_episodes),
                    config=to_dict(self.cfg))

    def plot(self, records: list[dict], path: Path) -> None:
        plot_learning_curve(records, path, f"{run_title(self.cfg)} on SMAX {self.cfg.env.map}, "
                                           f"{self.cfg.num_seeds} seed(s)")


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
        cfg, meta = resumable(run_dir, TrainConfig, validate_train, CHECKPOINT_KIND, "the run")
    else:
        cfg, meta = cfg.resolved(), None
        validate_train(cfg)
    trainer = OnlineTrainer(cfg)
    pretrained, data = offline_inputs(cfg, trainer)
    if not resume:
        new_run_dir(run_dir)
        write_json(run_dir / "config.json", to_dict(cfg))
    with removed_if_unfinished(run_dir):
        return run_program(OnlineProgram(cfg, trainer, pretrained, data, run_dir), run_dir,
                           meta is not None, progress, stop_after_chunks, log)


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
    """The pre-trained LearnerState of every seed and the offline dataset on the device (when
    offline_ratio > 0); (None, None) for a run from scratch. Seed s starts from the
    pre-training's seed s (from seed first + (s - first) mod count when it has no seed s, its
    seeds being first ... first + count - 1), so that a run of some of a study cell's seeds
    (study/cells.py, seed_groups) starts each from where the whole cell would."""
    from ovmse.datasets.store import load_dataset
    from ovmse.train.offline import load_pretrained

    if not cfg.finetune.checkpoint:
        return None, None
    learner, meta = load_pretrained(Path(cfg.finetune.checkpoint), trainer.spec)
    if meta["config"]["network"] != to_dict(cfg.network):
        raise UserError(f"checkpoint {cfg.finetune.checkpoint} has network sizes "
                        f"{meta['config']['network']}, this run {to_dict(cfg.network)}")
    count = jax.tree.leaves(learner)[0].shape[0]
    index = (cfg.seed + np.arange(cfg.num_seeds) - int(meta["config"]["seed"])) % count
    learner = jax.tree.map(lambda x: x[index], learner)
    data = None
    if cfg.finetune.offline_ratio > 0:
        batch, _ = load_dataset(Path(cfg.finetune.dataset), trainer.spec)
        data = jax.device_put(batch)
    return learner, data
