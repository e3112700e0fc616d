"""The `ovmse` command line. Each subcommand is a typed dataclass parsed by tyro; its field
docstrings are the --help text. Mistakes the user can fix print one line and exit with code 2.

    ovmse train ...                  online QMIX (train/)
    ovmse pretrain ...               offline MACQL / MACal-QL on a dataset (train/pretrain.py)
    ovmse finetune ...               online fine-tuning: OVMSE and the baselines (methods.py)
    ovmse run ...                    the whole pipeline at small scale (pipeline.py)
    ovmse dataset build|collect|recollect|info|verify|mix|export|import ...
                                     offline datasets (datasets/)
    ovmse experiment run|keep|report|export SPEC ...  the study (study/; results in experiments/)
"""

from __future__ import annotations

import errno
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal

import tyro

from ovmse.config import PipelineConfig, PretrainConfig, TrainConfig
from ovmse.datasets.locate import DATA_ROOTS, locate_dataset
from ovmse.errors import UserError
from ovmse.methods import FinetuneAlgo

Quality = Literal["random", "medium", "medium-replay", "expert"]


@dataclass(frozen=True)
class Train:
    """Train QMIX online on a SMAX map (several seeds at once), or resume an interrupted run."""

    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    out: Path | None = None
    """Run folder to create (default: runs/<map>-qmix-<date-time>). An existing non-empty folder
    is never overwritten."""
    resume: Path | None = None
    """Continue the run in this folder from its last checkpoint, with its own config.json
    (give no other options)."""
    config_file: Annotated[Path | None, tyro.conf.arg(name="config",
                                                      metavar="RUN/config.json")] = None
    """Start a new run from this saved config (a run folder's config.json); the other options
    given override it."""
    progress: bool = True
    """Show a progress bar with the live test win rate."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard event files, one folder per seed under
    RUN/tensorboard/ (`tensorboard --logdir RUN`); metrics.jsonl is written either way."""
    wandb: str | None = None
    """Also log to this Weights & Biases project (pip install 'ovmse[wandb]'; WANDB_MODE=offline
    logs without an account, into RUN/wandb/ for a later `wandb sync`)."""


def run_train(cmd: Train) -> int:
    from ovmse.runs import read_jsonl
    from ovmse.train.driver import train
    from ovmse.train.loop import format_table

    if cmd.resume is not None:
        if cmd.config != TrainConfig() or cmd.out is not None or cmd.config_file is not None:
            raise UserError("--resume continues a run with the config saved in its folder; "
                            "give no other training options, no --config and no --out")
        run_dir, resume = cmd.resume, True
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, resume = cmd.out or Path("runs") / f"{cmd.config.env.map}-qmix-{stamp}", False
    summary = train(cmd.config, run_dir, resume=resume, progress=cmd.progress,
                    log=log_settings(cmd))
    print(format_table(read_jsonl(Path(run_dir) / "metrics.jsonl"), summary))
    print(f"run folder: {run_dir}")
    return 0


@dataclass(frozen=True)
class Pretrain:
    """Pre-train offline on a dataset with MACQL or MACal-QL (several seeds at once), testing
    the greedy policy in the environment as it goes, or resume an interrupted run."""

    config: Annotated[PretrainConfig, tyro.conf.arg(name="")] = field(
        default_factory=PretrainConfig)
    out: Path | None = None
    """Run folder to create (default: runs/<map>-<algo>-<date-time>). An existing non-empty
    folder is never overwritten."""
    resume: Path | None = None
    """Continue the run in this folder from its last checkpoint, with its own config.json
    (give no other options)."""
    config_file: Annotated[Path | None, tyro.conf.arg(name="config",
                                                      metavar="RUN/config.json")] = None
    """Start a new run from this saved config (a run folder's config.json); the other options
    given override it."""
    progress: bool = True
    """Show a progress bar with the live test win rate."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard event files, one folder per seed under
    RUN/tensorboard/ (`tensorboard --logdir RUN`); metrics.jsonl is written either way."""
    wandb: str | None = None
    """Also log to this Weights & Biases project (pip install 'ovmse[wandb]'; WANDB_MODE=offline
    logs without an account, into RUN/wandb/ for a later `wandb sync`)."""


