"""The datasets shipped in the package (ovmse/datasets/shipped/) are intact, load for their map,
and their qualities are ordered as the recipe intends (random < medium < expert in win rate and
return)."""

import pytest

from ovmse.config import NetworkConfig
from ovmse.datasets.locate import SHIPPED as SHIPPED_ROOT
from ovmse.datasets.store import load_dataset, read_metadata, verify_dataset
from ovmse.envs import make_env
from ovmse.networks.qmix import make_networks
from ovmse.snapshots import load_policy_snapshot

SHIPPED = SHIPPED_ROOT / "3m"
QUALITIES = ("random", "medium", "expert")


@pytest.mark.parametrize("quality", QUALITIES)
def test_shipped_dataset_verifies_and_loads(quality):
    meta = verify_dataset(SHIPPED / quality)
    assert meta["quality"] == quality and meta["map"] == "3m" and meta["episodes"] >= 200
    batch, _ = load_dataset(SHIPPED / quality, make_env("3m").spec)
    assert batch.num_episodes == meta["episodes"]


def test_shipped_qualities_are_ordered():
    metas = {q: read_metadata(SHIPPED / q) for q in QUALITIES}
    win = [metas[q]["win_rate"] for q in QUALITIES]
    ret = [metas[q]["mean_return"] for q in QUALITIES]
    assert win[0] < win[1] < win[2], win
    assert ret[0] < ret[1] < ret[2], ret
    # medium was picked at about half the expert's greedy win rate
    prov = {q: metas[q]["provenance"] for q in ("medium", "expert")}
    ratio = prov["medium"]["generator_greedy_win_rate"] / prov["expert"]["generator_greedy_win_rate"]
    assert 0.35 < ratio < 0.65


@pytest.mark.parametrize("quality", ("medium", "expert"))
def test_the_policy_that_made_a_shipped_dataset_is_shipped_with_it(quality):
    nets = make_networks(make_env("3m").spec, NetworkConfig())
    params = load_policy_snapshot(SHIPPED / quality / "generator.npz", nets)
    assert set(params) == {"agent", "mixer"}


def test_undiscounted_return_to_go_at_the_start_is_the_card_mean_return(capsys):
    from ovmse.cli import main
    from ovmse.datasets.card import mean_return_to_go

    meta = read_metadata(SHIPPED / "medium")
    over_steps, at_start = mean_return_to_go(SHIPPED / "medium", 1.0)
    assert at_start == pytest.approx(meta["mean_return"], rel=1e-5)
    assert over_steps < at_start            # later steps have less reward to come
    discounted_over_steps, discounted_at_start = mean_return_to_go(SHIPPED / "medium", 0.99)
    assert discounted_at_start < at_start and discounted_over_steps < over_steps
    assert main(["dataset", "info", str(SHIPPED / "medium"), "--gamma", "0.99"]) == 0
    assert f"at the first step {discounted_at_start:.2f}" in capsys.readouterr().out
    assert main(["dataset", "info", str(SHIPPED / "medium"), "--gamma", "2"]) == 2
