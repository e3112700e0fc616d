"""The online fine-tuning methods of the paper, one record each (paper section 5.1).

Every method runs the same online loop; its record says where it starts, which loss terms and
which exploration the loop uses:

  method           loss online                     exploration            start
  ovmse            OVM (eq. 5)                     sequential (Alg. 2)    MACQL pre-training
  ovm              OVM (eq. 5)                     epsilon-greedy         MACQL pre-training
  se               TD (eq. 8)                      sequential (Alg. 2)    MACQL pre-training
  switch-cql       TD (eq. 8)                      epsilon-greedy         MACQL pre-training
  macql            TD + alpha CQL (eq. 10)         epsilon-greedy         MACQL pre-training
  macal-ql         TD + alpha Cal-QL               epsilon-greedy         Cal-QL pre-training
  action-proposal  TD, IBRL bootstrap              epsilon-greedy         MACQL pre-training
  qmix             TD (eq. 8)                      epsilon-greedy         scratch
  wsrl             TD (eq. 8), after a warm-up     epsilon-greedy         MACQL pre-training
                   played by the greedy pre-trained policy (wsrl.py; not in the paper)

The paper's MACal-QL is calibrated offline and online, so macal-ql starts from a Cal-QL
pre-training. `cql_online` keeps the pre-training's CQL term online for any pre-trained method
too (the paper does so for OVMSE on 2s3z). CQL's alpha and estimator are the pre-training's.
The CLI's choices, the fine-tuning config, run titles, study cells and report labels all read
these records; no code compares a method's name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ovmse.config import (CALQL, CqlConfig, EnvConfig, PretrainAlgo, PretrainConfig, TrainConfig,
                          from_dict)
from ovmse.errors import UserError


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: what `ovmse finetune --algo NAME` sets."""

    name: str
    loss: Literal["td", "ovm"]
    """td: the TD loss of eq. 8; ovm: OVM's loss of eq. 5 with the frozen offline memory."""
    exploration: Literal["epsilon_greedy", "sequential"]
    """epsilon-greedy, or the paper's sequential exploration (Algorithm 2)."""
    start: Literal["scratch"] | PretrainAlgo
    """scratch (only the map and network sizes come from the checkpoint), or the pre-training
    it starts from (macql or macal-ql: `ovmse pretrain --algo`)."""
    cql: Literal["off", "kept"] = "off"
    """kept: the pre-training's regulariser stays in the online loss (calibrated when the start
    is Cal-QL's); off: dropped, unless fine-tuning is asked to keep it (cql_online)."""
    action_proposal: bool = False
    """The frozen offline policy proposes a bootstrap action too (IBRL)."""
    study_cql_online: bool = False
    """A study spec's `cql_online` maps keep CQL online for this method (the paper: OVMSE)."""
    options: tuple[str, ...] = ()
    """FinetuneConfig fields that only this method reads: set for another method, they are
    refused, and they enter the cache keys of this method's study cells only."""
    schedules: str = "ovmse.schedules:standard"
    """"module:function" giving the online phase's step-dependent settings,
    `(TrainConfig, t_env) -> schedules.Schedules` (exploration rate, update gate, loss
    weights); named, not imported, so that reading the records needs no JAX."""
    terms: str = "ovmse.learner:loss_terms"
    """"module:function" giving the summands of its online loss,
    `(LearnerConfig) -> tuple[learner.LossTerm, ...]`: the standard one is TD or OVM, then CQL,
    as `loss` and `cql` set the config; a method with a term of its own names a function that
    adds it."""

    @property
    def from_scratch(self) -> bool:
        return self.start == "scratch"

    @property
    def calibrated_start(self) -> bool:
        """It fine-tunes from a Cal-QL pre-training."""
        return self.start == CALQL

    def schedule_function(self):
        """The function `schedules` names, imported."""
        return _imported(self.schedules)

    def terms_function(self):
        """The function `terms` names, imported."""
        return _imported(self.terms)


def _imported(name: str):
    """The object a "module:attribute" name names."""
    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


