import numpy as np
import pytest

from ovmse.buffers.episode import EpisodeBatch
from ovmse.datasets.layout import episode_bounds, episodes_to_rows, rows_to_episodes

LIMIT, N, O, S, A = 6, 2, 3, 4, 5


def _batch(lengths, seed=0):
    """A random padded batch with the given episode lengths; padding zero as the runner makes it,
    the final observation at index L."""
    rng = np.random.default_rng(seed)
    e = len(lengths)
    steps = np.arange(LIMIT)[:, None]
    filled = steps < np.asarray(lengths)[None]
    obs_rows = np.arange(LIMIT + 1)[:, None] <= np.asarray(lengths)[None]
    ended = steps == np.asarray(lengths)[None] - 1
    terminated = ended & (np.arange(e) % 2 == 0)[None]
    return EpisodeBatch(
        obs=np.where(obs_rows[..., None, None], rng.normal(size=(LIMIT + 1, e, N, O)), 0
                     ).astype(np.float32),
        state=np.where(obs_rows[..., None], rng.normal(size=(LIMIT + 1, e, S)), 0
                       ).astype(np.float32),
        avail=(rng.random((LIMIT + 1, e, N, A)) < 0.6) & obs_rows[..., None, None],
        actions=np.where(filled[..., None], rng.integers(0, A, (LIMIT, e, N)), 0).astype(np.int32),
        rewards=np.where(filled, rng.random((LIMIT, e)), 0).astype(np.float32),
        terminated=terminated, truncated=ended & ~terminated,
        won=terminated & (np.arange(e) % 4 == 0)[None], filled=filled)


def test_rows_round_trip_to_identical_episodes():
    batch = _batch([6, 1, 3, 4])
    back = rows_to_episodes(episodes_to_rows(batch), LIMIT)
    for name, a, b in zip(batch._fields, batch, back):
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype, name


def test_each_episode_takes_its_length_plus_one_rows_with_og_marl_shapes():
    rows = episodes_to_rows(_batch([2, 3]))
    assert rows["observations"].shape == (7, N, O)
    assert rows["rewards"].shape == (7, N) and rows["terminals"].shape == (7, N)
    assert rows["infos.legals"].shape == (7, N, A) and rows["infos.state"].shape == (7, S)
    np.testing.assert_array_equal(rows["infos.filled"], [1, 1, 0, 1, 1, 1, 0])
    starts, lengths = episode_bounds(rows["infos.filled"])
    assert starts.tolist() == [0, 3] and lengths.tolist() == [2, 3]
    # the team reward is copied to every agent, as in OG-MARL
    np.testing.assert_array_equal(rows["rewards"][:, 0], rows["rewards"][:, 1])


def test_final_row_holds_the_final_observation_and_nothing_else():
    batch = _batch([2])
    rows = episodes_to_rows(batch)
    np.testing.assert_array_equal(rows["observations"][2], batch.obs[2, 0])
    np.testing.assert_array_equal(rows["infos.state"][2], batch.state[2, 0])
    assert rows["actions"][2].sum() == 0 and rows["rewards"][2].sum() == 0
    assert not rows["terminals"][2].any() and not rows["truncations"][2].any()


def test_rows_that_do_not_close_an_episode_are_refused():
    rows = episodes_to_rows(_batch([2, 3]))
    cut = {k: v[:-1] for k, v in rows.items()}
    with pytest.raises(ValueError, match="final row"):
        rows_to_episodes(cut, LIMIT)
    with pytest.raises(ValueError, match="outside"):
        rows_to_episodes(rows, 2)
