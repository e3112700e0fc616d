"""Kill -9 and --resume: does an interrupted run end exactly where an uninterrupted one does?

For each of `ovmse train`, `ovmse pretrain` and `ovmse finetune`, at a tiny size (2 seeds,
tiny networks, a checkpoint at every test interval), this script

  1. runs the program uninterrupted into folder A (a subprocess, --no-progress). `ovmse` keeps
     a persistent JAX compilation cache; by default (--cache scratch) the script gives its
     processes a new one in the scratch folder, so A compiles cold and every later process
     reads A's programs back. A second uninterrupted run, A-warm, then shows how long a run
     with a warm cache takes (the kill windows' reference: the script times it and notes when
     each of its checkpoints appeared) and that reading the cache back changes no number
     (compared with A like the B folders below; --cache off skips it, every process compiling);
  2. starts the same command into folder B and sends it SIGKILL after a random delay, drawn
     uniformly in a window (--windows; each window gets its own B folders):
       run          counted from the start, in [10%, 90%] of A-warm's duration (A's with
                    --cache off). At these sizes most of a run is start-up (imports, and XLA
                    compilation when the cache is cold), so such kills mostly land before the
                    first checkpoint;
       checkpoints  counted from the moment the process writes its first checkpoint (for a
                    resumed process: its first new one), in [0, T], T the span between A-warm's
                    first and last checkpoints (for a process resumed from chunk c: between
                    A-warm's first checkpoint after chunk c and its last): the run is training
                    and has a checkpoint to resume from, whatever its start-up took this time;
     (seeded: --seed fixes the draws within the windows; the delays in seconds follow
     A-warm's measured times, and where the process then is depends on the machine's load, which the
     table shows: "no ckpt" or "ckpt <chunk>" found in B after the kill, "ended first" when the
     process finished before its kill), and waits for it to die;
  3. runs `ovmse <program> --resume B`; with --kills K > 1 the resumed process is killed too,
     at a fresh random delay, and resumed again, K kills in all; the last resume runs to the end.
     A kill that lands before B holds a checkpoint must still resume: the run then starts again
     from its first step. A kill that lands before the program made folder B (while it imports
     and loads its inputs) leaves nothing to resume: the script records what --resume says, then
     runs the original command again (table: "no folder, rerun"; not a failure). A resume that
     exits with an error is recorded with its message, and is a failure;
  4. compares A and B: summary.json's `final_test` dicts must be equal exactly and the records of
     metrics.jsonl equal in every field except `wall_s`. As information (not part of the
     verdict) it also checks that the final checkpoint.npz and policies/*.npz store the same
     arrays (their zip members but the meta, which holds wall times, byte for byte).

`ovmse finetune` starts from the pretrain program's uninterrupted run A (or, when pretrain is
not among --programs, from an uninterrupted pre-training run made for it). With --repeats R every
program gets R independent B folders per window, each with its own kill delays.

It prints a table (program, kill delays and what the killed run had written, resumes,
identical yes/no), writes benchmarks/results/kill_resume_cpu.json (--results to change) and exits
1 if any program's resumed run (or A-warm) differs from A or could not be resumed.

    .venv/bin/python benchmarks/kill_resume.py    # all three, both windows, 2 kills, then resume
    .venv/bin/python benchmarks/kill_resume.py --programs train --windows checkpoints --seed 3

On a 2-core CPU a cold run (A) takes 1-3 minutes, most of it XLA compilation, and a warm one
under a minute; the whole default (per program: A, A-warm, then per window two killed runs and a
resume) takes about 15 minutes on an idle machine, more under load.
tests/test_kill_resume.py drives `check_program` for `train` at the smallest size (one kill,
one resume; about 100 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ovmse.datasets.locate import SHIPPED

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DATASET = SHIPPED / "3m" / "medium"
PROGRAMS = ("train", "pretrain", "finetune")
TINY_NETWORK = ["--agent-hidden-dim", "16", "--mixer-embed-dim", "8",
                "--hypernet-hidden-dim", "16"]

# The options of each program's runs (besides --out / --no-progress; finetune also gets
# --checkpoint). Checkpoints at every test interval, so that a kill has one to resume from.
SIZES = {
    "train": [
        "--steps", "8000", "--num-envs", "8", "--num-seeds", "2", "--test-interval", "800",
        "--checkpoint-interval", "800", "--test-episodes", "8", "--final-test-episodes", "8",
        *TINY_NETWORK, "--batch-size", "32", "--buffer-size", "200",
        "--target-update-interval", "40", "--length-buckets", "1", "--eps-anneal-steps", "4000"],
    "pretrain": [
        "--dataset", str(DATASET), "--steps", "600", "--num-seeds", "2", "--test-interval", "50",
        "--checkpoint-interval", "50", "--test-episodes", "8", "--final-test-episodes", "8",
        "--target-update-every", "25", *TINY_NETWORK, "--batch-size", "32",
        "--length-buckets", "1", "--num-samples", "10"],
    "finetune": [
        "--algo", "ovmse", "--steps", "4800", "--num-envs", "4", "--num-seeds", "2",
        "--test-interval", "400", "--checkpoint-interval", "400", "--test-episodes", "8",
        "--final-test-episodes", "8", "--batch-size", "32", "--buffer-size", "200",
        "--target-update-interval", "40", "--length-buckets", "1", "--probe-episodes", "4",
        "--eps-anneal-steps", "4000", "--lam-anneal-steps", "2000"],
}
# --final-test-episodes equals --test-episodes so that the final test reuses the compiled test
# (a different episode count compiles it again: a minute under load).

# The smallest sizes (tests/test_kill_resume.py): one seed, one test interval after the first.
TINY_SIZES = {
    "train": [
        "--steps", "2", "--num-envs", "1", "--num-seeds", "1", "--test-interval", "1",
        "--checkpoint-interval", "1", "--test-episodes", "1", "--final-test-episodes", "1",
        "--episode-limit", "10", "--agent-hidden-dim", "4", "--mixer-embed-dim", "2",
        "--hypernet-hidden-dim", "4", "--batch-size", "1", "--buffer-size", "2",
        "--target-update-interval", "1", "--length-buckets", "1"],
}


def ovmse_command() -> list[str]:
    """The `ovmse` console script of this interpreter's environment (a plain Python process,
    so SIGKILL of its pid kills the program itself), or the same entry point through -c."""
    script = Path(sys.executable).parent / "ovmse"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ovmse.cli import main; sys.exit(main())"]


def _start(cmd: list[str], log: Path, env: dict | None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                stdin=subprocess.DEVNULL, env=env)


def _error_lines(log: Path, since: int) -> str:
    """The `ovmse: error: ...` lines (or else the last lines) a process wrote to `log` after
    byte `since`."""
    text = log.read_bytes()[since:].decode(errors="replace").strip().splitlines()
    errors = [line for line in text if line.startswith("ovmse: error")]
    return "\n".join(errors or text[-5:])


def run_to_end(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float, str]:
    """Run `cmd` to completion; (exit status, seconds, its error message if it failed)."""
    since = log.stat().st_size if log.exists() else 0
    start = time.perf_counter()
    proc = _start(cmd, log, env)
    rc = proc.wait()
    seconds = time.perf_counter() - start
    return rc, seconds, ("" if rc == 0 else _error_lines(log, since))


def run_state(run_dir: Path) -> dict:
    """What a (killed) run folder holds: its checkpoint's chunk, metrics records, summary."""
    from ovmse.errors import UserError
    from ovmse.runs import CHECKPOINT_FILE, read_checkpoint_meta, read_jsonl

    state = dict(folder=run_dir.exists(), config=(run_dir / "config.json").exists(),
                 checkpoint_chunk=None, metrics_records=0,
                 summary=(run_dir / "summary.json").exists())
    if (run_dir / CHECKPOINT_FILE).exists():
        try:
            state["checkpoint_chunk"] = read_checkpoint_meta(run_dir / CHECKPOINT_FILE)["chunk"]
        except UserError as e:
            state["checkpoint_chunk"] = f"unreadable: {e}"
    try:
        state["metrics_records"] = len(read_jsonl(run_dir / "metrics.jsonl"))
    except ValueError as e:
        state["metrics_records"] = f"unreadable: {e}"
    return state


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def run_killed(cmd: list[str], delay: float, log: Path, armed_by: Path | None = None,
               env: dict | None = None) -> dict:
    """Start `cmd`, SIGKILL it `delay` seconds later (unless it ended first), wait for it.

    With `armed_by` (a checkpoint file), the delay counts from the moment that file is next
    written (appears, or changes from what it was when `cmd` started), not from the start."""
    since = log.stat().st_size if log.exists() else 0
    start = time.perf_counter()
    before = None if armed_by is None else _mtime(armed_by)
    proc = _start(cmd, log, env)
    event = dict(delay_s=round(delay, 2))
    if armed_by is not None:
        while proc.poll() is None and _mtime(armed_by) in (None, before):
            time.sleep(0.05)
        event["armed_after_s"] = round(time.perf_counter() - start, 2)
    try:
        rc = proc.wait(timeout=delay)
        event.update(killed=False, rc=rc, error="" if rc == 0 else _error_lines(log, since))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        event.update(killed=True, rc=proc.wait())
    event["at_s"] = round(time.perf_counter() - start, 2)
    if event["killed"]:
        with open(log, "ab") as f:
            f.write(f"# SIGKILL {event['at_s']} s after the start\n".encode())
    return event


