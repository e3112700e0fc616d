"""JAX's persistent compilation cache for every `ovmse` command.

Each run jits its programs anew, and on a 2-core CPU compiling them takes longer than a tiny run
trains. With the cache, a program compiled once on this machine is read back from disk the next
time (the same executable, so the same numbers). The folder is OVMSE_COMPILATION_CACHE if set
("off" disables the cache), else $XDG_CACHE_HOME/ovmse/jax, else ~/.cache/ovmse/jax.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "OVMSE_COMPILATION_CACHE"
MIN_COMPILE_S = 0.5
"""Programs that compile faster than this are not worth a file."""


def cache_dir() -> Path | None:
    """The cache folder this process uses, or None when OVMSE_COMPILATION_CACHE is "off"."""
    chosen = os.environ.get(ENV_VAR, "")
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "ovmse" / "jax"


def enable() -> Path | None:
    """Point JAX's persistent compilation cache at `cache_dir()` (before anything compiles);
    returns the folder, or None when disabled."""
    folder = cache_dir()
    if folder is not None:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return folder
