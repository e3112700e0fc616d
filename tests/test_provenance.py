"""Which code computed a result (provenance.code_version), on a throwaway git checkout."""

import subprocess

import ovmse
from ovmse import provenance


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_commit_and_whether_the_code_was_modified(tmp_path, monkeypatch):
    for name in ("src/ovmse/a.py", "pyproject.toml", "docs/notes.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)
    version = provenance.code_version.__wrapped__   # uncached
    assert version() == dict(version=ovmse.__version__, commit=head, dirty=False)
    (tmp_path / "docs/notes.md").write_text("edited\n")
    (tmp_path / "results.json").write_text("{}\n")   # docs and new results: still exact
    assert version()["dirty"] is False
    (tmp_path / "src/ovmse/a.py").write_text("x = 2\n")
    assert version()["dirty"] is True


def test_without_a_checkout_only_the_version(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)
    assert provenance.code_version.__wrapped__() == dict(version=ovmse.__version__, commit=None,
                                                         dirty=None)
