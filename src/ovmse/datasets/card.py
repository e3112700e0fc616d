"""The dataset card printed by `ovmse dataset info`: what is in a dataset and how it was made."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovmse.errors import UserError

HISTOGRAM_BINS = 10
BAR_WIDTH = 40


def return_histogram(returns: np.ndarray, low: float = 0.0, high: float = 20.0) -> list[str]:
    """Text histogram of episode returns over [low, high] (SMAC scale), one line per bin."""
    high = max(high, float(np.max(returns, initial=high)))
    counts, edges = np.histogram(returns, bins=HISTOGRAM_BINS, range=(low, high))
    peak = max(int(counts.max()), 1)
    return [f"  [{edges[i]:5.1f}, {edges[i + 1]:5.1f}{']' if i == len(counts) - 1 else ')'} "
            f"{'#' * round(BAR_WIDTH * c / peak):<{BAR_WIDTH}} {c}"
            for i, c in enumerate(counts)]


def dataset_card(meta: dict, path: str = "") -> str:
    returns = np.asarray(meta["episode_returns"], float)
    lengths = np.asarray(meta["episode_lengths"], int)
    won = np.asarray(meta["episode_won"], bool)
    spec = meta["spec"]
    prov = meta.get("provenance", {})
    reward_scale = spec.get("reward_scale", 10.0)  # files from before it was recorded: 10
    scale = "SMAC scale, 0-20" if reward_scale == 10 else f"SMAX reward x {reward_scale:g}"
    lines = [
        f"dataset {path}".rstrip(),
        f"  map {meta['map']} ({spec['num_agents']} agents, obs {spec['obs_dim']}, state "
        f"{spec['state_dim']}, actions {spec['num_actions']}, limit {spec['episode_limit']}, "
        f"reward scale {reward_scale:g}), quality {meta['quality']}, "
        f"jaxmarl {meta['jaxmarl_version']}",
        f"  episodes {meta['episodes']}, transitions {meta['transitions']}",
        f"  return    mean {returns.mean():.2f}  std {returns.std():.2f}  min {returns.min():.2f}"
        f"  max {returns.max():.2f}   ({scale})",
        f"  win rate  {won.mean():.3f}",
        f"  length    mean {lengths.mean():.1f}  min {lengths.min()}  max {lengths.max()}",
        "  made by   " + ", ".join(f"{k}={v}" for k, v in sorted(prov.items())
                                   if not isinstance(v, (dict, list))),
        "  return histogram:",
        *return_histogram(returns),
    ]
    return "\n".join(lines)


def mean_return_to_go(path: Path, gamma: float) -> tuple[float, float]:
    """The dataset's discounted return-to-go (team reward, SMAC scale) averaged over its real
    steps, and over its first steps: what a calibrated Q_tot of the data's actions is near."""
    from ovmse.cql import returns_to_go
    from ovmse.datasets.store import load_dataset

    if not 0.0 < gamma <= 1.0:
        raise UserError(f"gamma must be in (0, 1], got {gamma}")
    episodes, _ = load_dataset(path)
    returns = np.asarray(returns_to_go(episodes.rewards, episodes.filled, gamma))
    return float(returns[np.asarray(episodes.filled)].mean()), float(returns[0].mean())