def _members(path: Path) -> dict[str, bytes]:
    """The stored members of a checkpoint (.npz, a zip) but its meta, byte for byte: the encoded
    arrays, whatever the checkpoint format's storage of them."""
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()
                if name.removesuffix(".npy") != "meta"}


def _same_arrays(a: Path, b: Path) -> bool | None:
    """Whether two checkpoint files store bit-identical arrays (their meta, which holds wall
    times, aside); None if either is missing."""
    if not (a.exists() and b.exists()):
        return None
    return _members(a) == _members(b)


def compare_runs(a: Path, b: Path, max_diffs: int = 10) -> dict:
    """The verdict: A's and B's summary.json `final_test` equal, metrics.jsonl records equal
    except `wall_s`. Also (information only) whether the final checkpoint's arrays and the
    policy snapshots' arrays are bit-identical."""
    from ovmse.runs import CHECKPOINT_FILE, read_json, read_jsonl

    out = dict(identical=False, final_test_equal=False, metrics_equal=False, differences=[])
    if not (b / "summary.json").exists():
        out["differences"].append(f"{b / 'summary.json'} missing: the run did not finish")
        return out
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    out["final_test_equal"] = sa["final_test"] == sb["final_test"]
    if not out["final_test_equal"]:
        out["differences"].append(f"final_test: A {sa['final_test']} B {sb['final_test']}")
    out["summary_keys_differing"] = sorted(
        k for k in set(sa) | set(sb)
        if sa.get(k) != sb.get(k) and k not in ("wall_s", "env_steps_per_s", "updates_per_s"))

    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in ra]
    strip_b = [{k: v for k, v in r.items() if k != "wall_s"} for r in rb]
    out["metrics_equal"] = strip == strip_b
    if len(ra) != len(rb):
        out["differences"].append(f"metrics.jsonl: A has {len(ra)} records, B {len(rb)}")
    for i, (x, y) in enumerate(zip(strip, strip_b)):
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k) and len(out["differences"]) < max_diffs:
                out["differences"].append(
                    f"metrics.jsonl record {i} (chunk {x.get('chunk')}, seed {x.get('seed')}) "
                    f"{k}: A {x.get(k)!r} B {y.get(k)!r}")
    out["identical"] = out["final_test_equal"] and out["metrics_equal"]

    out["checkpoint_arrays_equal"] = _same_arrays(a / CHECKPOINT_FILE, b / CHECKPOINT_FILE)
    snaps_a = sorted(p.name for p in (a / "policies").glob("*.npz"))
    snaps_b = sorted(p.name for p in (b / "policies").glob("*.npz"))
    if snaps_a or snaps_b:
        out["policy_snapshots_equal"] = snaps_a == snaps_b and all(
            _same_arrays(a / "policies" / n, b / "policies" / n) for n in snaps_a)
    return out


