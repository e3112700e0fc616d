"""Nothing lost, nothing silently wrong: default output paths, non-finite data and training,
paths stored by runs, flags named in errors, malformed metadata, strict JSON, runs that cannot
learn, closed pipes and data provenance (docs/reliability.md lists each case and its test)."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_train_config
from ovmse.cli import GROUPS, main
from ovmse.config import CqlConfig, LearnerConfig, NetworkConfig, PretrainConfig
from ovmse.datasets.locate import SHIPPED as SHIPPED_ROOT
from ovmse.datasets.store import (METADATA_FILE, load_dataset, read_metadata, verify_dataset,
                                  write_dataset)
from ovmse.envs import make_env
from ovmse.errors import UserError
from ovmse.runs import read_checkpoint_meta, read_jsonl, write_json, write_jsonl
from ovmse.train import offline as offline_module, pretrain as pretrain_module
from ovmse.train.driver import expected_updates, train, warn_if_few_updates
from ovmse.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = SHIPPED_ROOT / "3m"
TINY_PRETRAIN = PretrainConfig(
    dataset=str(SHIPPED / "medium"), steps=6, test_interval=3, test_episodes=4,
    final_test_episodes=4, checkpoint_interval=3, num_seeds=1,
    network=NetworkConfig(agent_hidden_dim=16, mixer_embed_dim=8, hypernet_hidden_dim=16),
    learner=LearnerConfig(batch_size=16, length_buckets=1,
                          cql=CqlConfig(alpha=5.0, num_samples=4)))


def strict_json(text: str):
    """json.loads that rejects NaN and Infinity, as strict parsers do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ovmse: error:"), err
    return err


@pytest.fixture(scope="module")
def shipped_medium():
    return load_dataset(SHIPPED / "medium")


def rewritten(path: Path, shipped, field: str, value: float, check: bool = True) -> Path:
    """The shipped 3m medium data written to `path` with one value of `field` replaced
    (`check=False`: as a writer without the non-finite check would have written it)."""
    batch, meta = shipped
    arrays = batch._asdict()
    arrays[field] = arrays[field].copy()
    arrays[field][(2, 5) + (0,) * (arrays[field].ndim - 2)] = value
    spec = make_env("3m").spec
    if check:
        write_dataset(path, type(batch)(**arrays), spec, "medium", {})
    else:
        from ovmse.datasets import store
        original = store.first_nonfinite
        store.first_nonfinite = lambda rows: None
        try:
            write_dataset(path, type(batch)(**arrays), spec, "medium", {})
        finally:
            store.first_nonfinite = original
    return path


# 1. Default output paths never hold another map's or quality's data; nothing is replaced.

def test_dataset_defaults_are_per_map_and_quality_and_never_replace(tmp_path, monkeypatch,
                                                                    capsys, shipped_medium):
    from ovmse import dataset_build as build

    monkeypatch.chdir(tmp_path)
    # the episodes are not the point here (collection is tested in test_datasets.py): four
    # shipped ones, "played" in one batch, so no episodes/s was measured
    batch, _ = shipped_medium
    monkeypatch.setattr(build, "collect_episodes", lambda *args, **kwargs: (
        type(batch)(*(x[:, :4] for x in batch)), None))
    seen = []
    monkeypatch.setattr(build, "build_datasets",
                        lambda map_name, out, **kw: seen.append(out) or dict(
                            expert="e", expert_win_rate=1.0, medium="m", medium_win_rate=0.5,
                            datasets={}))
    assert main(["dataset", "build", "--map", "2s3z", "--no-progress"]) == 0
    assert seen == [Path("datasets-build/2s3z")]

    args = ["dataset", "collect", "--map", "3m", "--quality", "random", "--episodes", "4",
            "--no-progress"]
    assert main(args) == 0
    written = tmp_path / "datasets-build" / "3m" / "random" / METADATA_FILE
    before = written.read_bytes()
    strict_json(before.decode())
    assert read_metadata(written.parent)["provenance"]["episodes_per_s"] is None
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists" in one_line_error(capsys) and written.read_bytes() == before


