"""OG-MARL interop: ovmse datasets to and from Vaults in OG-MARL's layout.

OG-MARL's Vaults (flashbax, `Vault(vault_name, vault_uid=...)`, shared/REFERENCE.md) hold one
row per transition, leading axes [1, T]: `observations` [N, O], `actions`, `rewards`,
`terminals`, `truncations` [N], `infos.legals` [N, A], `infos.state` [S]; an episode ends at a
row whose `terminals` (OG-MARL's code splits on them) or `truncations` are set. ovmse's own
Vaults (datasets/layout.py) add a final-observation row per episode and `infos.won` /
`infos.filled`.

Export (`ovmse dataset export DATASET --format og-marl --out VAULT`) writes the transitions only:
- lost: each episode's final-observation row (the observation, state and legal actions after
  its last step), so an episode cut by the step limit cannot be bootstrapped from its last state;
- `terminals` is set at the last step of every episode, also one cut by the step limit (which
  keeps `truncations` too), so that OG-MARL's code splits episodes where they end;
- kept beside OG-MARL's keys: `infos.won` (OG-MARL's code ignores it); the dataset card
  (dataset.json without its checksums and manifest) goes into the Vault's metadata.

Import (`ovmse dataset import VAULT --map MAP --out DIR`) reads such a Vault: it checks the keys
and sizes against the SMAX map, splits episodes at terminals or truncations (a last episode
with neither is incomplete and left out, said so), and writes an ordinary ovmse dataset. An
episode that ends on a terminal without a truncation is terminated; one with a truncation is
truncated and bootstraps from its final row, which the Vault lacks: the final row repeats the
last step's observation, state and legal actions. `infos.won` is read when present, else every
episode counts as not won and the provenance says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovmse.datasets.layout import rows_to_episodes
from ovmse.datasets.store import (read_rows, read_vault, verify_dataset, write_dataset,
                                  write_vault)
from ovmse.envs import EnvSpec
from ovmse.errors import UserError

OG_MARL_FIELDS = ("observations", "actions", "rewards", "terminals", "truncations",
                  "infos.legals", "infos.state")
"""The keys of an OG-MARL SMAC Vault (the only ones import needs)."""


def export_og_marl(dataset: Path, out: Path) -> dict:
    """Write the transitions of `dataset` as a Vault in OG-MARL's layout at `out` (uid: the
    dataset's quality). Returns {"uid", "rows", "episodes"}. UserError if that Vault exists or
    the dataset does not verify."""
    meta = verify_dataset(dataset)
    rows = read_rows(dataset, meta)
    filled = rows["infos.filled"]
    last_step = np.zeros_like(filled)
    last_step[:-1] = ~filled[1:] & filled[:-1]      # the row before a final-observation row
    out_rows = {name: rows[name][filled] for name in OG_MARL_FIELDS + ("infos.won",)}
    out_rows["terminals"] = out_rows["terminals"] | last_step[filled][:, None]
    uid = meta["quality"]
    if (Path(out) / uid).exists():
        raise UserError(f"{Path(out) / uid} already exists; choose another --out")
    card = {k: v for k, v in meta.items() if k not in ("array_sha256", "manifest")}
    write_vault(Path(out), uid, out_rows, metadata=dict(ovmse_dataset_card=card))
    return dict(uid=uid, rows=int(filled.sum()), episodes=meta["episodes"])


def import_og_marl(vault: Path, spec: EnvSpec, out: Path, uid: str | None = None,
                   quality: str | None = None, overwrite: bool = False) -> tuple[dict, int]:
    """Read the Vault at `vault` (uid: its only one unless given) into a dataset of the map of
    `spec` at `out` (quality: the uid unless given). Returns (the dataset's metadata, rows left
    out as an incomplete last episode). UserError naming the problem when it cannot be a
    dataset of that map."""
    uid = vault_uid(vault, uid)
    rows = _read_og_marl(vault, uid)
    _check_sizes(rows, spec, vault)
    ends = (rows["terminals"] | rows["truncations"]).any(axis=1)
    if not ends.any():
        raise UserError(f"{vault} ({uid}) has no row with a terminal or truncation: no complete "
                        f"episode to import")
    kept = int(np.flatnonzero(ends)[-1]) + 1
    left_out = len(ends) - kept
    rows = {k: v[:kept] for k, v in rows.items()}
    ends = ends[:kept]
    truncated = rows["truncations"].any(axis=1) & ends
    won = rows["infos.won"] if "infos.won" in rows else np.zeros(kept, bool)
    transitions = {
        "observations": rows["observations"].astype(np.float32),
        "actions": rows["actions"].astype(np.int32),
        "rewards": rows["rewards"].astype(np.float32),
        "terminals": np.repeat((ends & ~truncated)[:, None], spec.num_agents, axis=1),
        "truncations": np.repeat(truncated[:, None], spec.num_agents, axis=1),
        "infos.legals": rows["infos.legals"].astype(bool),
        "infos.state": rows["infos.state"].astype(np.float32),
        "infos.won": won.astype(bool) & ends,
    }
    try:
        episodes = rows_to_episodes(_with_final_rows(transitions, ends), spec.episode_limit)
    except ValueError as err:
        raise UserError(f"{vault} ({uid}) does not fit map {spec.map_name}: {err}") from None
    provenance = dict(generator="ovmse dataset import (OG-MARL Vault)", vault=str(vault),
                      vault_uid=uid, won_recorded="infos.won" in rows,
                      final_rows="the last step's observation, state and legal actions repeated "
                                 "(the Vault has none)",
                      rows_left_out=left_out)
    meta = write_dataset(out, episodes, spec, quality or uid.lower(), provenance,
                         overwrite=overwrite)
    return meta, left_out


def vault_uid(vault: Path, uid: str | None) -> str:
    """`uid` if the Vault holds it, else the Vault's only uid; UserError naming the uids."""
    if not Path(vault).is_dir():
        raise UserError(f"no Vault at {vault}")
    if (Path(vault) / "metadata.json").is_file():
        raise UserError(f"{vault} is one uid of a Vault; give the folder above it "
                        f"({Path(vault).parent}), with --uid {Path(vault).name}")
    uids = sorted(p.name for p in Path(vault).iterdir() if (p / "metadata.json").is_file())
    if uid is None and len(uids) == 1:
        return uids[0]
    if uid is None or uid not in uids:
        raise UserError(f"{vault} holds the Vault uids {', '.join(uids) or 'none'}; "
                        + ("choose one with --uid" if uid is None else f"not {uid!r}"))
    return uid


