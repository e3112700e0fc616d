"""Cells: the unit of work of a study, one training run of all its seeds.

A `PretrainCell` pre-trains MACQL (or Cal-QL, for macal-ql) on one dataset; a `FinetuneCell`
fine-tunes one method from a pre-trained cell (qmix only borrows the map and network sizes).
Each cell has a key: the first 16 hex digits of SHA-256 over its canonical JSON (every config
value that can change its result, and the key of the cell it starts from), so that results are
cached per cell and shared by every spec that needs the same run. Datasets enter keys by task
name ("3m/medium"); the dataset's content fingerprint is stored with the pre-training result and
checked before it is reused.

`run_cell(cell, work_dir)` runs a cell into work_dir/<kind>/<name>-<key>/ (resuming an
interrupted run from its checkpoint; a finished fine-tuning cell drops its checkpoint, a
pre-training cell keeps it for the cells that start from it) and returns its result: a small
JSON-able dict with the config, the final test and the per-seed curves, all a report needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ovmse.config import PretrainConfig, TrainConfig, to_dict
from ovmse.errors import UserError
from ovmse.metrics_log import LogSettings
from ovmse.methods import (Method, finetune_config, foreign_options, method as method_record,
                           own_options, scratch_config)
from ovmse.runs import CHECKPOINT_FILE, read_json, read_jsonl

KEY_VERSION = 1
"""Bump when a code change alters the results of unchanged configs, to invalidate the cache.
Float rounding does not count (a cell computed on a GPU stands for the same cell on a CPU):
the CPU's one-seed-at-a-time updates (train/bucketing.py) did not bump it."""
CURVE_KEYS = ("test_win_rate", "test_return", "probe_q")
PRETRAIN_CURVE_KEYS = ("test_win_rate", "test_return", "q_taken")
"""A pre-training's curves: its greedy tests, and Q_tot(tau, a) on the data's actions (averaged
over the batches of the gradient steps since the previous test), which shows where it levels off."""
DEFAULT_EPS_START = TrainConfig().explore.eps_start
DEFAULT_LAM_END = TrainConfig().learner.memory.lam_end
VARIANTS = (("mix", "mix", lambda c: c.finetune.offline_ratio, 0.0),
            ("eps", "eps0", lambda c: c.explore.eps_start, DEFAULT_EPS_START),
            ("lamend", "lam_end", lambda c: c.learner.memory.lam_end, DEFAULT_LAM_END))
"""The grid's axes that a cell's name and label show where the cell leaves their default:
(name tag, label tag, the setting in a TrainConfig, its default)."""


def variants(base: TrainConfig) -> list[tuple[str, str, float]]:
    """(name tag, label tag, value) of each of VARIANTS' settings that `base` moves from its
    default: the offline mixing ratio, the starting epsilon, OVM's end weight."""
    return [(tag, label, get(base)) for tag, label, get, default in VARIANTS
            if get(base) != default]


