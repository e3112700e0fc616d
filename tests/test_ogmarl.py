"""OG-MARL interop: an ovmse dataset exported to OG-MARL's Vault layout and imported back has
the same transitions and verifies; a Vault written in OG-MARL's layout by hand imports; a Vault
of another map or without OG-MARL's keys is refused in one line."""

import json
import shutil

import numpy as np
import pytest
from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
from flashbax.vault import Vault

from ovmse.cli import main
from ovmse.datasets.locate import SHIPPED
from ovmse.datasets.ogmarl import OG_MARL_FIELDS, export_og_marl, import_og_marl
from ovmse.datasets.store import load_dataset, read_rows, read_vault, verify_dataset
from ovmse.envs import EnvSpec
from ovmse.errors import UserError

MEDIUM = SHIPPED / "3m" / "medium"
SPEC_3M = EnvSpec("3m", num_agents=3, obs_dim=75, state_dim=72, num_actions=8,
                  episode_limit=100)


def _transitions(path):
    meta = verify_dataset(path)
    rows = read_rows(path, meta)
    filled = rows["infos.filled"]
    return {k: v[filled] for k, v in rows.items() if k != "infos.filled"}, meta


def test_export_then_import_keeps_every_transition(tmp_path):
    assert main(["dataset", "export", "3m/medium", "--out", str(tmp_path / "3m.vlt")]) == 0
    assert main(["dataset", "import", str(tmp_path / "3m.vlt"), "--map", "3m", "--out",
                 str(tmp_path / "back")]) == 0
    assert main(["dataset", "verify", str(tmp_path / "back")]) == 0
    before, meta = _transitions(MEDIUM)
    after, back = _transitions(tmp_path / "back")
    assert set(before) == set(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert back["episode_lengths"] == meta["episode_lengths"]
    assert back["episode_returns"] == meta["episode_returns"]
    assert back["quality"] == "medium" and back["provenance"]["won_recorded"] is True


def test_the_exported_vault_has_og_marl_keys_one_row_per_transition_and_the_card(tmp_path):
    done = export_og_marl(MEDIUM, tmp_path / "3m.vlt")
    rows = read_vault(tmp_path / "3m.vlt", "medium")
    assert set(rows) == set(OG_MARL_FIELDS) | {"infos.won"}
    _, meta = _transitions(MEDIUM)
    assert done["rows"] == len(rows["actions"]) == meta["transitions"]
    ends = np.flatnonzero(rows["terminals"][:, 0])       # every episode ends on a terminal
    assert (np.diff(np.concatenate([[-1], ends])) == meta["episode_lengths"]).all()
    vault_meta = json.loads((tmp_path / "3m.vlt" / "medium" / "metadata.json").read_text())
    assert vault_meta["ovmse_dataset_card"]["episodes"] == 300
    with pytest.raises(UserError, match="already exists"):
        export_og_marl(MEDIUM, tmp_path / "3m.vlt")


def _og_marl_vault(folder, uid, spec, lengths, tail, truncated_last=True):
    """A Vault as OG-MARL writes one: transition rows only, terminals per agent, no won."""
    rng = np.random.default_rng(0)
    rows = sum(lengths) + tail
    n, o, s, a = spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros((rows, n), bool)
    truncations = np.zeros((rows, n), bool)
    terminals[ends[:-1]] = True
    (truncations if truncated_last else terminals)[ends[-1]] = True
    experience = dict(
        observations=rng.normal(size=(1, rows, n, o)).astype(np.float32),
        actions=rng.integers(0, a, (1, rows, n)).astype(np.int32),
        rewards=np.repeat(rng.random((1, rows, 1)), n, axis=2).astype(np.float32),
        terminals=terminals[None], truncations=truncations[None],
        infos=dict(legals=np.ones((1, rows, n, a), bool),
                   state=rng.normal(size=(1, rows, s)).astype(np.float32)))
    state = TrajectoryBufferState(experience=experience, current_index=np.int32(rows),
                                  is_full=np.bool_(False))
    vault = Vault(folder.name, experience_structure=experience, rel_dir=str(folder.parent),
                  vault_uid=uid)
    vault.write(state, source_interval=(0, rows), dest_start=0)
    return experience


def test_a_vault_in_og_marl_layout_imports_split_at_terminals_and_truncations(tmp_path,
                                                                               monkeypatch):
    raw = _og_marl_vault(tmp_path / "3m.vlt", "Medium", SPEC_3M, lengths=[4, 6, 3], tail=2)
    meta, left_out = import_og_marl(tmp_path / "3m.vlt", SPEC_3M, tmp_path / "data")
    monkeypatch.chdir(tmp_path)              # the CLI's default --out: datasets-build/<map>/<uid>
    assert main(["dataset", "import", "3m.vlt", "--map", "3m"]) == 0
    assert (tmp_path / "datasets-build" / "3m" / "medium" / "dataset.json").is_file()
    assert left_out == 2 and meta["quality"] == "medium"
    assert meta["episode_lengths"] == [4, 6, 3] and meta["win_rate"] == 0.0
    assert meta["provenance"]["won_recorded"] is False
    batch, _ = load_dataset(tmp_path / "data", SPEC_3M)
    assert batch.terminated[:, :2].sum() == 2 and batch.truncated[2, 2]   # last one cut by time
    assert not batch.terminated[:, 2].any()
    np.testing.assert_array_equal(batch.obs[:4, 0], raw["observations"][0, :4])
    np.testing.assert_array_equal(batch.obs[3, 2], batch.obs[2, 2])   # final row: last repeated
    np.testing.assert_allclose(batch.episode_returns(),
                               [raw["rewards"][0, b:e, 0].sum() for b, e in
                                [(0, 4), (4, 10), (10, 13)]], rtol=1e-6)


def test_a_vault_of_another_map_or_without_og_marl_keys_is_refused_in_one_line(tmp_path,
                                                                               capsys):
    _og_marl_vault(tmp_path / "2s3z.vlt", "Good", EnvSpec("2s3z", 5, 127, 120, 10, 100),
                   lengths=[3], tail=0)
    assert main(["dataset", "import", str(tmp_path / "2s3z.vlt"), "--map", "3m", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "holds agents 5, obs 127, state 120, actions 10; SMAX map 3m has agents 3" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="holds the Vault uids Good; not 'Poor'"):
        import_og_marl(tmp_path / "2s3z.vlt", SPEC_3M, tmp_path / "y", uid="Poor")
    with pytest.raises(UserError, match="no Vault at"):
        import_og_marl(tmp_path / "none", SPEC_3M, tmp_path / "y")
    with pytest.raises(UserError, match=r"is one uid of a Vault; give the folder above it"):
        import_og_marl(tmp_path / "2s3z.vlt" / "Good", SPEC_3M, tmp_path / "y")
    export_og_marl(MEDIUM, tmp_path / "ours")
    shutil.rmtree(tmp_path / "ours" / "medium" / "d")     # a Vault whose data is gone
    with pytest.raises(UserError, match="cannot read the Vault|lacks the OG-MARL keys"):
        import_og_marl(tmp_path / "ours", SPEC_3M, tmp_path / "z")
