"""Datasets: round trip, damage detection, refusal of foreign data, atomic writes, cards, mixing,
collection and the build rule at toy size."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from ovmse.cli import main
from ovmse.config import NetworkConfig
from ovmse.datasets import store
from ovmse.dataset_build import pick_expert_and_medium
from ovmse.datasets.card import dataset_card
from ovmse.datasets.collect import collect_episodes
from ovmse.datasets.mix import mix_datasets
from ovmse.datasets.store import load_dataset, verify_dataset, write_dataset
from ovmse.envs import make_env
from ovmse.errors import UserError
from ovmse.networks.qmix import init_params, make_networks
from ovmse.runs import device_name

ENV = make_env("3m", episode_limit=25)
NETS = make_networks(ENV.spec, NetworkConfig(agent_hidden_dim=8))


@pytest.fixture(scope="module")
def episodes():
    params = init_params(jax.random.PRNGKey(0), NETS)["agent"]
    batch, rate = collect_episodes(ENV, NETS.agent, params, 20, 1.0, seed=3, batch=8)
    assert batch.num_episodes == 20 and rate > 0
    return batch


@pytest.fixture
def dataset(episodes, tmp_path):
    path = tmp_path / "3m-random"
    write_dataset(path, episodes, ENV.spec, "random", dict(seed=3, behaviour_epsilon=1.0))
    return path


def test_write_then_read_gives_identical_arrays(episodes, dataset):
    back, meta = load_dataset(dataset, ENV.spec)
    for name, a, b in zip(episodes._fields, episodes, back):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=name)
    assert meta["episodes"] == 20 and meta["transitions"] == int(episodes.filled.sum())
    assert meta["map"] == "3m" and meta["quality"] == "random"
    assert meta["jaxmarl_version"] == "0.2.0" and meta["format_version"] == 1
    assert set(meta["array_sha256"]) >= {"observations", "actions", "infos.legals"}


def test_vault_holds_og_marl_field_names(dataset):
    rows = store.read_vault(dataset / store.VAULT_DIR, "random")
    assert {"observations", "actions", "rewards", "terminals", "truncations", "infos.legals",
            "infos.state"} <= set(rows)


def test_verify_accepts_an_intact_dataset(dataset, capsys):
    assert main(["dataset", "verify", str(dataset)]) == 0
    assert "OK" in capsys.readouterr().out


def _largest_data_file(path: Path) -> Path:
    return max((p for p in path.rglob("*") if p.is_file() and p.name != "dataset.json"),
               key=lambda p: p.stat().st_size)


def test_a_flipped_byte_is_found_by_verify_and_refused_by_the_loader(dataset, capsys):
    victim = _largest_data_file(dataset)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    assert main(["dataset", "verify", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "SHA-256" in err and err.count("\n") == 1
    with pytest.raises(UserError, match=str(victim)):
        load_dataset(dataset, ENV.spec)


def test_a_truncated_file_is_found_by_verify_and_refused_by_the_loader(dataset, capsys):
    victim = _largest_data_file(dataset)
    victim.write_bytes(victim.read_bytes()[:-100])
    assert main(["dataset", "verify", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "truncated" in err
    with pytest.raises(UserError, match="truncated"):
        load_dataset(dataset)


def test_damaged_metadata_is_refused(dataset, capsys):
    (dataset / "dataset.json").write_text("{ not json")
    assert main(["dataset", "info", str(dataset)]) == 2
    assert "dataset.json is damaged" in capsys.readouterr().err


def test_a_dataset_of_another_map_or_size_is_refused(dataset):
    with pytest.raises(UserError, match="from map 3m, not 2s3z"):
        load_dataset(dataset, make_env("2s3z", episode_limit=25).spec)
    with pytest.raises(UserError, match="episode_limit 25, this environment has 100"):
        load_dataset(dataset, make_env("3m").spec)
    other_sizes = ENV.spec._replace(obs_dim=80)
    with pytest.raises(UserError, match="obs_dim 75, this environment has 80"):
        load_dataset(dataset, other_sizes)


def test_an_interrupted_write_leaves_no_dataset(episodes, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_manifest", crash)  # after the vault, before dataset.json
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "new", episodes, ENV.spec, "random", {})
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_overwrite_keeps_the_complete_earlier_dataset(dataset, episodes,
                                                                     monkeypatch):
    before = verify_dataset(dataset)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(dataset, episodes, ENV.spec, "random", {"other": 1}, overwrite=True)
    monkeypatch.undo()
    assert verify_dataset(dataset) == before
    assert [p.name for p in dataset.parent.iterdir()] == [dataset.name]


def test_an_existing_dataset_is_not_overwritten_by_default(dataset, episodes):
    with pytest.raises(UserError, match="already exists"):
        write_dataset(dataset, episodes, ENV.spec, "random", {})


def test_card_reports_counts_returns_and_a_histogram(dataset, capsys):
    assert main(["dataset", "info", str(dataset)]) == 0
    card = capsys.readouterr().out
    assert "episodes 20" in card and "win rate" in card and "return histogram" in card
    meta = store.read_metadata(dataset)
    assert f"mean {np.mean(meta['episode_returns']):.2f}" in dataset_card(meta)
    histogram = [line for line in card.splitlines() if line.strip().startswith("[")]
    assert len(histogram) == 10 and sum(int(line.split()[-1]) for line in histogram) == 20


def test_mix_concatenates_and_refuses_other_maps(dataset, episodes, tmp_path):
    second = tmp_path / "second"
    write_dataset(second, episodes, ENV.spec, "random", {})
    meta = mix_datasets([dataset, second], tmp_path / "mixed")
    assert meta["episodes"] == 40 and meta["quality"] == "mixed"
    mixed, _ = load_dataset(tmp_path / "mixed")
    np.testing.assert_array_equal(mixed.obs[:, 20:], np.asarray(episodes.obs))
    env2 = make_env("2s3z", episode_limit=25)
    other = make_networks(env2.spec, NetworkConfig(agent_hidden_dim=8))
    batch, _ = collect_episodes(env2, other.agent, init_params(jax.random.PRNGKey(0),
                                                               other)["agent"], 4, 1.0, 0, 4)
    write_dataset(tmp_path / "2s3z", batch, env2.spec, "random", {})
    with pytest.raises(UserError, match="from map 2s3z, not 3m"):
        mix_datasets([dataset, tmp_path / "2s3z"], tmp_path / "bad")


def test_collection_is_a_function_of_its_seed(episodes):
    params = init_params(jax.random.PRNGKey(0), NETS)["agent"]
    again, _ = collect_episodes(ENV, NETS.agent, params, 20, 1.0, seed=3, batch=8)
    other, _ = collect_episodes(ENV, NETS.agent, params, 20, 1.0, seed=4, batch=8)
    np.testing.assert_array_equal(np.asarray(again.actions), np.asarray(episodes.actions))
    assert not np.array_equal(np.asarray(other.actions), np.asarray(episodes.actions))


@pytest.mark.parametrize("rates, expected", [
    ([0.0, 0.2, 0.45, 0.5, 0.9, 0.8], (4, 2)),   # half of 0.9 is 0.45
    ([0.0, 0.3, 0.6, 0.6], (2, 1)),              # earliest of equal bests; 0.3 is exactly half
    ([0.5, 0.1, 0.2], (0, 0)),                   # the first snapshot is best: medium = expert
    ([0.0, 0.4, 0.4, 1.0, 0.6], (3, 1)),         # ties for medium: the earliest
])
def test_expert_and_medium_rule(rates, expected):
    assert pick_expert_and_medium(rates) == expected


@pytest.fixture(scope="module")
def toy_build(tmp_path_factory):
    from conftest import tiny_train_config
    from ovmse.dataset_build import build_datasets

    out = tmp_path_factory.mktemp("build") / "3m"
    record = build_datasets("3m", out, seed=0, steps=600, episodes=6, eval_episodes=8,
                            qualities=("random", "medium", "expert"), progress=False,
                            train_config=tiny_train_config())
    return out, record


def test_a_build_onto_its_own_datasets_says_how_to_go_on(toy_build):
    from ovmse.dataset_build import build_datasets

    out, _ = toy_build
    with pytest.raises(UserError, match=r"pass --overwrite .*its source run is kept and reused"):
        build_datasets("3m", out, seed=0, steps=600, episodes=6, progress=False)


def test_build_writes_every_quality_by_the_rule(toy_build):
    out, record = toy_build
    rates = [s["win_rate"] for s in record["snapshots"]]
    assert len(rates) == 4  # test points 0, 200, 400, 600
    expert, medium = pick_expert_and_medium(rates)
    assert record["expert"] == record["snapshots"][expert]["path"]
    assert record["medium"] == record["snapshots"][medium]["path"]
    for quality in ("random", "medium", "expert"):
        meta = verify_dataset(out / quality)
        assert meta["quality"] == quality and meta["map"] == "3m"
        assert record["datasets"][quality]["episodes"] == meta["episodes"]
    for quality in ("medium", "expert"):
        meta = store.read_metadata(out / quality)
        assert meta["episodes"] == 6 and meta["provenance"]["behaviour_epsilon"] == 0.05
        assert (out / quality / "generator.npz").is_file()
    assert store.read_metadata(out / "random")["provenance"]["behaviour_epsilon"] == 1.0
    for quality in ("random", "medium", "expert"):   # which CPU rounded its floats
        assert store.read_metadata(out / quality)["provenance"]["made_on"] == device_name()
def _card(dataset: Path, to: Path, generator: bool = True) -> Path:
    to.mkdir(parents=True)
    shutil.copy(dataset / "dataset.json", to)
    if generator and (dataset / "generator.npz").exists():
        shutil.copy(dataset / "generator.npz", to)
    return to


@pytest.mark.parametrize("quality", ["random", "medium"])
def test_a_card_collects_its_dataset_again_array_for_array(toy_build, tmp_path, quality, capsys):
    out, _ = toy_build
    card = _card(out / quality, tmp_path / "card")
    assert not (card / "vault").exists()
    assert main(["dataset", "recollect", str(card), "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    assert "the same arrays" in capsys.readouterr().out
    again = verify_dataset(tmp_path / "again")
    assert again["array_sha256"] == store.read_metadata(out / quality)["array_sha256"]
    assert again["provenance"]["recollected_from"] == str(card)


def test_a_medium_replay_card_trains_the_source_run_again_to_its_snapshot(toy_build, tmp_path,
                                                                          capsys):
    import tempfile

    from ovmse.config import TrainConfig, from_dict
    from ovmse.dataset_build import replay_buffer_episodes
    from ovmse.runs import read_json

    out, _ = toy_build   # its medium snapshot is chunk 0 (no replay): take chunk 1's buffer
    run = out / "source-run"
    cfg = from_dict(TrainConfig, read_json(run / "config.json"))
    with tempfile.TemporaryDirectory() as work:
        batch, info = replay_buffer_episodes(cfg, 1, Path(work))
    spec = make_env("3m", cfg.env.episode_limit, cfg.env.reward_scale).spec
    write_dataset(tmp_path / "mr", batch, spec, "medium-replay", dict(seed=0, **info),
                  extra_files={"generator.npz": run / "policies" / "chunk_00001.npz"})
    card = _card(tmp_path / "mr", tmp_path / "card")
    assert main(["dataset", "recollect", str(card), "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    assert "the same arrays" in capsys.readouterr().out
    again = verify_dataset(tmp_path / "again")
    assert again["episodes"] == info["episodes_kept"] > 0
    assert again["array_sha256"] == store.read_metadata(tmp_path / "mr")["array_sha256"]


def test_a_card_that_does_not_match_its_episodes_is_named_and_the_copy_kept(toy_build,
                                                                          tmp_path, capsys):
    out, _ = toy_build
    card = _card(out / "expert", tmp_path / "card")
    meta = json.loads((card / "dataset.json").read_text())
    meta["array_sha256"]["actions"] = "0" * 64
    (card / "dataset.json").write_text(json.dumps(meta))
    assert main(["dataset", "recollect", str(card), "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and err.count("\n") == 1
    # both machines named: here the same one (the card's checksum was altered by hand)
    assert f"in actions: made on {device_name()}, the card on {device_name()} (" in err
    verify_dataset(tmp_path / "again")   # kept, whole


def test_a_card_without_its_generator_or_onto_an_existing_folder_is_refused(toy_build,
                                                                            tmp_path, capsys):
    out, _ = toy_build
    card = _card(out / "medium", tmp_path / "card", generator=False)
    assert main(["dataset", "recollect", str(card), "--out", str(tmp_path / "a")]) == 2
    assert "has no generator.npz" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "a").mkdir()
    card = _card(out / "medium", tmp_path / "card2")
    assert main(["dataset", "recollect", str(card), "--out", str(tmp_path / "a")]) == 2
    assert "already exists" in capsys.readouterr().err




def test_medium_replay_is_every_episode_stored_until_the_medium_snapshot(toy_build, tmp_path):
    from ovmse.dataset_build import SnapshotRanking, collect_quality
    from ovmse.runs import read_jsonl
    from ovmse.snapshots import list_policy_snapshots

    out, _ = toy_build
    run = out / "source-run"
    # the toy run never wins, so the rule would pick its initial policy: name chunk 2 instead
    ranking = SnapshotRanking(list_policy_snapshots(run), [0.0, 0.1, 0.2, 0.3], 3, 2)
    meta = collect_quality("3m", "medium-replay", tmp_path / "mr", 0, 0, run, ranking=ranking)
    prov = meta["provenance"]
    played = [r["episodes"] for r in read_jsonl(run / "metrics.jsonl") if r["chunk"] == 2][0]
    assert prov["episodes_played"] == played  # the replay reproduced the run exactly
    assert meta["episodes"] == prov["episodes_kept"] == min(played, prov["buffer_capacity"])
    assert verify_dataset(tmp_path / "mr")["quality"] == "medium-replay"


def test_medium_replay_of_an_untrained_policy_is_refused(toy_build, tmp_path):
    from ovmse.dataset_build import SnapshotRanking, collect_quality
    from ovmse.snapshots import list_policy_snapshots

    out, _ = toy_build
    ranking = SnapshotRanking(list_policy_snapshots(out / "source-run"), [0.0] * 4, 0, 0)
    with pytest.raises(UserError, match="untrained initial policy"):
        collect_quality("3m", "medium-replay", tmp_path / "mr", 0, 0, out / "source-run",
                        ranking=ranking)


def test_collect_command_makes_one_quality_from_a_run(toy_build, tmp_path, capsys):
    out, record = toy_build
    target = tmp_path / "expert"
    assert main(["dataset", "collect", "--map", "3m", "--quality", "expert", "--episodes", "5",
                 "--run", str(out / "source-run"), "--eval-episodes", "8", "--out", str(target),
                 "--no-progress"]) == 0
    assert "5 episodes" in capsys.readouterr().out
    assert store.read_metadata(target)["provenance"]["generator"] == record["expert"]


@pytest.mark.parametrize("args, message", [
    (["--quality", "medium"], "needs --run"),
    (["--map", "4m"], "unknown map"),
    (["--episodes", "0"], "episodes must be > 0"),
    (["--epsilon", "2"], "epsilon must be in [0, 1]"),
])
def test_collect_refuses_bad_input_in_one_line(args, message, tmp_path, capsys):
    assert main(["dataset", "collect", *args, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_collect_refuses_a_run_of_another_map(toy_build, tmp_path, capsys):
    out, _ = toy_build
    assert main(["dataset", "collect", "--map", "2s3z", "--quality", "expert", "--run",
                 str(out / "source-run"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "trained on map 3m, not 2s3z" in capsys.readouterr().err


def test_a_missing_or_foreign_file_is_named(dataset, capsys):
    victim = _largest_data_file(dataset)
    victim.unlink()
    assert main(["dataset", "verify", str(dataset)]) == 2
    assert f"{victim} is missing" in capsys.readouterr().err
    (dataset / "stray.bin").write_bytes(b"x")
    victim.write_bytes(b"")
    assert main(["dataset", "verify", str(dataset)]) == 2
    assert "stray.bin is not in the manifest" in capsys.readouterr().err


def test_a_dataset_gets_the_permissions_of_a_plain_folder(dataset):
    from ovmse.runs import current_umask

    assert dataset.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    assert (dataset / "dataset.json").stat().st_mode & 0o777 == 0o666 & ~current_umask()
