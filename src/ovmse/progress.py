"""The drivers' progress display on stderr: a bar that says it is compiling until the first
chunk is done and ends at its total, and a line before the final test."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, initial: int, unit: str, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar over `total` units starting at `initial`; until its first update it shows
    that the first chunk's programs are compiling (tens of seconds on a CPU the first time)."""
    bar = tqdm(total=total, initial=initial, unit=unit, disable=not enabled, file=sys.stderr,
               dynamic_ncols=True, desc=desc)
    bar.set_postfix_str("compiling the first chunk ...")
    return bar


def advance(bar: tqdm, to: int) -> None:
    """Move the bar to `to` units, never past its total (a chunk's env steps overshoot it by
    the episodes in flight); the "compiling" note goes."""
    bar.set_postfix_str("", refresh=False)
    bar.update(min(to, bar.total) - bar.n)


def announce_final_test(enabled: bool, episodes: int, seeds: int) -> None:
    """Say what the silent final test is doing."""
    if enabled:
        print(f"final test: {episodes} greedy episodes per seed x {seeds} seed(s) ...",
              file=sys.stderr, flush=True)
