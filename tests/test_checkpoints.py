"""Checkpoint files (runs.py): the compact storage of large leaves is exact for any content, much
smaller for a padded replay buffer, reads version-1 files, reads only the leaves asked for, and
turns damage into a UserError."""

import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from ovmse import runs
from ovmse.errors import UserError
from ovmse.runs import load_checkpoint, read_checkpoint_meta, save_checkpoint


def buffer_like(rng, seeds=2, limit=40, capacity=300, agents=3, obs_dim=20, used=120,
                dense=False) -> dict:
    """A time-major padded episode buffer ([S, T(+1), B, ...]) whose first `used` slots hold
    episodes of random lengths (random content, zeros after each episode's end), with networks
    beside it; dense=True fills every step of every slot."""
    shape = (seeds, limit + 1, capacity)
    lengths = rng.integers(1, limit + 1, size=(seeds, capacity))
    lengths[:, used:] = 0
    if dense:
        lengths[:] = limit + 1
    live = np.arange(limit + 1)[None, :, None] < lengths[:, None, :]  # [S, T+1, B]
    def padded(x, mask):  # zeros (not -0.0) after each episode's end
        return np.where(mask, x, 0).astype(x.dtype)

    obs = padded(rng.normal(size=shape + (agents, obs_dim)).astype(np.float32),
                 live[..., None, None])
    obs[:, :, :, 1, :5] = 0.0  # zero runs inside live rows, as a dead agent's observation
    return dict(
        buffer=dict(obs=obs,
                    state=padded(rng.normal(size=shape + (agents * 7,)).astype(np.float32),
                                 live[..., None]),
                    avail=(rng.random(shape + (agents, 9)) < 0.7) & live[..., None, None],
                    actions=padded(rng.integers(1, 9, shape + (agents,), np.int32),
                                   live[..., None]),
                    rewards=padded(rng.normal(size=shape).astype(np.float32), live),
                    filled=live.copy(),
                    insert_pos=np.full(seeds, used, np.int32)),
        learner=dict(params=dict(w=rng.normal(size=(seeds, 16, 8)).astype(np.float32),
                                 b=np.zeros((seeds, 8), np.float32)),
                     updates=np.arange(seeds, dtype=np.int32)),
        rng=rng.integers(0, 2**32, size=(seeds, 2), dtype=np.uint32),
    )


def assert_bit_equal(want, got) -> None:
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    assert want_def == got_def
    for a, b in zip(want_leaves, got_leaves):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def round_trip(tree, path: Path):
    save_checkpoint(path, tree, dict(kind="test"))
    loaded, meta = load_checkpoint(path, tree)
    assert_bit_equal(tree, loaded)
    return meta


def storages(meta) -> dict:
    return {leaf["path"]: leaf["storage"] for leaf in meta["leaves"]}


