"""Per-cell claims: two runners on one study never run a cell at once, a killed runner never
leaves a cell stuck, and Ray cells sharing a GPU get JAX memory settings that fit them in it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ovmse.study import executors
from ovmse.study.cells import cell_dir
from ovmse.study.claims import Claims, read_holder
from ovmse.study.executors import LocalExecutor, RayExecutor, ray_task_options
from ovmse.study.runner import plan_cells, run_study
from ovmse.study.store import ResultStore
from test_study import SHIPPED, fake_result, toy_spec


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def plant_claim(claims: Claims, cell, pid: int, host: str | None = None,
                age_s: float = 0.0) -> str:
    """A claim file on `cell` as another runner would leave it; returns its token."""
    path = claims.path(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"other-{pid}"
    path.write_text(f'{{"token": "{token}", "host": "{host or socket.gethostname()}", '
                    f'"pid": {pid}, "started": {time.time() - age_s}}}')
    os.utime(path, (time.time() - age_s,) * 2)
    return token


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A toy study (pre-training, then ovmse and qmix from it) whose cells run instantly; the
    cells run are listed in `calls`: (name, whether this process held its claim meanwhile, how
    many claim files there were)."""
    spec = toy_spec(tmp_path)
    store, work = ResultStore(tmp_path / "results"), tmp_path / "work"
    calls: list[tuple[str, bool, int]] = []

    def fake_run(cell, work_dir, progress=False, seeds_per_run=0):
        holder = Claims(work_dir).holder(cell)
        calls.append((cell.name, holder is not None and holder.pid == os.getpid(),
                      len(claim_files(work_dir))))
        run_dir = cell_dir(cell, work_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text("{}")
        return fake_result(cell)

    monkeypatch.setattr(executors, "run_cell", fake_run)
    monkeypatch.setattr("ovmse.study.runner.data_fingerprint", lambda path: "f")
    plan = plan_cells(spec, "cpu", (SHIPPED,))
    return spec, store, work, calls, plan


def run(spec, store, work, executor=None, log=None) -> dict:
    return run_study(spec, "cpu", store, work, executor or LocalExecutor(), (SHIPPED,),
                     log=log or (lambda _: None))


def claim_files(work) -> list:
    return sorted((Path(work) / ".claims").glob("*.claim"))


def names(calls) -> list[str]:
    return [name for name, *_ in calls]


# --- claims ----------------------------------------------------------------------------------

def test_a_second_claim_on_a_held_cell_fails(tmp_path, study):
    *_, plan = study
    cell = plan.finetune[0]
    mine, other = Claims(tmp_path), Claims(tmp_path)
    assert mine.acquire(cell)
    assert not other.acquire(cell) and not mine.acquire(cell)   # not re-entrant either
    assert mine.holder(cell).pid == os.getpid() and mine.holder(cell).token == mine.held[
        mine.path(cell)]
    assert other.acquire(plan.finetune[1])   # other cells are free
    assert not other.release(cell)           # it never held that one
    assert mine.release(cell) and not mine.path(cell).exists()
    assert other.acquire(cell)


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path, study):
    *_, plan = study
    cell, claims = plan.pretrain[0], Claims(tmp_path)
    old = plant_claim(claims, cell, dead_pid())   # fresh heartbeat, but nobody behind it
    assert claims.acquire(cell)
    assert claims.holder(cell).pid == os.getpid() and claims.holder(cell).token != old
    assert (claims.ended / old).exists()


def test_a_claim_with_an_old_heartbeat_is_taken_over_and_a_fresh_one_is_not(tmp_path, study):
    *_, plan = study
    cell, claims = plan.pretrain[0], Claims(tmp_path, stale_after_s=60)
    plant_claim(claims, cell, os.getpid(), host="another-machine", age_s=30)
    assert not claims.acquire(cell)   # its pid cannot be checked from here: the heartbeat rules
    plant_claim(claims, cell, os.getpid(), host="another-machine", age_s=90)
    assert claims.acquire(cell) and claims.holder(cell).host == socket.gethostname()


def test_the_heartbeat_keeps_a_held_claim_fresh(tmp_path, study):
    *_, plan = study
    cell = plan.pretrain[0]
    with Claims(tmp_path, heartbeat_s=0.02) as claims:
        assert claims.acquire(cell)
        os.utime(claims.path(cell), (time.time() - 3600,) * 2)
        deadline = time.time() + 5
        while time.time() - claims.holder(cell).heartbeat > 60 and time.time() < deadline:
            time.sleep(0.02)
        assert time.time() - claims.holder(cell).heartbeat < 60
    assert not claims.path(cell).exists()   # leaving the context released it


