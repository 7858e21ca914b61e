"""Subprocess worker for tests/library/test_migrate_devices.py: an NNX model converted with
``convert_sync_batch_norm`` on 4 simulated CPU devices.

Run as ``python tests/library/_migrate_worker.py``. It imports the synchronized-BN worker first, which forces the 4
host devices before JAX is imported, and reuses its inputs (``make_x``) and metric (``rel_err``: ``max|a - b| /
max(1, max|b|)``). Prints one JSON object: ``{"devices": 4, "cases": {name: {metric: value} | {"error": ...}}}``.
"""

from __future__ import annotations

import json
import sys
import traceback

# _sync_bn_worker sets the 4-device flag when imported: before flax and jax (ruff's order keeps it first)
import _sync_bn_worker as sync
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxnorm.nnx import convert_flax_norms, convert_sync_batch_norm

AX = sync.AX
CASES = ("nnx/shard_map",)


def _model() -> nnx.Module:
    """Flax's Linear and BatchNorm, converted: PyTorch's BatchNorm with Flax's parameters."""
    return convert_flax_norms(nnx.Sequential(nnx.Linear(5, 3, rngs=nnx.Rngs(0)),
                                             nnx.BatchNorm(3, momentum=0.7, rngs=nnx.Rngs(1))))


def case_nnx_shard_map(mesh, seed=0) -> dict:
    """Two training steps of the synchronized model, each device with 2 of the 8 examples (running statistics chained),
    against the unsynchronized model on the whole batch on one device."""
    rng = np.random.default_rng(seed)
    whole, model = _model(), convert_sync_batch_norm(_model(), AX)
    graphdef, state = nnx.split(model)

    def local(state, x):
        replica = nnx.merge(graphdef, state)
        return replica(x), nnx.state(replica)

    step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AX)), out_specs=(P(AX), P()), check_vma=False))
    out = {}
    for i in (1, 2):
        x = sync.make_x(rng, (8, 5), 1)
        y, state = step(state, x)
        out[f"step{i}_y"] = sync.rel_err(y, whole(x))
        synced = nnx.merge(graphdef, state).layers[1]
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            out[f"step{i}_{key}"] = sync.rel_err(getattr(synced, key)[...], getattr(whole.layers[1], key)[...])
    out["num_batches_tracked"] = int(nnx.merge(graphdef, state).layers[1].num_batches_tracked[...])
    return out


def main() -> int:
    mesh = jax.make_mesh((4,), (AX,), axis_types=(AxisType.Auto,))
    cases = {}
    for name in CASES:
        try:
            cases[name] = case_nnx_shard_map(mesh)
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails naming it
            cases[name] = {"error": f"{type(e).__name__}: {e}"[:1500], "traceback": traceback.format_exc(limit=-6)}
    json.dump({"devices": jax.device_count(), "cases": cases}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
