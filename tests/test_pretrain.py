"""Offline pre-training end to end at toy size: CLI, run folder, determinism, resume, and the
checkpoint the online phase loads."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from ovmse.cli import main
from ovmse.config import CqlConfig, LearnerConfig, PretrainConfig
from ovmse.datasets.locate import SHIPPED as SHIPPED_ROOT
from ovmse.envs import make_env
from ovmse.errors import UserError
from ovmse.runs import device_name, read_jsonl
from ovmse.train.keys import FINAL_TEST_INDEX
from ovmse.train.offline import load_pretrained
from ovmse.train.pretrain import pretrain
from ovmse.train.offline import OfflineTrainer

SHIPPED = SHIPPED_ROOT / "3m"
TINY = PretrainConfig(
    dataset=str(SHIPPED / "medium"), steps=6, test_interval=3, test_episodes=4,
    final_test_episodes=8, checkpoint_interval=3, num_seeds=2,
    learner=LearnerConfig(batch_size=16, length_buckets=2,
                          cql=CqlConfig(alpha=5.0, num_samples=4)))
TINY_ARGS = ["--dataset", TINY.dataset, "--steps", "6", "--test-interval", "3",
             "--test-episodes", "4", "--final-test-episodes", "8", "--checkpoint-interval", "3",
             "--num-seeds", "2", "--batch-size", "16", "--length-buckets", "2",
             "--num-samples", "4", "--no-progress"]


def without_wall(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", *TINY_ARGS, "--out", str(run)]) == 0
    return run


def test_cli_run_writes_a_complete_run_folder(tiny_run, capsys):
    assert {p.name for p in tiny_run.iterdir()} >= {
        "config.json", "metrics.jsonl", "checkpoint.npz", "summary.json", "learning_curve.png"}
    records = read_jsonl(tiny_run / "metrics.jsonl")
    assert [(r["seed"], r["updates"]) for r in records] == [
        (0, 0), (1, 0), (0, 3), (1, 3), (0, 6), (1, 6)]
    trained = records[-1]
    assert trained["cql"] != 0.0
    assert trained["loss"] == pytest.approx(trained["td_loss"] + 5.0 * trained["cql"], rel=1e-4)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["dataset"]["quality"] == "medium" and len(summary["final_test"]["win_rate"]) == 2
    assert summary["device"] == device_name()
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["learner"]["cql"]["calibrated"] is False


def test_same_seed_gives_identical_metrics(tiny_run, tmp_path):
    pretrain(TINY, tmp_path / "again", progress=False)
    assert without_wall(read_jsonl(tmp_path / "again" / "metrics.jsonl")) == without_wall(
        read_jsonl(tiny_run / "metrics.jsonl"))


def test_resume_gives_the_same_metrics_as_one_run(tiny_run, tmp_path):
    run = tmp_path / "paused"
    assert pretrain(TINY, run, progress=False, stop_after_chunks=1) is None
    assert len(read_jsonl(run / "metrics.jsonl")) == 4
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert without_wall(read_jsonl(run / "metrics.jsonl")) == without_wall(
        read_jsonl(tiny_run / "metrics.jsonl"))
    ours = json.loads((run / "summary.json").read_text())["final_test"]
    reference = json.loads((tiny_run / "summary.json").read_text())["final_test"]
    assert ours == reference


def test_loaded_checkpoint_is_exactly_the_trained_networks(tiny_run):
    """The loaded parameters replay the run's final test to the same numbers, and every leaf
    (online, target, optimizer state) matches the stored arrays bit for bit."""
    env = make_env("3m")
    learner, meta = load_pretrained(tiny_run, env.spec)
    assert meta["dataset"]["quality"] == "medium" and int(learner.updates[0]) == 6
    cfg = TINY.resolved()
    trainer = OfflineTrainer(cfg, env.spec, 20)
    states = trainer.init(trainer.seed_keys())._replace(learner=learner)
    final = trainer.evaluate(states, trainer.test_keys(FINAL_TEST_INDEX), 8)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert [float(w) for w in final.win_rate] == summary["final_test"]["win_rate"]
    assert [float(r) for r in final.mean_return] == summary["final_test"]["mean_return"]
    leaves = jax.tree.leaves(learner)  # the checkpoint stores (learner, rng): learner first
    with np.load(tiny_run / "checkpoint.npz") as stored:
        for i, leaf in enumerate(leaves):
            assert np.array_equal(np.asarray(leaf), stored[f"leaf_{i:05d}"])
    # 6 updates, target copied every 25: the target (OVM's memory) is still the initial network
    online, target = jax.tree.leaves(learner.params), jax.tree.leaves(learner.target_params)
    assert not all(np.array_equal(a, b) for a, b in zip(online, target))


def test_checkpoint_of_another_map_is_refused(tiny_run):
    with pytest.raises(UserError, match="pre-trained on map 3m, not 2s3z"):
        load_pretrained(tiny_run, make_env("2s3z").spec)


def test_an_online_training_checkpoint_is_not_a_pretrained_one(tmp_path):
    from conftest import tiny_train_config
    from ovmse.train.driver import train

    train(tiny_train_config(steps=200), tmp_path / "online", progress=False)
    with pytest.raises(UserError, match="not an offline pre-training checkpoint"):
        load_pretrained(tmp_path / "online")


def test_macal_ql_run_is_calibrated(tmp_path):
    cfg = dataclasses.replace(TINY, algo="macal-ql", steps=3, num_seeds=1)
    summary = pretrain(cfg, tmp_path / "calql", progress=False)
    assert summary["algo"] == "macal-ql"
    assert summary["config"]["learner"]["cql"]["calibrated"] is True


@pytest.mark.parametrize("args, message", [
    (["--alpha", "-1"], "cql alpha must be >= 0"),
    (["--calibrated"], "use --algo macal-ql"),
    (["--batch-size", "400"], "fewer than the batch of 400"),
    (["--dataset", "no/such/dataset"], "no/such/dataset"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY_ARGS, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
