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

Other platforms get XLA's defaults.
"""

from __future__ import annotations

from collections.abc import Callable

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
