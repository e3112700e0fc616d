"""The study: specs, cache keys, resuming between cells, reports from stored results, and the
Ray executor against the in-process one."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ovmse.cli import main
from ovmse.config import (PretrainConfig, TrainConfig, to_dict, validate_pretrain,
                          with_overrides)
from ovmse.datasets.card import mean_return_to_go
from ovmse.errors import UserError
from ovmse.methods import finetune_config, foreign_options, scratch_config
from ovmse.provenance import code_version
from ovmse.runs import device_name
from ovmse.study import executors
from ovmse.study.cells import (FinetuneCell, PretrainCell, cell_dir, data_fingerprint,
                               data_return_to_go, run_cell)
from ovmse.study.executors import LocalExecutor
from ovmse.study.report import build_report
from ovmse.study.runner import (PRETRAINING_FILES, plan_cells, require_data, run_study,
                                 select)
from ovmse.study.spec import load_spec
from ovmse.study.store import ResultStore

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "src" / "ovmse" / "datasets" / "shipped"
SPECS = ("table1", "fig1", "fig2_fig3", "fig4", "table2", "methods", "cql_online",
         "transition", "lam_end")

TOY_SPEC = """
name = "toy"
title = "Toy study"
paper = "Table 1"
report = "{report}"

[scale.cpu]
tasks = {tasks}
methods = {methods}
offline_ratios = {ratios}
budget_step = 300
{extra}
seeds = 2
pretrain_steps = 2
steps = {{ "3m" = 400 }}
test_interval = {{ "3m" = 200 }}

[scale.cpu.settings]
num_envs = 4
test_episodes = 4
final_test_episodes = 8
checkpoint_interval = 200
"learner.batch_size" = 8
"learner.buffer_size" = 32
"learner.length_buckets" = 2
"learner.memory.lam_anneal_steps" = 300
"finetune.probe_episodes" = 4