def _read_og_marl(vault: Path, uid: str) -> dict[str, np.ndarray]:
    try:
        rows = read_vault(vault, uid)
    except Exception as err:  # flashbax / tensorstore raise many kinds on a damaged Vault
        raise UserError(f"cannot read the Vault {vault} ({uid}): {err}") from None
    missing = [k for k in OG_MARL_FIELDS if k not in rows]
    if missing:
        raise UserError(f"{vault} ({uid}) lacks the OG-MARL keys {', '.join(missing)}; it has "
                        f"{', '.join(sorted(rows))}")
    return rows


def _check_sizes(rows: dict[str, np.ndarray], spec: EnvSpec, vault: Path) -> None:
    """UserError in one line when the Vault's sizes are not those of the SMAX map."""
    obs, legals, state = rows["observations"], rows["infos.legals"], rows["infos.state"]
    found = dict(agents=obs.shape[1:2], obs=obs.shape[2:], state=state.shape[1:],
                 actions=legals.shape[2:])
    wanted = dict(agents=(spec.num_agents,), obs=(spec.obs_dim,), state=(spec.state_dim,),
                  actions=(spec.num_actions,))
    per_agent = [k for k in ("actions", "rewards", "terminals", "truncations")
                 if rows[k].shape != obs.shape[:2]]
    if found != wanted or per_agent:
        show = lambda d: ", ".join(f"{k} {v[0] if len(v) == 1 else v}" for k, v in d.items())  # noqa: E731
        raise UserError(f"{vault} holds {show(found)}"
                        + (f" (and {', '.join(per_agent)} not [T, agents])" if per_agent else "")
                        + f"; SMAX map {spec.map_name} has {show(wanted)}: not a dataset of "
                          f"this map (another map, or SC2's SMAC)")


def _with_final_rows(transitions: dict[str, np.ndarray], ends: np.ndarray) -> dict:
    """ovmse's row layout from transition rows [T, ...]: after each episode's last row, a final
    row repeating its observation, state and legal actions (filled false; action, reward and
    flags zero)."""
    index = np.repeat(np.arange(len(ends)), np.where(ends, 2, 1))
    final = np.zeros(len(index), bool)
    final[1:] = index[1:] == index[:-1]
    out = {}
    for name, values in transitions.items():
        rows = values[index]
        if name not in ("observations", "infos.state", "infos.legals"):
            rows[final] = 0
        out[name] = rows
    out["infos.filled"] = ~final
    return out
