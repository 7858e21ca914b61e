"""Subprocess worker for tests/library/test_equinox_devices.py: jaxnorm.equinox layers on 4 simulated CPU devices.

Run as ``python tests/library/_equinox_worker.py``. It imports the synchronized-BN worker first, which forces the 4
host devices before JAX is imported, and reuses its inputs (``make_x``, ``_random_params``) and metric
(``rel_err``: ``max|a - b| / max(1, max|b|)``). Each case runs an Equinox model on the batch split over the devices
(each device vmapping over its own examples, ``axis_name=("data", "batch")``) and compares it with the pure function
on the whole batch on one device. Prints one JSON object: ``{"devices": 4, "cases": {name: {metric: value} |
{"error": ...}}}``.
"""

from __future__ import annotations

import json
import sys
import traceback

# _sync_bn_worker sets the 4-device flag when imported: before equinox and jax (ruff's order keeps it first)
import _sync_bn_worker as sync
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jaxnorm as jn
import jaxnorm.equinox as jeqx

AX, BATCH = sync.AX, "batch"
SHAPE = (8, 3, 4, 5)  # 4 devices x 2 examples (C, H, W)
CASES = ("batch_norm/shard_map", "batch_norm/pmap", "batch_norm/one_example_per_device", "instance_norm/shard_map",
         "batch_norm/shard_map_checked")


def _data_parallel(model, mesh, mode: str, *, vmapped: bool = True, check_vma: bool | None = None):
    """``run(params, x, state) -> (y, state)`` on the global batch: the model's arrays ``params`` replicated, ``x``
    split over the devices (shard_map or pmap), each device vmapping the per-example model over its examples (or,
    ``vmapped=False``, calling it on its one example)."""
    static = eqx.filter(model, eqx.is_array, inverse=True)

    def local(params, x, state):
        model = eqx.combine(params, static)
        if vmapped:
            return jax.vmap(model, axis_name=BATCH, in_axes=(0, None), out_axes=(0, None))(x, state)
        y, state = model(x[0], state)
        return y[None], state

    if mode == "shard_map":
        # JAX (0.10) rejects any collective over a vmap axis inside a shard_map that checks vma: see jaxnorm.equinox
        return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AX), P()), out_specs=(P(AX), P()),
                                     check_vma=check_vma if check_vma is not None else not vmapped))
    pmapped = jax.pmap(local, axis_name=AX, in_axes=(None, 0, None), out_axes=(0, None))

    def run(params, x, state):
        y, state = pmapped(params, x.reshape(4, -1, *x.shape[1:]), state)
        return y.reshape(-1, *y.shape[2:]), state

    return run


def _random_layer(layer, rng, c):
    values = sync._random_params(rng, c)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (values["weight"], values["bias"])), values


def _compare(step: int, y, got: dict, y_full, want: dict) -> dict:
    out = {f"step{step}_y": sync.rel_err(y, y_full), f"step{step}_nbt": int(got["num_batches_tracked"]),
           f"step{step}_nbt_full": int(want["num_batches_tracked"])}
    for key in ("running_mean", "running_var"):
        out[f"step{step}_{key}"] = sync.rel_err(got[key], want[key])
    return out


def case_batch_norm(mode: str, mesh, seed=0) -> dict:
    """Two training steps and an eval step (and, under shard_map, the gradients w.r.t. x, weight and bias and the
    forward-mode derivative of the first step): against jn.batch_norm_2d on the whole batch on one device."""
    rng = np.random.default_rng(seed)
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm2d)(3, momentum=0.3, axis_name=(AX, BATCH))
    layer, values = _random_layer(layer, rng, 3)
    params = eqx.filter(layer, eqx.is_array)
    run = _data_parallel(layer, mesh, mode)
    full = jax.jit(lambda x, p, s: jn.batch_norm_2d(x, p, s, train=True, momentum=0.3))
    stats, out = jn.batch_norm_init(3)[1], {}
    x, ct = sync.make_x(rng, SHAPE, 1), rng.standard_normal(SHAPE).astype(np.float32)
    if mode == "shard_map":
        got = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x, state)[0] * ct), argnums=(0, 1)))(params, x)
        want = jax.grad(lambda p, x: jnp.sum(full(x, p, stats)[0] * ct), argnums=(0, 1))(values, x)
        out.update(dx=sync.rel_err(got[1], want[1]), dweight=sync.rel_err(got[0].weight, want[0]["weight"]),
                   dbias=sync.rel_err(got[0].bias, want[0]["bias"]))
        y_dot = jax.jvp(lambda x: run(params, x, state)[0], (x,), (ct,))[1]
        out["y_dot"] = sync.rel_err(y_dot, jax.jvp(lambda x: full(x, values, stats)[0], (x,), (ct,))[1])
    for step in (1, 2):
        y, state = run(params, x, state)
        y_full, stats = full(x, values, stats)
        out.update(_compare(step, y, state.get(layer.state_index), y_full, stats))
        x = sync.make_x(rng, SHAPE, 1)
    y, after = _data_parallel(eqx.nn.inference_mode(layer), mesh, mode)(params, x, state)
    out["eval_y"] = sync.rel_err(y, jn.batch_norm_2d(x, values, stats, train=False)[0])
    before = state.get(layer.state_index)
    out["eval_stats_changed"] = max(sync.rel_err(after.get(layer.state_index)[k], before[k])
                                    for k in ("running_mean", "running_var"))
    return out


