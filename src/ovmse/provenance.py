"""Which code computed a result: the installed ovmse version and, when ovmse runs from a git
checkout, its commit and whether the code's tracked files differed from it. Summaries of
training runs and the study's cell results record it (`code_version`), so that a result can be
traced to the code that computed it and re-checked with it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
"""The repository root when ovmse is imported from a checkout's src/ (an editable install)."""
CODE = ("src", "pyproject.toml")
"""What counts as the code: edits elsewhere (docs, results) leave a result's commit exact."""


@functools.cache
def code_version() -> dict:
    """{"version": installed ovmse version, "commit": 40 hex digits or None, "dirty": whether
    the code's tracked files (`CODE`) differ from that commit (None without a checkout)}.
    Computed once per process."""
    from ovmse import __version__

    commit = dirty = None
    if (CHECKOUT / ".git").exists():
        try:
            commit = _git("rev-parse", "HEAD")
            dirty = bool(_git("status", "-s", "-uno", "--", *CODE))   # short, tracked only
        except (OSError, subprocess.SubprocessError):
            commit = dirty = None
    return dict(version=__version__, commit=commit, dirty=dirty)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()
