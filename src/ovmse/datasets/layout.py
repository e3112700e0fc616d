"""Padded episodes <-> the flat, OG-MARL-style row layout that datasets store.

A dataset stores its episodes one after another on a single time axis, with OG-MARL's field names
and shapes (flashbax Vault, leading axes [1, R]):
  observations [1, R, N, O] float32    o_t
  actions      [1, R, N]    int32      a_t
  rewards      [1, R, N]    float32    r_t, the team reward copied to every agent (OG-MARL)
  terminals    [1, R, N]    bool       the episode ended at t by a team's death
  truncations  [1, R, N]    bool       the episode ended at t by the step limit
  infos.legals [1, R, N, A] bool       available actions at t
  infos.state  [1, R, S]    float32    global state s_t
  infos.won    [1, R]       bool       the episode was won at t
  infos.filled [1, R]       bool       row t is a real transition
An episode of length L takes L + 1 rows: its L transitions (filled), then one row holding its
final observation, state and legal actions (not filled; action, reward and flags zero). That row
is what OG-MARL's layout lacks: QMIX bootstraps an episode cut by the step limit from it.
Unlike OG-MARL's SMAC datasets, a time-limit end is a truncation, not a terminal.
"""

from __future__ import annotations

import numpy as np

from ovmse.buffers.episode import EpisodeBatch

ROW_FIELDS = ("observations", "actions", "rewards", "terminals", "truncations", "infos.legals",
              "infos.state", "infos.won", "infos.filled")


def episodes_to_rows(batch: EpisodeBatch) -> dict[str, np.ndarray]:
    """Flatten a time-major padded batch ([T(+1), E, ...], numpy or jax) into rows [R, ...]
    (without the leading Vault axis), episodes in batch order."""
    b = EpisodeBatch(*(np.asarray(x) for x in batch))
    lengths = b.filled.sum(0).astype(np.int64)
    # (time, episode) of every stored row: steps 0..L of each episode, episode after episode
    episode_of_row = np.repeat(np.arange(len(lengths)), lengths + 1)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    time_of_row = np.arange(len(episode_of_row)) - starts[episode_of_row]
    final_row = time_of_row == lengths[episode_of_row]
    t_step = np.minimum(time_of_row, b.filled.shape[0] - 1)  # final rows read step fields at L-1

    def per_step(x):  # [T, E, ...] fields: zero on final rows
        values = x[t_step, episode_of_row]
        return np.where(final_row.reshape((-1,) + (1,) * (values.ndim - 1)),
                        np.zeros_like(values), values)

    num_agents = b.obs.shape[2]
    team = lambda x: np.repeat(per_step(x)[:, None], num_agents, axis=1)  # noqa: E731
    return {
        "observations": b.obs[time_of_row, episode_of_row].astype(np.float32),
        "actions": per_step(b.actions).astype(np.int32),
        "rewards": team(b.rewards).astype(np.float32),
        "terminals": team(b.terminated).astype(bool),
        "truncations": team(b.truncated).astype(bool),
        "infos.legals": b.avail[time_of_row, episode_of_row].astype(bool),
        "infos.state": b.state[time_of_row, episode_of_row].astype(np.float32),
        "infos.won": per_step(b.won).astype(bool),
        "infos.filled": ~final_row,
    }


def episode_bounds(filled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start row, length) of every episode from the rows' filled flags [R]: an episode is a run
    of filled rows closed by one unfilled (final) row."""
    final_rows = np.flatnonzero(~filled)
    starts = np.concatenate([[0], final_rows[:-1] + 1])
    return starts, final_rows - starts


def rows_to_episodes(rows: dict[str, np.ndarray], episode_limit: int) -> EpisodeBatch:
    """Inverse of episodes_to_rows: rows [R, ...] -> padded time-major batch [T(+1), E, ...]
    (numpy). Raises ValueError if the rows do not form whole episodes within the limit."""
    filled = rows["infos.filled"]
    if filled.size == 0 or filled[-1]:
        raise ValueError("the rows do not end with an episode's final row")
    starts, lengths = episode_bounds(filled)
    if lengths.min() < 1 or lengths.max() > episode_limit:
        raise ValueError(f"episode lengths {lengths.min()}..{lengths.max()} are outside "
                         f"1..{episode_limit}")
    episode_of_row = np.repeat(np.arange(len(lengths)), lengths + 1)
    time_of_row = np.arange(filled.size) - starts[episode_of_row]
    real = filled
    t, e = episode_limit, len(lengths)

    def padded(x, steps, rows_mask):
        out = np.zeros((steps, e) + x.shape[1:], x.dtype)
        out[time_of_row[rows_mask], episode_of_row[rows_mask]] = x[rows_mask]
        return out

    every = np.ones_like(filled)
    return EpisodeBatch(
        obs=padded(rows["observations"], t + 1, every),
        state=padded(rows["infos.state"], t + 1, every),
        avail=padded(rows["infos.legals"], t + 1, every),
        actions=padded(rows["actions"], t, real),
        rewards=padded(rows["rewards"][:, 0], t, real),
        terminated=padded(rows["terminals"][:, 0], t, real),
        truncated=padded(rows["truncations"][:, 0], t, real),
        won=padded(rows["infos.won"], t, real),
        filled=padded(filled, t, real),
    )