def test_dataset_build_refuses_existing_datasets_before_training(tmp_path, capsys):
    (tmp_path / "random").mkdir()
    assert main(["dataset", "build", "--map", "3m", "--out", str(tmp_path), "--qualities",
                 "random", "--steps", "200", "--no-progress"]) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random"]


def test_dataset_build_trains_its_source_run_with_the_settings_of_config(tmp_path,
                                                                         monkeypatch, capsys):
    from ovmse import dataset_build as build

    seen = []
    monkeypatch.setattr(build, "build_datasets",
                        lambda map_name, out, **kw: seen.append(kw["train_config"]) or dict(
                            expert="e", expert_win_rate=1.0, medium="m", medium_win_rate=0.5,
                            datasets={}))
    settings = tmp_path / "source.json"
    settings.write_text(json.dumps({"explore": {"eps_anneal_steps": 1_000_000}}))
    assert main(["dataset", "build", "--map", "5m_vs_6m", "--out", str(tmp_path / "b"),
                 "--config", str(settings), "--no-progress"]) == 0
    assert seen[0].explore.eps_anneal_steps == 1_000_000
    assert seen[0].learner == LearnerConfig()   # keys it does not name keep their defaults
    assert main(["dataset", "build", "--map", "3m", "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    assert seen[1] is None                      # no --config: `ovmse train`'s defaults

    settings.write_text(json.dumps({"explore": {"eps_anneal": 1_000_000}}))
    capsys.readouterr()
    assert main(["dataset", "build", "--map", "3m", "--out", str(tmp_path / "d"),
                 "--config", str(settings), "--no-progress"]) == 2
    error = one_line_error(capsys)
    assert str(settings) in error and "eps_anneal" in error
    assert len(seen) == 2 and not (tmp_path / "d").exists()


def test_dataset_build_never_reuses_a_source_run_of_other_settings(tmp_path, capsys):
    run = tmp_path / "source-run"
    run.mkdir()
    cfg = dataclasses.replace(tiny_train_config(), steps=999)
    write_json(run / "config.json", dataclasses.asdict(cfg.resolved()))
    assert main(["dataset", "build", "--map", "3m", "--out", str(tmp_path), "--qualities",
                 "random", "--steps", "200", "--no-progress"]) == 2
    assert "source-run is a training run with" in one_line_error(capsys)


# 2. Non-finite data is refused when written, verified and loaded; training stops on it.

@pytest.mark.parametrize("field,value", [("rewards", np.nan), ("obs", np.inf)])
def test_writing_non_finite_data_is_refused_naming_field_and_index(tmp_path, shipped_medium,
                                                                   field, value):
    stored = {"rewards": "rewards", "obs": "observations"}[field]
    with pytest.raises(UserError, match=rf"{stored} holds (nan|inf) at row \d+ \(episode 5, "
                                        rf"step 2\)"):
        rewritten(tmp_path / "bad", shipped_medium, field, value)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("field,value", [("rewards", np.nan), ("obs", np.inf)])
def test_verify_load_and_info_refuse_non_finite_data(tmp_path, shipped_medium, field, value,
                                                      capsys):
    path = rewritten(tmp_path / "bad", shipped_medium, field, value, check=False)
    stored = {"rewards": "rewards", "obs": "observations"}[field]
    assert main(["dataset", "verify", str(path)]) == 2
    err = one_line_error(capsys)
    # NaN rewards made NaN returns in dataset.json, refused there first (by episode)
    assert (stored in err if field == "obs" else "episode_returns[5] is None" in err), err
    with pytest.raises(UserError):
        load_dataset(path)
    if field == "rewards":  # the card's return statistics would be NaN
        assert main(["dataset", "info", str(path)]) == 2
        assert "not a finite number" in one_line_error(capsys)
        meta = json.loads((path / METADATA_FILE).read_text())
        meta["episode_returns"][5] = 0.0
        meta["mean_return"] = meta["win_rate"] = 0.0
        (path / METADATA_FILE).write_text(json.dumps(meta))
        assert main(["dataset", "verify", str(path)]) == 2  # the array itself is named
        assert re.search(r"rewards holds nan at row \d+ \(episode 5, step 2\)",
                         one_line_error(capsys))


class PoisonedOfflineTrainer(pretrain_module.OfflineTrainer):
    """Pre-training whose second chunk turns seed 0's networks to NaN."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        run_chunk, calls = self.run_chunk, []

        def poisoned(states, until, data):
            states, stats = run_chunk(states, until, data)
            calls.append(until)
            if len(calls) == 2:
                nan = jax.tree.map(lambda x: x * jnp.nan, states.learner.params)
                states = states._replace(learner=states.learner._replace(params=nan))
            return states, stats

        self.run_chunk = poisoned


def test_pretraining_stops_on_non_finite_networks_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_module, "OfflineTrainer", PoisonedOfflineTrainer)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"seed 0: the network parameters became non-finite "
                                        r".* gradient steps 3-6.* checkpoint \(gradient step 3\)"):
        pretrain(TINY_PRETRAIN, run, progress=False)
    assert read_checkpoint_meta(run / "checkpoint.npz")["chunk"] == 1
    assert {r["chunk"] for r in read_jsonl(run / "metrics.jsonl")} == {0, 1}
    assert not (run / "summary.json").exists()


def test_training_stops_on_a_non_finite_loss_with_one_line_and_leaves_no_folder(
        tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_train_config(steps=400, test_interval=400)
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, lr=1e30))
    with pytest.raises(UserError, match="became non-finite .* no checkpoint had been written"):
        train(cfg, run, progress=False)
    assert not run.exists()


def test_a_pretrained_checkpoint_with_non_finite_networks_cannot_start_fine_tuning(
        tmp_path, monkeypatch):
    run = tmp_path / "pre"
    pretrain(dataclasses.replace(TINY_PRETRAIN, steps=3), run, progress=False)
    offline_module.load_pretrained(run)  # finite: loads
    read = offline_module.load_checkpoint

    def read_poisoned(path, template):
        states, meta = read(path, template)
        target = jax.tree.map(lambda x: x * np.inf, states.learner.target_params)
        return states._replace(learner=states.learner._replace(target_params=target)), meta

    monkeypatch.setattr(offline_module, "load_checkpoint", read_poisoned)
    with pytest.raises(UserError, match="non-finite network parameters .* pre-train again"):
        offline_module.load_pretrained(run)


# 3. Stored paths work from any directory; a failed start leaves no half-made folder.

PRE_ARGS = ["--steps", "3", "--test-interval", "3", "--test-episodes", "4",
            "--final-test-episodes", "4", "--batch-size", "16", "--length-buckets", "1",
            "--num-samples", "4", "--agent-hidden-dim", "16", "--mixer-embed-dim", "8",
            "--hypernet-hidden-dim", "16", "--no-progress"]
FT_ARGS = ["--algo", "ovmse", "--offline-ratio", "0.25", "--steps", "200", "--num-envs", "4",
           "--batch-size", "8", "--buffer-size", "32", "--length-buckets", "1",
           "--test-interval", "200", "--test-episodes", "4", "--final-test-episodes", "4",
           "--probe-episodes", "4", "--no-progress"]


def test_runs_started_in_one_directory_work_from_another(tmp_path, monkeypatch, capsys):
    proj = tmp_path / "proj"
    shutil.copytree(SHIPPED / "medium", proj / "data" / "medium")
    monkeypatch.chdir(proj)
    assert main(["pretrain", "--dataset", "data/medium", "--out", "pre", *PRE_ARGS]) == 0
    assert Path(json.loads((proj / "pre" / "config.json").read_text())["dataset"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    # a failure before the first checkpoint (here: missing mixing data) leaves no folder ...
    assert main(["finetune", "--checkpoint", "proj/pre", "--dataset", "nowhere", "--out", "ft",
                 *FT_ARGS]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "ft").exists()
    # ... so the same --out works next, and the mixing data is found through the checkpoint
    assert main(["finetune", "--checkpoint", "proj/pre", "--out", "ft", *FT_ARGS]) == 0
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert Path(config["finetune"]["checkpoint"]) == proj / "pre"
    assert Path(config["finetune"]["dataset"]) == proj / "data" / "medium"


def test_an_interrupted_start_removes_the_run_folder(tmp_path, monkeypatch):
    from ovmse.train import driver

    def interrupted(program, run_dir, *args):
        (run_dir / "metrics.jsonl").write_text("{}\n")  # what the first test would write
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_program", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(steps=200), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# 4. Every flag an error message suggests is one that a command accepts.

FLAG = r"--[a-z][a-z0-9.-]*[a-z0-9]"
"""A long option, nested ones included (`ovmse run --pretrain.steps`)."""


def _help_flags() -> set[str]:
    flags = set()
    for group in GROUPS:   # the group helps: `ovmse --help` names --version
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit):
            main([*([group] if group else []), "--help"])
        flags |= set(re.findall(FLAG, out.getvalue()))
    for group, commands in GROUPS.items():
        for name in commands:
            if not group and name in GROUPS:
                continue
            out = io.StringIO()
            with redirect_stdout(out), pytest.raises(SystemExit):
                main([*([group] if group else []), name, "--help"])
            flags |= set(re.findall(FLAG, out.getvalue()))
    return flags


def _flags_in_source_strings() -> dict[str, str]:
    found = {}
    for path in (ROOT / "src" / "ovmse").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in re.findall(r"(?<![\w-])" + FLAG, node.value):
                    found.setdefault(flag, str(path.relative_to(ROOT)))
    return found


def test_every_flag_named_in_the_source_is_accepted_by_a_command():
    accepted = _help_flags()
    assert "--batch-size" in accepted and "--overwrite" in accepted
    named = _flags_in_source_strings()
    assert "--batch-size" in named and "--resume" in named
    unknown = {flag: where for flag, where in named.items() if flag not in accepted}
    assert not unknown, unknown


def test_a_too_small_dataset_names_the_real_batch_flag(tmp_path, shipped_medium, capsys):
    batch, _ = shipped_medium
    small = type(batch)(*(x[:, :20] for x in batch))
    write_dataset(tmp_path / "small", small, make_env("3m").spec, "medium", {})
    assert main(["pretrain", "--dataset", str(tmp_path / "small"), "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 2
    assert "lower --batch-size" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


# 5. Malformed metadata is a one-line error (exit 2), never a traceback.

def _drop(key):
    return lambda meta: meta.pop(key)


MALFORMED = {
    "no manifest": _drop("manifest"),
    "no spec": _drop("spec"),
    "no returns": _drop("episode_returns"),
    "spec not an object": lambda meta: meta.update(spec=[3]),
    "size is text": lambda meta: meta["spec"].update(num_agents="3"),
    "unknown spec key": lambda meta: meta["spec"].update(colour="red"),
    "manifest entry": lambda meta: meta["manifest"].update({"x": 1}),
    "returns too short": lambda meta: meta["episode_returns"].pop(),
    "no checksum": lambda meta: meta["array_sha256"].pop("rewards"),
    "format version": lambda meta: meta.update(format_version=99),
    "format version true": lambda meta: meta.update(format_version=True),
    "not an object": lambda meta: meta.clear() or meta.update(format=None),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dataset_metadata_is_a_one_line_error(tmp_path, case, capsys):
    path = tmp_path / "data"
    shutil.copytree(SHIPPED / "random", path)
    meta = json.loads((path / METADATA_FILE).read_text())
    MALFORMED[case](meta)
    (path / METADATA_FILE).write_text(json.dumps(meta))
    for command in ("verify", "info"):
        assert main(["dataset", command, str(path)]) == 2, command
        assert str(path) in one_line_error(capsys)


@pytest.mark.parametrize("config", [{"steps": "many"}, {"learner": 3}, [1, 2], {"colour": 1}])
def test_a_malformed_run_config_is_a_one_line_error_on_resume(tmp_path, config, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 2
    one_line_error(capsys)


# 6. Every JSON file the project writes is strict JSON.

def test_json_writers_write_null_for_non_finite_numbers(tmp_path):
    record = {"a": float("nan"), "b": [np.float32(np.inf), -float("inf")], "c": 1.5}
    write_json(tmp_path / "x.json", record)
    write_jsonl(tmp_path / "x.jsonl", [record])
    expected = {"a": None, "b": [None, None], "c": 1.5}
    assert strict_json((tmp_path / "x.json").read_text()) == expected
    assert strict_json((tmp_path / "x.jsonl").read_text()) == expected


def test_no_module_serialises_json_except_through_the_strict_writer():
    """Every file the project writes as JSON goes through ovmse.runs.json_text; other json.dumps
    calls only print lines, hash, or refuse NaN themselves (allow_nan=False)."""
    offenders = []
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        printed = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and getattr(node.func, "id", "") == "print" for arg in node.args}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps")
                    and getattr(node.func.value, "id", "") == "json" and id(node) not in printed
                    and not any(k.arg == "allow_nan" and getattr(k.value, "value", True) is False
                                for k in node.keywords)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    hashing = {"src/ovmse/study/cells.py"}  # the cache key
    assert [o for o in offenders if o.split(":")[0] not in hashing] == []


# 7. A run whose settings allow (almost) no update says so before it starts.

def test_expected_updates_counts_the_iterations_after_the_buffer_holds_a_batch():
    cfg = tiny_train_config(steps=2000, num_envs=8)
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, batch_size=128))
    # 2000 / (8 * 16.7) -> 15 iterations; 128 episodes need 16 of them: no update
    assert expected_updates(cfg, 0, 16.7) == 0
    # 10,000 steps -> 75 iterations, updates from the 16th on: 60
    assert expected_updates(dataclasses.replace(cfg, steps=10_000), 0, 16.7) == 60
    # a quarter of the batch from offline data: the buffer needs 96 episodes (12 iterations)
    assert expected_updates(dataclasses.replace(cfg, steps=10_000), 32, 16.7) == 64


def test_a_run_that_cannot_learn_is_told_before_it_starts(capsys):
    cfg = tiny_train_config(steps=2000, num_envs=8)
    cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, batch_size=128))
    warn_if_few_updates(cfg, 0, 16.7)
    err = capsys.readouterr().err
    assert "no gradient update at all" in err and "--batch-size 128" in err
    warn_if_few_updates(dataclasses.replace(cfg, steps=500_000), 0, 16.7)
    assert capsys.readouterr().err == ""


# 9. A closed pipe ends the command quietly.

def test_a_closed_pipe_is_not_a_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "ovmse.cli", "dataset", "info",
                           str(SHIPPED / "medium")], stdout=write_end, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


# 10. Data made under other settings than the run's is refused, naming both values.

def test_a_dataset_records_its_reward_scale_and_pretraining_refuses_another(
        tmp_path, shipped_medium, capsys):
    batch, _ = shipped_medium
    spec = make_env("3m", reward_scale=5.0).spec
    write_dataset(tmp_path / "scaled", batch, spec, "medium", {})
    assert read_metadata(tmp_path / "scaled")["spec"]["reward_scale"] == 5.0
    assert main(["dataset", "info", str(tmp_path / "scaled")]) == 0
    card = capsys.readouterr().out
    assert "reward scale 5)" in card and "(SMAX reward x 5)" in card
    cfg = dataclasses.replace(TINY_PRETRAIN, dataset=str(tmp_path / "scaled"))
    with pytest.raises(UserError, match="reward_scale 5.0, this environment has 10.0"):
        pretrain(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="reward_scale 5.0, this environment has 10.0"):
        load_dataset(tmp_path / "scaled", make_env("3m").spec)


def test_data_of_another_smax_version_is_refused_naming_both(tmp_path):
    path = tmp_path / "data"
    shutil.copytree(SHIPPED / "random", path)
    meta = json.loads((path / METADATA_FILE).read_text())
    meta["jaxmarl_version"] = "0.1.0"
    (path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"jaxmarl 0\.1\.0, this environment has 0\.2\.0"):
        load_dataset(path, make_env("3m").spec)
    assert verify_dataset(path)["jaxmarl_version"] == "0.1.0"  # the files themselves are fine
