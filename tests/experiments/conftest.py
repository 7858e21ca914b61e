"""The experiments' tests run with JAX's standard promotion rules, not the strict ones of ``tests/conftest.py``.

The library (``jaxnorm/``) is held to strict dtype and rank promotion; the experiments' own code still relies on
implicit promotion in places (``experiments/common/training.py``'s ``cross_entropy`` divides a float sum by an int
count, ``scripts/gpu_check.py`` adds an int64 count to float64 and broadcasts ``(C,)`` parameters against
``(N, L, C)``). Remove this file once those are explicit.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def _standard_promotion():
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield
