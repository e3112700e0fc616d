"""Figures from metrics records (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path) -> None:
    """Lay out, write atomically (PNG), close."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def plot_panels(panels: list[dict], path: Path, title: str = "") -> None:
    """One row of panels, each with one line per method.
    panels: [{"title", "ylabel", "lines": {method: (steps [K], values [K])}, optional
    "hline": (value, label), optional "ylim": (low, high)}]."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method, (steps, values) in panel["lines"].items():
            ax.plot(steps, values, lw=1.8, label=method)
        if panel.get("hline"):
            value, label = panel["hline"]
            ax.axhline(value, ls="--", color="black", lw=1, label=label)
        ax.set(xlabel="env steps", ylabel=panel["ylabel"], title=panel["title"])
        if panel.get("ylim"):
            ax.set_ylim(*panel["ylim"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def curves_by_seed(records: list[dict], key: str,
                   x: str = "t_env") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{seed: (steps [K], values [K])} from metrics records, in step order; steps are the
    records' `x` (env steps, or gradient steps offline)."""
    by_seed: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r.get(key) is not None:
            by_seed[r["seed"]].append((r[x], r[key]))
    return {s: tuple(np.array(v) for v in zip(*sorted(pts))) for s, pts in by_seed.items()}


def median_curve(records: list[dict], key: str,
                 x: str = "t_env") -> tuple[np.ndarray, np.ndarray]:
    """Median over seeds at each log point (log points are aligned by their `chunk` index; the
    step is the median of the seeds' `x` there)."""
    by_chunk: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r.get(key) is not None:
            by_chunk[r["chunk"]].append((r[x], r[key]))
    chunks = sorted(by_chunk)
    steps = np.array([np.median([t for t, _ in by_chunk[c]]) for c in chunks])
    values = np.array([np.median([v for _, v in by_chunk[c]]) for c in chunks])
    return steps, values


def plot_learning_curve(records: list[dict], path: Path, title: str, x: str = "t_env",
                        x_label: str = "env steps",
                        references: dict[str, tuple[float, str]] | None = None) -> None:
    """Test win rate and test return vs steps (`x`): each seed thin, the median bold;
    `references` {metric key: (value, label)} draws a dashed horizontal line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "test_win_rate", "test win rate"),
                           (axes[1], "test_return", "test return (SMAC scale)")):
        for seed, (steps, values) in sorted(curves_by_seed(records, key, x).items()):
            ax.plot(steps, values, lw=0.8, alpha=0.5, label=f"seed {seed}")
        steps, values = median_curve(records, key, x)
        ax.plot(steps, values, lw=2.2, color="black", label="median")
        if references and key in references:
            value, label = references[key]
            ax.axhline(value, ls="--", color="tab:red", lw=1.2, label=label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_finetune_curves(curves: dict[str, dict], offline_win: float, title: str,
                         path: Path) -> None:
    """Two panels: median test win rate vs env steps per method, with the offline policy's win
    rate dashed, and the unlearning probe (mean Q_tot on the offline policy's episodes).
    curves: {method: {"t_env": [K], "median_win_rate": [K], "probe_t_env": [K'],
    "median_probe_q": [K']}} (K' = 0 for a run without a probe)."""
    wins = {method: (c["t_env"], c["median_win_rate"]) for method, c in curves.items()}
    probes = {method: (c["probe_t_env"], c["median_probe_q"]) for method, c in curves.items()
              if len(c["median_probe_q"])}
    plot_panels([dict(title=title, ylabel="median test win rate", lines=wins,
                      hline=(offline_win, "offline policy"), ylim=(-0.02, 1.02)),
                 dict(title="unlearning probe (paper Fig. 1)", lines=probes,
                      ylabel="mean Q_tot on offline-policy episodes")], path)


def finetune_curves(records: list[dict]) -> dict:
    """The median curves `plot_finetune_curves` draws, from one run's metrics records."""
    steps, wins = median_curve(records, "test_win_rate")
    probe_steps, probe = median_curve(records, "probe_q")
    return dict(t_env=steps.tolist(), median_win_rate=wins.tolist(),
                probe_t_env=probe_steps.tolist(), median_probe_q=probe.tolist())
