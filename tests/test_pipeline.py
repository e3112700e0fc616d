"""`ovmse run`, the main job, end to end at toy size."""

import json

from ovmse.cli import main


def test_main_job_runs_every_phase_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "main"
    assert main(["run", "--pretrain-steps", "4", "--num-samples", "4", "--num-seeds", "1",
                 "--finetune-steps", "300", "--test-interval", "150", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "drop at transition" in printed and "switch-cql" in printed and "ovmse" in printed
    result = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["ovmse", "switch-cql"]
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    assert all(r["offline_win_rate"] == summary["final_test"]["median_win_rate"]
               for r in result["rows"])
    assert (out / "offline_to_online.png").stat().st_size > 10_000
    for phase in ("pretrain", "ovmse", "switch-cql"):
        assert (out / phase / "checkpoint.npz").exists()


def test_unknown_baseline_is_refused(tmp_path, capsys):
    assert main(["run", "--baseline", "dqn", "--out", str(tmp_path / "x")]) == 2
    assert "baseline must be one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