def run_watched(cmd: list[str], log: Path, run_dir: Path,
                env: dict | None = None) -> tuple[int, float, str, list]:
    """run_to_end, noting when (seconds after the start) each new checkpoint of `run_dir`
    appears, and its chunk (polled every 0.1 s)."""
    from ovmse.errors import UserError
    from ovmse.runs import CHECKPOINT_FILE, read_checkpoint_meta

    since = log.stat().st_size if log.exists() else 0
    start = time.perf_counter()
    proc = _start(cmd, log, env)
    ckpt, seen, checkpoints = run_dir / CHECKPOINT_FILE, None, []
    while True:
        rc = proc.poll()
        try:
            stamp = ckpt.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen = stamp
            try:
                chunk = read_checkpoint_meta(ckpt)["chunk"]
            except (UserError, KeyError):
                chunk = None
            checkpoints.append(dict(seconds=round(time.perf_counter() - start, 2), chunk=chunk))
        if rc is not None:
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    return rc, seconds, ("" if rc == 0 else _error_lines(log, since)), checkpoints


WINDOWS = ("run", "checkpoints")


def kill_window(reference: dict, window: str) -> dict:
    """When kills land. "run": a delay from the start drawn uniformly in [10%, 90%] of the
    uninterrupted run's duration. "checkpoints": a delay drawn uniformly in [0, T] counted from
    the moment the killed process writes its next checkpoint (the run is then training and has
    something to resume from), T the span between the uninterrupted run's first and last
    checkpoints, or, for a process resumed from chunk c, between its checkpoint after chunk c
    and its last (window_span); "run"'s window if that run wrote fewer than two."""
    duration = reference["seconds"]
    marks = [(c["chunk"], c["seconds"]) for c in reference.get("checkpoints", [])
             if isinstance(c.get("chunk"), int)]
    if window == "checkpoints" and len(marks) >= 2:
        return dict(name=window, lo=0.0, hi=marks[-1][1] - marks[0][1], armed=True, marks=marks)
    return dict(name="run", lo=0.1 * duration, hi=0.9 * duration, armed=False)