def run_pretrain(cmd: Pretrain) -> int:
    from ovmse.runs import read_jsonl
    from ovmse.train.pretrain import format_pretrain_table, pretrain

    if cmd.resume is not None:
        if cmd.config != PretrainConfig() or cmd.out is not None or cmd.config_file is not None:
            raise UserError("--resume continues a run with the config saved in its folder; "
                            "give no other options and no --out")
        run_dir, resume = cmd.resume, True
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = Path(cmd.config.dataset).parent.name or "data"
        run_dir = cmd.out or Path("runs") / f"{name}-{cmd.config.algo}-{stamp}"
        resume = False
    summary = pretrain(cmd.config, run_dir, resume=resume, progress=cmd.progress,
                       log=log_settings(cmd))
    print(format_pretrain_table(read_jsonl(Path(run_dir) / "metrics.jsonl"), summary))
    print(f"run folder: {run_dir}")
    return 0


@dataclass(frozen=True)
class Finetune:
    """Fine-tune a pre-trained checkpoint (--checkpoint RUN_DIR, from ovmse pretrain) online
    with OVMSE or one of the paper's baselines (several seeds at once), or resume an interrupted
    run. The map, network sizes and CQL settings come from the checkpoint; the method sets the
    loss and the exploration."""

    algo: FinetuneAlgo = "ovmse"
    """The method (ovmse: OVM + SE; qmix: from scratch); src/ovmse/methods.py has the table of
    what each one sets."""
    cql_online: bool = False
    """Keep the pre-training's CQL term online for a pre-trained method that drops it (the
    paper does so for OVMSE on 2s3z)."""
    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    out: Path | None = None
    """Run folder to create (default: runs/<map>-<algo>-<date-time>)."""
    resume: Path | None = None
    """Continue the run in this folder from its last checkpoint (give no other options)."""
    progress: bool = True
    """Show a progress bar with the live test win rate."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard event files, one folder per seed under
    RUN/tensorboard/ (`tensorboard --logdir RUN`); metrics.jsonl is written either way."""
    wandb: str | None = None
    """Also log to this Weights & Biases project (pip install 'ovmse[wandb]'; WANDB_MODE=offline
    logs without an account, into RUN/wandb/ for a later `wandb sync`)."""


def run_finetune(cmd: Finetune) -> int:
    from ovmse.methods import finetune_config
    from ovmse.runs import read_jsonl
    from ovmse.train.driver import train
    from ovmse.train.loop import format_table

    if cmd.resume is not None:
        if cmd.config != TrainConfig() or cmd.out is not None:
            raise UserError("--resume continues a run with the config saved in its folder; "
                            "give no other options")
        run_dir, resume, cfg = cmd.resume, True, cmd.config
    else:
        cfg = finetune_config(cmd.algo, cmd.config, cmd.cql_online)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = cmd.out or Path("runs") / f"{cfg.env.map}-{cmd.algo}-{stamp}"
        resume = False
    summary = train(cfg, run_dir, resume=resume, progress=cmd.progress,
                    log=log_settings(cmd))
    print(format_table(read_jsonl(Path(run_dir) / "metrics.jsonl"), summary))
    print(f"run folder: {run_dir}")
    return 0


@dataclass(frozen=True)
class Run:
    """The main job: pre-train MACQL on the shipped 3m medium dataset, fine-tune online with
    OVMSE and one baseline, then print a table (offline win rate, win rate after fine-tuning,
    drop at the transition) and write a figure. A few minutes on a 2-core CPU."""

    config: Annotated[PipelineConfig, tyro.conf.arg(name="")] = field(
        default_factory=PipelineConfig)
    out: Path | None = None
    """Folder for every phase's run folder (default: runs/main-<date-time>)."""
    progress: bool = True
    """Show progress bars."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard event files, one folder per seed under
    each phase's tensorboard/ (`tensorboard --logdir OUT`); metrics.jsonl is written either way."""
    wandb: str | None = None
    """Also log to this Weights & Biases project (pip install 'ovmse[wandb]'; WANDB_MODE=offline
    logs without an account, into RUN/wandb/ for a later `wandb sync`)."""


def run_main_job(cmd: Run) -> int:
    from ovmse.pipeline import format_results, run_pipeline

    out = cmd.out or Path("runs") / f"main-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_pipeline(cmd.config, out, progress=cmd.progress, log=log_settings(cmd))
    print(format_results(result))
    print(f"figure: {out / 'offline_to_online.png'}")
    print(f"run folders: {out}")
    return 0


