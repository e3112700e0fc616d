"""ovmse: offline-to-online multi-agent RL (OVMSE, AAMAS 2025) on SMAX, in JAX.

`ovmse.__version__` is the installed distribution's version (pyproject.toml); `ovmse --version`
prints it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ovmse")
except PackageNotFoundError:   # a source tree put on sys.path without installing it
    __version__ = "unknown (not installed)"
