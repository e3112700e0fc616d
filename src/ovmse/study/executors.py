"""Where cells run. `LocalExecutor` runs them one after the other in this process; `RayExecutor`
sends each cell to a Ray cluster as one task (pip install 'ovmse[ray]'), so that a paper-scale
grid spreads over a cluster's CPUs and GPUs. Both yield (cell, result) as cells finish; the
runner stores each result as it arrives, so an interrupted study loses at most its running cells.

With Ray, every node must see `work_dir` (a shared filesystem; trivially so on one machine):
fine-tuning cells read their pre-trained checkpoint from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ovmse.errors import UserError
from ovmse.study.cells import Cell, run_cell


class LocalExecutor:
    def __init__(self, progress: bool = True):
        self.progress = progress

    def run(self, cells: Sequence[Cell], work_dir: Path) -> Iterator[tuple[Cell, dict]]:
        for cell in cells:
            yield cell, run_cell(cell, work_dir, progress=self.progress)


class RayExecutor:
    """One Ray task per cell. `address`: a running cluster ("auto", "ray://host:10001"), or None
    to start a local Ray instance; `cpus_per_cell` / `gpus_per_cell` reserve resources per task."""

    def __init__(self, address: str | None = None, cpus_per_cell: float = 1.0,
                 gpus_per_cell: float = 0.0, init_options: dict | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("the Ray executor needs Ray: pip install 'ovmse[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, **(init_options or {}))
        self.options = dict(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell)

    def run(self, cells: Sequence[Cell], work_dir: Path) -> Iterator[tuple[Cell, dict]]:
        task = self.ray.remote(run_cell).options(**self.options)
        pending = {task.remote(cell, str(work_dir)): cell for cell in cells}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            yield cell, self.ray.get(done[0])
