"""XLA:CPU compile options for the experiments' programs (compilation, not training, is most of a short LeNet run
on two CPU cores). Kept because they pay; measured on the project's 2-core VM, XLA:CPU of jax 0.10.2:

* :func:`jit_quick_compile` — for programs whose run time is negligible next to their compile time, on one
  device: no backend optimization and XLA:CPU's classic emitters (``xla_backend_optimization_level=0``,
  ``xla_cpu_use_fusion_emitters=False``).

  - Model initialization (runs once): LeNet_bn's compiles in 0.43 s instead of 3.47 s; the three-config LeNet
    run dropped from 25-27 s to 17-18 s wall when each config's init was a program of its own (now one program
    initializes all three, :func:`experiments.common.training.initial_states`). The initial weights equal the
    default-compiled ones to one float32 ulp of their range (tested; the uniform draws' affine map rounds
    differently).
  - The epoch order (a permutation of the training set and its crop offsets; integers, so bit-identical to the
    default-compiled program, tested): traced and compiled in 0.26 s instead of 0.92 s; its 30 runs in a LeNet run
    take 21 ms instead of 14 ms.

  Never on a program partitioned over several devices: at optimization level 0, XLA:CPU computed wrong conv/BN
  gradients for LeNet_bn split over 4 devices with 2 images each (the same program compiled with the defaults was
  right to 1e-7) — that was the ``--devices 4`` drift.
* :func:`compile_options` ``("step" | "eval")`` — the programs that run every batch or epoch: only the classic
  emitters (``xla_cpu_use_fusion_emitters=False``): LeNet_bn's training step compiles in 1.5 s instead of 2.4 s
  and runs as fast (5.5 vs 6.0 ms), LeNet's in 0.7 s instead of 1.1 s (5.6 vs 5.3 ms); about 1 s of a run.
  Rechecked with the blocked convolutions (models.blocked_conv; XLA compile time in 4 fresh processes each,
  alternating): LeNet's step 0.38-0.70 s instead of 0.66-1.27 s, LeNet_bn's 0.72-1.48 s instead of 1.31-2.46 s;
  steps as fast (1.56 vs 1.64 ms, 2.03 vs 1.91 ms, 8 interleaved rounds).

Other platforms get XLA's defaults.

:func:`persistent_cache` turns on JAX's persistent compilation cache for a run (``--compile-cache``): a second run
of the same programs loads them from disk instead of compiling them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
HOT = {"xla_cpu_use_fusion_emitters": False}


def compile_options(kind: str) -> dict | None:
    """Options for the ``"step"`` and ``"eval"`` programs on the CPU (None elsewhere: XLA's defaults)."""
    if kind not in ("step", "eval"):
        raise ValueError(f"compile_options: expected kind 'step' or 'eval', got {kind!r}")
    return HOT if jax.default_backend() == "cpu" else None


def jit_quick_compile(fn: Callable) -> Callable:
    """``jax.jit(fn)`` compiled quickly (:data:`QUICK_COMPILE`) on the CPU, for a cheap program on one device."""
    jitted = {}

    def call(*args):
        if "fn" not in jitted:  # the backend is known only once JAX is initialized (jax.distributed comes first)
            jitted["fn"] = jax.jit(fn, compiler_options=QUICK_COMPILE if jax.default_backend() == "cpu" else None)
        return jitted["fn"](*args)

    return call


# Every program goes into the cache, however quickly it compiled: JAX's default (1 s) would leave out most of LeNet's
# (0.6 s for LeNet's step, 0.2 s for an evaluation), and a cached program loads in milliseconds.
CACHE_MIN_COMPILE_SECONDS = 0.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxnorm-experiments/xla`` (``~/.cache/...`` without XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxnorm-experiments" / "xla"


@contextlib.contextmanager
def persistent_cache(setting: str | None) -> Iterator[str | None]:
    """JAX's persistent compilation cache while the block runs; yields the folder used (None: no cache).

    ``setting``: a folder; ``"off"`` (compile everything); or None: what the caller configured (a folder in
    ``JAX_COMPILATION_CACHE_DIR`` or the test suite's per-run one; no cache with
    ``JAX_ENABLE_COMPILATION_CACHE=false``), else :func:`default_cache_dir`. The settings and JAX's cache state are restored afterwards, so a run inside a
    longer process (a test) leaves the process as it found it. Must be entered before the run's first compilation:
    JAX decides once whether to use the cache (``reset_cache`` makes it decide again).
    """
    configured = jax.config.jax_compilation_cache_dir is not None or not jax.config.jax_enable_compilation_cache
    if setting == "off":
        changes = {"jax_enable_compilation_cache": False}
    elif setting is None and configured:
        changes = {}
    else:
        folder = Path(setting) if setting is not None else default_cache_dir()
        changes = {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": str(folder),
                   "jax_persistent_cache_min_compile_time_secs": CACHE_MIN_COMPILE_SECONDS}
    before = {name: getattr(jax.config, name) for name in changes}
    _update_cache_settings(changes)
    try:
        yield None if setting == "off" or not jax.config.jax_enable_compilation_cache \
            else jax.config.jax_compilation_cache_dir
    finally:
        _update_cache_settings(before)


def _update_cache_settings(values: dict) -> None:
    if not values:
        return
    from jax.experimental.compilation_cache import compilation_cache

    for name, value in values.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # JAX decides again, at the next compilation, whether and where to cache
