"""Which code and which CPU computed a result: the installed ovmse version and, when ovmse runs
from a git checkout, its commit and whether the code's tracked files differed from it
(`code_version`); the CPU's model and vector instructions (`cpu_model`: the same code and seed
round floats otherwise on other CPUs, and runs diverge). Summaries of training runs, datasets
and the study's cell results record them, so that a result can be traced to what computed it
and re-checked with it."""

from __future__ import annotations

import functools
import platform
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


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This machine's CPU as `cpuinfo` names it, with the widest vector instructions XLA can
    use on it ("AMD EPYC (avx512)"); platform.processor() where there is no such file (macOS,
    Windows), or "unknown"."""
    try:
        info = Path(cpuinfo).read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    first = info.split("\n\n")[0]   # the first processor's block
    fields = {k.strip(): v.strip() for k, v in
              (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    name = fields.get("model name") or platform.machine() or "unknown"
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    widest = next((isa for flag, isa in VECTOR_FLAGS if flag in flags), None)
    return f"{name} ({widest})" if widest else name


VECTOR_FLAGS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse4.2"),
                ("sve", "sve"), ("asimd", "neon"))
"""(cpuinfo flag, name) of vector instruction sets, widest first."""