@dataclass(frozen=True)
class DatasetBuild:
    """Make all datasets of a map from one QMIX training run: random, medium, medium-replay,
    expert (docs/datasets.md gives the rule)."""

    map: str = "3m"
    """SMAX map."""
    out: Path | None = None
    """Folder to hold the source run and one dataset folder per quality (default:
    datasets-build/<map>, where the study looks for data after datasets/). A finished source
    run of the same settings there is reused, an interrupted one resumed."""
    seed: int = 0
    """Seed of the training run and of the collection."""
    steps: int = 500_000
    """Env steps of the QMIX training run."""
    config: Path | None = None
    """QMIX settings of the training run, where a map needs other than `ovmse train`'s
    defaults: a JSON object of its config keys (a run folder's config.json, or only the keys to
    change, e.g. {"explore": {"eps_anneal_steps": 1000000}}); --map, --seed and --steps
    override it. docs/datasets.md names the maps built with one."""
    episodes: int = 1000
    """Episodes per collected dataset (random, medium, expert)."""
    eval_episodes: int = 256
    """Greedy episodes used to re-measure each policy snapshot's win rate."""
    epsilon: float = 0.05
    """Behaviour epsilon of the medium and expert rollouts."""
    qualities: tuple[Quality, ...] = ("random", "medium-replay", "medium", "expert")
    """Which datasets to write."""
    overwrite: bool = False
    """Replace datasets that already exist under --out."""
    progress: bool = True
    """Show progress bars."""


BUILD_ROOT = Path("datasets-build")
"""Where dataset commands write by default: one folder per map, never the shipped datasets."""


def run_dataset_build(cmd: DatasetBuild) -> int:
    from ovmse.config import from_dict
    from ovmse.dataset_build import build_datasets
    from ovmse.runs import read_json

    _check_collection_args(cmd.map, cmd.episodes, cmd.epsilon, cmd.seed)
    if cmd.steps <= 0:
        raise UserError(f"steps must be > 0, got {cmd.steps}")
    train_config = None
    if cmd.config is not None:
        try:
            train_config = from_dict(TrainConfig, read_json(cmd.config))
        except UserError as e:
            raise UserError(f"--config {cmd.config}: {e}") from None
    out = cmd.out or BUILD_ROOT / cmd.map
    record = build_datasets(cmd.map, out, seed=cmd.seed, steps=cmd.steps,
                            episodes=cmd.episodes, eval_episodes=cmd.eval_episodes,
                            epsilon=cmd.epsilon, qualities=cmd.qualities, progress=cmd.progress,
                            train_config=train_config, overwrite=cmd.overwrite)
    print(f"expert: {record['expert']} (greedy win rate {record['expert_win_rate']:.3f}); "
          f"medium: {record['medium']} ({record['medium_win_rate']:.3f})")
    for quality, d in record["datasets"].items():
        print(f"{out / quality}: {d['episodes']} episodes, {d['transitions']} transitions, "
              f"mean return {d['mean_return']:.2f}, win rate {d['win_rate']:.3f}")
    return 0


@dataclass(frozen=True)
class DatasetCollect:
    """Collect one dataset: random play, or a policy snapshot of a training run."""

    map: str = "3m"
    """SMAX map."""
    quality: Quality = "random"
    """random: uniform random available actions; medium / expert: the snapshot of --run chosen
    by the build rule; medium-replay: --run's replay buffer at its medium snapshot."""
    episodes: int = 1000
    """Episodes to collect (not used by medium-replay, which takes the whole buffer)."""
    seed: int = 0
    """Collection seed."""
    run: Path | None = None
    """A training run folder (ovmse train) with policy snapshots; needed except for random."""
    epsilon: float = 0.05
    """Behaviour epsilon of policy rollouts."""
    eval_episodes: int = 256
    """Greedy episodes used to re-measure each snapshot's win rate (the build rule)."""
    out: Path | None = None
    """Dataset folder to write (default: datasets-build/<map>/<quality>)."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""
    progress: bool = True
    """Show a progress bar."""


def run_dataset_collect(cmd: DatasetCollect) -> int:
    from ovmse.dataset_build import collect_quality

    _check_collection_args(cmd.map, cmd.episodes, cmd.epsilon, cmd.seed)
    if cmd.quality != "random" and cmd.run is None:
        raise UserError(f"--quality {cmd.quality} needs --run RUN_DIR (a training run with "
                        f"policy snapshots)")
    out = cmd.out or BUILD_ROOT / cmd.map / cmd.quality
    meta = collect_quality(cmd.map, cmd.quality, out, episodes=cmd.episodes, seed=cmd.seed,
                           run_dir=cmd.run, epsilon=cmd.epsilon,
                           eval_episodes=cmd.eval_episodes, overwrite=cmd.overwrite,
                           progress=cmd.progress)
    rate = meta["provenance"].get("episodes_per_s")
    print(f"{out}: {meta['episodes']} episodes, {meta['transitions']} transitions, mean "
          f"return {meta['mean_return']:.2f}, win rate {meta['win_rate']:.3f}"
          + (f", {rate} episodes/s" if rate else ""))
    return 0


def _check_collection_args(map_name: str, episodes: int, epsilon: float, seed: int) -> None:
    from ovmse.config import EnvConfig, validate_env

    validate_env(EnvConfig(map=map_name))
    if episodes <= 0:
        raise UserError(f"episodes must be > 0, got {episodes}")
    if not 0.0 <= epsilon <= 1.0:
        raise UserError(f"epsilon must be in [0, 1], got {epsilon}")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")


@dataclass(frozen=True)
class DatasetInfo:
    """Print a dataset's card: episodes, transitions, returns, win rate, how it was made."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET")]
    """Dataset folder, or a map/quality name (3m/medium: the shipped one; datasets-build/...)."""
    gamma: float | None = None
    """Also print the data's mean discounted return-to-go at this discount (e.g. 0.99): the
    value a calibrated Q_tot of the data's actions approaches (reads the arrays)."""


