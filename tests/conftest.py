"""Shared test configuration: float32 everywhere unless a test opts in to float64 locally.

On a GPU, JAX by default runs float32 matrix products and convolutions in TF32 (~1e-3 relative) and some reductions
in a nondeterministic order. The model tests compare against float64 / PyTorch references and rerun training for
bitwise equality, so they ask for full float32 and deterministic kernels (both settings change nothing on the CPU).
Measured on an H200: without them 12 model tests fail (6.8e-4 relative differences, one LeNet run that no longer
diverges, one bitwise rerun); with them every test of the fast suite (`-m "not slow"`) passed there.
"""

import os
import shutil
import tempfile

# Read when the GPU backend starts (first use), so setting it here, before any test runs, takes effect.
if "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_default_matmul_precision", "highest")
# A silent dtype or rank promotion (float32 + float64 -> float64, (C,) + (N, C) -> (N, C)) fails a test instead of
# passing unnoticed: the library must say what it promotes (Equinox's test configuration does the same).
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    """One XLA compilation cache per test run, empty when the run starts and shared by the xdist workers and the
    subprocesses that tests start (they inherit the environment): a program that several tests compile -- the
    LeNet steps, the CLI runs, identical references -- is compiled once per run. Nothing carries over between runs
    (the folder is removed at the end), so the suite's time is that of a cold start. A cache folder set by the
    caller is used as it is."""
    if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="jaxnorm-tests-xla-cache-")
        config._jaxnorm_cache_folder = folder
        os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # jax read its environment when conftest imported it
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")))


def pytest_unconfigure(config):
    folder = getattr(config, "_jaxnorm_cache_folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


# The files whose tests take longest together, longest first. `--dist loadfile` keeps each file on one worker and
# hands files out in collection order, so a long file that came last would leave the other worker idle at the end;
# starting the longest ones first balances the workers.
LONGEST_FIRST = ("test_sync_bn.py", "test_transforms.py", "test_parity_golden.py", "test_grads.py", "test_lenet.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every other file keeps its order