[scale.cpu.pretrain_settings]
test_interval = 1
test_episodes = 4
final_test_episodes = 4
"learner.batch_size" = 8
"learner.length_buckets" = 2
"learner.cql.num_samples" = 4
"network.agent_hidden_dim" = 16
"network.mixer_embed_dim" = 8
"network.hypernet_hidden_dim" = 16
"""


def toy_spec(tmp_path: Path, report="final_table", tasks=("3m/medium",),
             methods=("ovmse", "qmix"), ratios=(0.0,), extra=""):
    path = tmp_path / f"toy-{report}.toml"
    path.write_text(TOY_SPEC.format(report=report, tasks=json.dumps(list(tasks)),
                                    methods=json.dumps(list(methods)),
                                    ratios=json.dumps(list(ratios)), extra=extra))
    return load_spec(str(path))


# --- specs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPECS)
def test_every_shipped_spec_expands_at_each_of_its_scales(name, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(name)
    assert {"cpu", "paper"} <= set(spec.scales)
    for scale in spec.scales:
        plan = plan_cells(spec, scale)
        assert plan.pretrain and plan.finetune
        assert len({c.key for c in plan.finetune}) == len(plan.finetune)


def test_the_workstation_scale_has_the_papers_four_maps_five_seeds_and_200k_steps(monkeypatch):
    monkeypatch.chdir(REPO)
    plan = plan_cells(load_spec("table1"), "workstation")
    assert {c.task for c in plan.finetune} == {f"{m}/{q}" for m in ("2s3z", "3s5z", "5m_vs_6m",
                                                                      "6h_vs_8z")
                                               for q in ("medium", "medium-replay")}
    assert all(c.base.num_seeds == 5 and c.base.steps == 200_000 for c in plan.finetune)
    calibrated = [c for c in plan.finetune if c.method == "macal-ql"]
    assert len(calibrated) == 8 and all(c.pretrain.config.algo == "macal-ql" for c in calibrated)
    assert {c.cql_online for c in plan.finetune if c.method == "ovmse"} == {True, False}


def test_specs_of_one_study_share_their_cells(monkeypatch):
    monkeypatch.chdir(REPO)
    table1 = {c.key for c in plan_cells(load_spec("table1"), "cpu").finetune}
    curves = {c.key for c in plan_cells(load_spec("fig2_fig3"), "cpu").finetune}
    assert table1 == curves


def test_the_lam_end_spec_shares_its_default_cells_with_table1(monkeypatch):
    monkeypatch.chdir(REPO)
    cells = plan_cells(load_spec("lam_end"), "workstation").finetune
    table1 = {c.key for c in plan_cells(load_spec("table1"), "workstation").finetune}
    default = {c.key for c in cells if c.base.learner.memory.lam_end == 0.0}
    assert sorted(c.name for c in cells) == [
        "3s5z-medium-ovmse", "3s5z-medium-ovmse-lamend0.1", "3s5z-medium-ovmse-lamend0.3",
        "3s5z-medium-switch-cql"]
    assert len(default) == 2 and default <= table1


def test_the_transition_spec_shares_its_epsilon_one_cells_with_fig4(monkeypatch):
    monkeypatch.chdir(REPO)
    transition = plan_cells(load_spec("transition"), "cpu").finetune
    fig4 = {c.key for c in plan_cells(load_spec("fig4"), "cpu").finetune}
    at_one = [c for c in transition if c.base.explore.eps_start == 1.0]
    low = [c for c in transition if c.base.explore.eps_start == 0.05]
    paper = {c.key for c in at_one if c.method != "wsrl"}   # wsrl is not one of fig4's
    assert len(at_one) == len(low) == 10 and len(paper) == 8 and paper <= fig4
    assert not {c.key for c in low} & fig4


def test_starting_epsilon_is_an_axis_that_changes_keys_names_and_labels(tmp_path):
    from ovmse.study.report import cell_label

    spec = toy_spec(tmp_path, methods=("ovmse", "qmix"), extra="eps_starts = [1.0, 0.05]")
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    assert sorted(c.name for c in plan.finetune) == ["3m-medium-ovmse", "3m-medium-ovmse-eps0.05",
                                                     "3m-qmix"]   # qmix at the default only
    by_name = {c.name: c for c in plan.finetune}
    low = by_name["3m-medium-ovmse-eps0.05"]
    assert low.base.explore.eps_start == 0.05 and low.key != by_name["3m-medium-ovmse"].key
    assert cell_label(low) == "ovmse eps0 0.05"
    without_axis = plan_cells(toy_spec(tmp_path, methods=("ovmse",)), "cpu", (SHIPPED,))
    assert by_name["3m-medium-ovmse"].key == without_axis.finetune[0].key
    with pytest.raises(UserError, match=r"eps_starts \[1.5\] must lie in \[0, 1\]"):
        toy_spec(tmp_path, extra="eps_starts = [1.5]")


def test_ovm_end_weight_is_an_axis_of_the_methods_with_ovm_loss_only(tmp_path):
    from ovmse.study.report import cell_label

    spec = toy_spec(tmp_path, methods=("ovmse", "se", "qmix"), extra="lam_ends = [0.0, 0.2]")
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    assert sorted(c.name for c in plan.finetune) == [
        "3m-medium-ovmse", "3m-medium-ovmse-lamend0.2", "3m-medium-se", "3m-qmix"]
    by_name = {c.name: c for c in plan.finetune}
    high = by_name["3m-medium-ovmse-lamend0.2"]
    assert high.base.learner.memory.lam_end == 0.2
    assert by_name["3m-medium-ovmse"].base.learner.memory.lam_end == 0.0
    assert cell_label(high) == "ovmse lam_end 0.2"
    without_axis = plan_cells(toy_spec(tmp_path, methods=("ovmse", "se")), "cpu", (SHIPPED,))
    assert {c.key for c in without_axis.finetune} == {by_name["3m-medium-ovmse"].key,
                                                      by_name["3m-medium-se"].key}
    assert high.key not in {c.key for c in without_axis.finetune}
    with pytest.raises(UserError, match=r"lam_ends \[-0.1\] must lie in \[0, 1\]"):
        toy_spec(tmp_path, extra="lam_ends = [-0.1]")


def test_macal_ql_starts_from_a_cal_ql_pretraining_and_the_others_from_macql(tmp_path):
    spec = toy_spec(tmp_path, methods=("ovmse", "macal-ql", "macql", "qmix"))
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    assert [c.name for c in plan.pretrain] == ["pretrain-3m-medium", "pretrain-3m-medium-calql"]
    macql, calql = plan.pretrain
    assert not macql.config.learner.cql.calibrated and calql.config.learner.cql.calibrated
    assert calql.config == with_overrides(macql.config, {"algo": "macal-ql",
                                                         "learner.cql.calibrated": True})
    validate_pretrain(calql.config.resolved())   # a config `ovmse pretrain` accepts as it is
    assert calql.config.resolved().learner.cql == calql.config.learner.cql
    starts = {c.method: c.pretrain.key for c in plan.finetune}
    assert starts == {"ovmse": macql.key, "macal-ql": calql.key, "macql": macql.key,
                      "qmix": macql.key}
    only = select(plan, methods=("macal-ql",))
    assert [c.name for c in only.pretrain] == ["pretrain-3m-medium-calql"]


def test_qmix_runs_once_per_map_whatever_the_dataset(tmp_path):
    spec = toy_spec(tmp_path, tasks=("3m/medium", "3m/expert"), methods=("ovmse", "qmix"))
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    assert sorted(c.name for c in plan.finetune) == ["3m-expert-ovmse", "3m-medium-ovmse",
                                                     "3m-qmix"]
    assert len(plan.pretrain) == 2


def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="unknown methods"):
        toy_spec(tmp_path, methods=("ovmse", "dqn"))
    bad = tmp_path / "bad.toml"
    bad.write_text(TOY_SPEC.format(report="final_table", tasks='["2s3z/medium"]',
                                   methods='["ovmse"]', ratios="[0.0]", extra=""))
    with pytest.raises(UserError, match=r"steps has no value for maps \['2s3z'\]"):
        load_spec(str(bad))
    with pytest.raises(UserError, match="no experiment spec"):
        load_spec(str(tmp_path / "missing.toml"))
    spec = toy_spec(tmp_path, tasks=("3m/nonesuch",))
    with pytest.raises(UserError, match="ovmse dataset build --map 3m"):
        require_data(plan_cells(spec, "cpu", (SHIPPED,)), (SHIPPED,))
    with pytest.raises(UserError, match="has no scale 'huge'"):
        plan_cells(spec, "huge", (SHIPPED,))


def test_selecting_tasks_and_methods_keeps_their_starts(tmp_path):
    spec = toy_spec(tmp_path, tasks=("3m/medium", "3m/expert"), methods=("ovmse", "se", "qmix"))
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    part = select(plan, tasks=("3m/expert",), methods=("se", "qmix"))
    assert sorted(c.name for c in part.finetune) == ["3m-expert-se", "3m-qmix"]
    assert [c.name for c in part.pretrain] == ["pretrain-3m-expert"]   # qmix needs no run
    assert [c.name for c in select(plan, tasks=("3m/expert",), methods=("se",)).pretrain] == [
        "pretrain-3m-expert"]
    with pytest.raises(UserError, match=r"methods \['dqn'\] are not in this spec"):
        select(plan, methods=("dqn",))


def test_a_missing_dataset_only_stops_the_tasks_that_need_it(tmp_path):
    spec = toy_spec(tmp_path, tasks=("3m/medium", "3m/nonesuch"), methods=("ovmse", "qmix"))
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    require_data(select(plan, tasks=("3m/medium",)), (SHIPPED,))
    with pytest.raises(UserError, match="dataset 3m/nonesuch not found"):
        require_data(select(plan, tasks=("3m/nonesuch",)), (SHIPPED,))


# --- cache keys ------------------------------------------------------------------------------

def leaves(cfg) -> list[str]:
    def walk(d, prefix):
        for k, v in d.items():
            yield from walk(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return list(walk(to_dict(cfg), ""))


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "-other"


def get(cfg, path):
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def toy_cells():
    pre = PretrainCell("3m/medium", PretrainConfig(dataset="3m/medium"))
    return pre, FinetuneCell("3m/medium", "ovmse", TrainConfig(), pre)


def test_cache_key_changes_with_every_finetune_config_value():
    pre, cell = toy_cells()
    keys = {cell.key}
    foreign = {f"finetune.{o}" for o in foreign_options(cell.record)}
    assert foreign == {"finetune.warmup_steps"}   # wsrl's: not read by this cell's method
    for path in leaves(cell.base):
        other = dataclasses.replace(cell, base=with_overrides(
            cell.base, {path: changed(get(cell.base, path))}))
        if path in foreign:
            assert other.key == cell.key
        keys.add(other.key)
    assert len(keys) == len(leaves(cell.base)) + 1 - len(foreign)
    assert dataclasses.replace(cell, method="se").key != cell.key
    assert dataclasses.replace(cell, cql_online=True).key != cell.key


def test_cache_key_changes_with_every_pretrain_value_and_follows_into_finetuning():
    pre, cell = toy_cells()
    fields = [p for p in leaves(pre.config) if p != "dataset"]
    keys, finetune_keys = {pre.key}, {cell.key}
    for path in fields:
        other = PretrainCell(pre.task, with_overrides(pre.config,
                                                      {path: changed(get(pre.config, path))}))
        keys.add(other.key)
        finetune_keys.add(dataclasses.replace(cell, pretrain=other).key)
    assert len(keys) == len(fields) + 1 == len(finetune_keys)
    assert PretrainCell("3m/expert", pre.config).key != pre.key


def test_cache_key_is_stable_and_ignores_where_the_data_lives():
    pre, cell = toy_cells()
    same = PretrainCell("3m/medium", PretrainConfig(dataset="/elsewhere/3m/medium"))
    assert same.key == pre.key
    assert FinetuneCell("3m/medium", "ovmse", TrainConfig(), same).key == cell.key
    assert len(pre.key) == 16 and int(pre.key, 16) >= 0


def test_the_return_to_go_is_read_only_from_the_data_the_pretraining_learned_from(tmp_path):
    pre = PretrainCell("3m/medium", PretrainConfig(dataset=str(SHIPPED / "3m" / "medium")))
    fingerprint = data_fingerprint(pre.config.dataset)
    assert data_return_to_go(pre, fingerprint) == pytest.approx(
        mean_return_to_go(SHIPPED / "3m" / "medium", 0.99)[0])
    assert data_return_to_go(pre, "other data") is None
    gone = PretrainCell("3m/medium", PretrainConfig(dataset=str(tmp_path / "gone")))
    assert data_return_to_go(gone, fingerprint) is None


def test_qmix_key_ignores_the_pretraining_but_not_the_map_or_network():
    pre, _ = toy_cells()
    qmix = FinetuneCell("3m/medium", "qmix", TrainConfig(), pre)
    longer = PretrainCell("3m/expert", dataclasses.replace(pre.config, steps=9))
    assert FinetuneCell("3m/expert", "qmix", TrainConfig(), longer).key == qmix.key
    wider = PretrainCell("3m/medium", with_overrides(pre.config,
                                                     {"network.agent_hidden_dim": 32}))
    assert FinetuneCell("3m/medium", "qmix", TrainConfig(), wider).key != qmix.key
    assert FinetuneCell("2s3z/medium", "qmix", TrainConfig(), pre).key != qmix.key


# --- runner: cache and resume ----------------------------------------------------------------

def fake_result(cell) -> dict:
    kind = "pretrain" if isinstance(cell, PretrainCell) else "finetune"
    return dict(kind=kind, key=cell.key, name=cell.name, task=cell.task,
                final_test=dict(median_win_rate=0.5, win_rate=[0.4, 0.6]), wall_s=1.0, device="cpu",
                dataset_fingerprint="f")


def interrupted_after_two(calls: list[str]):
    """A fake run_cell that records the cells it runs in `calls` and is interrupted (the sitting
    ends) at the third; each run folder holds PRETRAINING_FILES carrying the result's final
    test."""
    def fake_run(cell, work_dir, progress=False, seeds_per_run=0):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(cell.name)
        run_dir = cell_dir(cell, work_dir)
        run_dir.mkdir(parents=True)
        result = fake_result(cell)
        for name in PRETRAINING_FILES:
            (run_dir / name).write_text(json.dumps(dict(final_test=result["final_test"])))
        return result
    return fake_run


def test_an_interrupted_study_resumes_without_redoing_finished_cells(tmp_path, monkeypatch):
    spec = toy_spec(tmp_path, methods=("ovmse", "se", "switch-cql"))
    store, work = ResultStore(tmp_path / "results"), tmp_path / "work"
    calls = []
    monkeypatch.setattr(executors, "run_cell", interrupted_after_two(calls))
    monkeypatch.setattr("ovmse.study.runner.data_fingerprint", lambda path: "f")
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, "cpu", store, work, LocalExecutor(), (SHIPPED,), log=lambda s: None)
    assert calls == ["pretrain-3m-medium", "3m-medium-ovmse"]
    assert sorted(p.name.split("-")[-2] for p in store.root.iterdir()) == ["medium", "ovmse"]

    calls.clear()
    counts = run_study(spec, "cpu", store, work, LocalExecutor(), (SHIPPED,),
                       log=lambda s: None)
    assert calls == ["3m-medium-se", "3m-medium-switch-cql"]
    assert counts == dict(cached=2, ran=2, running_elsewhere=0)
    calls.clear()
    assert run_study(spec, "cpu", store, work, LocalExecutor(), (SHIPPED,),
                     log=lambda s: None) == dict(cached=4, ran=0, running_elsewhere=0)
    assert calls == []


def test_a_kept_pretraining_run_lets_its_fine_tuning_go_on_without_its_data(tmp_path,
                                                                          monkeypatch, capsys):
    spec = toy_spec(tmp_path, methods=("ovmse", "se"))
    store, work, kept = ResultStore(tmp_path / "results"), tmp_path / "work", tmp_path / "kept"
    args = ["experiment", "keep", str(tmp_path / "toy-final_table.toml"), "--results",
            str(store.root), "--work-dir", str(work), "--kept", str(kept)]
    assert main(args) == 2   # nothing has run yet
    err = capsys.readouterr().err
    assert "no finished pre-training run of" in err and err.count("\n") == 1
    calls = []
    monkeypatch.setattr(executors, "run_cell", interrupted_after_two(calls))
    monkeypatch.setattr("ovmse.study.runner.data_fingerprint", lambda path: "f")
    with pytest.raises(KeyboardInterrupt):   # the sitting ends after one fine-tuning cell
        run_study(spec, "cpu", store, work, LocalExecutor(), (SHIPPED,), log=lambda s: None)
    assert calls == ["pretrain-3m-medium", "3m-medium-ovmse"]
    assert main(args) == 0
    pre = plan_cells(spec, "cpu", (SHIPPED,)).pretrain[0]
    folder = kept / cell_dir(pre, work).name
    assert f"kept pretrain-3m-medium ({pre.key}): {folder}" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted(PRETRAINING_FILES)

    # another machine: no run folders, and its copy of the data differs or is missing
    shutil.rmtree(work)
    monkeypatch.setattr("ovmse.study.runner.data_fingerprint", lambda path: "other data")
    with pytest.raises(UserError, match="is not the data pretrain-3m-medium was computed on"):
        run_study(spec, "cpu", store, work, LocalExecutor(), (SHIPPED,), log=lambda s: None)
    assert not work.exists()   # refused before it wrote anything
    calls.clear()
    lines = []
    counts = run_study(spec, "cpu", store, work, LocalExecutor(), (tmp_path / "no-data",),
                       log=lines.append, kept=kept)
    assert calls == ["3m-medium-se"] and counts == dict(cached=2, ran=1, running_elsewhere=0)
    assert f"restored pretrain-3m-medium ({pre.key}) from {kept}" in lines
    assert (cell_dir(pre, work) / "checkpoint.npz").is_file()

    # a kept run that is not the stored result's run is refused, not started from
    store.save(pre, dict(store.load(pre), final_test=dict(median_win_rate=0.0, win_rate=[0.0])))
    shutil.rmtree(work)
    store.path(plan_cells(spec, "cpu", (SHIPPED,)).finetune[1]).unlink()   # se to run again
    with pytest.raises(UserError, match="is not the run of pretrain-3m-medium's stored result"):
        run_study(spec, "cpu", store, work, LocalExecutor(), (SHIPPED,), log=lambda s: None,
                  kept=kept)


def test_changed_dataset_is_refused_before_reusing_results(tmp_path, monkeypatch):
    spec = toy_spec(tmp_path)
    store = ResultStore(tmp_path / "results")
    pre = plan_cells(spec, "cpu", (SHIPPED,)).pretrain[0]
    store.save(pre, dict(fake_result(pre), dataset_fingerprint="not-this-data"))
    with pytest.raises(UserError, match="is not the data pretrain-3m-medium was computed on"):
        run_study(spec, "cpu", store, tmp_path / "work", LocalExecutor(), (SHIPPED,),
                  log=lambda s: None)


# --- report from a fake results folder -------------------------------------------------------

def fake_finetune(cell, final, wins, probe):
    steps = [0, 200, 400]
    curves = {str(s): dict(t_env=steps, test_win_rate=list(wins), test_return=[10 * w for w in
                                                                                wins],
                           probe_q=list(probe)) for s in range(2)}
    return dict(fake_result(cell), method=cell.method, curves=curves,
                pretrain_key=cell.start and cell.start.key,
                final_test=dict(median_win_rate=float(np.median(final)), win_rate=final))


def fake_pretrain(cell, wins, q_tot, return_to_go) -> dict:
    """A pre-training result of two seeds with these curves at gradient steps 0, 100, ..."""
    steps = [100 * i for i in range(len(wins))]
    curves = {str(s): dict(updates=steps, test_win_rate=list(wins), q_taken=list(q_tot))
              for s in range(2)}
    return dict(fake_result(cell), curves=curves,
                dataset=dict(win_rate=0.4, return_to_go=return_to_go),
                final_test=dict(median_win_rate=0.5, win_rate=[0.5, 0.5]))


def fake_results_folder(spec, root: Path) -> ResultStore:
    store = ResultStore(root)
    plan = plan_cells(spec, "cpu")
    for pre in plan.pretrain:
        store.save(pre, fake_pretrain(pre, [0.0, 0.2, 0.4, 0.5, 0.5], [None, 2.0, 4.0, 5.0, 5.0],
                                      return_to_go=2.5))
    for i, cell in enumerate(plan.finetune):
        store.save(cell, fake_finetune(cell, [0.6 + 0.1 * i, 0.8 + 0.1 * i],
                                       [0.5, 0.1 * i, 0.9], [10.0, 8.0 - i, 9.0]))
    return store


def test_final_table_report_from_stored_results(tmp_path):
    spec = toy_spec(tmp_path, methods=("ovmse", "qmix"))
    store = fake_results_folder(spec, tmp_path / "results")
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    assert "| 3m/medium | 0.500 | 0.700 | 0.800 |" in text
    assert "Not run yet" not in text
    assert "| all tasks | 0.700 [0.600, 0.800] | 0.800 [0.700, 0.900] |" in text
    assert "Computed on: cpu (3 cells)" in text  # the pre-training and two fine-tuning cells
    assert "Code: not recorded (3 cells)" in text
    cell = plan_cells(spec, "cpu").finetune[0]
    store.save(cell, dict(store.load(cell), code=dict(version="0.1.0", commit="ab" * 20,
                                                      dirty=True)))
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    assert "Code: 0.1.0 at abababa, modified (1 cells), not recorded (2 cells)" in text


def test_the_final_table_report_shows_each_pretrainings_curve_against_the_datas_return(
        tmp_path):
    spec = toy_spec(tmp_path, methods=("ovmse", "macal-ql"))
    store = fake_results_folder(spec, tmp_path / "results")
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    # steps 0..400: the tests nearest 100, 200, 300 and 400; Q_tot 5.0 is twice the data's 2.5
    assert ("| 3m/medium MACQL | 2 | 0.400 | 100 / 200 / 300 / 400 | 0.20 / 0.40 / 0.50 / 0.50 "
            "| 2.0 / 4.0 / 5.0 / 5.0 | 2.50 | 0.500 |") in text
    assert "| 3m/medium Cal-QL | 2 |" in text
    assert (tmp_path / "out" / "toy-cpu-pretraining-3m.png").is_file()
    calql = next(c for c in plan_cells(spec, "cpu").pretrain if c.config.learner.cql.calibrated)
    old = store.load(calql)   # stored before pre-trainings recorded Q_tot and the return-to-go
    for curve in old["curves"].values():
        del curve["q_taken"]
    store.save(calql, dict(old, dataset=dict(win_rate=0.4)))
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    assert "| 0.20 / 0.40 / 0.50 / 0.50 | - / - / - / - | - | 0.500 |" in text


def test_the_scale_line_names_the_settings_of_the_specs_own_maps_only(tmp_path):
    spec = toy_spec(tmp_path, extra='cql_online = ["2s3z"]\n'
                    'map_settings = { "3m" = { "learner.td_lambda" = 0.3 }, '
                    '"2s3z" = { "learner.td_lambda" = 0.6 } }')
    store = fake_results_folder(spec, tmp_path / "results")
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    assert "; on 3m `learner.td_lambda=0.3`." in text
    assert "2s3z" not in text
    spec = toy_spec(tmp_path, extra='cql_online = ["3m"]')
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    assert "; ovmse keeps CQL online on 3m." in text


def test_curves_report_has_figure_drop_and_steps_to_threshold(tmp_path):
    spec = toy_spec(tmp_path, report="curves", methods=("ovmse", "se"))
    store = fake_results_folder(spec, tmp_path / "results")
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    # ovmse: median win 0.5, 0.0, 0.9 -> drop 0.5 - 0.0 over the first two tests; the 0.5 at
    # step 0 is the pre-trained policy's, so 0.4 is first reached after the start at 400
    assert "| ovmse | 0.700 | 0.700 [0.600, 0.800] | 0.500 | 0.000 at 200 | 400 | 400 |" in text
    assert (tmp_path / "out" / "toy-cpu-3m-medium.png").stat().st_size > 10_000
    assert "shaded: the interquartile range over seeds" in text


def test_the_lowest_column_shows_a_fall_after_the_first_tenth_that_the_drop_misses(tmp_path):
    spec = toy_spec(tmp_path, report="curves", methods=("ovmse",))
    store = fake_results_folder(spec, tmp_path / "results")
    cell = plan_cells(spec, "cpu").finetune[0]
    wins = [0.5, 0.45, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.2]
    curve = dict(t_env=[100 * i for i in range(11)], test_win_rate=wins,
                 test_return=[10 * w for w in wins], probe_q=[1.0] * 11)
    store.save(cell, dict(store.load(cell), curves={"0": curve, "1": curve}))
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    # the first tenth is steps 0 and 100: drop 0.5 - 0.45; the fall to 0 at 800 is later
    assert "| ovmse | 0.700 | 0.700 [0.600, 0.800] | 0.050 | 0.000 at 800 |" in text


def test_every_task_lists_its_methods_in_the_specs_order(tmp_path):
    spec = toy_spec(tmp_path, report="curves", tasks=("3m/medium", "3m/medium-replay"),
                    methods=("ovmse", "qmix"))
    store = fake_results_folder(spec, tmp_path / "results")
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    replay = text[text.index("## 3m/medium-replay"):]
    assert replay.index("| ovmse |") < replay.index("| qmix |")


def test_the_drop_is_measured_from_the_cells_own_pretraining(tmp_path):
    spec = toy_spec(tmp_path, report="curves", methods=("ovmse", "macal-ql"))
    store = fake_results_folder(spec, tmp_path / "results")
    calql = next(c for c in plan_cells(spec, "cpu").pretrain if c.config.learner.cql.calibrated)
    store.save(calql, dict(store.load(calql), final_test=dict(median_win_rate=0.8,
                                                              win_rate=[0.8, 0.8])))
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    # both start at median 0.5 and fall to 0.0 (ovmse) and 0.1 (macal-ql) over the first two
    # tests; ovmse's MACQL pre-training ended at 0.5, macal-ql's Cal-QL one at 0.8
    assert "| ovmse | 0.700 | 0.700 [0.600, 0.800] | 0.500 |" in text
    assert "| macal-ql | 0.800 | 0.800 [0.700, 0.900] | 0.700 |" in text


def test_the_spread_band_is_the_interquartile_range_over_seeds():
    from ovmse.study.report import _iqr

    low, high = _iqr(np.array([[1.0, 0.0], [2.0, 4.0], [4.0, 8.0]]))   # 3 seeds x 2 points
    assert low.tolist() == [1.5, 2.0] and high.tolist() == [3.0, 6.0]


def test_cql_online_cells_are_labelled_and_still_fill_their_method_column(tmp_path):
    extra = 'cql_online = ["3m"]'
    curves = toy_spec(tmp_path, report="curves", methods=("ovmse", "se"), extra=extra)
    store = fake_results_folder(curves, tmp_path / "results")
    text = build_report(curves, "cpu", store, tmp_path / "out").read_text()
    assert "| ovmse + CQL online | 0.700 |" in text
    assert "| se | 0.800 |" in text   # CQL online is ovmse's alone
    table = toy_spec(tmp_path, methods=("ovmse", "se"), extra=extra)
    text = build_report(table, "cpu", store, tmp_path / "out").read_text()
    assert "| 3m/medium | 0.500 | 0.700 | 0.800 |" in text


def test_starting_epsilon_cells_get_their_own_curves_rows_and_stay_out_of_the_final_table(
        tmp_path):
    extra = "eps_starts = [1.0, 0.05]"
    curves = toy_spec(tmp_path, report="curves", methods=("ovmse", "se"), extra=extra)
    store = fake_results_folder(curves, tmp_path / "results")
    text = build_report(curves, "cpu", store, tmp_path / "out").read_text()
    order = [c.name for c in plan_cells(curves, "cpu").finetune]
    assert order == ["3m-medium-ovmse", "3m-medium-ovmse-eps0.05", "3m-medium-se",
                     "3m-medium-se-eps0.05"]
    assert "| ovmse | 0.700 |" in text and "| ovmse eps0 0.05 | 0.800 |" in text
    table = toy_spec(tmp_path, methods=("ovmse", "se"), extra=extra)
    text = build_report(table, "cpu", store, tmp_path / "out").read_text()
    assert "| 3m/medium | 0.500 | 0.700 | 0.900 |" in text   # ovmse and se at epsilon 1


def test_probe_and_mixing_reports_and_missing_cells(tmp_path):
    spec = toy_spec(tmp_path, report="probe", methods=("ovmse", "switch-cql"))
    store = fake_results_folder(spec, tmp_path / "results")
    text = build_report(spec, "cpu", store, tmp_path / "out").read_text()
    assert "| switch-cql | 10.00 | 7.00 at 200 | 9.00 |" in text
    mixing = toy_spec(tmp_path, report="mixing", methods=("ovmse",), ratios=(0.0, 0.1))
    store = fake_results_folder(mixing, tmp_path / "mixing")
    missing = plan_cells(mixing, "cpu").finetune[1]
    store.path(missing).unlink()
    gpu = plan_cells(mixing, "cpu").finetune[0]
    store.save(gpu, dict(store.load(gpu), device="gpu: H100"))
    text = build_report(mixing, "cpu", store, tmp_path / "out").read_text()
    assert "Computed on: cpu (1 cells), gpu: H100 (1 cells)" in text
    assert "**Not run yet (1 cells):** 3m-medium-ovmse-mix0.1." in text
    assert "| 3m/medium | 0.00 [0.00, 0.00] | - |" in text  # return at step 200


def test_report_cli_writes_markdown(tmp_path, capsys):
    spec = toy_spec(tmp_path)
    fake_results_folder(spec, tmp_path / "results")
    assert main(["experiment", "report", str(spec.path), "--results", str(tmp_path / "results"),
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "toy-cpu.md").exists()
    assert main(["experiment", "run", "nonesuch"]) == 2
    assert "no experiment spec" in capsys.readouterr().err


def test_report_is_embedded_between_its_markers_and_nowhere_else(tmp_path, capsys):
    spec = toy_spec(tmp_path, report="curves", methods=("ovmse",))
    fake_results_folder(spec, tmp_path / "results")
    docs = tmp_path / "docs"
    docs.mkdir()
    target = docs / "results.md"
    target.write_text("# Study\n\nclaims\n<!-- report:toy-cpu -->\nold\n<!-- /report:toy-cpu -->"
                      "\n\nafter\n")
    args = ["experiment", "report", str(spec.path), "--results", str(tmp_path / "results"),
            "--out", str(docs / "results"), "--embed", str(target)]
    assert main(args) == 0
    text = target.read_text()
    assert text.startswith("# Study\n\nclaims\n<!-- report:toy-cpu -->\n")
    assert text.endswith("<!-- /report:toy-cpu -->\n\nafter\n") and "old" not in text
    assert "#### 3m/medium\n" in text and "Toy study" not in text   # title dropped, demoted
    assert "![3m/medium](results/toy-cpu-3m-medium.png)" in text
    assert "| ovmse | 0.700 |" in text
    assert main(args) == 0 and target.read_text() == text   # regenerating changes nothing
    target.write_text("no markers\n")
    assert main(args) == 2
    assert "put the lines '<!-- report:toy-cpu -->'" in capsys.readouterr().err
    assert target.read_text() == "no markers\n"


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    spec = toy_spec(tmp_path)
    fake_results_folder(spec, tmp_path / "results")
    out = tmp_path / "out"
    out.mkdir()

    def full_disk(fd):   # the atomic writer's last step before its rename
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "toy-cpu.md"))

    monkeypatch.setattr("os.fsync", full_disk)
    assert main(["experiment", "report", str(spec.path), "--results", str(tmp_path / "results"),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the disk writing" in err
    assert not [p for p in out.iterdir() if p.suffix == ".md" or p.name.endswith(".tmp")]


# --- real cells: in-process and Ray give the same results ------------------------------------

def comparable(result: dict) -> dict:
    """A result without its timings, which are all that may differ between executors."""
    return {k: v for k, v in result.items() if k not in ("wall_s", "env_steps_per_s")}


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory):
    """A real toy study run in-process: MACQL pre-training on 3m medium, then OVMSE from it."""
    root = tmp_path_factory.mktemp("toy_study")
    spec = toy_spec(root, methods=("ovmse",))
    store, work = ResultStore(root / "results"), root / "work"
    counts = run_study(spec, "cpu", store, work, LocalExecutor(progress=False), (SHIPPED,),
                       log=lambda _: None)
    return spec, store, work, counts


def test_a_real_toy_study_runs_and_finished_finetuning_drops_its_checkpoint(toy_study):
    spec, store, work, counts = toy_study
    assert counts == dict(cached=0, ran=2, running_elsewhere=0)
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    pre, cell = plan.pretrain[0], plan.finetune[0]
    assert (cell_dir(pre, work) / "checkpoint.npz").is_file()  # later cells start from it
    finished = cell_dir(cell, work)
    assert not (finished / "checkpoint.npz").exists()
    assert (finished / "summary.json").is_file() and (finished / "metrics.jsonl").is_file()
    stored = store.load(cell)
    assert stored["device"] == device_name() and stored["method"] == "ovmse"
    assert stored["code"] == code_version() == store.load(pre)["code"]   # which code computed it
    assert stored["dataset_fingerprint"] == data_fingerprint(pre.config.dataset)  # which data
    assert sorted(stored["curves"]) == ["0", "1"] and stored["curves"]["0"]["t_env"][0] == 0
    pretrained = store.load(pre)   # its Q_tot curve, to read against the data's return-to-go
    assert pretrained["dataset"]["return_to_go"] == pytest.approx(
        mean_return_to_go(Path(pre.config.dataset), pre.config.learner.gamma)[0])
    assert all(q is not None for q in pretrained["curves"]["0"]["q_taken"][1:])
    assert comparable(run_cell(cell, work)) == comparable(stored)  # read back, not rerun


def test_a_cell_trained_a_seed_at_a_time_gives_the_result_of_all_seeds_at_once(toy_study,
                                                                               tmp_path):
    """--seeds-per-run 1: each seed its own run, one after the other; the same result (on a
    CPU), each group's seeds, time and code recorded, no checkpoint left behind; a started
    cell keeps its groups when asked for all seeds at once."""
    spec, store, work, _ = toy_study
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    pre, cell = plan.pretrain[0], plan.finetune[0]
    shutil.copytree(cell_dir(pre, work), cell_dir(pre, tmp_path))
    died = cell_dir(cell, tmp_path)   # an all-seeds run that died before its first checkpoint
    died.mkdir(parents=True)
    (died / "config.json").write_text("{}")
    grouped = run_cell(cell, tmp_path, seeds_per_run=1)
    groups = grouped.pop("seed_groups")
    assert comparable(grouped) == comparable(store.load(cell))
    assert [g["seeds"] for g in groups] == [[0], [1]]
    assert all(g["code"] == code_version() and g["wall_s"] > 0 for g in groups)
    run_dir = cell_dir(cell, tmp_path)
    assert sorted(p.name for p in run_dir.iterdir()) == ["seed_groups.json", "seeds-0-0",
                                                         "seeds-1-1"]
    assert not list(run_dir.glob("*/checkpoint.npz"))
    again = run_cell(cell, tmp_path)
    assert again.pop("seed_groups") == groups and comparable(again) == comparable(grouped)


def test_seeds_per_run_must_not_be_negative(tmp_path, capsys):
    with pytest.raises(UserError, match="--seeds-per-run must be 0"):
        LocalExecutor(seeds_per_run=-1)
    spec = toy_spec(tmp_path, methods=("ovmse",))
    assert main(["experiment", "run", str(spec.path), "--seeds-per-run", "-1", "--work-dir",
                 str(tmp_path / "work"), "--results", str(tmp_path / "results")]) == 2
    assert "--seeds-per-run must be 0" in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()


def test_qmix_runs_without_a_pretraining_run_in_the_config_a_checkpoint_would_give(toy_study,
                                                                                 tmp_path):
    """A from-scratch cell needs no pre-training: --methods qmix runs one cell and nothing else,
    in the config finetune_config reads from the finished pre-training of the same task."""
    spec, _, work, _ = toy_study
    both = toy_spec(tmp_path, methods=("ovmse", "qmix"))
    store = ResultStore(tmp_path / "results")
    counts = run_study(both, "cpu", store, tmp_path / "work", LocalExecutor(progress=False),
                       (SHIPPED,), log=lambda _: None, methods=("qmix",))
    assert counts == dict(cached=0, ran=1, running_elsewhere=0)
    assert not (tmp_path / "work" / "pretrain").exists()
    (cell,) = select(plan_cells(both, "cpu", (SHIPPED,)), methods=("qmix",)).finetune
    assert cell.start is None and store.load(cell)["pretrain_key"] is None
    (pre,) = plan_cells(spec, "cpu", (SHIPPED,)).pretrain
    assert pre.key == cell.pretrain.key
    from_checkpoint = finetune_config("qmix", dataclasses.replace(
        cell.base, finetune=dataclasses.replace(cell.base.finetune,
                                                checkpoint=str(cell_dir(pre, work)))))
    assert scratch_config("qmix", cell.base, cell.pretrain.config) == from_checkpoint
    ran = to_dict(from_checkpoint)
    ran["finetune"]["checkpoint"] = ran["finetune"]["dataset"] = None   # as results store it
    assert store.load(cell)["config"] == ran


def test_scratch_config_refuses_a_method_that_starts_from_a_pretraining():
    with pytest.raises(UserError, match="ovmse starts from a pre-training run"):
        scratch_config("ovmse", TrainConfig(), PretrainConfig())


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")   # Ray starts its processes
def test_ray_executor_matches_the_in_process_one(toy_study, tmp_path):
    """The same two cells (a pre-training, then a fine-tuning that reads its checkpoint from the
    work folder) as Ray tasks give the in-process results."""
    ray = pytest.importorskip("ray")
    spec, local, _, _ = toy_study
    by_ray = ResultStore(tmp_path / "results")
    try:
        remote = executors.RayExecutor(init_options=dict(num_cpus=2, include_dashboard=False))
        counts = run_study(spec, "cpu", by_ray, tmp_path / "work", remote, (SHIPPED,),
                           log=lambda _: None)
        # its cells run at the runner's priority, not at Ray's default niceness 15
        niceness = lambda: os.nice(0)   # noqa: E731 (a lambda travels to the worker by value)
        assert ray.get(ray.remote(niceness).remote()) == niceness()
    finally:
        ray.shutdown()
    assert counts == dict(cached=0, ran=2, running_elsewhere=0)
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    for cell in plan.pretrain + plan.finetune:
        assert comparable(by_ray.load(cell)) == comparable(local.load(cell))
        assert by_ray.load(cell)["final_test"]["win_rate"] == \
            local.load(cell)["final_test"]["win_rate"]


def test_a_local_ray_instance_runs_cells_at_niceness_0_unless_told_otherwise(monkeypatch):
    """Other `_system_config` keys keep niceness 0; a cluster address leaves Ray's own."""
    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **options: calls.append(options))
    monkeypatch.setitem(sys.modules, "ray", fake)
    executors.RayExecutor(init_options=dict(_system_config=dict(object_timeout_milliseconds=5)))
    executors.RayExecutor(init_options=dict(_system_config=dict(worker_niceness=5)))
    executors.RayExecutor(address="auto")
    assert [c.get("_system_config") for c in calls] == [
        dict(worker_niceness=0, object_timeout_milliseconds=5), dict(worker_niceness=5), None]


def test_two_local_jobs_match_the_in_process_run(toy_study, tmp_path):
    """The same cells with --jobs 2 (each cell in a spawned worker process) give the
    in-process results."""
    spec, local, _, _ = toy_study
    by_workers = ResultStore(tmp_path / "results")
    counts = run_study(spec, "cpu", by_workers, tmp_path / "work",
                       LocalExecutor(progress=False, jobs=2), (SHIPPED,), log=lambda _: None)
    assert counts == dict(cached=0, ran=2, running_elsewhere=0)
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    for cell in plan.pretrain + plan.finetune:
        assert comparable(by_workers.load(cell)) == comparable(local.load(cell))


def test_jobs_below_one_is_refused():
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        LocalExecutor(jobs=0)
