"""The online fine-tuning methods of the paper, as switches on one learner (paper section 5.1).

Every method starts from the same `ovmse pretrain` checkpoint (except `qmix`, which starts from
scratch) and runs the same online loop; a method only sets which loss terms and which exploration
the loop uses:

  method           loss online                     exploration            start
  ovmse            OVM (eq. 5)                     sequential (Alg. 2)    pre-trained
  ovm              OVM (eq. 5)                     epsilon-greedy         pre-trained
  se               TD (eq. 8)                      sequential (Alg. 2)    pre-trained
  switch-cql       TD (eq. 8)                      epsilon-greedy         pre-trained
  macql            TD + alpha CQL (eq. 10)         epsilon-greedy         pre-trained
  macal-ql         TD + alpha Cal-QL               epsilon-greedy         pre-trained
  action-proposal  TD, IBRL bootstrap              epsilon-greedy         pre-trained
  qmix             TD (eq. 8)                      epsilon-greedy         random

macal-ql fine-tunes from a Cal-QL pre-training (the paper's MACal-QL is calibrated offline and
online; `CALIBRATED_START`), every other pre-trained method from MACQL's.
`cql_online` keeps the pre-training's CQL term online for ovmse / ovm / se / action-proposal
too (the paper does so for OVMSE on 2s3z). CQL's alpha and estimator are the pre-training's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

from ovmse.config import (CqlConfig, EnvConfig, FinetuneAlgo, PretrainConfig, TrainConfig,
                          from_dict)
from ovmse.errors import UserError

METHODS: tuple[str, ...] = get_args(FinetuneAlgo)
USES_MEMORY = ("ovmse", "ovm")
SEQUENTIAL = ("ovmse", "se")
KEEPS_CQL = ("macql", "macal-ql")
CALIBRATED_START = ("macal-ql",)


def pretrained_config(checkpoint: Path) -> tuple[PretrainConfig, dict]:
    """The PretrainConfig and checkpoint metadata of a pre-training run folder or file."""
    from ovmse.train.pretrain import pretrained_checkpoint

    _, meta = pretrained_checkpoint(checkpoint)
    return from_dict(PretrainConfig, meta["config"]), meta


def finetune_config(algo: str, base: TrainConfig, cql_online: bool = False) -> TrainConfig:
    """The TrainConfig of fine-tuning with `algo` from the pre-training run
    base.finetune.checkpoint (`qmix` takes only the map and network sizes from it).

    From the checkpoint: the map and episode limit, the reward scale, the network sizes, CQL's
    alpha and estimator. From `base`: everything else (steps, seeds, exploration schedule, OVM
    schedule, mixing ratio, learner settings). What the method decides (exploration kind, OVM,
    action proposal, CQL online) must be left at its default in `base`.
    """
    if algo not in METHODS:
        raise UserError(f"unknown method {algo!r}; known: {', '.join(METHODS)}")
    checkpoint = base.finetune.checkpoint
    if not checkpoint:
        raise UserError("give --checkpoint RUN_DIR, a pre-training run (ovmse pretrain)")
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
            raise UserError(f"{name} is set by the method and the checkpoint; leave it out "
                            f"(--algo {algo}, --checkpoint {checkpoint})")
    pre, meta = pretrained_config(checkpoint)
    spec = meta["spec"]
    keep_cql = algo in KEEPS_CQL or (cql_online and algo != "qmix")
    cql = (dataclasses.replace(pre.learner.cql, calibrated=algo == "macal-ql") if keep_cql
           else CqlConfig())
    learner = dataclasses.replace(
        base.learner, cql=cql, action_proposal=algo == "action-proposal",
        memory=dataclasses.replace(base.learner.memory, use_memory=algo in USES_MEMORY))
    explore = dataclasses.replace(
        base.explore, exploration="sequential" if algo in SEQUENTIAL else "epsilon_greedy")
    finetune = dataclasses.replace(
        base.finetune, method=algo, checkpoint="" if algo == "qmix" else checkpoint,
        dataset=base.finetune.dataset or (pre.dataset if base.finetune.offline_ratio > 0
                                          else ""))
    env = EnvConfig(map=spec["map_name"], episode_limit=spec["episode_limit"],
                    reward_scale=pre.reward_scale)
    return dataclasses.replace(base, env=env, network=pre.network, learner=learner,
                               explore=explore, finetune=finetune)