def run_dataset_info(cmd: DatasetInfo) -> int:
    from ovmse.datasets.card import dataset_card, mean_return_to_go
    from ovmse.datasets.store import read_metadata

    path = Path(locate_dataset(cmd.path))
    print(dataset_card(read_metadata(path), cmd.path))
    if cmd.gamma is not None:
        over_steps, at_start = mean_return_to_go(path, cmd.gamma)
        print(f"discounted return-to-go (gamma {cmd.gamma:g}): mean over steps {over_steps:.2f}, "
              f"at the first step {at_start:.2f}")
    return 0


@dataclass(frozen=True)
class DatasetVerify:
    """Check a dataset's files (sizes, SHA-256), arrays (checksums, shapes) and episodes."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET")]
    """Dataset folder, or a map/quality name (3m/medium: the shipped one; datasets-build/...)."""


def run_dataset_verify(cmd: DatasetVerify) -> int:
    from ovmse.datasets.store import verify_dataset

    meta = verify_dataset(Path(locate_dataset(cmd.path)))
    print(f"{cmd.path}: OK ({len(meta['manifest'])} files, {meta['episodes']} episodes, "
          f"{meta['transitions']} transitions)")
    return 0


@dataclass(frozen=True)
class DatasetRecollect:
    """Make a dataset again from its card (its dataset.json and generator.npz: datasets-cards/),
    checking that the arrays are the card's: random, medium and expert in seconds, medium-replay
    by training the source run again to its medium snapshot."""

    card: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CARD")]
    """A dataset folder or its card (datasets-cards/<map>/<quality>)."""
    out: Path | None = None
    """Dataset folder to write (default: datasets-build/<map>/<quality>)."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""
    progress: bool = True
    """Show a progress bar."""


def run_dataset_recollect(cmd: DatasetRecollect) -> int:
    from ovmse.dataset_build import recollect
    from ovmse.datasets.store import read_metadata

    card = read_metadata(cmd.card)
    out = cmd.out or BUILD_ROOT / card["map"] / card["quality"]
    meta = recollect(cmd.card, out, overwrite=cmd.overwrite, progress=cmd.progress)
    print(f"{out}: {meta['episodes']} episodes, {meta['transitions']} transitions, the same "
          f"arrays as {cmd.card}")
    return 0


@dataclass(frozen=True)
class DatasetMix:
    """Concatenate datasets of the same map into one (quality "mixed")."""

    sources: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="DATASET")]
    """Dataset folders or map/quality names, in the order their episodes are kept."""
    out: Path | None = None
    """Dataset folder to write (default: datasets-build/<map>/mixed)."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""


def run_dataset_mix(cmd: DatasetMix) -> int:
    from ovmse.datasets.mix import mix_datasets
    from ovmse.datasets.store import read_metadata

    if not cmd.sources:
        raise UserError("give the dataset folders to mix")
    sources = [Path(locate_dataset(s)) for s in cmd.sources]
    out = cmd.out or BUILD_ROOT / read_metadata(sources[0])["map"] / "mixed"
    meta = mix_datasets(sources, out, overwrite=cmd.overwrite)
    print(f"{out}: {meta['episodes']} episodes from {len(cmd.sources)} datasets, mean return "
          f"{meta['mean_return']:.2f}, win rate {meta['win_rate']:.3f}")
    return 0


@dataclass(frozen=True)
class DatasetExport:
    """Write a dataset in another tool's layout: og-marl, a flashbax Vault with OG-MARL's keys and
    one row per transition (docs/datasets.md says what is lost)."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET")]
    """Dataset folder, or a map/quality name (3m/medium: the shipped one; datasets-build/...)."""
    out: Path
    """Vault folder to write into (e.g. vaults/smax/3m.vlt); the dataset's quality is its uid."""
    format: Literal["og-marl"] = "og-marl"
    """og-marl: OG-MARL's Vault layout (observations, actions, rewards, terminals, truncations,
    infos.legals, infos.state; no final-observation rows)."""


