"""ovmse works from any folder once installed: the wheel carries the paper's specs and the
shipped datasets, and names ("table1", "3m/medium") resolve to them wherever the command runs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ovmse.cli import main
from ovmse.config import PipelineConfig, PretrainConfig
from ovmse.datasets.locate import SHIPPED, locate_dataset, shipped_names
from ovmse.errors import UserError
from ovmse.study.spec import SPECS_DIR, load_spec, spec_names

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_spec_and_every_shipped_dataset_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--quiet",
                    "--wheel-dir", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ovmse-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    src = REPO / "src"
    wanted = {str(p.relative_to(src)) for p in SHIPPED.rglob("*") if p.is_file()}
    wanted |= {str(p.relative_to(src)) for p in SPECS_DIR.glob("*.toml")}
    assert len(wanted) > 100 and wanted <= packaged, sorted(wanted - packaged)[:5]
    assert "ovmse/py.typed" in packaged


def test_names_resolve_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert shipped_names() == ["3m/expert", "3m/medium", "3m/random"]
    assert Path(PretrainConfig().resolved().dataset) == SHIPPED / "3m" / "medium"
    assert locate_dataset(PipelineConfig().dataset) == str(SHIPPED / "3m" / "medium")
    assert main(["dataset", "verify", "3m/medium"]) == 0
    assert main(["experiment", "run", "table1", "--scale", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pretrain-3m-medium" in out and "2s3z" in out
    assert list(tmp_path.iterdir()) == []          # a dry run writes nothing


def test_a_folder_wins_over_a_name_and_an_unknown_name_lists_the_shipped(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "3m" / "medium").mkdir(parents=True)
    assert locate_dataset("3m/medium") == str(tmp_path / "3m" / "medium")
    assert main(["dataset", "info", "3m/nothing"]) == 2
    err = capsys.readouterr().err
    assert "no dataset at " in err and "3m/nothing: give a dataset folder" in err
    assert "shipped: 3m/expert, 3m/medium, 3m/random" in err and len(err.splitlines()) == 1


def test_an_own_spec_may_include_the_shipped_common_settings(tmp_path):
    own = tmp_path / "mine.toml"
    own.write_text('name = "mine"\ntitle = "t"\npaper = "-"\nreport = "final_table"\n'
                   'include = "common.toml"\n[scale.cpu]\ntasks = ["3m/medium"]\n'
                   'methods = ["ovmse"]\n')
    assert load_spec(str(own)).scale("cpu").seeds == load_spec("table1").scale("cpu").seeds
    assert "table1" in spec_names() and "common" not in spec_names()
    with pytest.raises(UserError, match="no experiment spec tabel1; known specs: cql_online"):
        load_spec("tabel1")