def case_one_example_per_device(mesh, seed=1) -> dict:
    """BatchNorm1d with one example per device and axis_name the mesh axis alone (statistics exchanged between the
    devices by the pure function): one value per channel and device, legal for the global batch of 4."""
    rng = np.random.default_rng(seed)
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm1d)(5, axis_name=AX)
    layer, values = _random_layer(layer, rng, 5)
    x = sync.make_x(rng, (4, 5), 1)
    y, state = _data_parallel(layer, mesh, "shard_map", vmapped=False)(eqx.filter(layer, eqx.is_array), x, state)
    y_full, stats = jn.batch_norm_1d(x, values, jn.batch_norm_init(5)[1], train=True)
    return _compare(1, y, state.get(layer.state_index), y_full, stats)


def case_instance_norm(mesh, seed=2) -> dict:
    """InstanceNorm2d with running statistics: per-example output; running statistics averaged over all 8 examples."""
    rng = np.random.default_rng(seed)
    layer, state = eqx.nn.make_with_state(jeqx.InstanceNorm2d)(3, affine=True, track_running_stats=True,
                                                               axis_name=(AX, BATCH))
    layer, values = _random_layer(layer, rng, 3)
    x = sync.make_x(rng, SHAPE, 1)
    y, state = _data_parallel(layer, mesh, "shard_map")(eqx.filter(layer, eqx.is_array), x, state)
    y_full, stats = jn.instance_norm_2d(x, values, jn.instance_norm_init(3, track_running_stats=True)[1], train=True)
    return _compare(1, y, state.get(layer.state_index), y_full, stats)


def case_checked_shard_map(mesh) -> dict:
    """A vmapped layer inside a shard_map with check_vma=True: where JAX rejects the collective over the vmap axis,
    the layer's ValueError names the fix; where it accepts it (jax 0.8), the step equals the pure function's."""
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm2d)(3, axis_name=(AX, BATCH))
    x = sync.make_x(np.random.default_rng(3), SHAPE, 1)
    try:
        y, state = _data_parallel(layer, mesh, "shard_map", check_vma=True)(eqx.filter(layer, eqx.is_array), x, state)
    except ValueError as e:
        return {"raised": str(e)}
    y_full, stats = jn.batch_norm_2d(x, {"weight": layer.weight, "bias": layer.bias}, jn.batch_norm_init(3)[1],
                                     train=True)
    return _compare(1, y, state.get(layer.state_index), y_full, stats)


def run_case(name: str, mesh) -> dict:
    if name == "batch_norm/shard_map_checked":
        return case_checked_shard_map(mesh)
    if name == "batch_norm/one_example_per_device":
        return case_one_example_per_device(mesh)
    if name == "instance_norm/shard_map":
        return case_instance_norm(mesh)
    return case_batch_norm(name.split("/")[1], mesh)


def main(argv) -> int:
    mesh = jax.make_mesh((4,), (AX,), axis_types=(AxisType.Auto,))
    cases = {}
    for name in argv or CASES:
        try:
            cases[name] = run_case(name, mesh)
        except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
            cases[name] = {"error": f"{type(e).__name__}: {e}"[:1500], "traceback": traceback.format_exc(limit=-6)}
    json.dump({"devices": jax.device_count(), "cases": cases}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
