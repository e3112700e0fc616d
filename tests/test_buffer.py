import jax
import jax.numpy as jnp
import numpy as np

from ovmse.buffers.episode import add_episodes, empty_batch, init_buffer, sample_episodes
from ovmse.envs import EnvSpec

SPEC = EnvSpec("toy", num_agents=2, obs_dim=3, state_dim=4, num_actions=5, episode_limit=6)


def _episodes(first_id: int, count: int, length: int = 4):
    """`count` episodes whose observations all equal their id; `length` real steps each."""
    batch = empty_batch(SPEC, count)
    ids = jnp.arange(first_id, first_id + count, dtype=jnp.float32)
    filled = jnp.broadcast_to((jnp.arange(SPEC.episode_limit) < length)[:, None],
                              batch.filled.shape)
    return batch._replace(obs=batch.obs + ids[None, :, None, None],
                          rewards=jnp.where(filled, 1.0, 0.0), filled=filled)


def test_added_episodes_come_back_whole_with_their_masks():
    buffer = add_episodes(init_buffer(SPEC, 8), _episodes(0, 3, length=4))
    assert int(buffer.size) == 3
    sample = sample_episodes(buffer, jax.random.PRNGKey(0), 64)
    ids = np.asarray(sample.obs[0, :, 0, 0])
    assert set(ids.astype(int)) == {0, 1, 2}
    # every sampled episode is one episode throughout: same id at every step and agent
    np.testing.assert_array_equal(np.asarray(sample.obs), ids[None, :, None, None]
                                  * np.ones(sample.obs.shape))
    np.testing.assert_array_equal(np.asarray(sample.filled.sum(0)), 4)
    np.testing.assert_array_equal(np.asarray(sample.episode_returns()), 4.0)


def test_ring_overwrites_oldest_episodes_first():
    buffer = init_buffer(SPEC, 4)
    for first in (0, 3, 6):
        buffer = add_episodes(buffer, _episodes(first, 3))
    assert int(buffer.size) == 4 and int(buffer.insert_pos) == 1
    stored = sorted(np.asarray(buffer.data.obs[0, :, 0, 0]).astype(int))
    assert stored == [5, 6, 7, 8]


def test_disabled_add_changes_nothing():
    buffer = add_episodes(init_buffer(SPEC, 4), _episodes(0, 2))
    same = add_episodes(buffer, _episodes(10, 2), enabled=jnp.array(False))
    for a, b in zip(jax.tree.leaves(buffer), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)


def test_sampling_only_reaches_stored_episodes():
    buffer = add_episodes(init_buffer(SPEC, 100), _episodes(1, 2))
    sample = sample_episodes(buffer, jax.random.PRNGKey(1), 500)
    assert set(np.asarray(sample.obs[0, :, 0, 0]).astype(int)) == {1, 2}


def test_episode_summaries():
    batch = _episodes(0, 2, length=3)
    won = batch.won.at[2, 1].set(True)
    batch = batch._replace(won=won)
    np.testing.assert_array_equal(batch.episode_lengths(), [3, 3])
    np.testing.assert_array_equal(batch.episode_won(), [False, True])
