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


def test_the_cpu_is_named_with_its_widest_vector_instructions(tmp_path):
    x86 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n"
           "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512ifma\n\n"
           "processor\t: 1\nmodel name\t: another\nflags\t\t: sse4_2\n")
    (tmp_path / "x86").write_text(x86)
    assert provenance.cpu_model(tmp_path / "x86") == "AMD EPYC 9B14 (avx512)"
    (tmp_path / "older").write_text(x86.replace(" avx512f avx512ifma", ""))
    assert provenance.cpu_model(tmp_path / "older") == "AMD EPYC 9B14 (avx2)"
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n"
                                  "Features\t: fp asimd evtstrm aes\n")
    assert provenance.cpu_model(tmp_path / "arm").endswith("(neon)")
    assert provenance.cpu_model(tmp_path / "missing") != ""   # no such file: platform's name
