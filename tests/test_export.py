"""`ovmse experiment export --format marl-eval`: the committed study results in marl-eval's
raw-data layout, value for value."""

import json
from pathlib import Path

from ovmse.cli import main
from ovmse.study.export import marl_eval_data, ragged
from ovmse.study.spec import load_spec
from ovmse.study.store import ResultStore

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def _result(name_prefix: str) -> dict:
    (path,) = [p for p in RESULTS.glob(f"{name_prefix}-*.json")
               if p.stem.rsplit("-", 1)[0] == name_prefix]
    return json.loads(path.read_text())


def test_every_run_holds_its_test_points_then_its_absolute_metrics():
    data = marl_eval_data(load_spec("table1"), "cpu", ResultStore(RESULTS))
    assert list(data) == ["smax"] and "3m_medium" in data["smax"]
    stored = _result("3m-medium-ovmse")
    runs = data["smax"]["3m_medium"]["ovmse"]
    assert list(runs) == [f"seed_{s}" for s in sorted(stored["curves"], key=int)]
    for index, (seed, curve) in enumerate(sorted(stored["curves"].items())):
        steps = runs[f"seed_{seed}"]
        keys = list(steps)
        assert keys[-1] == "absolute_metrics"
        assert keys[:-1] == [f"step_{k}" for k in range(len(curve["t_env"]))]
        assert [steps[k]["step_count"] for k in keys[:-1]] == curve["t_env"]
        assert [steps[k]["win_rate"] for k in keys[:-1]] == [[w] for w in curve["test_win_rate"]]
        assert [steps[k]["return"] for k in keys[:-1]] == [[r] for r in curve["test_return"]]
        assert steps["absolute_metrics"] == {
            "win_rate": [stored["final_test"]["win_rate"][index]],
            "return": [stored["final_test"]["mean_return"][index]]}


def test_qmix_stands_under_each_task_of_its_map_and_ragged_data_is_named():
    data = marl_eval_data(load_spec("table1"), "cpu", ResultStore(RESULTS))
    tasks = data["smax"]
    assert tasks["3m_medium"]["qmix"] == tasks["3m_medium-replay"]["qmix"]
    one_map = {"smax": {t: {a: tasks[t][a] for a in ("ovmse", "qmix")} for t in tasks
                        if t.startswith("3m")}}
    assert ragged(one_map) == []
    both_maps = {"smax": {t: {a: tasks[t][a] for a in ("ovmse", "qmix")} for t in tasks}}
    (problem,) = ragged(both_maps)     # 3m is tested every 5k steps, 2s3z every 10k
    assert "test points per run differ between tasks" in problem and "'3m_medium': [21]" in problem
    lopsided = {"smax": {"a": {"x": {}, "y": {}}, "b": {"x": {}}}}
    assert ragged(lopsided) == ["smax/b has algorithms ['x'], a ['x', 'y']"]


def test_cli_writes_the_keys_in_the_order_marl_eval_reads_them(tmp_path, capsys):
    out = tmp_path / "t1.json"
    assert main(["experiment", "export", "table1", "--results", str(RESULTS), "--out", str(out),
                 "--algorithms", "ovmse", "qmix", "--tasks", "3m/medium", "3m/medium-replay"]) == 0
    data = json.loads(out.read_text())       # json keeps the file's key order
    assert list(data["smax"]) == ["3m_medium", "3m_medium-replay"]
    assert all(sorted(algos) == ["ovmse", "qmix"] for algos in data["smax"].values())
    run = data["smax"]["3m_medium"]["ovmse"]["seed_0"]
    assert list(run) == [f"step_{k}" for k in range(21)] + ["absolute_metrics"]
    assert "note:" not in capsys.readouterr().out
    assert main(["experiment", "export", "table1", "--results", str(RESULTS), "--out",
                 str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_refuses_unknown_algorithms_and_an_empty_export(tmp_path, capsys):
    assert main(["experiment", "export", "table1", "--results", str(RESULTS), "--algorithms",
                 "ovmse", "bogus"]) == 2
    assert "table1 (cpu) has no algorithms bogus; it has ovmse" in capsys.readouterr().err
    assert main(["experiment", "export", "table1", "--results", str(tmp_path / "none")]) == 2
    assert "no stored results of table1 (cpu)" in capsys.readouterr().err
