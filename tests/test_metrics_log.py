"""metrics.jsonl is appended, cut back on resume, robust to a torn last line; TensorBoard event
files carry the same scalars, one folder per seed, and hide what a resume redoes; the learning
curve draws every logged metric with its spread over seeds."""

import numpy as np
import pytest

from conftest import read_tensorboard
from ovmse.errors import UserError
from ovmse.metrics_log import LogSettings, MetricsLog, scalar_tag
from ovmse.plots import plot_learning_curve, seed_quantiles
from ovmse.runs import read_jsonl


def _records(chunk, seeds=(0, 1)):
    return [dict(seed=s, chunk=chunk, t_env=100 * chunk + s, test_win_rate=0.1 * chunk + s,
                 loss=float(chunk), flag=True) for s in seeds]


def test_scalar_tags_group_test_train_and_time():
    assert [scalar_tag(n) for n in ("test_win_rate", "loss", "wall_s", "lam")] == \
        ["test/win_rate", "train/loss", "time/wall_s", "train/lam"]


def test_records_are_appended_and_mirrored_per_seed_in_tensorboard(tmp_path):
    with MetricsLog(tmp_path, "t_env") as log:
        inode = (tmp_path / "metrics.jsonl").stat().st_ino
        for chunk in range(3):
            log.extend(_records(chunk))
            assert read_jsonl(tmp_path / "metrics.jsonl") == log.records
            assert (tmp_path / "metrics.jsonl").stat().st_ino == inode    # appended, not replaced
    assert len(log.records) == 6
    for seed in (0, 1):
        tb = read_tensorboard(tmp_path / "tensorboard" / f"seed_{seed}")
        steps, values = zip(*tb["scalars"]["test/win_rate"])
        assert steps == tuple(100 * c + seed for c in range(3))
        assert values == pytest.approx([0.1 * c + seed for c in range(3)])
        assert set(tb["scalars"]) == {"test/win_rate", "train/loss"}   # no chunk, seed, bool
        assert tb["purge_steps"] == []


def test_resume_cuts_the_log_back_to_the_checkpoint_and_tensorboard_purges_the_rest(tmp_path):
    with MetricsLog(tmp_path, "t_env") as log:
        for chunk in range(4):
            log.extend(_records(chunk))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"seed": 0, "chunk": 4, "t_en')      # a crash in the middle of an append
    assert [r["chunk"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 0, 1, 1, 2, 2,
                                                                             3, 3]
    with MetricsLog(tmp_path, "t_env", resume_chunk=1) as log:   # the checkpoint was at chunk 1
        assert [r["chunk"] for r in log.records] == [0, 0, 1, 1]
        log.extend(_records(2))
    assert read_jsonl(tmp_path / "metrics.jsonl") == log.records
    tb = read_tensorboard(tmp_path / "tensorboard" / "seed_0")
    assert tb["purge_steps"] == [102]          # steps from the last kept one + 1 on are hidden


def test_without_tensorboard_only_the_jsonl_is_written(tmp_path):
    with MetricsLog(tmp_path, "updates", settings=LogSettings(tensorboard=False)) as log:
        log.extend([dict(seed=0, chunk=0, updates=0, test_win_rate=0.5)])
    assert not (tmp_path / "tensorboard").exists()
    assert read_jsonl(tmp_path / "metrics.jsonl") == log.records


def test_seed_quantiles_are_the_interquartile_band_over_seeds():
    records = [dict(seed=s, chunk=c, t_env=10 * c + s, v=float(s * (c + 1)))
               for c in range(2) for s in range(5)]
    steps, (low, median, high) = seed_quantiles(records, "v")
    assert steps.tolist() == [2, 12]
    assert low.tolist() == [1.0, 2.0] and median.tolist() == [2.0, 4.0]
    assert high.tolist() == [3.0, 6.0]


@pytest.mark.parametrize("extra, shape", [
    (dict(loss=0.5, epsilon=0.3, lam=0.9), (836, 1716)),    # 3 metrics + schedules: 2 rows
    ({}, (418, 1144)),                                      # win rate, return: 1 row of 2
])
def test_the_learning_curve_has_a_panel_per_logged_metric(tmp_path, extra, shape):
    from matplotlib.image import imread

    records = [dict(seed=s, chunk=c, t_env=100 * c, test_win_rate=0.1 * c, test_return=c + s,
                    **extra) for c in range(3) for s in range(2)]
    plot_learning_curve(records, tmp_path / "curve.png", "title")
    assert imread(tmp_path / "curve.png").shape[:2] == shape


def test_step_axes_label_their_ticks_in_thousands_and_millions(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ovmse import plots

    shown = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: shown.update(fig=fig))
    steps = np.arange(0, 200_001, 10_000)
    plots.plot_panels([dict(title="t", ylabel="y", lines={"m": (steps, steps / 2e5)})],
                      tmp_path / "p.png")
    fig = shown["fig"]
    fig.canvas.draw()
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels() if tick.get_text()]
    plt.close(fig)
    assert "100k" in labels and "200k" in labels
    assert not any("0000" in label for label in labels)


def test_wandb_offline_logs_each_seed_against_its_own_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = LogSettings(tensorboard=False, wandb_project="ovmse-test")
    with MetricsLog(tmp_path, "t_env", settings=settings, config={"steps": 300}) as log:
        run = log._wandb
        for chunk in range(3):
            log.extend(_records(chunk))
        assert run.config["steps"] == 300
        assert run.summary["seed_1/test/win_rate"] == pytest.approx(1.2)
        assert run.summary["seed_1/t_env"] == 201
    (stored,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert stored.stat().st_size > 0


def test_wandb_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name == "wandb" else real_import(name, *a, **k)))
    with pytest.raises(UserError, match=r"needs the wandb package: pip install wandb"):
        MetricsLog(tmp_path, "t_env", settings=LogSettings(wandb_project="p"))
