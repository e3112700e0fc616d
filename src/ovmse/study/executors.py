"""Where cells run. `LocalExecutor` runs them one after the other in this process, or `jobs` at a
time in as many worker processes (on a CPU a cell keeps the cores only partly busy, and its
compilation uses one: two jobs on two cores run a study's cells faster); `RayExecutor`
sends each cell to a Ray cluster as one task (pip install 'ovmse[ray]'), so that a paper-scale
grid spreads over a cluster's CPUs and GPUs. Both yield (cell, result) as cells finish; the
runner stores each result as it arrives, so an interrupted study loses at most its running cells.
Both call `start(cell)` right before a cell would start (LocalExecutor: before running it or
handing it to a free worker; RayExecutor: in this driver process, before submitting it) and
skip the cell when it returns False: the runner claims cells there, and this process holds the
claims while they run.
Both can train a fine-tuning cell's seeds a few at a time (`seeds_per_run`, cells.seed_groups)
where its replay buffers do not fit in memory together.

With Ray, every node must see `work_dir` (a shared filesystem; trivially so on one machine):
fine-tuning cells read their pre-trained checkpoint from it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from ovmse.errors import UserError
from ovmse.study.cells import Cell, run_cell


Start = Callable[[Cell], bool]
"""Called right before a cell starts; the cell is skipped when it returns False."""


def _always(cell: Cell) -> bool:
    return True


def ray_task_options(cpus_per_cell: float, gpus_per_cell: float) -> dict:
    """Ray task options for one cell: its CPU and GPU reservation and, when it gets a fraction
    of a GPU (0 < gpus_per_cell < 1: several cells, so several JAX processes, share one GPU),
    environment variables so that they fit in it together: no preallocation (by default every
    JAX process takes 75% of the GPU's memory as it starts) and a memory limit of
    0.9 x gpus_per_cell of the GPU (XLA_CLIENT_MEM_FRACTION, e.g. "0.225" for 0.25, four cells
    per GPU using at most 90% of it). Whole GPUs keep JAX's defaults."""
    options: dict = dict(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell)
    if 0 < gpus_per_cell < 1:
        options["runtime_env"] = dict(env_vars=dict(
            XLA_PYTHON_CLIENT_PREALLOCATE="false",
            XLA_CLIENT_MEM_FRACTION=f"{0.9 * gpus_per_cell:.4g}"))
    return options


class LocalExecutor:
    """Cells on this machine: one after the other in this process (jobs = 1), or up to `jobs`
    at a time, each in a worker process (spawned; JAX's compilation cache on, as in `ovmse`
    commands). The cells given to one `run` must not depend on each other (the runner runs
    the pre-training cells first). When `run` stops early, cells not yet started are dropped
    and the running ones finish first."""

    def __init__(self, progress: bool = True, jobs: int = 1, seeds_per_run: int = 0):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        _check_seeds_per_run(seeds_per_run)
        self.progress, self.jobs, self.seeds_per_run = progress, jobs, seeds_per_run

    def run(self, cells: Sequence[Cell], work_dir: Path,
            start: Start = _always) -> Iterator[tuple[Cell, dict]]:
        if self.jobs == 1:
            for cell in cells:
                if start(cell):
                    yield cell, run_cell(cell, work_dir, progress=self.progress,
                                         seeds_per_run=self.seeds_per_run)
            return
        yield from self._run_in_workers(cells, work_dir, start)

    def _run_in_workers(self, cells: Sequence[Cell], work_dir: Path,
                        start: Start) -> Iterator[tuple[Cell, dict]]:
        waiting = list(cells)
        running: dict[Future, Cell] = {}
        with ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_setup) as pool:
            try:
                while waiting or running:
                    while waiting and len(running) < self.jobs:
                        cell = waiting.pop(0)
                        if start(cell):
                            running[pool.submit(run_cell, cell, work_dir,
                                                seeds_per_run=self.seeds_per_run)] = cell
                    if not running:
                        continue
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield running.pop(future), future.result()
            finally:   # stopped early: start nothing more; the running cells finish
                for future in running:
                    future.cancel()


def _check_seeds_per_run(seeds_per_run: int) -> None:
    if seeds_per_run < 0:
        raise UserError(f"--seeds-per-run must be 0 (all of a cell's seeds at once) or more, "
                        f"got {seeds_per_run}")


def _worker_setup() -> None:
    from ovmse.compilation_cache import enable

    enable()


class RayExecutor:
    """One Ray task per cell. `address`: a running cluster ("auto", "ray://host:10001"), or None
    to start a local Ray instance; `cpus_per_cell` / `gpus_per_cell` reserve resources per task.
    With a fraction of a GPU per cell (e.g. 0.25: four cells share each GPU), each task's JAX
    neither preallocates GPU memory nor uses more than 0.9 x gpus_per_cell of it (see
    `ray_task_options`), so the cells sharing a GPU cannot run it out of memory together.
    When `run` stops early (a cell failed, an error or Ctrl-C in the runner), the cells still
    pending are cancelled, so none runs on after the runner has released its claim.
    A local instance runs its tasks at the runner's own priority (Ray's `worker_niceness` 0),
    as the local executor does: at Ray's default of 15 any other process on the machine starves
    a cell (tests/test_study.py's Ray test beside one study process took 354 s, against 115 s at
    0; 859 s in the suite beside the other test worker). `init_options`'s `_system_config` may
    set another `worker_niceness`; its other keys keep this one."""

    def __init__(self, address: str | None = None, cpus_per_cell: float = 1.0,
                 gpus_per_cell: float = 0.0, init_options: dict | None = None,
                 seeds_per_run: int = 0):
        _check_seeds_per_run(seeds_per_run)
        self.seeds_per_run = seeds_per_run
        try:
            import ray
        except ImportError:
            raise UserError("the Ray executor needs Ray: pip install 'ovmse[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            options = dict(init_options or {})
            if address is None:
                options["_system_config"] = {"worker_niceness": 0,
                                             **options.get("_system_config", {})}
            ray.init(address=address, **options)
        self.options = ray_task_options(cpus_per_cell, gpus_per_cell)

    def run(self, cells: Sequence[Cell], work_dir: Path,
            start: Start = _always) -> Iterator[tuple[Cell, dict]]:
        task = self.ray.remote(run_cell).options(**self.options)
        pending = {task.remote(cell, str(work_dir), seeds_per_run=self.seeds_per_run): cell
                   for cell in cells if start(cell)}
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                yield cell, self.ray.get(done[0])
        finally:   # stopped early (a failed cell, an error, Ctrl-C): before its claims go
            for ref in pending:
                self.ray.cancel(ref, force=True)
