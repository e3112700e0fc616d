"""Where `ovmse` keeps JAX's persistent compilation cache, and that it can be turned off."""

from pathlib import Path

from ovmse import compilation_cache


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compilation_cache.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
    assert compilation_cache.cache_dir() is None
    monkeypatch.delenv(compilation_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.cache_dir() == tmp_path / "xdg" / "ovmse" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation_cache.cache_dir() == tmp_path / "home" / ".cache" / "ovmse" / "jax"


def test_enable_points_jax_at_the_folder_and_off_leaves_it(monkeypatch, tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
        assert compilation_cache.enable() == tmp_path / "c"
        assert Path(jax.config.jax_compilation_cache_dir) == tmp_path / "c"
        monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
        assert compilation_cache.enable() is None
        assert Path(jax.config.jax_compilation_cache_dir) == tmp_path / "c"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
