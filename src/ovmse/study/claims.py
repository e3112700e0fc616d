"""Claims: which runner is running which cell, so that two `ovmse experiment run` processes on
one study never run a cell at the same time (and never write one run folder from two places).

A claim is the file <work_dir>/.claims/<cell name>-<cell key>.claim, JSON {token, host, pid,
started}; its modification time is its heartbeat, refreshed every `HEARTBEAT_S` seconds by a
thread of the process that holds it. It lives beside the cells' run folders, which are what two
runs of one cell would damage (runners that share a study share its work folder: fine-tuning
cells read their pre-trained checkpoints from it), and not in the results folder, which is
committed and holds results only.

- Taking a claim creates the file complete in one step (a finished temporary file hard-linked
  to the claim's name, which fails if the name exists), so a reader never sees half of one.
- A claim is stale when its process is gone (same host, `os.kill(pid, 0)` finds no process) or
  its heartbeat is older than `STALE_AFTER_S`; a stale claim may be taken over, so a runner
  killed with kill -9, or on a machine that died, never leaves its cells stuck.
- A claim is ended (by its holder on release, or by a runner taking it over) by first creating
  <work_dir>/.claims/ended/<token> with O_CREAT|O_EXCL, then removing the claim file. Only one
  process can create that marker, so two runners taking over one stale claim at once cannot
  both succeed, and a late one never removes the newer claim that replaced it. Markers are
  pruned after `KEEP_ENDED_S`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ovmse.errors import UserError
from ovmse.runs import write_json
from ovmse.study.cells import Cell

STALE_AFTER_S = 300.0
"""A claim whose heartbeat is older than this is stale. Heartbeats on a shared filesystem are
compared with this machine's clock, so clocks must agree to well within this."""
HEARTBEAT_S = 30.0
"""How often the holder refreshes its claims' heartbeats."""
KEEP_ENDED_S = 86400.0
"""How long markers of ended claims are kept (a runner reading a claim and ending it later than
this after could remove a newer claim; reading and ending are microseconds apart)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, as read from its file."""

    token: str
    host: str
    pid: int
    started: float
    heartbeat: float
    """Seconds since the epoch of the claim file's last refresh (its modification time)."""

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.heartbeat
        return f"pid {self.pid} on {self.host}, heartbeat {age:.0f} s ago"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: Holder, now: float, stale_after_s: float = STALE_AFTER_S) -> bool:
    """True when the holder's process is gone from this host or its heartbeat is too old."""
    if holder.host == socket.gethostname() and not pid_alive(holder.pid):
        return True
    return now - holder.heartbeat > stale_after_s


def read_holder(path: Path) -> Holder | None:
    """The holder of the claim file `path`, or None when there is no such file. UserError when
    the file is damaged (claims are written complete, so only something else can do that)."""
    try:
        record = json.loads(Path(path).read_text())
        heartbeat = os.stat(path).st_mtime
        return Holder(record["token"], record["host"], int(record["pid"]), record["started"],
                      heartbeat)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"claim file {path} is damaged ({e!r}); delete it once no runner is "
                        f"running that cell") from None


class Claims:
    """The claims of one work folder taken by this process. Use as a context manager: on entry
    it starts the heartbeat thread, on exit (normal or by any exception) it stops it and
    releases every claim still held."""

    def __init__(self, work_dir: Path, stale_after_s: float = STALE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.dir = Path(work_dir) / ".claims"
        self.ended = self.dir / "ended"
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.held: dict[Path, str] = {}
        """Claim file -> token, for the claims this process holds."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, cell: Cell) -> Path:
        return self.dir / f"{cell.name}-{cell.key}.claim"

    def holder(self, cell: Cell) -> Holder | None:
        return read_holder(self.path(cell))

    def acquire(self, cell: Cell) -> bool:
        """Claim `cell` for this process. True when this process now holds it (a stale claim
        is ended first); False when a live claim holds it, including one of this process
        (claims are not re-entrant), or when other runners keep replacing it (three tries)."""
        path = self.path(cell)
        for _ in range(3):
            token = self._create(path)
            if token is not None:
                with self._lock:
                    self.held[path] = token
                return True
            holder = read_holder(path)
            if holder is not None:
                if not is_stale(holder, time.time(), self.stale_after_s):
                    return False
                self._end(path, holder.token)
        return False

    def release(self, cell: Cell) -> bool:
        """End this process's claim on `cell`. False when it held none, or when another runner
        took the claim over (this process looked dead to it: paused past `STALE_AFTER_S`)."""
        path = self.path(cell)
        with self._lock:
            token = self.held.pop(path, None)
        return token is not None and self._end(path, token)

    def refresh(self) -> None:
        """Refresh the heartbeat of every claim this process still holds."""
        with self._lock:
            held = dict(self.held)
        for path, token in held.items():
            holder = read_holder(path)
            if holder is not None and holder.token == token:
                os.utime(path)

    def __enter__(self) -> Claims:
        self._prune_ended()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="ovmse-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            held = dict(self.held)
            self.held.clear()
        for path, token in held.items():
            self._end(path, token)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except OSError:   # a filesystem hiccup; the next beat tries again
                pass

    def _create(self, path: Path) -> str | None:
        """Create the claim file `path` for this process, complete; its token, or None when
        `path` exists."""
        token = uuid.uuid4().hex
        tmp = self.dir / f".{token}.tmp"
        write_json(tmp, dict(token=token, host=socket.gethostname(), pid=os.getpid(),
                             started=time.time()))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            tmp.unlink()
        return token

    def _end(self, path: Path, token: str) -> bool:
        """Remove the claim `token` from `path`; False when another process ended it first.
        The claim at `path` can only have changed by being ended, which takes its marker, so
        the file removed here is the claim `token`."""
        self.ended.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.ended / token, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        path.unlink(missing_ok=True)
        return True

    def _prune_ended(self) -> None:
        if not self.ended.is_dir():
            return
        old = time.time() - KEEP_ENDED_S
        for marker in self.ended.iterdir():
            try:
                if marker.stat().st_mtime < old:
                    marker.unlink()
            except FileNotFoundError:   # pruned by another runner
                pass