def window_span(window: dict, resumed_from) -> tuple[float, float]:
    """The delay window of a kill: `window`'s, or for an armed window and a process resumed
    from the checkpoint of chunk `resumed_from`, the reference run's time from its first
    checkpoint after that chunk to its last."""
    if not window["armed"] or not isinstance(resumed_from, int):
        return window["lo"], window["hi"]
    later = [t for chunk, t in window["marks"] if chunk > resumed_from]
    return 0.0, (window["marks"][-1][1] - later[0]) if later else 0.0


def cache_env(cache: str | None) -> dict | None:
    """The environment of the ovmse processes: None inherits this one (ovmse's own compilation
    cache, ~/.cache/ovmse/jax unless OVMSE_COMPILATION_CACHE says otherwise); "off" disables
    the cache; any other value is the cache folder to use."""
    if cache is None:
        return None
    return dict(os.environ, OVMSE_COMPILATION_CACHE=cache)


def check_program(program: str, options: list[str], work: Path, rng: random.Random,
                  kills: int = 1, repeats: int = 1, windows: tuple[str, ...] = ("run",),
                  cache: str | None = None, log=print) -> dict:
    """Run `ovmse <program> <options>` uninterrupted into work/A, then, for each kill window
    and `repeats` times, into a fresh work/B-<window>-<i> killed `kills` times at random delays
    drawn uniformly in that window (kill_window) and resumed; compare each B with A.

    With the compilation cache on (`cache`, see cache_env), a second uninterrupted run into
    work/A-warm follows A: it reads back what A compiled, as the killed and resumed runs will,
    so it is the timing reference of the kill windows, and it is compared with A too.
    Returns a JSON-able dict; its "identical" is True when every run matched A."""
    env = cache_env(cache)
    base = ovmse_command() + [program, "--no-progress", *options]
    run_log = work / "log.txt"
    result = dict(program=program, command=" ".join(base[len(ovmse_command()):]),
                  compilation_cache=cache, kills_per_repeat=kills, repeats=[])
    a = work / "A"
    runs = [("uninterrupted", a)] + ([] if cache == "off" else [("warm", work / "A-warm")])
    for key, folder in runs:
        log(f"[{program}] uninterrupted run into {folder}")
        rc, seconds, error, checkpoints = run_watched(base + ["--out", str(folder)], run_log,
                                                      folder, env)
        result[key] = dict(folder=str(folder), seconds=round(seconds, 2), rc=rc, error=error,
                           checkpoints=checkpoints)
        if rc != 0:
            result["identical"] = False
            result["error"] = f"uninterrupted run failed: {error}"
            log(f"[{program}] {result['error']}")
            return result
    reference = result["uninterrupted"]
    if "warm" in result:
        result["warm"].update(compare_runs(a, work / "A-warm"))
        log(f"[{program}] A-warm (compilation cache read back) identical to A: "
            f"{result['warm']['identical']}")
        reference = result["warm"]
    for window in windows:
        for repeat in range(repeats):
            rep = _kill_and_resume(program, base, a, work / f"B-{window}-{repeat}", rng, kills,
                                   kill_window(reference, window), run_log, env, log)
            result["repeats"].append(rep)
    result["identical"] = (all(r["identical"] for r in result["repeats"])
                           and result.get("warm", {}).get("identical", True))
    return result