def test_of_two_runners_ending_one_stale_claim_the_late_one_removes_nothing(tmp_path, study):
    """Both read the same stale claim; the first takes it over, and the second, acting on what
    it read, must not remove the first one's new claim."""
    *_, plan = study
    cell, first, late = plan.pretrain[0], Claims(tmp_path), Claims(tmp_path)
    stale = plant_claim(first, cell, dead_pid())
    assert read_holder(late.path(cell)).token == stale
    assert first.acquire(cell)
    assert not late._end(late.path(cell), stale)
    assert first.holder(cell).token == first.held[first.path(cell)]
    assert not late.acquire(cell)


# --- the runner ------------------------------------------------------------------------------

def test_cells_run_under_their_claim_which_is_released_after_storing(study):
    spec, store, work, calls, plan = study
    assert run(spec, store, work) == dict(cached=0, ran=3, running_elsewhere=0)
    # each held its claim while it ran, and the one before had released its own
    assert calls == [("pretrain-3m-medium", True, 1), ("3m-medium-ovmse", True, 1),
                     ("3m-qmix", True, 1)]
    assert claim_files(work) == []
    assert all(store.has(c) for c in plan.pretrain + plan.finetune)


def test_a_claim_is_released_when_its_cell_fails(study, monkeypatch):
    spec, store, work, calls, plan = study

    def failing(cell, work_dir, progress=False, seeds_per_run=0):
        assert Claims(work_dir).holder(cell).pid == os.getpid()
        raise RuntimeError("cell crashed")

    monkeypatch.setattr(executors, "run_cell", failing)
    with pytest.raises(RuntimeError, match="cell crashed"):
        run(spec, store, work)
    assert claim_files(work) == []
    assert not store.has(plan.pretrain[0])


def test_a_cell_held_elsewhere_is_skipped_with_its_dependants_and_counted(study):
    spec, store, work, calls, plan = study
    other = Claims(work)      # another live runner (this process: its pid is alive)
    assert other.acquire(plan.pretrain[0])
    lines: list[str] = []
    assert run(spec, store, work, log=lines.append) == dict(cached=0, ran=1, running_elsewhere=2)
    assert calls == [("3m-qmix", True, 2)]   # from scratch: it runs beside the held pre-training
    skipped = [line for line in lines if line.startswith("skip ")]
    assert len(skipped) == 2 and "running elsewhere (pid" in skipped[0]
    assert "starts from pretrain-3m-medium" in skipped[1]
    assert "2 cells skipped" in lines[-1]
    assert claim_files(work) == [other.path(plan.pretrain[0])]   # theirs is left alone

    other.release(plan.pretrain[0])
    ovmse = next(c for c in plan.finetune if c.method == "ovmse")
    assert other.acquire(ovmse)
    assert run(spec, store, work) == dict(cached=1, ran=1, running_elsewhere=1)   # qmix: above
    assert names(calls) == ["3m-qmix", "pretrain-3m-medium"]
    assert not store.has(ovmse)


def test_dependants_run_once_their_start_was_finished_elsewhere(study):
    """The pre-training cell is held elsewhere when planned, but finished by the time the
    fine-tuning cells start: they run."""
    spec, store, work, calls, plan = study
    pre = plan.pretrain[0]
    other = Claims(work)
    assert other.acquire(pre)

    class OtherFinishesPretraining(LocalExecutor):
        def run(self, cells, work_dir, start=executors._always):
            if cells and cells[0] == plan.finetune[0]:   # between the two phases
                cell_dir(pre, work_dir).mkdir(parents=True)
                (cell_dir(pre, work_dir) / "summary.json").write_text("{}")
                store.save(pre, fake_result(pre))
                other.release(pre)
            yield from super().run(cells, work_dir, start)

    assert run(spec, store, work, OtherFinishesPretraining()) == dict(
        cached=0, ran=2, running_elsewhere=1)
    assert names(calls) == ["3m-medium-ovmse", "3m-qmix"]


