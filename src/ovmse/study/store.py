"""The result cache of a study: one small JSON file per finished cell, named
<cell name>-<cell key>.json, in one folder shared by every spec (experiments/results/).
Reports read nothing else, so a committed results folder regenerates every table and figure."""

from __future__ import annotations

from pathlib import Path

from ovmse.runs import read_json, write_json
from ovmse.study.cells import Cell


class ResultStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, cell: Cell) -> Path:
        return self.root / f"{cell.name}-{cell.key}.json"

    def has(self, cell: Cell) -> bool:
        return self.path(cell).exists()

    def load(self, cell: Cell) -> dict:
        return read_json(self.path(cell))

    def save(self, cell: Cell, result: dict) -> Path:
        """Write atomically: an interrupted save leaves no half-written result behind."""
        path = self.path(cell)
        write_json(path, result)
        return path
