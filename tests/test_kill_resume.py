"""kill -9 of `ovmse train` at a random moment, then --resume, ends exactly where an
uninterrupted run does: benchmarks/kill_resume.py's check, for `train` at the smallest size the
CLI accepts, with one kill and one resume.

Four `ovmse train` processes: A (compiling cold into a private compilation cache), A-warm (the
same run reading the cache back: the timing reference of the kill, and compared with A), B
(killed at a delay drawn in [10%, 90%] of A-warm's duration: 60% with the seed used) and the
resume of B. About 100 s on an idle 2-core CPU, most of it A's compilation; several minutes when
the machine is loaded. The whole check, all three programs with kills that land mid-training:
benchmarks/kill_resume.py.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "kill_resume.py"


def _kill_resume_module():
    spec = importlib.util.spec_from_file_location("kill_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kill_resume", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_train_killed_at_random_then_resumed_matches_uninterrupted_run(tmp_path):
    kr = _kill_resume_module()
    result = kr.check_program("train", kr.TINY_SIZES["train"], tmp_path / "runs",
                              random.Random(5), kills=1, repeats=1, windows=("run",),
                              cache=str(tmp_path / "jax-cache"), log=lambda msg: None)
    assert result["uninterrupted"]["rc"] == 0, result["uninterrupted"]["error"]
    assert result["warm"]["rc"] == 0, result["warm"]["error"]
    assert result["warm"]["identical"], result["warm"]["differences"]
    [repeat] = result["repeats"]
    kill = repeat["events"][0]
    # seed 5 draws 60% of A-warm's duration: B would have to run 40% faster to end first
    assert kill["killed"], f"B ended before its kill at {kill['delay_s']} s: nothing was tested"
    assert not repeat["resume_error"], (
        f"resume after a kill at {kill['at_s']} s (run folder then: {kill['state_after']}) "
        f"failed: {repeat['resume_error']}")
    assert repeat["final_test_equal"], repeat["differences"]
    assert repeat["metrics_equal"], repeat["differences"]
    assert result["identical"]
