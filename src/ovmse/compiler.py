"""How ovmse compiles its programs: `jit` is `jax.jit` with XLA options chosen per backend.

On a CPU, XLA's backend optimisation level 1 (its LLVM pipeline at -O1, not the default -O2)
compiles a study cell's programs about a quarter faster and runs them at least as fast: a 3m
OVMSE chunk 1.3x faster, a 3m MACQL chunk the same (docs/benchmarks.md, "A study cell before and
after"). The code it generates rounds some floating-point operations differently (fewer fused
multiply-adds), so CPU numbers differ from those of XLA's default level by float rounding, as
CPU and GPU numbers do; with the same options, the same seed gives the same numbers. On a GPU
or TPU no option is set. Summaries record the options (`compiler_options`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options() -> dict[str, Any]:
    """The XLA options `jit` compiles with on this process's default backend."""
    return dict(CPU_OPTIONS) if jax.default_backend() == "cpu" else {}


def jit(fun: Callable, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)` compiling with `compiler_options()` (part of the persistent
    compilation cache's key, so programs compiled with other options are not reused)."""
    return jax.jit(fun, compiler_options=compiler_options() or None, **kwargs)
