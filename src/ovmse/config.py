"""Typed configuration: the one place where defaults live, each with its source.

Defaults follow PyMARL2's QMIX for SMAC (shared/REFERENCE.md, "QMIX defaults of PyMARL2"), the
code base the paper builds on, unless a SMAX fact says otherwise. A config is frozen; a run is a
function of its config and seed. `validate_*` raise UserError naming the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ovmse.datasets.locate import locate_dataset
from ovmse.errors import UserError

ExplorationName = Literal["epsilon_greedy", "sequential"]
CqlEstimator = Literal["joint", "counterfactual"]
PretrainAlgo = Literal["macql", "macal-ql"]
CALQL: PretrainAlgo = "macal-ql"  # the pre-training calibrated as in Cal-QL


@dataclass(frozen=True)
class EnvConfig:
    map: str = "3m"
    """SMAX map name: 3m (quick), 2s3z, 3s5z, 5m_vs_6m, 6h_vs_8z (the paper's), or any SMAX map."""
    episode_limit: int = 100
    """Steps before an episode is cut (truncated); SMAX's own default on every map."""
    reward_scale: float = 10.0
    """Factor on SMAX's reward (at most 2 per episode), giving SMAC's 0-20 return scale."""


@dataclass(frozen=True)
class NetworkConfig:
    agent_hidden_dim: int = 64
    """GRU hidden size of the shared agent network (PyMARL2: 64)."""
    mixer_embed_dim: int = 32
    """QMIX mixing embedding size (PyMARL2: 32)."""
    hypernet_hidden_dim: int = 64
    """Hidden size of the mixer's two-layer hypernetworks (PyMARL2: 64)."""


@dataclass(frozen=True)
class CqlConfig:
    """The conservative regulariser of eq. 9-10 (cql.py), added to the TD loss when alpha > 0."""

    alpha: float = 0.0
    """Weight of the regulariser in eq. 10; 0 turns it off (plain QMIX). `ovmse pretrain`'s
    default is 5 (CFCQL's MACQL command on 2s3z)."""
    estimator: CqlEstimator = "joint"
    """joint: log-mean-exp of Q_tot over joint actions sampled uniformly among available ones,
    the paper's eq. 9 with uniform mu (CFCQL's MACQL); counterfactual: each agent varies its own
    action with the others at the data's (CFCQL)."""
    num_samples: int = 100
    """Joint actions sampled per step by the joint estimator (CFCQL's MACQL: 100)."""
    calibrated: bool = False
    """Cal-QL: push Q_tot down only to the data's discounted return-to-go, never below it."""


@dataclass(frozen=True)
class MemoryConfig:
    """Offline value function memory (OVM, paper eq. 4-6): the loss
    (1 - lam) * (Q_tot - y)^2 + lam * (Q_tot - max(Qbar_offline, y))^2, lam decaying linearly
    from 1 to lam_end over lam_anneal_steps env steps, then held. The paper's appendix with its
    values is not available (shared/REFERENCE.md); these defaults are the project's choice."""

    use_memory: bool = False
    """Use the OVM loss (needs a pre-trained checkpoint: its target network is the memory)."""
    lam_end: float = 0.0
    """lam after the anneal: 0 leaves plain TD learning once the transition is over."""
    lam_anneal_steps: int = 50_000
    """Env steps of lam's linear decay from 1 (half the exploration anneal: on 3m medium 50k
    learned fastest of 50k / 100k / 200k with the same small drop, docs/benchmarks.md)."""


@dataclass(frozen=True)
class LearnerConfig:
    lr: float = 1e-3
    """Adam learning rate (PyMARL2: 1e-3)."""
    grad_clip_norm: float = 10.0
    """Global gradient-norm clip (PyMARL2: 10)."""
    gamma: float = 0.99
    """Discount factor (PyMARL2: 0.99)."""
    td_lambda: float = 0.6
    """lambda of the TD(lambda) target; 0 is the one-step target of eq. 8 (PyMARL2: 0.6, 0.3 on
    6h_vs_8z)."""
    double_q: bool = True
    """Pick the next action with the online network, value it with the target (PyMARL2: on)."""
    batch_size: int = 128
    """Episodes per gradient step (PyMARL2: 128)."""
    buffer_size: int = 5000
    """Replay capacity in episodes (PyMARL2: 5000)."""
    target_update_interval: int = 200
    """Episodes between hard copies of the online network into the target (PyMARL2: 200)."""
    updates_per_iteration: int = 1
    """Gradient steps after each round of num_envs new episodes (PyMARL2: 1 per 8 episodes)."""
    cql: CqlConfig = field(default_factory=CqlConfig)
    """The conservative regulariser (off unless cql.alpha > 0)."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """OVM (off unless memory.use_memory)."""
    action_proposal: bool = False
    """Action proposal (IBRL): bootstrap from the better, under the target network, of the
    online greedy next action and the frozen offline policy's (needs a pre-trained checkpoint)."""
    length_buckets: int = 6
    """Number of compiled unroll lengths of the update, ceil(episode_limit * (2/3)^k). A batch is
    unrolled only to the shortest one that holds its longest episode (exact: the rest is
    padding); 1 always unrolls the whole episode limit."""


@dataclass(frozen=True)
class ExplorationConfig:
    exploration: ExplorationName = "epsilon_greedy"
    """epsilon_greedy: each agent explores with eps_t; sequential: each with eps_t / N
    (paper Algorithm 2)."""
    eps_start: float = 1.0
    """eps at env step 0 (PyMARL2: 1.0)."""
    eps_end: float = 0.05
    """eps after the anneal, held from then on (PyMARL2: 0.05)."""
    eps_anneal_steps: int = 100_000
    """Env steps of the linear decay of eq. 7 (PyMARL2: 100k; 500k on 6h_vs_8z)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Where an online run starts from and what offline data it keeps using (inactive in plain
    `ovmse train`, which learns from scratch)."""

    method: str = "qmix"
    """Name of the method whose switches these are (informative; set by `ovmse finetune`)."""
    checkpoint: str = ""
    """Pre-training run folder (ovmse pretrain) whose networks start the online phase; empty:
    from scratch."""
    dataset: str = ""
    """Offline dataset (folder or map/quality name) mixed into online batches (default: the
    checkpoint's)."""
    offline_ratio: float = 0.0
    """Fraction of each batch's episodes drawn from the offline dataset, the rest from the online
    buffer (the paper tries 0, 0.1, 0.3, 0.5; OVMSE is best at 0 or 0.1)."""
    probe_episodes: int = 32
    """Episodes of the offline greedy policy, played once before the online phase, on which the
    mean Q_tot of the current network is logged at every test (the unlearning probe, Fig. 1)."""
    warmup_steps: int = 5_000
    """wsrl only: env steps played by the frozen pre-trained greedy policy, with no update,
    before online fine-tuning starts (WSRL's public runs warm up for 5,000 steps; wsrl.py)."""


@dataclass(frozen=True)
class RunConfig:
    """What every training run has, online or offline: its seeds and its greedy tests (the
    steps, test and checkpoint intervals differ in unit: env steps online, gradient steps
    offline)."""

    seed: int = 0
    """First seed; seeds seed, seed+1, ... run together in one vectorised program."""
    num_seeds: int = 1
    """Independent seeds trained together in one program (their updates vmapped on a GPU, one
    after the other on a CPU: train/bucketing.py)."""
    test_episodes: int = 32
    """Greedy episodes per test (PyMARL2: 32)."""
    final_test_episodes: int = 640
    """Greedy episodes of the final test per seed (the paper's Table 1: 640)."""


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Online QMIX training on SMAX."""

    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    explore: ExplorationConfig = field(default_factory=ExplorationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    steps: int = 500_000
    """Env steps to train for (summed over the parallel environments of one seed)."""
    num_envs: int = 8
    """Episodes played in parallel per iteration (PyMARL2's batch_size_run: 8)."""
    test_interval: int = 10_000
    """Env steps between greedy tests (PyMARL2: 10k)."""
    checkpoint_interval: int = 100_000
    """Env steps between resumable checkpoints (the last one is always written)."""

    def resolved(self) -> "TrainConfig":
        """The config as trained: the checkpoint path made absolute and the dataset located
        (locate_dataset), so that the run folder's config.json works from any directory."""
        finetune = dataclasses.replace(self.finetune, checkpoint=absolute(self.finetune.checkpoint),
                                       dataset=locate_dataset(self.finetune.dataset))
        return dataclasses.replace(self, finetune=finetune)


def pretrain_test_interval(steps: int) -> int:
    """The test spacing of a pre-training that `ovmse run` or a study sets up: ten tests,
    evenly spaced (at least one gradient step apart)."""
    return max(steps // 10, 1)


def absolute(path: str) -> str:
    """`path` resolved against the current directory ("" stays "": no path)."""
    return str(Path(path).resolve()) if path else ""


def _offline_learner() -> LearnerConfig:
    return LearnerConfig(cql=CqlConfig(alpha=5.0))


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """Offline pre-training on a dataset: QMIX TD loss + alpha * CQL (eq. 10), MACQL or MACal-QL.
    The map and sizes come from the dataset."""

    dataset: str = "3m/medium"
    """Dataset folder, or a map/quality name ("3m/medium": the shipped one; datasets/locate.py);
    its map is the map trained and tested on."""
    algo: PretrainAlgo = "macql"
    """macql: the regulariser of eq. 9; macal-ql: the same, calibrated as in Cal-QL (sets
    learner.cql.calibrated)."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    learner: LearnerConfig = field(default_factory=_offline_learner)
    """Loss and optimiser; buffer_size, target_update_interval and updates_per_iteration are
    online settings, unused here. cql.alpha defaults to 5 (CFCQL's MACQL command)."""
    steps: int = 2_000
    """Gradient steps (measured: 3m and 2s3z medium reach their plateau within 250-500 steps;
    on the 300-episode 3m data the win rate slowly declines after ~1,500, docs/benchmarks.md)."""
    target_update_every: int = 25
    """Gradient steps between hard copies into the target network (25: PyMARL2's spacing
    online, 200 episodes at one update per 8 episodes)."""
    test_interval: int = 250
    """Gradient steps between greedy tests in the environment."""
    checkpoint_interval: int = 2_000
    """Gradient steps between resumable checkpoints (the last one is always written)."""
    reward_scale: float = 10.0
    """Reward factor of the test environment: the datasets' rewards are on SMAC's scale."""

    def resolved(self) -> "PretrainConfig":
        """The config as trained: learner.cql.calibrated follows algo; the dataset is located as
        an absolute folder (locate_dataset: the run folder's config.json works from anywhere)."""
        _check(not self.learner.cql.calibrated or self.algo == CALQL,
               "learner.cql.calibrated is set by the algorithm; use --algo macal-ql for Cal-QL")
        cql = dataclasses.replace(self.learner.cql, calibrated=self.algo == CALQL)
        return dataclasses.replace(self, dataset=locate_dataset(self.dataset),
                                   learner=dataclasses.replace(self.learner, cql=cql))


def _pipeline_pretrain() -> PretrainConfig:
    return PretrainConfig(steps=500, test_interval=pretrain_test_interval(500),
                          learner=LearnerConfig(cql=CqlConfig(alpha=5.0, num_samples=32)))


def _pipeline_finetune() -> TrainConfig:
    return TrainConfig(steps=50_000, test_interval=2_500,
                       explore=ExplorationConfig(eps_anneal_steps=25_000),
                       learner=LearnerConfig(memory=MemoryConfig(lam_anneal_steps=50_000)))


@dataclass(frozen=True)
class PipelineConfig(RunConfig):
    """`ovmse run`: the offline-to-online pipeline at a CPU-sized scale (pipeline.py). The run
    fields (seed, seeds, test episodes) are both phases'; each phase's own settings are its
    config's (--pretrain.steps, --finetune.steps, ...)."""

    num_seeds: int = 2
    """Seeds of both phases (fine-tuning seed i starts from pre-training seed i)."""
    dataset: str = "3m/medium"
    """Dataset folder or map/quality name to pre-train on (the shipped 3m medium by default)."""
    baseline: str = "switch-cql"
    """The method fine-tuned beside OVMSE (any of `ovmse finetune --algo`)."""
    pretrain: PretrainConfig = field(default_factory=_pipeline_pretrain)
    """MACQL pre-training: 500 gradient steps (3m medium reaches the data's win rate in ~250),
    tested ten times (over --pretrain.steps, unless --pretrain.test-interval is given), alpha 5
    (CFCQL's MACQL) with 32 sampled joint actions (CFCQL: 100; fewer for a CPU-sized run). Its
    dataset and run fields are the pipeline's."""
    finetune: TrainConfig = field(default_factory=_pipeline_finetune)
    """The fine-tuning base of both methods (methods.finetune_config: the method and the
    checkpoint set the map, networks, exploration kind, OVM and CQL): 50k env steps, tested
    every 2,500, exploration and OVM's lam annealed over 25k and 50k steps (scaled down with
    the budget). Its run fields are the pipeline's."""

    def phases(self) -> tuple[PretrainConfig, TrainConfig]:
        """The pre-training config and the fine-tuning base, with the pipeline's dataset and
        run fields; pre-training is tested ten times over its steps unless given its own
        --pretrain.test-interval. UserError when a phase's own copy of them was set
        (--pretrain.num-seeds: give --num-seeds) or fine-tuning's checkpoint was."""
        run = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunConfig)}
        shared = dict(
            pretrain=(self.pretrain, _pipeline_pretrain(), dict(run, dataset=self.dataset)),
            finetune=(self.finetune, _pipeline_finetune(), run))
        for phase, (given, default, fields) in shared.items():
            for name in fields:
                _check(getattr(given, name) == getattr(default, name),
                       f"--{phase}.{name.replace('_', '-')} is the pipeline's; give "
                       f"--{name.replace('_', '-')}")
        _check(not self.finetune.finetune.checkpoint,
               "fine-tuning starts from the pipeline's own pre-training; leave out "
               "--finetune.finetune.checkpoint")
        pretrain = dataclasses.replace(self.pretrain, **shared["pretrain"][2])
        if pretrain.test_interval == _pipeline_pretrain().test_interval:
            pretrain = dataclasses.replace(
                pretrain, test_interval=pretrain_test_interval(pretrain.steps))
        return pretrain, dataclasses.replace(self.finetune, **run)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _unit_interval(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0 and math.isfinite(value), f"{name} must be in [0, 1], got {value}")


def _positive(name: str, value: float) -> None:
    _check(value > 0 and math.isfinite(value), f"{name} must be > 0, got {value}")


def validate_env(cfg: EnvConfig) -> None:
    from ovmse.envs.smax import MAPS

    _check(cfg.map in MAPS, f"unknown map {cfg.map!r}; known SMAX maps: {', '.join(MAPS)}")
    _positive("episode_limit", cfg.episode_limit)
    _positive("reward_scale", cfg.reward_scale)


def validate_network(cfg: NetworkConfig) -> None:
    for name in ("agent_hidden_dim", "mixer_embed_dim", "hypernet_hidden_dim"):
        _positive(name, getattr(cfg, name))


def validate_learner(cfg: LearnerConfig) -> None:
    _positive("lr", cfg.lr)
    _positive("grad_clip_norm", cfg.grad_clip_norm)
    _unit_interval("gamma", cfg.gamma)
    _unit_interval("td_lambda", cfg.td_lambda)
    for name in ("batch_size", "buffer_size", "target_update_interval", "updates_per_iteration",
                 "length_buckets"):
        _positive(name, getattr(cfg, name))
    _check(cfg.batch_size <= cfg.buffer_size,
           f"batch_size ({cfg.batch_size}) must not exceed buffer_size ({cfg.buffer_size})")
    validate_cql(cfg.cql)
    validate_memory(cfg.memory)


def validate_cql(cfg: CqlConfig) -> None:
    _check(cfg.alpha >= 0 and math.isfinite(cfg.alpha), f"cql alpha must be >= 0, got {cfg.alpha}")
    _check(cfg.estimator in ("joint", "counterfactual"),
           f"cql estimator must be joint or counterfactual, got {cfg.estimator!r}")
    _positive("cql num_samples", cfg.num_samples)


def validate_memory(cfg: MemoryConfig) -> None:
    _unit_interval("lam_end", cfg.lam_end)
    _positive("lam_anneal_steps", cfg.lam_anneal_steps)


def validate_finetune(cfg: FinetuneConfig, learner: LearnerConfig) -> None:
    _check(0.0 <= cfg.offline_ratio < 1.0,
           f"offline_ratio must be in [0, 1), got {cfg.offline_ratio}")
    _positive("probe_episodes", cfg.probe_episodes)
    _check(cfg.warmup_steps >= 0, f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    needs = [name for name, used in (("the OVM memory", learner.memory.use_memory),
                                     ("action proposal", learner.action_proposal),
                                     ("offline data mixing", cfg.offline_ratio > 0)) if used]
    _check(bool(cfg.checkpoint) or not needs,
           f"{needs[0] if needs else ''} needs a pre-trained --checkpoint (ovmse pretrain)")


def validate_exploration(cfg: ExplorationConfig) -> None:
    _check(cfg.exploration in ("epsilon_greedy", "sequential"),
           f"exploration must be epsilon_greedy or sequential, got {cfg.exploration!r}")
    _unit_interval("eps_start", cfg.eps_start)
    _unit_interval("eps_end", cfg.eps_end)
    _positive("eps_anneal_steps", cfg.eps_anneal_steps)


def validate_run(cfg: RunConfig) -> None:
    """The fields every training run has (RunConfig)."""
    for name in ("num_seeds", "test_episodes", "final_test_episodes"):
        _positive(name, getattr(cfg, name))
    _check(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")


def validate_train(cfg: TrainConfig) -> None:
    validate_env(cfg.env)
    validate_network(cfg.network)
    validate_learner(cfg.learner)
    validate_exploration(cfg.explore)
    validate_finetune(cfg.finetune, cfg.learner)
    validate_run(cfg)
    for name in ("steps", "num_envs", "test_interval", "checkpoint_interval"):
        _positive(name, getattr(cfg, name))


def validate_pretrain(cfg: PretrainConfig) -> None:
    validate_network(cfg.network)
    validate_learner(cfg.learner)
    _check(cfg.algo in get_args(PretrainAlgo),
           f"algo must be {' or '.join(get_args(PretrainAlgo))}, got {cfg.algo!r}")
    _check(cfg.learner.cql.calibrated == (cfg.algo == CALQL),
           "learner.cql.calibrated is set by the algorithm; use --algo macal-ql for Cal-QL")
    _check(not cfg.learner.memory.use_memory and not cfg.learner.action_proposal,
           "use_memory and action_proposal are fine-tuning methods' (ovmse finetune --algo); "
           "pre-training has no offline memory to use")
    validate_run(cfg)
    for name in ("steps", "target_update_every", "test_interval", "checkpoint_interval",
                 "reward_scale"):
        _positive(name, getattr(cfg, name))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: Any) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output (a config.json, a checkpoint's
    config). UserError for an unknown key, a section that is not an object, or a value whose
    type is not the field's (an int is accepted for a float); missing keys take defaults."""
    _check(isinstance(data, dict), f"a {cls.__name__} must be a JSON object, got "
                                   f"{type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    _check(not unknown, f"unknown {cls.__name__} keys {sorted(unknown)}; "
                        f"expected some of {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = from_dict(type(default), value)
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        _check(type(value) is type(default),
               f"{cls.__name__}.{name} must be a {type(default).__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the config dataclass `cfg` with dotted-path fields replaced, e.g.
    {"learner.memory.lam_anneal_steps": 50000}. A path that names no field, or a value whose
    type differs from the field's (an int is accepted for a float), is an error."""
    for path, value in overrides.items():
        cfg = _replace_path(cfg, path.split("."), value, path)
    return cfg


def _replace_path(cfg: Any, names: list[str], value: Any, path: str) -> Any:
    head = names[0]
    fields = {f.name for f in dataclasses.fields(cfg)}
    _check(head in fields, f"config key {path!r}: {type(cfg).__name__} has no field {head!r}; "
                           f"its fields are {sorted(fields)}")
    current = getattr(cfg, head)
    if len(names) > 1:
        _check(dataclasses.is_dataclass(current),
               f"config key {path!r}: {head!r} is a value, not a section")
        return dataclasses.replace(cfg, **{head: _replace_path(current, names[1:], value, path)})
    _check(not dataclasses.is_dataclass(current),
           f"config key {path!r} names a section; give one of its fields")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _check(type(value) is type(current),
           f"config key {path!r} takes a {type(current).__name__}, got {value!r}")
    return dataclasses.replace(cfg, **{head: value})