def test_a_cell_finished_elsewhere_between_plan_and_claim_is_not_rerun(study):
    spec, store, work, calls, plan = study
    ovmse = next(c for c in plan.finetune if c.method == "ovmse")
    theirs = dict(fake_result(ovmse), wall_s=123.0)

    class OtherFinishesFirst(LocalExecutor):
        def run(self, cells, work_dir, start=executors._always):
            if ovmse in cells:   # planned to run here, then finished elsewhere
                store.save(ovmse, theirs)
            yield from super().run(cells, work_dir, start)

    assert run(spec, store, work, OtherFinishesFirst()) == dict(cached=1, ran=2,
                                                                running_elsewhere=0)
    assert names(calls) == ["pretrain-3m-medium", "3m-qmix"]
    assert store.load(ovmse) == theirs and claim_files(work) == []


class FakeRay:
    """Just enough of Ray for RayExecutor.run: records what is submitted, with which options."""

    def __init__(self):
        self.submitted: list = []
        self.tasks: list = []
        self.options: dict = {}
        self.cancelled: list = []

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **options):
                fake.options = options
                return self

            def remote(self, cell, work_dir, seeds_per_run=0):
                fake.submitted.append(cell.name)
                fake.tasks.append((fn, cell, work_dir, seeds_per_run))
                return len(fake.tasks) - 1

        return Task()

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        fn, cell, work_dir, seeds_per_run = self.tasks[ref]
        return fn(cell, work_dir, seeds_per_run=seeds_per_run)

    def cancel(self, ref, force):
        """Records the cell and whether its claim was still held."""
        _, cell, work_dir, _ = self.tasks[ref]
        self.cancelled.append((cell.name, Claims(work_dir).holder(cell) is not None))


def fake_ray_executor(gpus_per_cell: float = 0.0) -> RayExecutor:
    ray = RayExecutor.__new__(RayExecutor)
    ray.ray, ray.options = FakeRay(), ray_task_options(1.0, gpus_per_cell)
    ray.seeds_per_run = 0
    return ray


def test_the_driver_claims_every_cell_before_submitting_its_task(study):
    spec, store, work, calls, plan = study
    ray = fake_ray_executor(0.25)
    other = Claims(work)
    qmix = next(c for c in plan.finetune if c.method == "qmix")
    assert other.acquire(qmix)
    assert run(spec, store, work, ray) == dict(cached=0, ran=2, running_elsewhere=1)
    assert ray.ray.submitted == ["pretrain-3m-medium", "3m-medium-ovmse"]
    assert all(held for _, held, _ in calls)   # the driver (this process) held them meanwhile
    assert ray.ray.options["runtime_env"]["env_vars"]["XLA_CLIENT_MEM_FRACTION"] == "0.225"
    assert ray.ray.cancelled == []


def test_a_failed_task_cancels_the_pending_ones_before_their_claims_go(study, monkeypatch):
    spec, store, work, calls, plan = study
    pre = plan.pretrain[0]
    store.save(pre, fake_result(pre))
    cell_dir(pre, work).mkdir(parents=True)
    (cell_dir(pre, work) / "summary.json").write_text("{}")
    ray = fake_ray_executor()

    def failing(cell, work_dir, progress=False, seeds_per_run=0):
        assert claim_files(work_dir) == sorted(Claims(work_dir).path(c) for c in plan.finetune)
        raise RuntimeError("task failed")

    monkeypatch.setattr(executors, "run_cell", failing)
    with pytest.raises(RuntimeError, match="task failed"):
        run(spec, store, work, ray)
    assert ray.ray.cancelled == [("3m-qmix", True)] and claim_files(work) == []


# --- Ray on a shared GPU ---------------------------------------------------------------------

def test_cells_sharing_a_gpu_neither_preallocate_nor_overrun_their_share():
    shared = ray_task_options(2.0, 0.25)
    assert shared == dict(num_cpus=2.0, num_gpus=0.25, runtime_env=dict(env_vars=dict(
        XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_CLIENT_MEM_FRACTION="0.225")))
    for share in (0.1, 1 / 3, 0.5, 0.9):
        fraction = float(ray_task_options(1.0, share)["runtime_env"]["env_vars"][
            "XLA_CLIENT_MEM_FRACTION"])
        assert 0.85 * share < fraction < share
    for whole in (0.0, 1.0, 2.0):   # no GPU, or whole ones: JAX's defaults
        assert ray_task_options(1.0, whole) == dict(num_cpus=1.0, num_gpus=whole)
