"""Where datasets are found: by folder path, or by "map/quality" name under the data roots.

The small datasets the package ships (3m random, medium, expert: 300 episodes each,
docs/datasets.md) live inside the package, so a name such as "3m/medium" works from any folder
once ovmse is installed. A name is looked up under, in order: the shipped datasets, then
`./datasets`, then `./datasets-build` (where `ovmse dataset build` writes by default).
"""

from __future__ import annotations

from pathlib import Path

METADATA_FILE = "dataset.json"
"""The metadata file every dataset folder holds (store.py writes it)."""
SHIPPED = Path(__file__).resolve().parent / "shipped"
"""The datasets installed with the package: SHIPPED/<map>/<quality>."""
DATA_ROOTS = (SHIPPED, Path("datasets"), Path("datasets-build"))
"""Roots a "map/quality" name is looked up under, in order."""


def find_dataset(name: str, roots: tuple[Path, ...] = DATA_ROOTS) -> Path | None:
    """The first `root/name` holding a dataset, or None."""
    for root in roots:
        if (Path(root) / name / METADATA_FILE).exists():
            return Path(root) / name
    return None


def locate_dataset(name_or_path: str) -> str:
    """`name_or_path` as an absolute folder: an existing path as itself, else a "map/quality"
    name found under DATA_ROOTS ("3m/medium" is the shipped one). A name found nowhere is
    returned as the absolute path it names, so that loading it reports the missing folder.
    "" stays "" (no dataset)."""
    if not name_or_path:
        return ""
    path = Path(name_or_path)
    if not path.exists():
        path = find_dataset(name_or_path) or path
    return str(path.resolve())


def shipped_names() -> list[str]:
    """The "map/quality" names of the shipped datasets, sorted."""
    return sorted(f"{meta.parent.parent.name}/{meta.parent.name}"
                  for meta in SHIPPED.glob(f"*/*/{METADATA_FILE}"))
