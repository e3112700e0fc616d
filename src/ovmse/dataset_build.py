"""Building the datasets of a map from one QMIX training run, deterministically from a seed.

Recipe (CFCQL / OG-MARL practice, D4RL names; docs/datasets.md):
  1. train QMIX online on the map (`ovmse train`), keeping a policy snapshot at every test point;
  2. re-measure every snapshot's greedy win rate on `eval_episodes` fresh episodes (one key for
     all snapshots, so they are compared on the same starts);
  3. expert = the snapshot with the highest re-measured win rate (the earliest of equals);
     medium = among the snapshots before it, the one whose re-measured win rate is closest to
     half of the expert's (the earliest of equals);
  4. expert and medium datasets = `episodes` rollouts of those snapshots with behaviour
     epsilon 0.05; random = uniform random available actions;
     medium-replay = the training run's replay buffer at the medium snapshot: every episode the
     run had stored by then, oldest first. The training is replayed to that point from its config
     and seed, which reproduces it exactly on the same machine and software; if the buffer had
     already wrapped, the oldest episodes are gone, and the metadata says how many were played
     and how many were kept.
The rule's inputs and outcome (every snapshot's win rate, the picks) go into build.json.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from ovmse.buffers.episode import EpisodeBatch
from ovmse.config import TrainConfig, from_dict, to_dict
from ovmse.datasets.collect import collect_episodes, greedy_win_rate
from ovmse.datasets.store import (GENERATOR_FILE, dataset_fingerprint, read_metadata,
                                  write_dataset)
from ovmse.envs import make_env
from ovmse.errors import UserError
from ovmse.networks.qmix import QmixNetworks, init_params, make_networks
from ovmse.runs import (CHECKPOINT_FILE, device_name, load_checkpoint, read_checkpoint_meta,
                        read_json, write_json)
from ovmse.snapshots import list_policy_snapshots, load_policy_snapshot
from ovmse.train.driver import train
from ovmse.train.online import OnlineTrainer

QUALITIES = ("random", "medium-replay", "medium", "expert")
EVAL_SEED_OFFSET = 10_000  # the re-measuring episodes' seed, apart from the collection seeds


class SnapshotRanking(NamedTuple):
    paths: list[Path]
    win_rates: list[float]
    expert: int
    medium: int


def pick_expert_and_medium(win_rates: list[float]) -> tuple[int, int]:
    """Indices (expert, medium) into snapshots in training order, by the rule of step 3."""
    rates = np.asarray(win_rates, float)
    expert = int(np.argmax(rates))
    if expert == 0:
        return 0, 0
    medium = int(np.argmin(np.abs(rates[:expert] - rates[expert] / 2)))
    return expert, medium


def rank_snapshots(run_dir: Path, nets: QmixNetworks, env, eval_episodes: int,
                   seed: int) -> SnapshotRanking:
    paths = list_policy_snapshots(run_dir)
    rates = [greedy_win_rate(env, nets.agent, load_policy_snapshot(p, nets)["agent"],
                             eval_episodes, seed=EVAL_SEED_OFFSET + seed) for p in paths]
    return SnapshotRanking(paths, rates, *pick_expert_and_medium(rates))


def replay_buffer_episodes(cfg: TrainConfig, chunk: int, work_dir: Path) -> tuple[
        EpisodeBatch, dict]:
    """The first seed's replay buffer after `chunk` chunks of the run of `cfg`, oldest first."""
    run_dir = Path(work_dir) / f"replay-to-chunk-{chunk}"
    train(cfg, run_dir, progress=False, stop_after_chunks=chunk)
    trainer = OnlineTrainer(cfg)
    template = jax.eval_shape(trainer.init, trainer.seed_keys())
    states, _ = load_checkpoint(run_dir / CHECKPOINT_FILE, template)
    buffer = jax.tree.map(lambda x: np.asarray(x[0]), states.buffer)
    size, pos, capacity = int(buffer.size), int(buffer.insert_pos), buffer.capacity
    order = (np.arange(size) + (pos if size == capacity else 0)) % capacity
    episodes = EpisodeBatch(*(x[:, order] for x in buffer.data))
    info = dict(buffer_capacity=capacity, episodes_played=int(states.episodes[0]),
                episodes_kept=size, t_env=int(states.t_env[0]))
    return episodes, info


def _check_same_run(run_dir: Path, cfg: TrainConfig) -> None:
    """UserError unless the run in `run_dir` was started with `cfg` (resolved)."""
    stored, wanted = _flat(read_json(run_dir / "config.json")), _flat(to_dict(cfg.resolved()))
    differ = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
    if differ:
        key = differ[0]
        raise UserError(f"{run_dir} is a training run with {key} {stored.get(key)!r}, not "
                        f"{wanted.get(key)!r}; choose another --out, or build with that run's "
                        f"settings")


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else {f"{prefix}{key}": value})
    return flat