def save_version_1(path: Path, tree, meta: dict, version: int = 1) -> None:
    """save_checkpoint as version 1 wrote it (every leaf a plain .npy member of np.savez)."""
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, (_, leaf) in enumerate(leaves_with_paths)}
    meta = dict(meta, format=runs.CHECKPOINT_FORMAT, format_version=version,
                leaves=[{"path": jax.tree_util.keystr(p), "shape": list(np.shape(leaf)),
                         "dtype": str(np.asarray(leaf).dtype)}
                        for p, leaf in leaves_with_paths])
    arrays["meta"] = np.frombuffer(runs.json_text(meta, indent=None).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("chunk_blocks", [runs._CHUNK_BLOCKS, 1000, 7])
def test_sparse_buffer_round_trip_is_bit_exact(tmp_path, monkeypatch, chunk_blocks):
    monkeypatch.setattr(runs, "_CHUNK_BLOCKS", chunk_blocks)
    rng = np.random.default_rng(0)
    tree = buffer_like(rng)
    obs = tree["buffer"]["obs"]
    obs[1, 3, 7, 2, 4] = -0.0  # sign bit only
    obs.view(np.uint32)[0, 40, 299, 0, 19] = 0x7FC0_1234  # a NaN with a payload, in padding
    obs.view(np.uint32)[1, 0, 200, 2, 0] = 0xFFFF_FFFF  # another NaN, in an unused slot
    obs[-1, -1, -1, -1, -1] = np.float32(1e-45)  # a denormal, the array's last element
    meta = round_trip(tree, tmp_path / "sparse.npz")
    kinds = storages(meta)
    assert kinds["['buffer']['obs']"] == kinds["['buffer']['state']"] == "nonzero-blocks"
    assert kinds["['learner']['params']['w']"] == kinds["['rng']"] == "npy"
    assert meta["format_version"] == runs.CHECKPOINT_VERSION == 2


def test_odd_sizes_and_every_dtype_round_trip(tmp_path, monkeypatch):
    """Every leaf compact (threshold 0): 0-d, empty, sizes that are not a multiple of the block,
    bools, ints, unsigned, float64."""
    monkeypatch.setattr(runs, "_COMPACT_MIN_BYTES", 0)
    monkeypatch.setattr(runs, "_CHUNK_BLOCKS", 3)
    rng = np.random.default_rng(1)
    tree = dict(scalar=np.float32(-0.0), empty=np.zeros((0, 5), np.float32),
                odd=rng.normal(size=(7, 13)).astype(np.float64),
                ones=np.ones(1001, np.int8), flags=rng.random(777) < 0.1,
                keys=rng.integers(0, 2**32, size=(3, 2), dtype=np.uint32),
                zeros=np.zeros(4096 + 3, np.int32))
    meta = round_trip(tree, tmp_path / "odd.npz")
    assert set(storages(meta).values()) == {"nonzero-blocks"}


def test_all_zero_buffer_stores_no_block(tmp_path):
    tree = buffer_like(np.random.default_rng(2), used=0)
    meta = round_trip(tree, tmp_path / "empty.npz")
    compact = [leaf for leaf in meta["leaves"] if leaf["storage"] == "nonzero-blocks"]
    assert compact and all(leaf["stored_blocks"] == 0 for leaf in compact)
    dense = sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
    assert (tmp_path / "empty.npz").stat().st_size < dense / 20


def test_full_dense_buffer_round_trips(tmp_path):
    tree = buffer_like(np.random.default_rng(3), dense=True)
    assert np.all(tree["buffer"]["filled"])
    meta = round_trip(tree, tmp_path / "dense.npz")
    obs = next(leaf for leaf in meta["leaves"] if leaf["path"] == "['buffer']['obs']")
    assert obs["storage"] == "nonzero-blocks"
    assert obs["stored_blocks"] == tree["buffer"]["obs"].nbytes // runs._BLOCK_BYTES


def test_compact_file_is_much_smaller_than_the_dense_one(tmp_path):
    tree = buffer_like(np.random.default_rng(4), used=30)
    save_checkpoint(tmp_path / "new.npz", tree, dict(kind="test"))
    save_version_1(tmp_path / "old.npz", tree, dict(kind="test"))
    new, old = (tmp_path / "new.npz").stat().st_size, (tmp_path / "old.npz").stat().st_size
    assert old > 5_000_000 and new < old / 10


def test_version_1_file_still_loads(tmp_path):
    tree = buffer_like(np.random.default_rng(5))
    save_version_1(tmp_path / "v1.npz", tree, dict(kind="old", chunk=3))
    meta = read_checkpoint_meta(tmp_path / "v1.npz")
    assert meta["format_version"] == 1 and meta["chunk"] == 3
    loaded, _ = load_checkpoint(tmp_path / "v1.npz", tree)
    assert_bit_equal(tree, loaded)
    params, _ = load_checkpoint(tmp_path / "v1.npz", tree["learner"], prefix="['learner']")
    assert_bit_equal(tree["learner"], params)


def test_unknown_version_is_refused(tmp_path):
    tree = dict(x=np.zeros(3, np.float32))
    save_version_1(tmp_path / "v1.npz", tree, {}, version=99)
    with pytest.raises(UserError, match="format version 99"):
        read_checkpoint_meta(tmp_path / "v1.npz")


def test_networks_load_without_reading_the_buffer(tmp_path, monkeypatch):
    tree = buffer_like(np.random.default_rng(6))
    save_checkpoint(tmp_path / "c.npz", tree, dict(kind="test"))

    def refuse(*args):
        raise AssertionError("a buffer leaf was decoded")

    monkeypatch.setattr(runs, "_read_nonzero_blocks", refuse)
    learner, meta = load_checkpoint(tmp_path / "c.npz", tree["learner"], prefix="['learner']")
    assert_bit_equal(tree["learner"], learner)
    w, _ = load_checkpoint(tmp_path / "c.npz", tree["learner"]["params"]["w"],
                           prefix="['learner']['params']['w']")
    assert w.tobytes() == tree["learner"]["params"]["w"].tobytes()
    with pytest.raises(UserError, match="holds 3 arrays under \\['learner'\\]"):
        load_checkpoint(tmp_path / "c.npz", tree["learner"]["params"], prefix="['learner']")
    with pytest.raises(AssertionError, match="decoded"):
        load_checkpoint(tmp_path / "c.npz", tree)


def _obs_stem(path: Path) -> str:
    meta = read_checkpoint_meta(path)
    index = [leaf["path"] for leaf in meta["leaves"]].index("['buffer']['obs']")
    return f"leaf_{index:05d}"


def _member_span(path: Path, name: str) -> tuple[int, int]:
    """Byte offsets of a zip member's data in the file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    return start, start + info.compress_size


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_damaged_compact_data_is_a_user_error(tmp_path, where):
    tree = buffer_like(np.random.default_rng(7))
    path = tmp_path / "c.npz"
    save_checkpoint(path, tree, dict(kind="test"))
    start, end = _member_span(path, f"{_obs_stem(path)}_blocks.zlib")
    data = bytearray(path.read_bytes())
    data[start + int((end - start) * where)] ^= 0x5A
    path.write_bytes(bytes(data))
    read_checkpoint_meta(path)  # the meta is intact
    with pytest.raises(UserError, match="is damaged"):
        load_checkpoint(path, tree)


def test_inconsistent_block_index_is_a_user_error(tmp_path):
    """A mask that disagrees with the stored blocks (e.g. a file patched by hand)."""
    tree = buffer_like(np.random.default_rng(8))
    path, patched = tmp_path / "c.npz", tmp_path / "patched.npz"
    save_checkpoint(path, tree, dict(kind="test"))
    mask = f"{_obs_stem(path)}_mask.npy"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == mask:
                bits = np.load(src.open(info))
                bits[0] ^= 0xFF
                with dst.open(mask, "w") as f:
                    np.lib.format.write_array(f, bits)
            else:
                dst.writestr(info, data)
    with pytest.raises(UserError, match="is damaged"):
        load_checkpoint(patched, tree)


def test_truncated_compact_file_is_a_user_error(tmp_path):
    tree = buffer_like(np.random.default_rng(9))
    path = tmp_path / "c.npz"
    save_checkpoint(path, tree, dict(kind="test"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(path, tree)


def test_equal_trees_give_equal_files(tmp_path):
    tree = buffer_like(np.random.default_rng(10))
    save_checkpoint(tmp_path / "a.npz", tree, dict(kind="test"))
    save_checkpoint(tmp_path / "b.npz", tree, dict(kind="test"))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_training_state_round_trips_with_every_leaf_compact(tmp_path, monkeypatch):
    """The online TrainState's structure (NamedTuples, PRNG keys, counters, the buffer), every
    leaf compact and filled with arbitrary bytes (zero spans among them), loads back bit for bit;
    its networks load alone by key path. (tests/test_train.py resumes a run whose observations
    and states are stored compactly at the default threshold.)"""
    from conftest import tiny_train_config
    from ovmse.train.online import OnlineTrainer

    monkeypatch.setattr(runs, "_COMPACT_MIN_BYTES", 0)
    trainer = OnlineTrainer(tiny_train_config(num_seeds=2))
    template = jax.eval_shape(trainer.init, trainer.seed_keys())
    rng = np.random.default_rng(11)

    def arbitrary(leaf):
        dtype = np.dtype(leaf.dtype)
        raw = rng.integers(0, 256, size=int(np.prod(leaf.shape)) * dtype.itemsize, dtype=np.uint8)
        for start in rng.integers(0, max(raw.size, 1), size=8):
            raw[start:start + int(rng.integers(1, 5000))] = 0
        if dtype == np.bool_:
            raw &= 1
        return raw.view(dtype).reshape(leaf.shape)

    state = jax.tree.map(arbitrary, template)
    meta = round_trip(state, tmp_path / "state.npz")
    assert {leaf["storage"] for leaf in meta["leaves"]} == {"nonzero-blocks"}
    assert any(leaf["path"].startswith(".buffer.data.obs") for leaf in meta["leaves"])
    learner, _ = load_checkpoint(tmp_path / "state.npz", template.learner, prefix=".learner")
    assert_bit_equal(state.learner, learner)
