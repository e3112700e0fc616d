"""Carry a generated report page into a hand-written Markdown page (docs/results.md).

The hand-written page marks where a report goes with two comment lines of the page's stem:

    <!-- report:table1-cpu -->
    <!-- /report:table1-cpu -->

`embed_page` replaces what lies between them with the generated page's body: its title dropped,
its headings put under the heading level given, its figure and link paths rewritten relative to
the hand-written page. Text outside the markers is never touched, so the hand-written claims stay
and the tables and figures are always the ones `ovmse experiment report` built from the results.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ovmse.errors import UserError
from ovmse.runs import write_text

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def embed_page(page: Path, target: Path, heading_level: int = 4) -> None:
    """Replace the block of `page`'s stem in `target` with `page`'s body (see module doc)."""
    page, target = Path(page), Path(target)
    begin, end = f"<!-- report:{page.stem} -->", f"<!-- /report:{page.stem} -->"
    text = target.read_text() if target.exists() else ""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{target} has no single block for {page.stem}: put the lines '{begin}' "
                        f"and '{end}' (in that order, once each) where its tables and figures "
                        f"go")
    body = _body(page.read_text(), page.parent, target.parent, heading_level)
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    write_text(target, f"{head}{begin}\n{body}\n{end}{tail}")


def _body(page_text: str, page_dir: Path, target_dir: Path, heading_level: int) -> str:
    lines = page_text.strip("\n").split("\n")
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = []
    for line in lines:
        if line.startswith("#"):
            line = "#" * heading_level + " " + line.lstrip("#").lstrip()
        out.append(_LINK.sub(lambda m: f"]({_relink(m.group(1), page_dir, target_dir)})", line))
    return "\n".join(out).strip("\n")


def _relink(link: str, page_dir: Path, target_dir: Path) -> str:
    """A relative link of the page, made relative to the target's folder instead."""
    if "://" in link or link.startswith(("#", "/")):
        return link
    return Path(os.path.relpath(page_dir / link, target_dir)).as_posix()