def _run_config(run_dir: Path, map_name: str) -> TrainConfig:
    cfg = from_dict(TrainConfig, read_json(Path(run_dir) / "config.json"))
    if cfg.env.map != map_name:
        raise UserError(f"run {run_dir} trained on map {cfg.env.map}, not {map_name}")
    return cfg


def collect_quality(map_name: str, quality: str, out: Path, episodes: int, seed: int,
                    run_dir: Path | None = None, epsilon: float = 0.05,
                    eval_episodes: int = 256, overwrite: bool = False, progress: bool = False,
                    ranking: SnapshotRanking | None = None) -> dict:
    """Collect one dataset of `quality` into `out` (see the module docstring); returns its
    metadata. Policy qualities need `run_dir`; `ranking` saves re-measuring its snapshots."""
    if quality not in QUALITIES:
        raise UserError(f"unknown quality {quality!r}; expected one of {', '.join(QUALITIES)}")
    cfg = _run_config(run_dir, map_name) if run_dir is not None else TrainConfig()
    env = make_env(map_name, cfg.env.episode_limit, cfg.env.reward_scale)
    nets = make_networks(env.spec, cfg.network)
    base = dict(seed=seed, source_run=str(run_dir) if run_dir else None,
                made_on=device_name())
    extra_files = None
    if quality == "random":
        params = init_params(jax.random.PRNGKey(seed), nets)["agent"]
        batch, rate = collect_episodes(env, nets.agent, params, episodes, 1.0, seed,
                                       progress=progress)
        provenance = dict(base, generator="uniform random available actions",
                          behaviour_epsilon=1.0, episodes_per_s=rate)
    else:
        if run_dir is None:
            raise UserError(f"quality {quality} needs a training run (--run RUN_DIR)")
        ranking = ranking or rank_snapshots(run_dir, nets, env, eval_episodes, seed)
        pick = ranking.medium if quality in ("medium", "medium-replay") else ranking.expert
        snapshot = ranking.paths[pick]
        win_rate = ranking.win_rates[pick]
        extra_files = {GENERATOR_FILE: snapshot}
        if quality == "medium-replay":
            chunk = read_checkpoint_meta(snapshot)["chunk"]
            if chunk == 0:
                raise UserError(f"the medium snapshot of {run_dir} is its untrained initial "
                                f"policy, so there is no replay data before it; train longer")
            with tempfile.TemporaryDirectory(prefix=".replay-", dir=Path(out).parent
                                             if Path(out).parent.exists() else None) as work:
                batch, info = replay_buffer_episodes(cfg, chunk, Path(work))
            provenance = dict(base, generator=f"replay buffer at {snapshot}",
                              generator_greedy_win_rate=win_rate, behaviour_epsilon=None,
                              behaviour=f"the training run's exploration up to chunk {chunk}",
                              **info)
        else:
            params = load_policy_snapshot(snapshot, nets)["agent"]
            batch, rate = collect_episodes(env, nets.agent, params, episodes, epsilon, seed,
                                           progress=progress)
            provenance = dict(base, generator=str(snapshot), generator_greedy_win_rate=win_rate,
                              behaviour_epsilon=epsilon, episodes_per_s=rate)
    return write_dataset(out, batch, env.spec, quality, provenance, overwrite=overwrite,
                         extra_files=extra_files)


