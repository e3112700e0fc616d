"""Experiment specs: one TOML file per paper artefact, read into a `Spec`. The paper's specs ship
with the package (SPECS_DIR, ovmse/study/specs/) and are named by their stem ("table1"); any other
spec is given as a path to its .toml file.

A spec names the report it feeds (`report`: final_table, probe, curves, mixing) and, per scale
(`cpu`, `paper`), the grid of cells to run: tasks ("map/quality" datasets) x methods x offline
mixing ratios, with the budget and settings every cell of that scale shares. `include` names a
file (beside the spec, else among the shipped specs: a spec of one's own may include
"common.toml") whose tables are merged under the spec's own, so that the specs of one study
share one set of scale settings and therefore one cache of cells; the spec has the scales it
names itself:

    name = "table1"
    title = "Final median win rate after fine-tuning"
    paper = "Table 1"
    report = "final_table"
    include = "common.toml"

    [scale.cpu]
    tasks = ["3m/medium", "2s3z/medium"]
    methods = ["ovmse", "switch-cql", "qmix"]

Scale keys (all but tasks and methods may come from the included file):
  tasks, methods          the grid; qmix ignores the dataset and runs once per map
  offline_ratios          mixing ratios of the grid (default [0.0])
  eps_starts              fine-tuning epsilon at env step 0 (`explore.eps_start`), an axis of
                          the grid (default: the config's, 1.0); qmix runs at the default only
  lam_ends                OVM's end weight of the offline memory (`learner.memory.lam_end`,
                          eq. 6), an axis of the grid for the methods with OVM's loss (default:
                          the config's, 0.0); the others run at the default only
  seeds                   seeds per cell, trained in one program
  steps                   {map: env steps of fine-tuning}
  test_interval           {map: env steps between greedy tests}
  pretrain_steps          gradient steps of MACQL pre-training
  cql_online              maps where ovmse keeps the CQL term online (the paper: 2s3z)
  settings                dotted TrainConfig overrides for every fine-tuning cell
  map_settings            {map: dotted TrainConfig overrides} on top of `settings`
  pretrain_settings       dotted PretrainConfig overrides
  budget_step             env step at which the mixing report reads the test return
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovmse.errors import UserError
from ovmse.methods import METHODS

REPORTS = ("final_table", "probe", "curves", "mixing")
SPECS_DIR = Path(__file__).resolve().parent / "specs"
"""The paper's specs, installed with the package."""


@dataclass(frozen=True)
class Scale:
    """The grid and shared settings of one scale of a spec."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: int
    steps: dict[str, int]
    test_interval: dict[str, int]
    pretrain_steps: int
    offline_ratios: tuple[float, ...] = (0.0,)
    eps_starts: tuple[float, ...] = ()
    lam_ends: tuple[float, ...] = ()
    cql_online: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    map_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    pretrain_settings: dict[str, Any] = field(default_factory=dict)
    budget_step: int | None = None

    @property
    def maps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(task_map(t) for t in self.tasks))


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    paper: str
    """The paper's artefact this reproduces (e.g. "Table 1")."""
    report: str
    scales: dict[str, Scale]
    paper_values: dict[str, Any] = field(default_factory=dict)
    """The paper's SC2 numbers for the artefact, quoted in the report as the paper's."""
    path: Path = Path()

    def scale(self, name: str) -> Scale:
        if name not in self.scales:
            raise UserError(f"spec {self.name} has no scale {name!r}; it has "
                            f"{', '.join(self.scales)}")
        return self.scales[name]


def task_map(task: str) -> str:
    """The map of a "map/quality" task name."""
    return task.split("/")[0]


def spec_names() -> list[str]:
    """The shipped specs' names (common.toml, the shared settings, is not a spec)."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml") if p.stem != "common")


def spec_path(name_or_path: str) -> Path:
    """The shipped spec of a bare name, else the .toml path itself."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SPECS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UserError(f"no experiment spec {name_or_path}; known specs: "
                        f"{', '.join(spec_names())}, or a path to a .toml file")
    return path


def load_spec(name_or_path: str) -> Spec:
    """Read and check a spec (see the module docstring for its keys)."""
    path = spec_path(name_or_path)
    raw = _read_toml(path)
    if "include" in raw:
        included = path.parent / raw.pop("include")
        if not included.is_file():
            included = SPECS_DIR / included.name
        own_scales = raw.get("scale", {})
        raw = _merge(_read_toml(included), raw)
        raw["scale"] = {name: raw["scale"][name] for name in own_scales}
    for key in ("name", "title", "paper", "report", "scale"):
        if key not in raw:
            raise UserError(f"spec {path} lacks the key {key!r}")
    if raw["report"] not in REPORTS:
        raise UserError(f"spec {path}: report {raw['report']!r} is not one of {REPORTS}")
    scales = {name: _scale(path, name, table) for name, table in raw["scale"].items()}
    return Spec(name=raw["name"], title=raw["title"], paper=raw["paper"], report=raw["report"],
                scales=scales, paper_values=raw.get("paper_values", {}), path=path)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read experiment spec {path}: {err}") from None


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = (_merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def _scale(path: Path, name: str, table: dict) -> Scale:
    where = f"spec {path}, scale {name}"
    fields = {f.name for f in dataclasses.fields(Scale)}
    unknown = set(table) - fields
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    missing = {"tasks", "methods", "seeds", "steps", "test_interval", "pretrain_steps"} - set(table)
    if missing:
        raise UserError(f"{where}: missing keys {sorted(missing)}")
    scale = Scale(**{k: tuple(v) if isinstance(v, list) else v for k, v in table.items()})
    bad = [m for m in scale.methods if m not in METHODS]
    if bad:
        raise UserError(f"{where}: unknown methods {bad}; known: {', '.join(METHODS)}")
    for task in scale.tasks:
        if task.count("/") != 1:
            raise UserError(f"{where}: task {task!r} is not of the form map/quality")
    for axis in ("eps_starts", "lam_ends"):
        bad = [v for v in getattr(scale, axis) if not 0.0 <= v <= 1.0]
        if bad:
            raise UserError(f"{where}: {axis} {bad} must lie in [0, 1]")
    for key in ("steps", "test_interval"):
        lacking = [m for m in scale.maps if m not in getattr(scale, key)]
        if lacking:
            raise UserError(f"{where}: {key} has no value for maps {lacking}")
    return scale
