"""Where `ovmse` keeps JAX's persistent compilation cache, that it can be turned off, and the
XLA options its programs compile with."""

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


def test_jit_compiles_with_the_cpu_options(monkeypatch):
    import jax
    import jax.numpy as jnp
    import pytest

    from ovmse import compiler

    assert compiler.compiler_options() == {"xla_backend_optimization_level": 1}  # the CPU's
    x = jnp.linspace(-3.0, 3.0, 101)
    ours = compiler.jit(lambda v: jnp.tanh(v) * jnp.exp(-v * v))(x)
    assert jnp.allclose(ours, jax.jit(lambda v: jnp.tanh(v) * jnp.exp(-v * v))(x), atol=1e-6)
    # the options reach XLA: an option it does not know is refused
    monkeypatch.setitem(compiler.CPU_OPTIONS, "xla_no_such_option", 1)
    with pytest.raises(Exception, match="xla_no_such_option"):
        compiler.jit(lambda v: v + 1.0)(x)
