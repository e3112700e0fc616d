"""Config overrides by dotted path (experiment specs and benchmarks use them)."""

import pytest

from ovmse.config import PretrainConfig, TrainConfig, with_overrides
from ovmse.errors import UserError


def test_overrides_replace_nested_fields_and_nothing_else():
    cfg = with_overrides(TrainConfig(), {"learner.memory.lam_anneal_steps": 50_000,
                                         "steps": 7, "learner.cql.alpha": 2})
    assert cfg.learner.memory.lam_anneal_steps == 50_000 and cfg.steps == 7
    assert cfg.learner.cql.alpha == 2.0 and isinstance(cfg.learner.cql.alpha, float)
    assert cfg.learner.lr == TrainConfig().learner.lr and cfg.env == TrainConfig().env
    assert with_overrides(PretrainConfig(), {}) == PretrainConfig()


@pytest.mark.parametrize("overrides, message", [
    ({"learner.memry.lam_end": 0.1}, "LearnerConfig has no field 'memry'"),
    ({"learner.memory": 1}, "names a section"),
    ({"steps.x": 1}, "'steps' is a value, not a section"),
    ({"learner.memory.lam_end": "high"}, "takes a float, got 'high'"),
    ({"steps": 1.5}, "takes a int, got 1.5"),
    ({"learner.double_q": 1}, "takes a bool, got 1"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        with_overrides(TrainConfig(), overrides)
