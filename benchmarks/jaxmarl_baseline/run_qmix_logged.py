"""Thin wrapper around JaxMARL baselines/QLearning/qmix_rnn.py (unmodified).

The baseline only emits metrics through `wandb.log`, called from a
`jax.debug.callback` once per update step, and only if the config's
WANDB_MODE != "disabled" (a trace-time Python check). So:
  * launch with the hydra override WANDB_MODE=offline so that the callback is traced in,
  * replace wandb.init with a real wandb.init(mode="disabled") (nothing written/sent),
  * replace wandb.log with a recorder that appends one JSON line per call to
    $QMIX_LOG_FILE with a wall-clock timestamp.
Everything else (algorithm, config, hydra CLI) is the baseline's own.

Usage: QMIX_LOG_FILE=out.jsonl python run_qmix_logged.py +alg=ql_rnn_smax [hydra overrides...]
"""

import json
import math
import os
import sys
import time

T0 = time.time()  # wall clock reference: process start (includes imports + jit compile)

HERE = os.path.dirname(os.path.abspath(__file__))
QL_DIR = os.environ.get(
    "QMIX_BASELINE_DIR", os.path.join(HERE, "JaxMARL", "baselines", "QLearning")
)
sys.path.insert(0, QL_DIR)

import numpy as np  # noqa: E402
import wandb  # noqa: E402

import runpy  # noqa: E402

QMIX_PATH = os.path.join(QL_DIR, "qmix_rnn.py")  # the unmodified baseline script

LOG_FILE = os.environ.get("QMIX_LOG_FILE", os.path.join(HERE, "logs", "qmix.jsonl"))
os.makedirs(os.path.dirname(os.path.abspath(LOG_FILE)), exist_ok=True)
open(LOG_FILE, "w").close()  # truncate

_state = {"test_every": None, "t_first": None}
_real_init = wandb.init


def _to_py(v):
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else a.tolist()


def _fake_init(*args, **kwargs):
    cfg = kwargs.get("config") or {}
    try:
        n_upd = int(cfg["TOTAL_TIMESTEPS"]) // int(cfg["NUM_STEPS"]) // int(cfg["NUM_ENVS"])
        _state["test_every"] = int(n_upd * cfg["TEST_INTERVAL"])
        _state["num_updates"] = n_upd
    except Exception:
        pass
    kwargs["mode"] = "disabled"  # never talk to wandb, never write wandb files
    run = _real_init(*args, **kwargs)
    # wandb.init rebinds the module-level wandb.log to run.log: patch it again
    wandb.log = _recording_log
    return run


def _recording_log(metrics, *args, **kwargs):
    now = time.time()
    if _state["t_first"] is None:
        _state["t_first"] = now
    rec = {k: _to_py(v) for k, v in metrics.items()}
    rec["wall_s"] = now - T0  # seconds since wrapper start (includes compile)
    rec["wall_s_since_first_log"] = now - _state["t_first"]
    te = _state["test_every"]
    upd = rec.get("update_steps")
    # test metrics are recomputed only when update_steps % test_every == 0;
    # in between, the logged test_* values are the previous (stale) ones.
    if te and upd is not None and np.ndim(upd) == 0:
        rec["is_test_point"] = int(upd) % te == 0
    rec = {k: v if not isinstance(v, float) or math.isfinite(v) else None  # strict JSON
           for k, v in rec.items()}
    with open(LOG_FILE, "a") as f:
        f.write(json.dumps(rec, allow_nan=False) + "\n")
    if rec.get("is_test_point"):
        print(
            f"[qmix-log] t={rec['wall_s']:.1f}s env_step={rec.get('env_step')} "
            f"test_win_rate={rec.get('test_returned_won_episode')} "
            f"test_return={rec.get('test_returned_episode_returns')}",
            flush=True,
        )


wandb.init = _fake_init
wandb.log = _recording_log

if __name__ == "__main__":
    # run the baseline exactly as `python qmix_rnn.py <overrides>` would (hydra resolves
    # ./config relative to that file), but with the wandb patches above in place.
    sys.argv[0] = QMIX_PATH
    try:
        runpy.run_path(QMIX_PATH, run_name="__main__")
    finally:
        print(f"[qmix-log] TOTAL_WALL_S={time.time() - T0:.2f} log={LOG_FILE}", flush=True)
