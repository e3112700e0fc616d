"""Figures from metrics records (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

STEPS_FORMAT = EngFormatter(sep="")
"""Step-axis tick labels as 50k, 1.5M: plain integers run together at 200k steps and more."""


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
    "bands": {method: (steps [K], low [K], high [K])} shaded in the line's colour (e.g. the
    interquartile range over seeds), optional "hline": (value, label), optional "ylim": (low,
    high), optional "xlabel" (default "env steps")}]."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method, (steps, values) in panel["lines"].items():
            (line,) = ax.plot(steps, values, lw=1.8, label=method)
            if method in panel.get("bands", {}):
                ax.fill_between(*panel["bands"][method], color=line.get_color(), alpha=0.15,
                                lw=0)
        if panel.get("hline"):
            value, label = panel["hline"]
            ax.axhline(value, ls="--", color="black", lw=1, label=label)
        ax.set(xlabel=panel.get("xlabel", "env steps"), ylabel=panel["ylabel"],
               title=panel["title"])
        ax.xaxis.set_major_formatter(STEPS_FORMAT)
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
    points = _points_by_chunk(records, key, x)
    steps = np.array([np.median([t for t, _ in pts]) for pts in points])
    values = np.array([np.median([v for _, v in pts]) for pts in points])
    return steps, values


def seed_quantiles(records: list[dict], key: str, x: str = "t_env",
                   quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Steps [K] and the seeds' quantiles of `key` at each log point [len(quantiles), K]
    (aligned as median_curve; linear interpolation between seeds)."""
    points = _points_by_chunk(records, key, x)
    steps = np.array([np.median([t for t, _ in pts]) for pts in points])
    values = np.array([np.quantile([v for _, v in pts], quantiles) for pts in points])
    return steps, values.T.reshape(len(quantiles), len(points))


def _points_by_chunk(records: list[dict], key: str, x: str) -> list[list[tuple[int, float]]]:
    """[(x, value) of every seed] per log point that has `key`, in chunk order."""
    by_chunk: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r.get(key) is not None:
            by_chunk[r["chunk"]].append((r[x], r[key]))
    return [by_chunk[c] for c in sorted(by_chunk)]


LEARNING_PANELS = (("test_win_rate", "test win rate"), ("test_return", "test return (SMAC scale)"),
                   ("loss", "training loss"), ("cql", "CQL term"))
"""Metric panels of a learning curve, drawn when the records hold a nonzero value of it (the
win rate always)."""
SCHEDULES = (("epsilon", "epsilon"), ("lam", "lam (OVM memory weight)"))


def plot_learning_curve(records: list[dict], path: Path, title: str, x: str = "t_env",
                        x_label: str = "env steps",
                        references: dict[str, tuple[float, str]] | None = None) -> None:
    """The run's metrics vs steps (`x`), one panel each for those the records hold (not only
    as zeros): test win rate, test return, training loss, the CQL term (each seed thin, the median bold, the
    interquartile range over seeds shaded) and the schedules (epsilon, lam). `references`
    {metric key: (value, label)} draws a dashed horizontal line."""
    panels = [(k, label) for k, label in LEARNING_PANELS
              if k == "test_win_rate" or any(r.get(k) for r in records)]
    schedules = [(k, label) for k, label in SCHEDULES if any(k in r for r in records)]
    count = max(len(panels) + bool(schedules), 1)
    cols, rows = min(count, 3), -(-count // 3)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    axes = list(axes.flat)
    for ax, (key, label) in zip(axes, panels):
        for seed, (steps, values) in sorted(curves_by_seed(records, key, x).items()):
            ax.plot(steps, values, lw=0.8, alpha=0.5, label=f"seed {seed}")
        steps, (low, median, high) = seed_quantiles(records, key, x)
        ax.fill_between(steps, low, high, color="black", alpha=0.12, lw=0,
                        label="interquartile range")
        ax.plot(steps, median, lw=2.2, color="black", label="median")
        if references and key in references:
            value, ref_label = references[key]
            ax.axhline(value, ls="--", color="tab:red", lw=1.2, label=ref_label)
        ax.set(xlabel=x_label, ylabel=label)
        ax.xaxis.set_major_formatter(STEPS_FORMAT)
        ax.grid(alpha=0.3)
    if schedules:
        ax = axes[len(panels)]
        for key, label in schedules:
            ax.plot(*median_curve(records, key, x), lw=1.8, label=label)
        ax.set(xlabel=x_label, ylabel="schedule value", ylim=(-0.02, 1.02))
        ax.xaxis.set_major_formatter(STEPS_FORMAT)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[count:]:
        ax.set_visible(False)
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
