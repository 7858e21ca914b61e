"""Shared test configuration: float32 everywhere unless a test opts in to float64 locally.

On a GPU, JAX by default runs float32 matrix products and convolutions in TF32 (~1e-3 relative) and some reductions
in a nondeterministic order. The model tests compare against float64 / PyTorch references and rerun training for
bitwise equality, so they ask for full float32 and deterministic kernels (both settings change nothing on the CPU).
Measured on an H200: without them 12 model tests fail (6.8e-4 relative differences, one LeNet run that no longer
diverges, one bitwise rerun); with them every test of the fast suite (`-m "not slow"`) passed there.
"""

import os

# Read when the GPU backend starts (first use), so setting it here, before any test runs, takes effect.
if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_default_matmul_precision", "highest")