def run_dataset_export(cmd: DatasetExport) -> int:
    from ovmse.datasets.ogmarl import export_og_marl

    done = export_og_marl(Path(locate_dataset(cmd.path)), cmd.out)
    print(f"{cmd.out}/{done['uid']}: {done['episodes']} episodes, {done['rows']} transitions "
          f"(OG-MARL layout)")
    return 0


@dataclass(frozen=True)
class DatasetImport:
    """Read a Vault in OG-MARL's layout into an ovmse dataset of a SMAX map (episodes split at
    terminals or truncations; sizes checked against the map)."""

    vault: tyro.conf.Positional[Path]
    """Vault folder (the one holding the uid folders, e.g. vaults/smax/3m.vlt)."""
    map: str
    """SMAX map the data was collected on; its sizes must match the Vault's."""
    out: Path | None = None
    """Dataset folder to write (default: datasets-build/<map>/<quality>)."""
    uid: str | None = None
    """Which uid of the Vault to read (default: its only one)."""
    quality: str | None = None
    """Quality recorded in the dataset (default: the uid, lower case)."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""


def run_dataset_import(cmd: DatasetImport) -> int:
    from ovmse.datasets.ogmarl import import_og_marl, vault_uid
    from ovmse.envs import make_env

    spec = make_env(cmd.map).spec
    uid = vault_uid(cmd.vault, cmd.uid)
    quality = cmd.quality or uid.lower()
    out = cmd.out or BUILD_ROOT / cmd.map / quality
    meta, left_out = import_og_marl(cmd.vault, spec, out, uid=uid, quality=quality,
                                    overwrite=cmd.overwrite)
    print(f"{out}: {meta['episodes']} episodes, {meta['transitions']} transitions, win rate "
          f"{meta['win_rate']:.3f}" + (f"; {left_out} rows of an unfinished last episode left "
                                       f"out" if left_out else ""))
    return 0


@dataclass(frozen=True)
class Dataset:
    """Make, inspect, verify, mix, export and import offline datasets (`ovmse dataset --help`)."""


@dataclass(frozen=True)
class ExperimentRun:
    """Run every cell of an experiment spec (a name: the specs shipped in ovmse/study/specs/) at a
    scale that is not in the results folder yet; an interrupted study resumes where it stopped."""

    spec: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SPEC")]
    """Spec name (methods, table1, fig1, fig2_fig3, fig4, table2, cql_online, transition,
    lam_end) or path to a .toml file."""
    scale: str = "cpu"
    """cpu (a 2-core machine, hours), workstation (the paper's four maps, 5 seeds, 200k steps;
    tens of hours over many sittings, docs/benchmarks.md) or paper (the paper's maps and
    budgets)."""
    results: Path = Path("experiments/results")
    """Result cache: one JSON per finished cell, shared by all specs."""
    work_dir: Path = Path("runs/experiments")
    """Run folders (checkpoints, metrics) of the cells."""
    kept: Path = Path("experiments/pretrained")
    """Pre-training runs kept by `ovmse experiment keep`: a fine-tuning cell whose pre-training
    run is not in --work-dir starts from the kept one instead of running it again (and then
    needs no dataset unless it mixes offline data in)."""
    data_roots: tuple[Path, ...] | None = None
    """Folders searched, in order, for the spec's map/quality datasets (default: the shipped
    datasets, then ./datasets, then ./datasets-build)."""
    executor: Literal["local", "ray"] = "local"
    """local: cells on this machine (see --jobs); ray: one Ray task per cell."""
    jobs: int = 1
    """local: cells run at once, each in a worker process (1: one after the other in this
    process). Whether 2 pays on a 2-core CPU depends on the host: it did where one cell kept
    the cores only partly busy, and did not where one cell kept both busy (docs/benchmarks.md,
    issue 15); time a cell both ways first."""
    seeds_per_run: int = 0
    """Train each fine-tuning cell's seeds this many at a time, one run after another (0: all
    at once, vmapped). For cells whose replay buffers do not fit in memory together (5,000
    padded episodes per seed: ~3.8 GB on 3s5z, ~2.5 GB on 6h_vs_8z); on a CPU every seed's
    numbers are the same either way, so results and cache keys do not change. A started cell
    keeps the way it started."""
    address: str | None = None
    """Ray cluster address ("auto", "ray://host:10001"); default: a local Ray instance."""
    cpus_per_cell: float = 1.0
    """Ray: CPUs reserved per cell."""
    gpus_per_cell: float = 0.0
    """Ray: GPUs reserved per cell (e.g. 1, or 0.25 to share a GPU: four cells per GPU). Below 1,
    each cell's JAX neither preallocates GPU memory nor uses more than 0.9 x this share of it
    (XLA_PYTHON_CLIENT_PREALLOCATE=false, XLA_CLIENT_MEM_FRACTION), so the cells sharing a GPU
    fit in it; whole GPUs keep JAX's defaults."""
    tasks: tuple[str, ...] = ()
    """Run only the cells of these map/quality tasks (default: all of the spec's)."""
    methods: tuple[str, ...] = ()
    """Run only the cells of these methods (default: all of the spec's)."""
    dry_run: bool = False
    """List the cells and whether each is cached; run nothing."""
    progress: bool = True
    """Show each local cell's progress bar."""


