"""The training program end to end at toy size: determinism, resume, run folder, CLI, bad input."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import read_tensorboard, tiny_train_config
from ovmse.cli import main
from ovmse.runs import device_name, load_checkpoint, read_jsonl
from ovmse.train.driver import train

TINY_FLAGS = ["--map", "3m", "--episode-limit", "20", "--agent-hidden-dim", "16",
              "--mixer-embed-dim", "8", "--hypernet-hidden-dim", "16", "--batch-size", "8",
              "--buffer-size", "32", "--target-update-interval", "16", "--length-buckets", "2",
              "--eps-anneal-steps",
              "500", "--steps", "600", "--num-envs", "4", "--test-interval", "200",
              "--test-episodes", "4", "--final-test-episodes", "8", "--checkpoint-interval",
              "200", "--no-progress"]


def _without_wall_time(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    summary = train(tiny_train_config(num_seeds=2), run_dir, progress=False)
    return run_dir, summary


def test_run_folder_holds_config_metrics_checkpoint_summary_and_plot(reference_run):
    run_dir, summary = reference_run
    for name in ("config.json", "metrics.jsonl", "checkpoint.npz", "summary.json",
                 "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["chunk"] for r in records] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert {r["seed"] for r in records} == {0, 1}
    assert all(r["t_env"] >= 600 for r in records if r["chunk"] == 3)
    assert records[-1]["updates"] > 0 and "loss" in records[-1]
    assert summary["final_test"]["episodes"] == 8 and len(summary["final_test"]["win_rate"]) == 2
    assert summary["device"] == device_name()
    assert summary["seed_loop"] == "sequential"   # the CPU's way of updating seeds
    assert summary["compiler_options"] == {"xla_backend_optimization_level": 1}
    assert json.loads((run_dir / "config.json").read_text())["num_seeds"] == 2


def test_the_run_folder_holds_tensorboard_events_of_the_logged_scalars(reference_run):
    run_dir, _ = reference_run
    records = read_jsonl(run_dir / "metrics.jsonl")
    for seed in (0, 1):
        scalars = read_tensorboard(run_dir / "tensorboard" / f"seed_{seed}")["scalars"]
        mine = [r for r in records if r["seed"] == seed]
        steps, values = zip(*scalars["test/win_rate"])
        assert list(steps) == [r["t_env"] for r in mine]
        assert values == pytest.approx([r["test_win_rate"] for r in mine])
        assert [s for s, _ in scalars["train/loss"]] == [r["t_env"] for r in mine if "loss" in r]
        assert {"train/epsilon", "time/wall_s", "test/return"} <= set(scalars)


def test_same_seed_gives_identical_metrics(reference_run, tmp_path):
    run_dir, summary = reference_run
    again = train(tiny_train_config(num_seeds=2), tmp_path / "again", progress=False)
    assert _without_wall_time(read_jsonl(tmp_path / "again" / "metrics.jsonl")) == \
        _without_wall_time(read_jsonl(run_dir / "metrics.jsonl"))
    assert again["final_test"] == summary["final_test"]


def test_seeds_differ_from_each_other(reference_run):
    records = read_jsonl(reference_run[0] / "metrics.jsonl")
    last = [r for r in records if r["chunk"] == 3]
    assert last[0]["t_env"] != last[1]["t_env"] or last[0]["loss"] != last[1]["loss"]


def test_resume_after_a_pause_gives_the_same_final_metrics(reference_run, tmp_path):
    run_dir, summary = reference_run
    paused = tmp_path / "paused"
    assert train(tiny_train_config(num_seeds=2), paused, progress=False,
                 stop_after_chunks=1) is None
    assert not (paused / "summary.json").exists()
    resumed = train(tiny_train_config(num_seeds=2), paused, resume=True, progress=False)
    assert _without_wall_time(read_jsonl(paused / "metrics.jsonl")) == \
        _without_wall_time(read_jsonl(run_dir / "metrics.jsonl"))
    assert resumed["final_test"] == summary["final_test"]


def test_a_resumed_run_hands_its_loaded_state_over_to_its_first_chunk(tmp_path, monkeypatch):
    # A state read from a checkpoint must be freed once the first chunk has taken it, as a
    # fresh state is: holding it for the whole run cost a 6h_vs_8z cell 7 GB (its buffer twice).
    from ovmse.train import loop

    loaded = []

    def recording_load(*args, **kwargs):
        states, meta = load_checkpoint(*args, **kwargs)
        loaded.append(states)
        return states, meta

    paused = tmp_path / "paused"
    train(tiny_train_config(num_seeds=2), paused, progress=False, stop_after_chunks=1)
    monkeypatch.setattr(loop, "load_checkpoint", recording_load)
    train(tiny_train_config(num_seeds=2), paused, resume=True, progress=False)
    leaves = jax.tree_util.tree_leaves(loaded)
    assert leaves and all(isinstance(x, jax.Array) and x.is_deleted() for x in leaves)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(reference_run,
                                                                           tmp_path):
    run_dir, summary = reference_run
    killed = tmp_path / "killed"  # what kill -9 during the first chunk leaves
    killed.mkdir()
    shutil.copy(run_dir / "config.json", killed / "config.json")
    (killed / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    resumed = train(tiny_train_config(num_seeds=2), killed, resume=True, progress=False)
    assert _without_wall_time(read_jsonl(killed / "metrics.jsonl")) == \
        _without_wall_time(read_jsonl(run_dir / "metrics.jsonl"))
    assert resumed["final_test"] == summary["final_test"]


def test_cli_trains_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "cli-run"
    assert main(["train", *TINY_FLAGS, "--out", str(out), "--no-tensorboard"]) == 0
    printed = capsys.readouterr().out
    assert "median test win rate" in printed and "final test (8 episodes per seed)" in printed
    assert (out / "summary.json").is_file() and not (out / "tensorboard").exists()


def test_a_new_run_starts_from_a_saved_config_with_overrides(reference_run, tmp_path, capsys):
    run_dir, _ = reference_run
    out = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.json"), "--steps", "400",
                 "--no-tensorboard", "--no-progress", "--out", str(out)]) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == {**saved, "steps": 400}
    assert main(["train", "--config", str(tmp_path / "none.json")]) == 2
    assert "none.json not found" in capsys.readouterr().err
    assert main(["train", "--config", str(run_dir / "config.json"), "--resume",
                 str(run_dir)]) == 2
    assert "no --config" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--map", "4m"], "unknown map '4m'"),
    (["--steps", "0"], "steps must be > 0"),
    (["--steps", "-5"], "steps must be > 0"),
    (["--eps-start", "1.5"], "eps_start must be in [0, 1]"),
    (["--eps-end", "-0.1"], "eps_end must be in [0, 1]"),
])
def test_bad_config_is_one_line_and_exit_code_2(flags, message, tmp_path, capsys):
    assert main(["train", *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    assert main(["train", *TINY_FLAGS, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_resume_refuses_a_damaged_checkpoint(reference_run, tmp_path, capsys):
    run = _copy_run(reference_run[0], tmp_path / "damaged")
    data = bytearray((run / "checkpoint.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "checkpoint.npz").write_bytes(bytes(data))
    metrics_before = (run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and err.count("\n") == 1
    assert (run / "metrics.jsonl").read_text() == metrics_before


def test_resume_refuses_a_checkpoint_of_another_config(reference_run, tmp_path, capsys):
    run = _copy_run(reference_run[0], tmp_path / "mismatch")
    config = json.loads((run / "config.json").read_text())
    config["network"]["agent_hidden_dim"] = 32
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run)]) == 2
    assert "was not written by the run of its config.json" in capsys.readouterr().err


def test_resume_refuses_other_training_options(reference_run, capsys):
    assert main(["train", "--resume", str(reference_run[0]), "--steps", "5"]) == 2
    assert "give no other training options" in capsys.readouterr().err


def test_truncated_checkpoint_is_refused(reference_run, tmp_path, capsys):
    run = _copy_run(reference_run[0], tmp_path / "truncated")
    data = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(data[: len(data) // 3])
    assert main(["train", "--resume", str(run)]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_metrics_of_the_reference_run_are_finite(reference_run):
    records = read_jsonl(reference_run[0] / "metrics.jsonl")
    values = [v for r in records for v in r.values() if isinstance(v, float)]
    assert np.all(np.isfinite(values))


def test_the_shared_test_program_plays_the_trainers_own_greedy_test():
    """Every trainer's tests run one program per map and agent size
    (evaluation.greedy_test_program); it plays exactly the greedy test of the trainer's own
    agent and environment on the seeds' online agents, as the per-trainer program did."""
    import jax

    from ovmse import compiler
    from ovmse.evaluation import greedy_test
    from ovmse.train.online import OnlineTrainer

    trainer = OnlineTrainer(tiny_train_config(num_seeds=2))
    states = trainer.init(trainer.seed_keys())
    keys = trainer.test_keys(0)
    shared = trainer.evaluate(states, keys, 8)
    own = compiler.jit(jax.vmap(lambda state, key: greedy_test(
        key, trainer.nets.agent, state.learner.params["agent"], trainer.env, 8)))(states, keys)
    for got, want in zip(shared, own):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert float(np.sum(np.asarray(shared.mean_length))) > 0
