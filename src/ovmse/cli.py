"""The `ovmse` command line. Each subcommand is a typed dataclass parsed by tyro; its field
docstrings are the --help text. Mistakes the user can fix print one line and exit with code 2."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from ovmse.config import TrainConfig
from ovmse.errors import UserError


@dataclass(frozen=True)
class Train:
    """Train QMIX online on a SMAX map (several seeds at once), or resume an interrupted run."""

    config: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    out: Path | None = None
    """Run folder to create (default: runs/<map>-qmix-<date-time>). An existing non-empty folder
    is never overwritten."""
    resume: Path | None = None
    """Continue the run in this folder from its last checkpoint, with its own config.json
    (give no other options)."""
    progress: bool = True
    """Show a progress bar with the live test win rate."""


def run_train(cmd: Train) -> int:
    from ovmse.train.driver import format_table, train

    if cmd.resume is not None:
        if cmd.config != TrainConfig() or cmd.out is not None:
            raise UserError("--resume continues a run with the config saved in its folder; "
                            "give no other training options and no --out")
        run_dir, resume = cmd.resume, True
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, resume = cmd.out or Path("runs") / f"{cmd.config.env.map}-qmix-{stamp}", False
    summary = train(cmd.config, run_dir, resume=resume, progress=cmd.progress)
    from ovmse.runs import read_jsonl

    print(format_table(read_jsonl(Path(run_dir) / "metrics.jsonl"), summary))
    print(f"run folder: {run_dir}")
    return 0


COMMANDS = {"train": (Train, run_train)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parsers = {name: cls for name, (cls, _) in COMMANDS.items()}
    cmd = tyro.extras.subcommand_cli_from_dict(
        parsers, args=argv, prog="ovmse",
        description="Offline-to-online MARL (OVMSE) on SMAX.",
        config=(tyro.conf.OmitArgPrefixes,))
    handler = next(run for cls, run in COMMANDS.values() if isinstance(cmd, cls))
    try:
        return handler(cmd)
    except UserError as e:
        print(f"ovmse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ovmse: interrupted; the last checkpoint is kept (resume with --resume RUN_DIR)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