def digest(obj: dict) -> str:
    text = json.dumps(dict(obj, key_version=KEY_VERSION), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PretrainCell:
    task: str
    """"map/quality" dataset name."""
    config: PretrainConfig
    """Its `dataset` is the resolved folder (not part of the key)."""

    @property
    def key(self) -> str:
        return digest(dict(kind="pretrain", task=self.task,
                           config=to_dict(dataclasses.replace(self.config, dataset=""))))

    @property
    def name(self) -> str:
        return (f"pretrain-{self.task.replace('/', '-')}"
                + ("-calql" if self.config.learner.cql.calibrated else ""))


@dataclass(frozen=True)
class FinetuneCell:
    task: str
    method: str
    base: TrainConfig
    """Budget, tests, schedules, mixing ratio: the `base` of methods.finetune_config."""
    pretrain: PretrainCell
    cql_online: bool = False

    @property
    def record(self) -> Method:
        return method_record(self.method)

    @property
    def start(self) -> PretrainCell | None:
        """The pre-training cell whose checkpoint this cell starts from; None from scratch
        (qmix reads only the map, sizes and reward scale of `pretrain`, from its config)."""
        return None if self.record.from_scratch else self.pretrain

    @property
    def key(self) -> str:
        if self.record.from_scratch:   # only the map and sizes come from pre-training
            start = dict(map=self.task.split("/")[0], network=to_dict(self.pretrain.config.network),
                         reward_scale=self.pretrain.config.reward_scale)
        else:
            start = dict(pretrain=self.pretrain.key)
        base = to_dict(self.base)
        for option in foreign_options(self.record):   # another method's: not this cell's
            del base["finetune"][option]
        return digest(dict(kind="finetune", method=self.method, cql_online=self.cql_online,
                           base=base, start=start))

    @property
    def name(self) -> str:
        where = (self.task.split("/")[0] if self.record.from_scratch
                 else self.task.replace("/", "-"))
        return (f"{where}-{self.method}" + ("-cql" if self.cql_online else "")
                + "".join(f"-{tag}{value:g}" for tag, _, value in variants(self.base)))


Cell = PretrainCell | FinetuneCell


def cell_dir(cell: Cell, work_dir: Path) -> Path:
    kind = "pretrain" if isinstance(cell, PretrainCell) else "finetune"
    return Path(work_dir) / kind / f"{cell.name}-{cell.key}"


def run_cell(cell: Cell, work_dir: Path, progress: bool = False,
             log: LogSettings = LogSettings(), seeds_per_run: int = 0) -> dict:
    """Run (or resume, or read back) one cell and return its result dict; `log`: where its
    metrics go besides metrics.jsonl. `seeds_per_run` > 0 trains a fine-tuning cell's seeds
    that many at a time, one run after another (`seed_groups`); 0 trains them all at once."""
    if isinstance(cell, PretrainCell):
        return _run_pretrain(cell, Path(work_dir), progress, log)
    return _run_finetune(cell, Path(work_dir), progress, log, seeds_per_run)


def _fresh_or_resumable(run_dir: Path) -> bool:
    """True if run_dir holds an interrupted run to resume; clears a run that died before its
    first checkpoint (the folder is this cell's own)."""
    if (run_dir / CHECKPOINT_FILE).exists():
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def _run_pretrain(cell: PretrainCell, work_dir: Path, progress: bool,
                  log: LogSettings) -> dict:
    from ovmse.train.offline import pretrained_checkpoint
    from ovmse.train.pretrain import pretrain

    run_dir = cell_dir(cell, work_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = read_json(summary_path)
    else:
        summary = pretrain(cell.config, run_dir, resume=_fresh_or_resumable(run_dir),
                           progress=progress, log=log)
    config = read_json(run_dir / "config.json")
    del config["dataset"]
    fingerprint = pretrained_checkpoint(run_dir)[1]["dataset"]["fingerprint"]
    return dict(kind="pretrain", key=cell.key, name=cell.name, task=cell.task,
                config=config, dataset=summary["dataset"] | dict(
                    path=None, return_to_go=data_return_to_go(cell, fingerprint)),
                dataset_fingerprint=fingerprint,
                final_test=summary["final_test"], wall_s=summary["wall_s"],
                device=summary.get("device"), code=summary.get("code"),
                curves=_curves(read_jsonl(run_dir / "metrics.jsonl"), "updates",
                               PRETRAIN_CURVE_KEYS))


def data_return_to_go(cell: PretrainCell, fingerprint: str) -> float | None:
    """The data's discounted return-to-go at the pre-training's gamma, averaged over its real
    steps (datasets/card.py): the level a calibrated Q_tot of the data's actions is near, to
    read a pre-training's Q_tot curve against. None when this machine's copy of the data is
    missing or is not the data the pre-training learned from (`fingerprint`)."""
    from ovmse.datasets.card import mean_return_to_go

    try:
        if data_fingerprint(cell.config.dataset) != fingerprint:
            return None
    except UserError:
        return None
    return mean_return_to_go(Path(cell.config.dataset), cell.config.learner.gamma)[0]


def pretrained_run(cell: PretrainCell, work_dir: Path) -> Path:
    """The finished pre-training run folder of `cell` (UserError if it is not there)."""
    run_dir = cell_dir(cell, work_dir)
    if not (run_dir / "summary.json").exists():
        raise UserError(f"pre-training cell {cell.name} has no finished run in {run_dir}; "
                        f"run the study's pre-training cells first")
    return run_dir


def _run_finetune(cell: FinetuneCell, work_dir: Path, progress: bool,
                  log: LogSettings, seeds_per_run: int = 0) -> dict:
    from ovmse.train.offline import pretrained_checkpoint

    base = own_options(cell.method, cell.base)
    fingerprint = None
    if cell.start is None:
        cfg = scratch_config(cell.method, base, cell.pretrain.config)
    else:
        start = pretrained_run(cell.start, work_dir)
        cfg = finetune_config(cell.method, dataclasses.replace(base, finetune=dataclasses.replace(
            base.finetune, checkpoint=str(start))), cell.cql_online)
        # the pre-training may have run again (its checkpoint does not outlive its work_dir),
        # on this machine's copy of the data: which data this fine-tuning's start learned from
        fingerprint = pretrained_checkpoint(start)[1]["dataset"]["fingerprint"]
    run_dir = cell_dir(cell, work_dir)
    groups = seed_groups(cfg, run_dir, seeds_per_run)
    if groups is None:
        summary, records = _train_finished(cfg, run_dir, progress, log), None
    else:
        summary, records = _train_in_groups(cfg, run_dir, groups, progress, log)
    config = to_dict(cfg)
    config["finetune"]["checkpoint"] = config["finetune"]["dataset"] = None
    result = dict(kind="finetune", key=cell.key, name=cell.name, task=cell.task,
                  method=cell.method, cql_online=cell.cql_online,
                  offline_ratio=cell.base.finetune.offline_ratio,
                  pretrain_key=cell.start and cell.start.key, dataset_fingerprint=fingerprint,
                  config=config, final_test=summary["final_test"], wall_s=summary["wall_s"],
                  env_steps_per_s=summary["env_steps_per_s"], device=summary.get("device"),
                  code=summary.get("code"),
                  curves=_curves(records or read_jsonl(run_dir / "metrics.jsonl"), "t_env",
                                 CURVE_KEYS))
    if groups is not None:
        result["seed_groups"] = summary["seed_groups"]
    return result


def _train_finished(cfg: TrainConfig, run_dir: Path, progress: bool, log: LogSettings) -> dict:
    """Train (or resume, or read back) the run of `cfg` in `run_dir`; its summary. A finished
    fine-tuning state is GBs (its replay buffer: ~1.5 GB per seed on 2s3z) and the result needs
    only summary.json and metrics.jsonl, so its checkpoint is dropped; policies/ keeps the
    snapshots."""
    from ovmse.train.driver import train

    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = read_json(summary_path)
    else:
        summary = train(cfg, run_dir, resume=_fresh_or_resumable(run_dir), progress=progress,
                        log=log)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    return summary


SEED_GROUPS_FILE = "seed_groups.json"


def seed_groups(cfg: TrainConfig, run_dir: Path, seeds_per_run: int) -> list[range] | None:
    """How a fine-tuning cell's seeds are trained: None, all at once in `run_dir` (one program
    vmapping them), or groups of consecutive seeds, each its own run in
    `run_dir`/seeds-<first>-<last>/, one after another. Splitting bounds the memory of a cell
    whose replay buffers do not fit together (each seed holds 5,000 padded episodes: ~3.8 GB on
    3s5z); each seed's numbers are the same either way on a CPU, where the updates run one
    seed after another (train/bucketing.py) and every seed has its own keys
    (train/keys.py), so the cell's key does not depend on it. A cell keeps the way it was
    started: a run of all seeds with a checkpoint or finished goes on as it is, a grouped one
    (its SEED_GROUPS_FILE) in its own groups, whatever `seeds_per_run` now says."""
    if (run_dir / SEED_GROUPS_FILE).exists():
        seeds_per_run = int(read_json(run_dir / SEED_GROUPS_FILE)["seeds_per_run"])
    elif ((run_dir / CHECKPOINT_FILE).exists() or (run_dir / "summary.json").exists()
          or not 0 < seeds_per_run < cfg.num_seeds):
        return None
    else:
        from ovmse.runs import write_json

        _fresh_or_resumable(run_dir)   # clears a run that died before its first checkpoint
        run_dir.mkdir(parents=True)
        write_json(run_dir / SEED_GROUPS_FILE, dict(seeds_per_run=seeds_per_run))
    first, end = cfg.seed, cfg.seed + cfg.num_seeds
    return [range(s, min(s + seeds_per_run, end)) for s in range(first, end, seeds_per_run)]


def _train_in_groups(cfg: TrainConfig, run_dir: Path, groups: list[range], progress: bool,
                     log: LogSettings) -> tuple[dict, list[dict]]:
    """Train each group of seeds (`seed_groups`) in turn; the cell's summary (the final tests of
    all seeds, wall time and env steps summed, and each group's seeds, wall time, device and
    code as `seed_groups`) and all seeds' metrics records."""
    import numpy as np

    summaries, records = [], []
    for group in groups:
        group_dir = run_dir / f"seeds-{group[0]}-{group[-1]}"
        summaries.append(_train_finished(dataclasses.replace(
            cfg, seed=group[0], num_seeds=len(group)), group_dir, progress, log))
        records += read_jsonl(group_dir / "metrics.jsonl")
    final = {k: [x for s in summaries for x in s["final_test"][k]]
             for k in ("win_rate", "mean_return", "mean_ep_length")}
    wall_s = round(sum(s["wall_s"] for s in summaries), 2)
    t_env = sum(t for s in summaries for t in s["t_env"])
    return dict(final_test=dict(episodes=summaries[0]["final_test"]["episodes"], **final,
                                median_win_rate=float(np.median(final["win_rate"])),
                                mean_win_rate=float(np.mean(final["win_rate"]))),
                wall_s=wall_s, env_steps_per_s=round(t_env / max(wall_s, 1e-9), 1),
                device=summaries[0].get("device"), code=summaries[0].get("code"),
                seed_groups=[dict(seeds=s["seeds"], wall_s=s["wall_s"], device=s.get("device"),
                                  code=s.get("code")) for s in summaries]), records


def _curves(records: list[dict], x: str, keys: tuple[str, ...]) -> dict:
    """{seed: {x: [K], key: [K] ...}} in step order, from metrics records (tests only)."""
    out: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["seed"], r[x])):
        if r.get("test_win_rate") is None:
            continue
        seed = out.setdefault(str(r["seed"]), {x: [], **{k: [] for k in keys}})
        seed[x].append(r[x])
        for k in keys:
            seed[k].append(r.get(k))
    return out


def pretrain_cell(config: PretrainConfig) -> PretrainCell:
    """The cell of a pre-training config on any dataset (a folder or a map/quality name): its
    task is the dataset's map/quality, its dataset the located folder. UserError when there is
    no dataset there."""
    from ovmse.datasets.locate import locate_dataset
    from ovmse.datasets.store import read_metadata

    dataset = locate_dataset(config.dataset)
    meta = read_metadata(Path(dataset))
    return PretrainCell(f"{meta['map']}/{meta['quality']}",
                        dataclasses.replace(config, dataset=dataset))


def data_fingerprint(dataset: str) -> str:
    from ovmse.datasets.store import read_metadata
    from ovmse.datasets.store import dataset_fingerprint

    return dataset_fingerprint(read_metadata(Path(dataset)))