OVMSE = Method("ovmse", "ovm", "sequential", "macql", study_cql_online=True)
REGISTRY: dict[str, Method] = {m.name: m for m in (
    OVMSE,
    Method("ovm", "ovm", "epsilon_greedy", "macql"),
    Method("se", "td", "sequential", "macql"),
    Method("qmix", "td", "epsilon_greedy", "scratch"),
    Method("macql", "td", "epsilon_greedy", "macql", cql="kept"),
    Method("switch-cql", "td", "epsilon_greedy", "macql"),
    Method("macal-ql", "td", "epsilon_greedy", "macal-ql", cql="kept"),
    Method("action-proposal", "td", "epsilon_greedy", "macql", action_proposal=True),
    Method("wsrl", "td", "epsilon_greedy", "macql", options=("warmup_steps",),
           schedules="ovmse.wsrl:schedules"),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)
FinetuneAlgo = Literal[METHODS]  # the CLI's choices of --algo


def foreign_options(record: Method) -> set[str]:
    """The FinetuneConfig fields that other methods read and `record` does not."""
    return {o for m in REGISTRY.values() for o in m.options} - set(record.options)


def method(name: str) -> Method:
    """The record of a method; UserError naming the known ones for any other name."""
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return REGISTRY[name]


def pretrained_config(checkpoint: Path) -> tuple[PretrainConfig, dict]:
    """The PretrainConfig and checkpoint metadata of a pre-training run folder or file."""
    from ovmse.train.offline import pretrained_checkpoint

    _, meta = pretrained_checkpoint(checkpoint)
    return from_dict(PretrainConfig, meta["config"]), meta


def check_base(algo: str, base: TrainConfig) -> None:
    """UserError when `base` sets what fine-tuning with `algo` decides itself (exploration kind,
    OVM, action proposal, CQL, map, networks: the method and the checkpoint do) or an option of
    another method. Needs no checkpoint, so a pipeline can check every method's base first."""
    record = method(algo)
    defaults = TrainConfig()
    decided = {"exploration": (base.explore.exploration, defaults.explore.exploration),
               "use_memory": (base.learner.memory.use_memory, False),
               "action_proposal": (base.learner.action_proposal, False),
               "cql": (base.learner.cql, defaults.learner.cql),
               "method": (base.finetune.method, defaults.finetune.method),
               "map": (base.env, defaults.env),
               "network": (base.network, defaults.network)}
    for name, (given, default) in decided.items():
        if given != default:
            raise UserError(f"{name} is set by the method ({algo}) and the pre-trained "
                            f"checkpoint; leave it out")
    for name in sorted(options_set(base) & foreign_options(record)):
        users = ", ".join(m.name for m in REGISTRY.values() if name in m.options)
        raise UserError(f"{name} is an option of {users}, not of {algo}; leave it out")


def options_set(base: TrainConfig) -> set[str]:
    """The methods' options (Method.options) that `base` sets to other than their defaults."""
    defaults = TrainConfig().finetune
    return {o for m in REGISTRY.values() for o in m.options
            if getattr(base.finetune, o) != getattr(defaults, o)}


def own_options(algo: str, base: TrainConfig) -> TrainConfig:
    """`base` with the options of other methods than `algo` at their defaults: the base of
    `algo` among several methods fine-tuned from one shared base (a pipeline, a study)."""
    defaults = TrainConfig().finetune
    return dataclasses.replace(base, finetune=dataclasses.replace(
        base.finetune, **{o: getattr(defaults, o) for o in foreign_options(method(algo))}))


def finetune_config(algo: str, base: TrainConfig, cql_online: bool = False) -> TrainConfig:
    """The TrainConfig of fine-tuning with `algo` from the pre-training run
    base.finetune.checkpoint (`qmix` takes only the map and network sizes from it).

    From the checkpoint: the map and episode limit, the reward scale, the network sizes, CQL's
    alpha and estimator. From `base`: everything else (steps, seeds, exploration schedule, OVM
    schedule, mixing ratio, learner settings). What the method decides (exploration kind, OVM,
    action proposal, CQL online) must be left at its default in `base` (check_base).
    """
    record = method(algo)
    checkpoint = base.finetune.checkpoint
    if not checkpoint:
        raise UserError("give --checkpoint RUN_DIR, a pre-training run (ovmse pretrain)")
    check_base(algo, base)
    pre, meta = pretrained_config(checkpoint)
    return _method_config(record, base, pre, meta["spec"], cql_online)


def scratch_config(algo: str, base: TrainConfig, pre: PretrainConfig) -> TrainConfig:
    """The TrainConfig of `algo`, a method that starts from scratch (qmix), equal to what
    finetune_config gives it from a finished pre-training of `pre`, without that run: the map
    and episode limit come from the card of pre.dataset, the reward scale and network sizes
    from `pre`. UserError when `algo` starts from a pre-training or the dataset is missing."""
    from ovmse.datasets.locate import locate_dataset
    from ovmse.datasets.store import read_metadata

    record = method(algo)
    if not record.from_scratch:
        raise UserError(f"{algo} starts from a pre-training run; give its checkpoint")
    check_base(algo, base)
    spec = read_metadata(Path(locate_dataset(pre.dataset)))["spec"]
    return _method_config(record, base, pre, spec)


def _method_config(record: Method, base: TrainConfig, pre: PretrainConfig, spec: dict,
                   cql_online: bool = False) -> TrainConfig:
    """finetune_config's work once the pre-training's config and map `spec` (map_name,
    episode_limit) are known."""
    keep_cql = record.cql == "kept" or (cql_online and not record.from_scratch)
    cql = (dataclasses.replace(pre.learner.cql, calibrated=record.calibrated_start) if keep_cql
           else CqlConfig())
    learner = dataclasses.replace(
        base.learner, cql=cql, action_proposal=record.action_proposal,
        memory=dataclasses.replace(base.learner.memory, use_memory=record.loss == "ovm"))
    explore = dataclasses.replace(base.explore, exploration=record.exploration)
    finetune = dataclasses.replace(
        base.finetune, method=record.name,
        checkpoint="" if record.from_scratch else base.finetune.checkpoint,
        dataset=base.finetune.dataset or (pre.dataset if base.finetune.offline_ratio > 0
                                          else ""))
    env = EnvConfig(map=spec["map_name"], episode_limit=spec["episode_limit"],
                    reward_scale=pre.reward_scale)
    return dataclasses.replace(base, env=env, network=pre.network, learner=learner,
                               explore=explore, finetune=finetune)