def _kill_and_resume(program: str, base: list[str], a: Path, b: Path, rng: random.Random,
                     kills: int, window: dict, run_log: Path, env: dict | None, log) -> dict:
    from ovmse.runs import CHECKPOINT_FILE

    armed_by = b / CHECKPOINT_FILE if window["armed"] else None
    name = f"[{program}] {b.name}"
    events, resumes, error = [], 0, ""
    fresh = base + ["--out", str(b)]
    resume = ovmse_command() + [program, "--no-progress", "--resume", str(b)]
    cmd, resumed_from = fresh, None
    for k in range(kills):
        lo, hi = window_span(window, resumed_from)
        fraction = rng.random()
        delay = lo + fraction * (hi - lo)
        kind = "resumed" if cmd is resume else "fresh"
        log(f"{name}: kill {k + 1} of {kills} {delay:.1f} s after "
            f"{'its next checkpoint' if armed_by else 'the start'} ({kind} run)")
        event = run_killed(cmd, delay, run_log, armed_by, env)
        event.update(run=kind, window_s=[round(lo, 2), round(hi, 2)],
                     fraction_of_window=round(fraction, 4))
        event["state_after"] = run_state(b)
        resumed_from = event["state_after"]["checkpoint_chunk"]
        events.append(event)
        resumes += cmd is resume
        if not event["killed"] and event["rc"] != 0:
            error = event["error"] if cmd is resume else (
                f"the run itself failed: {event['error']}")
            break
        if not event["killed"]:
            # The run ended before the kill; resuming it again would only redo its final test.
            break
        if event["state_after"]["folder"]:
            cmd = resume
        else:
            # Killed before the run made its folder: there is nothing to resume. Record what
            # --resume says, then do what a user would: run the original command again.
            rc, _, message = run_to_end(resume, run_log, env)
            event["resume_without_folder"] = dict(rc=rc, message=message)
            log(f"{name}: killed before the folder existed; --resume says {message!r} "
                f"(rc {rc}); running the original command again")
            cmd = fresh
    if not error and events[-1]["killed"]:
        log(f"{name}: " + ("resume to the end" if cmd is resume
                           else "original command to the end"))
        rc, seconds, message = run_to_end(cmd, run_log, env)
        resumes += cmd is resume
        events.append(dict(final_run="resumed" if cmd is resume else "fresh", rc=rc,
                           seconds=round(seconds, 2)))
        if rc != 0:
            error = message if cmd is resume else f"the run itself failed: {message}"
    rep = dict(folder=str(b), window=window["name"],
               window_s=[round(window["lo"], 2), round(window["hi"], 2)],
               events=events, resumes=resumes, resume_error=error)
    if error:
        rep.update(identical=False, differences=[f"resume failed: {error}"])
    else:
        rep.update(compare_runs(a, b))
    log(f"{name}: identical {rep['identical']}"
        + (f" ({rep['differences'][0]})" if rep["differences"] else ""))
    return rep


def _kill_text(event: dict) -> str:
    if "final_run" in event:
        return ""
    when = (f"ckpt+{event['delay_s']:.1f}s" if "armed_after_s" in event
            else f"{event['delay_s']:.0f}s")
    if not event["killed"]:
        return f"{when} (ended first, rc {event['rc']})"
    state = event["state_after"]
    where = ("no folder" if not state["folder"] else
             "no config" if not state["config"] else
             "no ckpt" if state["checkpoint_chunk"] is None else
             f"ckpt {state['checkpoint_chunk']}")
    if "resume_without_folder" in event:
        where += ", rerun"
    return f"{when} ({where})"


