"""The package's layers import downwards only: data, environments and networks know nothing of
training, and training knows nothing of the study or the pipeline (issue 16)."""

import ast
from pathlib import Path

import pytest

import ovmse

SRC = Path(ovmse.__file__).parent
ABOVE = {
    "datasets": ("ovmse.train", "ovmse.learner", "ovmse.study", "ovmse.pipeline",
                 "ovmse.methods", "ovmse.dataset_build"),
    "buffers": ("ovmse.train", "ovmse.learner", "ovmse.study", "ovmse.datasets"),
    "envs": ("ovmse.train", "ovmse.learner", "ovmse.study", "ovmse.datasets"),
    "networks": ("ovmse.train", "ovmse.learner", "ovmse.study", "ovmse.datasets"),
    "train": ("ovmse.study", "ovmse.pipeline", "ovmse.dataset_build", "ovmse.cli"),
    "study": ("ovmse.pipeline", "ovmse.cli"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(layer):
    files = sorted((SRC / layer).glob("*.py"))
    assert files
    wrong = {f"{f.name} imports {m}" for f in files for m in imported_modules(f)
             if m.startswith(ABOVE[layer])}
    assert not wrong, sorted(wrong)