def recollect(card: Path, out: Path, overwrite: bool = False, progress: bool = False) -> dict:
    """Make again the dataset that `card` describes: a dataset folder, or its card (its
    dataset.json and generator.npz alone, a few hundred kB that git can keep where the data
    cannot). Random, medium and expert are rollouts of a seed (seconds); medium-replay is the
    source run's replay buffer at its medium snapshot, trained again to that snapshot from the
    run config the snapshot holds (minutes to an hour: part of the build's training). The same
    software on the same kind of machine makes the same arrays, which are checked against the
    card's checksums. Returns the new metadata. UserError for a card without its generator, or
    a copy whose arrays differ from the card's (the copy is kept at `out`; results computed on
    the card's data will not accept it: the study compares fingerprints)."""
    card, out = Path(card), Path(out)
    meta = read_metadata(card)
    if out.exists() and not overwrite:   # before minutes of work, not after
        raise UserError(f"{out} already exists; choose another --out, or pass --overwrite to "
                        f"replace it")
    quality, spec, made = meta["quality"], meta["spec"], meta["provenance"]
    again = dict(recollected_from=str(card), made_on=device_name())
    env = make_env(meta["map"], spec["episode_limit"], spec["reward_scale"])
    extra_files = None
    generator = card / GENERATOR_FILE
    if quality != "random":
        if not generator.is_file():
            raise UserError(f"{card} has no {GENERATOR_FILE}, the policy that played it (or, "
                            f"for medium-replay, the snapshot its buffer ends at); copy it "
                            f"from the dataset folder into the card")
        extra_files = {GENERATOR_FILE: generator}
    if quality == "medium-replay":
        snapshot = read_checkpoint_meta(generator)
        out.parent.mkdir(parents=True, exist_ok=True)   # the replayed run is GBs: beside out
        with tempfile.TemporaryDirectory(prefix=".replay-", dir=out.parent) as work:
            batch, info = replay_buffer_episodes(from_dict(TrainConfig, snapshot["config"]),
                                                 snapshot["chunk"], Path(work))
        provenance = dict(made, **info, **again)
    else:
        if quality == "random":
            nets = make_networks(env.spec, TrainConfig().network)
            params = init_params(jax.random.PRNGKey(made["seed"]), nets)["agent"]
        else:
            nets = make_networks(env.spec, from_dict(
                TrainConfig, read_checkpoint_meta(generator)["config"]).network)
            params = load_policy_snapshot(generator, nets)["agent"]
        batch, rate = collect_episodes(env, nets.agent, params, meta["episodes"],
                                       made["behaviour_epsilon"], made["seed"],
                                       progress=progress)
        provenance = dict(made, episodes_per_s=rate, **again)
    new = write_dataset(out, batch, env.spec, quality, provenance, overwrite=overwrite,
                        extra_files=extra_files)
    if dataset_fingerprint(new) != dataset_fingerprint(meta):
        differ = sorted(k for k in meta["array_sha256"]
                        if new["array_sha256"].get(k) != meta["array_sha256"][k])
        card_machine = made.get("made_on", "a machine it does not record")
        raise UserError(f"{out} differs from {card} in {', '.join(differ)}: made on "
                        f"{again['made_on']}, the card on {card_machine} "
                        f"(floats round otherwise on other CPUs and software, and rollouts "
                        f"diverge); it is kept, but results computed on the card's data will not "
                        f"accept it (their fingerprint differs)")
    return new


def build_datasets(map_name: str, out: Path, seed: int = 0, steps: int = 500_000,
                   episodes: int = 1000, eval_episodes: int = 256, epsilon: float = 0.05,
                   qualities: tuple[str, ...] = QUALITIES, progress: bool = True,
                   train_config: TrainConfig | None = None, overwrite: bool = False) -> dict:
    """Train (or resume, or reuse the finished `out`/source-run of the same config), pick
    snapshots and write one dataset folder per quality under `out`/<quality>, plus
    `out`/build.json. Existing datasets there are replaced only with `overwrite`; a source run
    of another config is never reused (UserError naming the first differing setting)."""
    out = Path(out)
    cfg = train_config or TrainConfig()
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, map=map_name), seed=seed,
                              num_seeds=1, steps=steps)
    existing = [out / q for q in (*qualities, "build.json") if (out / q).exists()]
    run_dir = out / "source-run"
    started = (run_dir / "config.json").exists()
    if existing and not overwrite:
        resume = (" (its source run is kept and reused: an interrupted build goes on this way)"
                  if started else "")
        raise UserError(f"{existing[0]} already exists; choose another --out, or pass "
                        f"--overwrite to replace the datasets there{resume}")
    if started:
        _check_same_run(run_dir, cfg)
    if not (run_dir / "summary.json").exists():
        train(cfg, run_dir, resume=started, progress=progress)
    cfg = _run_config(run_dir, map_name)
    env = make_env(map_name, cfg.env.episode_limit, cfg.env.reward_scale)
    ranking = rank_snapshots(run_dir, make_networks(env.spec, cfg.network), env, eval_episodes,
                             seed)
    record = dict(map=map_name, seed=seed, eval_episodes=eval_episodes,
                  behaviour_epsilon=epsilon, train_config=to_dict(cfg),
                  snapshots=[dict(path=str(p), win_rate=r)
                             for p, r in zip(ranking.paths, ranking.win_rates)],
                  expert=str(ranking.paths[ranking.expert]),
                  expert_win_rate=ranking.win_rates[ranking.expert],
                  medium=str(ranking.paths[ranking.medium]),
                  medium_win_rate=ranking.win_rates[ranking.medium], datasets={})
    for quality in qualities:
        meta = collect_quality(map_name, quality, out / quality, episodes, seed, run_dir,
                               epsilon, eval_episodes, overwrite=overwrite, progress=progress,
                               ranking=ranking)
        record["datasets"][quality] = dict(episodes=meta["episodes"],
                                           transitions=meta["transitions"],
                                           mean_return=meta["mean_return"],
                                           win_rate=meta["win_rate"])
    write_json(out / "build.json", record)
    return record