def format_table(results: list[dict]) -> str:
    """One row per killed-and-resumed run; "A-warm" is the uninterrupted run that read A's
    compiled programs back from the cache (its duration is the kill windows' reference)."""
    rows = [("program", "A", "A-warm", "window", "kills: delay (state after)", "resumes",
             "identical", "arrays")]
    for res in results:
        ref, warm = res["uninterrupted"], res.get("warm")
        warm_text = "-" if warm is None else (
            f"{warm['seconds']:.0f}s " + ("same" if warm.get("identical") else "DIFFERS"))
        if res.get("error"):
            rows.append((res["program"], f"rc {ref['rc']}", warm_text, "-", "-", "-", "no", "-"))
            continue
        for i, rep in enumerate(res["repeats"]):
            kills = ", ".join(t for t in map(_kill_text, rep["events"]) if t)
            arrays = {True: "same", False: "DIFFER", None: "-"}[
                rep.get("checkpoint_arrays_equal") if rep.get("policy_snapshots_equal", True)
                else False]
            verdict = "yes" if rep["identical"] else (
                "no (resume failed)" if rep["resume_error"] else "no")
            rows.append((res["program"] if i == 0 else "",
                         f"{ref['seconds']:.0f}s" if i == 0 else "",
                         warm_text if i == 0 else "",
                         f"{rep['window']} {rep['window_s'][0]:.1f}-{rep['window_s'][1]:.1f}s",
                         kills, str(rep["resumes"]), verdict, arrays))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failures = [(res["program"], rep["resume_error"]) for res in results
                for rep in res["repeats"] if rep["resume_error"]]
    failures += [(res["program"], res["error"]) for res in results if res.get("error")]
    failures += [(res["program"], "A-warm: " + "; ".join(res["warm"]["differences"][:3]))
                 for res in results if res.get("warm") and not res["warm"].get("identical", True)
                 and not res.get("error")]
    lines += [f"{program}: {error}" for program, error in failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS))
    parser.add_argument("--out", type=Path, default=None,
                        help="scratch folder for the runs (default: a new one under /tmp)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="independent kill-and-resume sequences per program")
    parser.add_argument("--windows", nargs="+", choices=WINDOWS, default=list(WINDOWS),
                        help="spans the kill delays are drawn in, each with its own B folders: "
                             "run: [10%%, 90%%] of the uninterrupted run's duration; "
                             "checkpoints: [0, T] after the killed run's first checkpoint, T "
                             "the span of the uninterrupted run's checkpoints")
    parser.add_argument("--kills", type=int, default=2,
                        help="kills per sequence (each later one kills a resumed run)")
    parser.add_argument("--cache", default="scratch",
                        help="JAX compilation cache of the ovmse processes: scratch (default: a "
                             "new one in the scratch folder, so A compiles cold and every later "
                             "process reads A's programs back), off, user (ovmse's default, "
                             "~/.cache/ovmse/jax), or a folder")
    parser.add_argument("--results", type=Path, default=RESULTS / "kill_resume_cpu.json")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.kills < 1:
        parser.error("--repeats and --kills must be >= 1")

    import jax

    from ovmse.runs import write_json

    scratch = args.out or Path(tempfile.mkdtemp(prefix="ovmse-kill-resume-"))
    if scratch.exists() and any(scratch.iterdir()):
        parser.error(f"--out {scratch} is not empty")
    print(f"scratch folder: {scratch}", flush=True)

    def log(msg):
        print(msg, flush=True)

    cache = {"scratch": str(scratch / "jax-cache"), "user": None}.get(args.cache, args.cache)

    started = time.time()
    results, pretrain_ref = [], None
    for program in args.programs:
        options = list(SIZES[program])
        rng = random.Random(f"{args.seed}:{program}")
        if program == "finetune":
            if pretrain_ref is None:
                base_dir = scratch / "finetune-base"
                log(f"[finetune] pre-training its checkpoint into {base_dir}")
                rc, _, error = run_to_end(ovmse_command() + ["pretrain", "--no-progress",
                                                             *SIZES["pretrain"], "--out",
                                                             str(base_dir)],
                                          scratch / "finetune-base.log", cache_env(cache))
                if rc != 0:
                    results.append(dict(program=program, identical=False, repeats=[],
                                        uninterrupted=dict(rc=rc, seconds=0.0),
                                        error=f"pre-training for finetune failed: {error}"))
                    continue
                pretrain_ref = dict(folder=str(base_dir))
            options += ["--checkpoint", pretrain_ref["folder"]]
        res = check_program(program, options, scratch / program, rng, kills=args.kills,
                            repeats=args.repeats, windows=tuple(args.windows), cache=cache,
                            log=log)
        if program == "pretrain" and res["uninterrupted"]["rc"] == 0:
            pretrain_ref = res["uninterrupted"]
        results.append(res)

    table = format_table(results)
    print(table)
    write_json(args.results, dict(
        benchmark="kill -9 at a random moment, then --resume, vs an uninterrupted run",
        seed=args.seed, kills_per_repeat=args.kills, repeats=args.repeats,
        windows=args.windows, compilation_cache=args.cache,
        device=str(jax.devices()[0]), platform=platform.platform(), cpus=os.cpu_count(),
        python=platform.python_version(), jax=jax.__version__, scratch=str(scratch),
        wall_s=round(time.time() - started, 1), all_identical=all(r["identical"] for r in results),
        table=table.splitlines(), results=results))
    print(f"wrote {args.results}")
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