def run_experiment(cmd: ExperimentRun) -> int:
    from ovmse.study.executors import LocalExecutor, RayExecutor
    from ovmse.study.runner import plan_cells, run_study, select
    from ovmse.study.spec import load_spec
    from ovmse.study.store import ResultStore

    spec, store = load_spec(cmd.spec), ResultStore(cmd.results)
    roots = DATA_ROOTS if cmd.data_roots is None else cmd.data_roots
    if cmd.dry_run:
        plan = select(plan_cells(spec, cmd.scale, roots),
                      cmd.tasks, cmd.methods)
        for cell in plan.pretrain + plan.finetune:
            print(f"{'cached ' if store.has(cell) else 'to run '} {cell.key}  {cell.name}")
        return 0
    executor = (LocalExecutor(progress=cmd.progress and cmd.jobs == 1, jobs=cmd.jobs,
                              seeds_per_run=cmd.seeds_per_run)
                if cmd.executor == "local" else
                RayExecutor(cmd.address, cmd.cpus_per_cell, cmd.gpus_per_cell,
                            seeds_per_run=cmd.seeds_per_run))
    counts = run_study(spec, cmd.scale, store, cmd.work_dir, executor, roots,
                       tasks=cmd.tasks, methods=cmd.methods, kept=cmd.kept)
    elsewhere = (f", {counts['running_elsewhere']} skipped (another runner holds them or their "
                 f"pre-training; run again once it is done)" if counts["running_elsewhere"] else "")
    print(f"{spec.name} ({cmd.scale}): ran {counts['ran']} cells, {counts['cached']} were cached"
          f"{elsewhere}; now `ovmse experiment report {cmd.spec} --scale {cmd.scale}`")
    return 0


@dataclass(frozen=True)
class ExperimentKeep:
    """Copy the finished pre-training runs of an experiment's cells (their checkpoints, ~1-1.5
    MB per seed) into a folder git can keep, so that their fine-tuning cells can start from them
    in a later sitting or on another machine, where the run folders are gone and the dataset
    made again may differ (docs/datasets.md, "Cards"); `ovmse experiment run` restores them."""

    spec: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SPEC")]
    """Spec name (as for `ovmse experiment run`) or path."""
    scale: str = "cpu"
    """Scale of the spec (as for `ovmse experiment run`)."""
    results: Path = Path("experiments/results")
    """Result cache written by `ovmse experiment run`."""
    work_dir: Path = Path("runs/experiments")
    """Run folders of the cells (as for `ovmse experiment run`)."""
    kept: Path = Path("experiments/pretrained")
    """Where the runs are kept (one folder per pre-training cell)."""
    tasks: tuple[str, ...] = ()
    """Keep only the pre-training of these map/quality tasks (default: all of the spec's)."""
    methods: tuple[str, ...] = ()
    """Keep only the pre-training these methods start from (default: all of the spec's)."""


def run_experiment_keep(cmd: ExperimentKeep) -> int:
    from ovmse.study.runner import keep_pretraining, plan_cells, select
    from ovmse.study.spec import load_spec
    from ovmse.study.store import ResultStore

    spec, store = load_spec(cmd.spec), ResultStore(cmd.results)
    plan = select(plan_cells(spec, cmd.scale, DATA_ROOTS), cmd.tasks, cmd.methods)
    kept = []
    for cell in plan.pretrain:
        folder = keep_pretraining(cell, store, cmd.work_dir, cmd.kept)
        if folder:
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            print(f"kept {cell.name} ({cell.key}): {folder} ({size:.1f} MB)")
            kept.append(folder)
        else:
            print(f"not kept {cell.name} ({cell.key}): no finished run with a stored result "
                  f"in {cmd.work_dir}")
    if not kept:
        raise UserError(f"no finished pre-training run of {spec.name} ({cmd.scale}) in "
                        f"{cmd.work_dir} to keep; run `ovmse experiment run` first")
    print(f"commit {cmd.kept} to keep them past this machine; delete a folder once every "
          f"fine-tuning cell starting from it is stored")
    return 0


