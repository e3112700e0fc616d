"""`ovmse run`, the main job, end to end at toy size."""

import json
from pathlib import Path

import pytest

from ovmse.config import FinetuneConfig, PipelineConfig, TrainConfig
from ovmse.methods import own_options
from ovmse.pipeline import pipeline_cells

from ovmse.cli import main


def test_main_job_runs_every_phase_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "main"
    args = ["run", "--pretrain.steps", "4", "--pretrain.learner.cql.num-samples", "4",
            "--num-seeds", "1", "--finetune.steps", "300", "--finetune.test-interval", "150",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "drop at transition" in printed and "switch-cql" in printed and "ovmse" in printed
    result = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["ovmse", "switch-cql"]
    pre_run = Path(result["pretrain_run"])
    assert pre_run.parent == out / "pretrain"
    summary = json.loads((pre_run / "summary.json").read_text())
    assert all(r["offline_win_rate"] == summary["final_test"]["median_win_rate"]
               for r in result["rows"])
    assert (out / "offline_to_online.png").stat().st_size > 10_000
    assert (pre_run / "checkpoint.npz").exists()   # the cells that start from it need it
    for row in result["rows"]:
        run = Path(row["run"])
        assert run.parent == out / "finetune" and (run / "summary.json").exists()
        assert json.loads((run / "config.json").read_text())["steps"] == 300
    # Run again into the same folder: every phase is read back, nothing retrained.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/summary.json")}
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/summary.json")} == stamps


def test_a_phase_copy_of_a_shared_field_is_refused(tmp_path, capsys):
    assert main(["run", "--pretrain.num-seeds", "3", "--out", str(tmp_path / "x")]) == 2
    assert "give --num-seeds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_baseline_is_refused(tmp_path, capsys):
    assert main(["run", "--baseline", "dqn", "--out", str(tmp_path / "x")]) == 2
    assert "baseline must be one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["--finetune.env.map", "2s3z"], "map is set by the method (ovmse)"),
    (["--finetune.learner.cql.alpha", "3"], "cql is set by the method (ovmse)"),
    (["--finetune.finetune.warmup-steps", "10"], "an option of a method this run does not"),
    (["--finetune.finetune.checkpoint", "x"], "leave out --finetune.finetune.checkpoint"),
    (["--pretrain.learner.memory.use-memory"], "pre-training has no offline memory"),
    (["--finetune.steps", "-1"], "steps must be > 0"),
])
def test_every_setting_is_checked_before_pre_training_starts(tmp_path, capsys, args, message):
    assert main(["run", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_offline_data_mixing_is_accepted_before_the_checkpoint_exists():
    cfg = PipelineConfig(finetune=TrainConfig(finetune=FinetuneConfig(offline_ratio=0.1)))
    assert all(c.base.finetune.offline_ratio == 0.1 for c in pipeline_cells(cfg)[1])


def test_an_option_of_the_baseline_goes_to_the_baseline_only():
    cfg = PipelineConfig(baseline="wsrl", finetune=TrainConfig(
        steps=50_000, test_interval=2_500, finetune=FinetuneConfig(warmup_steps=1000)))
    pre, (ovmse, wsrl) = pipeline_cells(cfg)
    assert (ovmse.method, wsrl.method) == ("ovmse", "wsrl")
    assert wsrl.base.finetune.warmup_steps == 1000
    assert own_options("ovmse", ovmse.base).finetune.warmup_steps == 5000
