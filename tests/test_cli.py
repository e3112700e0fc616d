"""The command line's own flags: `ovmse --version` and `ovmse.__version__`."""

from importlib.metadata import version

import ovmse
from ovmse.cli import main


def test_version_is_the_installed_distributions(capsys):
    assert ovmse.__version__ == version("ovmse")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ovmse {version('ovmse')}\n"
