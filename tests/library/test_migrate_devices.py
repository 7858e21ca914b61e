"""``convert_sync_batch_norm`` on 4 simulated devices: an NNX model (Flax's Linear and BatchNorm, converted) whose
BatchNorm synchronizes over the mesh axis of a ``shard_map``, each device with a quarter of the batch, equals the
unsynchronized model on the whole batch on one device (two training steps: outputs and running statistics).

The checks run in ``tests/library/_migrate_worker.py``, a subprocess started as ``test_sync_bn.py`` starts its worker
(the 4-device flag must be set before JAX starts); the metric and the tolerance are ``test_sync_bn.py``'s.
"""

from __future__ import annotations

import pytest
from test_sync_bn import ROOT, TOL, run_worker  # one machinery and one tolerance for the device tests

pytestmark = pytest.mark.slow  # a subprocess that starts JAX with 4 devices and compiles one step (~5 s)

WORKER = ROOT / "tests" / "library" / "_migrate_worker.py"


@pytest.fixture(scope="module")
def report() -> dict:
    return run_worker(WORKER, timeout=600)


def test_synchronized_nnx_model_equals_the_whole_batch(report):
    assert report["devices"] == 4
    result = report["cases"]["nnx/shard_map"]
    assert "error" not in result, f"{result.get('error')}\n{result.get('traceback', '')}"
    errors = {k: v for k, v in result.items() if k.startswith("step")}
    assert len(errors) == 8 and all(e <= TOL for e in errors.values()), errors  # `<=` also rejects NaN
    assert result["num_batches_tracked"] == 2