@dataclass(frozen=True)
class ExperimentReport:
    """Build an experiment's tables (Markdown) and figures (PNG) from its stored results alone."""

    spec: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SPEC")]
    """Spec name (as for `ovmse experiment run`) or path."""
    scale: str = "cpu"
    """Which scale's cells to report."""
    results: Path = Path("experiments/results")
    """Result cache written by `ovmse experiment run`."""
    out: Path = Path("docs/results")
    """Folder for <spec>-<scale>.md and its PNGs."""
    embed: Path | None = None
    """Also put the page's tables and figures into this Markdown file (e.g. docs/results.md),
    between its lines `<!-- report:SPEC-SCALE -->` and `<!-- /report:SPEC-SCALE -->`."""


def run_experiment_report(cmd: ExperimentReport) -> int:
    from ovmse.study.embed import embed_page
    from ovmse.study.report import build_report
    from ovmse.study.spec import load_spec
    from ovmse.study.store import ResultStore

    path = build_report(load_spec(cmd.spec), cmd.scale, ResultStore(cmd.results), cmd.out)
    print(f"wrote {path}")
    if cmd.embed is not None:
        embed_page(path, cmd.embed)
        print(f"updated its block in {cmd.embed}")
    return 0


@dataclass(frozen=True)
class ExperimentExport:
    """Write an experiment's stored results in another tool's layout: marl-eval's JSON (per-seed
    test win rate and return at every test point, absolute metrics from the final test)."""

    spec: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SPEC")]
    """Spec name (as for `ovmse experiment run`) or path."""
    scale: str = "cpu"
    """Which scale's cells to export."""
    format: Literal["marl-eval"] = "marl-eval"
    """marl-eval: instadeepai/marl-eval's raw-data JSON (docs/results.md shows how to read it)."""
    out: Path | None = None
    """File to write (default: <spec>-<scale>.marl-eval.json in the current folder)."""
    results: Path = Path("experiments/results")
    """Result cache written by `ovmse experiment run`."""
    algorithms: tuple[str, ...] = ()
    """Export only these algorithms (report labels, e.g. ovmse switch-cql; default: all), for
    example to give marl-eval the same algorithms on every task."""
    tasks: tuple[str, ...] = ()
    """Export only these map/quality tasks (default: all); marl-eval's curves need the same
    number of test points on every task, i.e. one map's tasks at a time."""
    overwrite: bool = False
    """Replace an existing --out."""


def run_experiment_export(cmd: ExperimentExport) -> int:
    from ovmse.runs import write_json
    from ovmse.study.export import marl_eval_data, ragged
    from ovmse.study.spec import load_spec
    from ovmse.study.store import ResultStore

    spec = load_spec(cmd.spec)
    data = marl_eval_data(spec, cmd.scale, ResultStore(cmd.results), cmd.algorithms, cmd.tasks)
    if not any(data.values()):
        raise UserError(f"no stored results of {spec.name} ({cmd.scale}) in {cmd.results}"
                        + (" for the chosen algorithms and tasks" if cmd.algorithms or cmd.tasks
                           else "") + "; run `ovmse experiment run` first, or give --results")
    out = cmd.out or Path(f"{spec.name}-{cmd.scale}.marl-eval.json")
    if out.exists() and not cmd.overwrite:
        raise UserError(f"{out} already exists; choose another --out, or pass --overwrite")
    write_json(out, data, sort_keys=False)      # marl-eval reads the keys in file order
    runs = sum(len(r) for tasks in data.values() for algos in tasks.values() for r in algos.values())
    print(f"wrote {out}: {sum(map(len, data.values()))} tasks, {runs} runs")
    for problem in ragged(data):
        print(f"note: marl-eval aggregates only rectangular data: {problem}")
    return 0


@dataclass(frozen=True)
class Experiment:
    """Run the paper's experiments as cached cells and report them (`ovmse experiment --help`)."""


Handler = Callable[[object], int]
GROUPS: dict[str, dict[str, tuple[type, Handler]]] = {
    "": {"train": (Train, run_train), "pretrain": (Pretrain, run_pretrain),
         "finetune": (Finetune, run_finetune), "run": (Run, run_main_job),
         "dataset": (Dataset, lambda cmd: 0), "experiment": (Experiment, lambda cmd: 0)},
    "dataset": {"build": (DatasetBuild, run_dataset_build),
                "collect": (DatasetCollect, run_dataset_collect),
                "info": (DatasetInfo, run_dataset_info),
                "verify": (DatasetVerify, run_dataset_verify),
                "recollect": (DatasetRecollect, run_dataset_recollect),
                "mix": (DatasetMix, run_dataset_mix),
                "export": (DatasetExport, run_dataset_export),
                "import": (DatasetImport, run_dataset_import)},
    "experiment": {"run": (ExperimentRun, run_experiment),
                   "keep": (ExperimentKeep, run_experiment_keep),
                   "report": (ExperimentReport, run_experiment_report),
                   "export": (ExperimentExport, run_experiment_export)},
}


DESCRIPTIONS = {
    "": "Offline-to-online MARL (OVMSE) on SMAX. `ovmse --version` prints the version.",
    "dataset": "Make, inspect, verify, mix, export and import offline datasets of SMAX "
               "episodes (docs/datasets.md). `ovmse dataset COMMAND --help` gives each one's options.",
    "experiment": "Run the paper's experiments (specs shipped in ovmse/study/specs/) as cached "
                  "cells in experiments/results/, and report them (docs/results.md). `ovmse experiment COMMAND --help` gives each "
                  "one's options.",
}
"""The help text above each command group's list of commands."""


def log_settings(cmd):
    """Where a command's metrics go besides metrics.jsonl (its --tensorboard and --wandb)."""
    from ovmse.metrics_log import LogSettings

    return LogSettings(tensorboard=cmd.tensorboard, wandb_project=cmd.wandb)


NESTED_FLAGS = (Run,)
"""Commands whose nested options keep their section's prefix (`ovmse run --pretrain.steps`,
`--finetune.explore.eps-anneal-steps`: both phases have a `steps`); the others' flags are the
field names alone (`ovmse finetune --lam-anneal-steps`)."""


SAVED_CONFIG = {"train": TrainConfig, "pretrain": PretrainConfig}
"""Commands that start a new run from a saved config.json (--config)."""


def _with_saved_config(argv: list[str]):
    """Parse `ovmse train|pretrain --config RUN/config.json ...`: the saved config is the
    default, the other options override it."""
    from ovmse.config import from_dict
    from ovmse.runs import read_json

    name, at = argv[0], argv.index("--config")
    if at + 1 >= len(argv):
        raise UserError("--config needs a file: a run folder's config.json")
    saved = from_dict(SAVED_CONFIG[name], read_json(Path(argv[at + 1])))
    cls = GROUPS[""][name][0]
    return tyro.cli(cls, default=cls(config=saved), args=argv[1:], prog=f"ovmse {name}",
                    description=cls.__doc__, config=(tyro.conf.OmitArgPrefixes,))


def main(argv: list[str] | None = None) -> int:
    from ovmse import compilation_cache

    compilation_cache.enable()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        from ovmse import __version__

        print(f"ovmse {__version__}")
        return 0
    group = argv.pop(0) if argv and argv[0] in GROUPS and argv[0] else ""
    commands = GROUPS[group]
    try:
        if not group and argv and argv[0] in SAVED_CONFIG and "--config" in argv:
            cmd = _with_saved_config(argv)
        else:
            cmd = tyro.extras.subcommand_cli_from_dict(
                {name: cls if cls in NESTED_FLAGS else tyro.conf.OmitArgPrefixes[cls]
                 for name, (cls, _) in commands.items()}, args=argv,
                prog=f"ovmse {group}".strip(), description=DESCRIPTIONS[group])
        handler = next(run for cls, run in commands.values() if type(cmd) is cls)
        code = handler(cmd)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`ovmse dataset info ... | head`): stop quietly, as a process
        # killed by SIGPIPE would; stdout goes to devnull so the interpreter's final flush
        # cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as e:
        print(f"ovmse: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"ovmse: error: no space left on the disk writing {e.filename or 'a file'}; free "
              f"space (checkpoints in runs/ are the big files) and rerun: finished files are "
              f"kept, the unfinished one was not written (a training run resumes with --resume "
              f"RUN_DIR)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ovmse: interrupted; finished files are kept, unfinished ones were not written "
              "(a training run resumes with --resume RUN_DIR; one stopped before its first "
              "checkpoint was removed)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
