"""The command line's own flags: `ovmse --version` and `ovmse.__version__`, and the
groups' help."""

from importlib.metadata import version
from pathlib import Path

import pytest

import ovmse
from ovmse.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_version_is_the_installed_distributions(capsys):
    assert ovmse.__version__ == version("ovmse")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ovmse {version('ovmse')}\n"


@pytest.mark.parametrize("group, says, commands", [
    ("dataset", "Make, inspect, verify, mix, export and import offline datasets",
     ("build", "collect", "info", "verify", "mix", "export", "import")),
    ("experiment", "Run the paper's experiments", ("run", "report", "export")),
])
def test_a_group_help_says_what_the_group_does_and_lists_its_commands(group, says, commands,
                                                                       capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([group, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())   # the help box wraps lines
    assert says in out and "prints the version" not in out
    assert all(f"• {name}" in out for name in commands)


def test_the_run_help_names_every_shipped_spec(capsys):
    from ovmse.study.spec import SPECS_DIR

    shipped = sorted(p.stem for p in SPECS_DIR.glob("*.toml") if p.stem != "common")
    with pytest.raises(SystemExit):
        main(["experiment", "run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    listed = out.split("Spec name (")[1].split(")")[0]
    assert sorted(listed.split(", ")) == shipped and "SPEC" in out
