"""Subprocess worker for tests/library/test_sync_bn.py: synchronized BatchNorm on 4 simulated CPU devices.

Run as ``python tests/library/_sync_bn_worker.py`` (the test does). It forces 4 host devices *before* JAX is
imported — the flag has no effect once a backend exists, which is why this is a separate process —
runs every case, and prints one JSON object on stdout:

    {"cases": {name: {metric: value, ...} | {"error": traceback}}, "devices": 4, ...}

Each case compares a data-parallel run (batch split 4 ways) against ``jn.batch_norm`` on the full
batch on one device, and against a float64 NumPy reference (an independent golden). Metrics are
*relative* max errors ``max|a - b| / max(1, max|b|)`` so one tolerance fits outputs O(1) and
weight/bias gradients that are sums over the batch.
"""

from __future__ import annotations

import os

_N_DEV = 4
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_N_DEV}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _sync_bn_cases import LAYOUTS, case_names  # noqa: E402  (tests/ is sys.path[0] for a script)
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxnorm as jn  # noqa: E402

AX = "data"
EPS = 1e-5
COLLECTIVES = {
    "psum",
    "psum_invariant",
    "psum2",
    "pmax",
    "pmin",
    "all_gather",
    "all_gather_invariant",
    "all_to_all",
    "ppermute",
    "reduce_scatter",
    "psum_scatter",
    "pgather",
}


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# ----------------------------------------------------------------------------- float64 reference
def np_bn_train(x, w, b, rm, rv, nbt, momentum, axis, ct):
    """Float64 training-mode BN forward, running-stat update and VJP (PyTorch semantics)."""
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    red = tuple(i for i in range(x.ndim) if i != axis)
    shp = [1] * x.ndim
    shp[axis] = x.shape[axis]
    m = x.size // x.shape[axis]
    mean = x.mean(red)
    var = x.var(red)  # biased: normalization
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean.reshape(shp)) * inv.reshape(shp)
    y = xhat * np.reshape(w, shp) + np.reshape(b, shp)
    nbt = nbt + 1
    f = 1.0 / nbt if momentum is None else momentum
    rm = (1 - f) * np.asarray(rm, np.float64) + f * mean
    rv = (1 - f) * np.asarray(rv, np.float64) + f * var * m / (m - 1)  # unbiased, global count
    g = np.asarray(ct, np.float64)
    db = g.sum(red)
    dw = (g * xhat).sum(red)
    gh = g * np.reshape(w, shp)
    dx = (inv.reshape(shp)) * (gh - gh.mean(red).reshape(shp) - xhat * (gh * xhat).mean(red).reshape(shp))
    return y, rm, rv, nbt, dx, dw, db


# ----------------------------------------------------------------------------- norms under test
def bn(*, axis, momentum=0.1, train=True):
    """``norm(x, params, stats, axis_name) -> (y, stats)`` for jaxnorm.batch_norm."""

    def norm(x, p, s, axis_name):
        return jn.batch_norm(x, p, s, train=train, momentum=momentum, eps=EPS, axis=axis, axis_name=axis_name)

    return norm


def instance(*, axis, momentum=0.1, train=True):
    """jaxnorm.instance_norm: per-sample statistics; axis_name averages the running-stat update."""

    def norm(x, p, s, axis_name):
        return jn.instance_norm(x, p, s, train=train, momentum=momentum, eps=EPS, axis=axis, axis_name=axis_name)

    return norm


def group(*, axis, num_groups):
    """jaxnorm.group_norm (no axis_name: statistics are per sample); stats pass through."""

    def norm(x, p, s, axis_name):
        del axis_name
        return jn.group_norm(x, p, num_groups, eps=EPS, axis=axis), s

    return norm


# ----------------------------------------------------------------------------- data-parallel modes
def _split(x):
    return x.reshape((_N_DEV, x.shape[0] // _N_DEV) + x.shape[1:])


def _merge(x):
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _replica_copy(tree):
    """pmap/vmap return one copy per replica: (copy 0, max |copy_i - copy_0| over all leaves)."""
    spread = jnp.zeros((), jnp.float32)
    for v in jax.tree.leaves(tree):
        v = v.astype(jnp.float32)
        spread = jnp.maximum(spread, jnp.max(jnp.abs(v - v[0])))
    return jax.tree.map(lambda v: v[0], tree), spread


def make_mode(mode, mesh, norm):
    """``run(x, params, stats) -> (y, stats, replica_spread)`` on the global batch, for one mode.

    full: one device, whole batch (the reference). shard_map / pmap / vmap: 4 shards with
    ``axis_name="data"``. shard_map_unchecked: the same with ``check_vma=False``.
    jit_sharded: plain jit, batch-sharded input, no axis_name (XLA inserts the collectives).
    shard_map_no_axis_name: negative control, per-device statistics.
    """
    if mode == "full":
        f = jax.jit(lambda x, p, s: norm(x, p, s, None))
        return lambda x, p, s: (*f(x, p, s), 0.0)
    if mode.startswith("shard_map"):
        name = None if mode == "shard_map_no_axis_name" else AX
        f = jax.jit(
            jax.shard_map(
                lambda x, p, s: norm(x, p, s, name),
                mesh=mesh,
                in_specs=(P(AX), P(), P()),
                out_specs=(P(AX), P()),
                # The control's stats differ per device; unchecked, shard_map returns device 0's copy.
                check_vma=mode == "shard_map",
            )
        )
        return lambda x, p, s: (*f(x, p, s), 0.0)
    if mode in ("pmap", "vmap"):
        mapper = jax.pmap if mode == "pmap" else jax.vmap
        f = mapper(lambda x, p, s: norm(x, p, s, AX), axis_name=AX, in_axes=(0, None, None), out_axes=(0, 0))
        f = f if mode == "pmap" else jax.jit(f)

        def run(x, p, s):
            y, st = f(_split(x), p, s)
            st, spread = _replica_copy(st)
            return _merge(y), st, spread

        return run
    if mode == "jit_sharded":
        data, rep = NamedSharding(mesh, P(AX)), NamedSharding(mesh, P())
        f = jax.jit(lambda x, p, s: norm(x, p, s, None))

        def run(x, p, s):
            x, p, s = jax.device_put(x, data), jax.device_put(p, rep), jax.device_put(s, rep)
            return (*f(x, p, s), 0.0)

        return run
    raise ValueError(mode)


# ----------------------------------------------------------------------------- cases
# Inputs are NumPy float32 arrays drawn from a per-case ``np.random.Generator``: made with JAX, every array op would be
# compiled on its own, once per shape, and compiling is most of this worker's time.
def _normal(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def make_x(rng, shape, axis):
    """Input whose per-device statistics differ strongly from the global ones.

    A per-example offset ramp along the batch axis makes each device's mean and variance wrong for
    the full batch, so a BN that forgot to synchronize fails by O(1), not by rounding.
    """
    n, c = shape[0], shape[axis]
    cshape = [1] * len(shape)
    cshape[axis] = c
    scale = np.linspace(0.5, 3.0, c, dtype=np.float32).reshape(cshape)
    ramp = np.linspace(-4.0, 4.0, n, dtype=np.float32).reshape((n,) + (1,) * (len(shape) - 1))
    # +10: a non-zero mean, where naive E[x^2]-E[x]^2 loses digits
    return (_normal(rng, shape) * scale + ramp + np.float32(10.0)).astype(np.float32)


def _random_params(rng, c):
    return {"weight": rng.uniform(0.5, 1.5, c).astype(np.float32), "bias": _normal(rng, (c,))}


def _compare_step(step, y_m, y_f, s_mode, s_full, spread) -> dict:
    """One training step of a mapped mode against the single-device run on the full batch."""
    return {
        f"step{step}_y": rel_err(y_m, y_f),
        f"step{step}_running_mean": rel_err(s_mode["running_mean"], s_full["running_mean"]),
        f"step{step}_running_var": rel_err(s_mode["running_var"], s_full["running_var"]),
        f"step{step}_replica_spread": float(spread),
        f"step{step}_nbt": int(s_mode["num_batches_tracked"]),
        f"step{step}_nbt_full": int(s_full["num_batches_tracked"]),
    }


def case_bn_train(mode, mesh, *, shape, axis, momentum, seed=0):
    """Two BN training steps (stats chained) then an eval step: mode vs full batch vs float64."""
    rng = np.random.default_rng(seed)
    c = shape[axis]
    _, stats = jn.batch_norm_init(c)
    params = _random_params(rng, c)
    run = make_mode(mode, mesh, bn(axis=axis, momentum=momentum))
    full = make_mode("full", mesh, bn(axis=axis, momentum=momentum))
    out = {}
    s_mode, s_full = stats, stats
    ref_rm, ref_rv, ref_nbt = np.zeros(c), np.ones(c), 0
    for step in (1, 2):
        x = make_x(rng, shape, axis)
        y_m, s_mode, spread = run(x, params, s_mode)
        y_f, s_full, _ = full(x, params, s_full)
        y_r, ref_rm, ref_rv, ref_nbt, *_ = np_bn_train(
            x, params["weight"], params["bias"], ref_rm, ref_rv, ref_nbt, momentum, axis, np.zeros(shape)
        )
        out.update(_compare_step(step, y_m, y_f, s_mode, s_full, spread))
        out[f"step{step}_nbt_dtype"] = str(jnp.asarray(s_mode["num_batches_tracked"]).dtype)
        # The single-device result against the float64 golden (guards "both equally wrong").
        out[f"step{step}_full_vs_f64_y"] = rel_err(y_f, y_r)
        out[f"step{step}_full_vs_f64_running_mean"] = rel_err(s_full["running_mean"], ref_rm)
        out[f"step{step}_full_vs_f64_running_var"] = rel_err(s_full["running_var"], ref_rv)
    out["f64_nbt"] = ref_nbt
    # Eval with the synchronized running stats: no batch statistics, collection unchanged.
    x = make_x(rng, shape, axis)
    y_m, s_after, _ = make_mode(mode, mesh, bn(axis=axis, train=False))(x, params, s_mode)
    y_f, _, _ = make_mode("full", mesh, bn(axis=axis, train=False))(x, params, s_full)
    out["eval_y"] = rel_err(y_m, y_f)
    out["eval_stats_changed"] = max(rel_err(s_after[k], s_mode[k]) for k in ("running_mean", "running_var"))
    return out


def _vjp_outside(mode, mesh, norm, stats, x, w, b, ct):
    """VJP of the whole data-parallel forward, taken outside the map (global arrays)."""
    run = make_mode(mode, mesh, norm)
    y, vjp = jax.vjp(lambda x, w, b: run(x, {"weight": w, "bias": b}, stats)[0], x, w, b)
    return (y, *vjp(ct)), 0.0


def _vjp_inside(mode, norm, stats, x, w, b, ct):
    """The data-parallel training pattern: each replica differentiates its own part of the loss;
    the replicated parameters' gradients are psum'd over the axis (what an optimizer step needs)."""

    def local(x, ct, w, b):
        y, vjp = jax.vjp(lambda x, w, b: norm(x, {"weight": w, "bias": b}, stats, AX)[0], x, w, b)
        dx, dw, db = vjp(ct)
        return y, dx, jax.lax.psum(dw, AX), jax.lax.psum(db, AX)

    mapper = jax.pmap if mode == "pmap" else jax.vmap
    f = mapper(local, axis_name=AX, in_axes=(0, 0, None, None))
    y, dx, dw, db = f(_split(x), _split(ct), w, b)
    (dw, db), spread = _replica_copy((dw, db))
    return (_merge(y), _merge(dx), dw, db), float(spread)


def case_bn_grad(mode, mesh, *, shape, axis, inside=False, seed=1):
    """VJP w.r.t. x, weight, bias with a random cotangent: mode vs full batch vs float64."""
    rng = np.random.default_rng(seed)
    c = shape[axis]
    _, stats = jn.batch_norm_init(c)
    x = make_x(rng, shape, axis)
    params = _random_params(rng, c)
    w, b = params["weight"], params["bias"]
    ct = _normal(rng, shape)
    norm = bn(axis=axis)
    if inside:
        got, spread = _vjp_inside(mode, norm, stats, x, w, b, ct)
    else:
        got, spread = _vjp_outside(mode, mesh, norm, stats, x, w, b, ct)
    ref, _ = _vjp_outside("full", mesh, norm, stats, x, w, b, ct)
    *_, dx_r, dw_r, db_r = np_bn_train(x, w, b, np.zeros(c), np.ones(c), 0, 0.1, axis, ct)
    out = {key: rel_err(g, r) for key, g, r in zip(("y", "dx", "dweight", "dbias"), got, ref, strict=True)}
    out["replica_spread"] = spread
    for key, r, g in (("dx", dx_r, ref[1]), ("dweight", dw_r, ref[2]), ("dbias", db_r, ref[3])):
        out[f"full_vs_f64_{key}"] = rel_err(g, r)
    return out


def case_instance(mode, mesh, seed=2):
    """InstanceNorm with running stats: output and running stats equal the full batch."""
    shape, axis = (8, 3, 4, 5), 1
    rng = np.random.default_rng(seed)
    params, stats = jn.instance_norm_init(3, affine=True, track_running_stats=True)
    params = _random_params(rng, 3)
    run, full = (make_mode(m, mesh, instance(axis=axis)) for m in (mode, "full"))
    out, s_mode, s_full = {}, stats, stats
    for step in (1, 2):
        x = make_x(rng, shape, axis)
        y_m, s_mode, spread = run(x, params, s_mode)
        y_f, s_full, _ = full(x, params, s_full)
        out.update(_compare_step(step, y_m, y_f, s_mode, s_full, spread))
    return out


def case_group(mode, mesh, seed=3):
    """GroupNorm (per-sample statistics, no axis_name) on sharded data: output and VJP unchanged."""
    shape, axis = (8, 4, 5, 6), -1
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis)
    params = _random_params(rng, 6)
    ct = _normal(rng, shape)
    norm = group(axis=axis, num_groups=3)
    got, _ = _vjp_outside(mode, mesh, norm, {}, x, params["weight"], params["bias"], ct)
    ref, _ = _vjp_outside("full", mesh, norm, {}, x, params["weight"], params["bias"], ct)
    return {key: rel_err(g, r) for key, g, r in zip(("y", "dx", "dweight", "dbias"), got, ref, strict=True)}


def case_bn_jvp(mesh, seed=4):
    """Forward mode through the collective: jvp of BN under shard_map equals jvp of BN on the full batch."""
    shape, axis = LAYOUTS["nchw"]
    rng = np.random.default_rng(seed)
    x, t = make_x(rng, shape, axis), _normal(rng, shape)
    params, stats = _random_params(rng, shape[axis]), jn.batch_norm_init(shape[axis])[1]
    tp = {name: _normal(rng, value.shape) for name, value in params.items()}
    run, full = (make_mode(m, mesh, bn(axis=axis)) for m in ("shard_map", "full"))
    got = jax.jvp(lambda x, p: run(x, p, stats)[0], (x, params), (t, tp))
    want = jax.jvp(lambda x, p: full(x, p, stats)[0], (x, params), (t, tp))
    return {"y": rel_err(got[0], want[0]), "y_dot": rel_err(got[1], want[1])}


def _valid_rows(x, mask, axis):
    """The valid examples of x (N, C, ...) as float64 (M, C) rows, channels last."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    return x[np.asarray(mask).reshape(-1)].reshape(-1, x.shape[-1])


def case_masked_counts(mode, mesh, seed=5):
    """4 devices with 2, 0, 1 and 2 valid examples (of 2 each): output at valid positions and running statistics
    equal float64 BN on the 5 valid examples, and the padding (NaN here) changes nothing."""
    shape, axis = (8, 3, 4), 1
    rng = np.random.default_rng(seed)
    x = make_x(rng, shape, axis)
    mask = np.array([1, 1, 0, 0, 1, 0, 1, 1], bool).reshape(-1, 1, 1)
    x_padded = np.where(mask, x, np.nan).astype(np.float32)
    params, stats = _random_params(rng, 3), jn.batch_norm_init(3)[1]
    if mode == "shard_map":
        f = jax.jit(jax.shard_map(
            lambda x, m, p, s: jn.batch_norm(x, p, s, train=True, eps=EPS, axis=axis, axis_name=AX, mask=m),
            mesh=mesh, in_specs=(P(AX), P(AX), P(), P()), out_specs=(P(AX), P())))
        args = (x_padded, mask, params, stats)
    else:
        data, rep = NamedSharding(mesh, P(AX)), NamedSharding(mesh, P())
        f = jax.jit(lambda x, m, p, s: jn.batch_norm(x, p, s, train=True, eps=EPS, axis=axis, mask=m))
        args = (jax.device_put(x_padded, data), jax.device_put(mask, data), jax.device_put(params, rep), stats)
    y, new = f(*args)
    rows = _valid_rows(x, mask, axis)
    mean, var = rows.mean(0), rows.var(0)
    want = (rows - mean) / np.sqrt(var + EPS) * np.asarray(params["weight"]) + np.asarray(params["bias"])
    return {"y": rel_err(_valid_rows(y, mask, axis), want), "running_mean": rel_err(new["running_mean"], 0.1 * mean),
            "running_var": rel_err(new["running_var"], 0.9 + 0.1 * rows.var(0, ddof=1)),
            "padding_finite": bool(np.isfinite(np.asarray(y)).all()), "nbt": int(new["num_batches_tracked"])}


def case_groups(mode, mesh, seed=6):
    """axis_index_groups [[0, 1], [2, 3]]: each pair of devices gets the statistics of its own 4 examples."""
    shape, axis, groups = (8, 3, 5), 1, [[0, 1], [2, 3]]
    x = make_x(np.random.default_rng(seed), shape, axis)
    stats = jn.batch_norm_init(3)[1]

    def norm(x):
        y, s = jn.batch_norm(x, {}, stats, train=True, eps=EPS, axis=axis, axis_name=AX, axis_index_groups=groups)
        return y, s["running_mean"][None], s["running_var"][None]

    if mode == "shard_map":
        f = jax.jit(jax.shard_map(norm, mesh=mesh, in_specs=P(AX), out_specs=(P(AX), P(AX), P(AX)),
                                  check_vma=False))
        y, rm, rv = f(x)
    else:
        y, rm, rv = jax.pmap(lambda x: jax.tree.map(lambda a: a, norm(x)), axis_name=AX)(_split(x))
        y, rm, rv = _merge(y), rm.reshape(4, -1), rv.reshape(4, -1)
    out = {}
    for g, devices_in_group in enumerate(groups):
        rows = np.asarray(x, np.float64)[2 * devices_in_group[0]:2 * devices_in_group[-1] + 2]
        red = (0, 2)
        mean, var = rows.mean(red, keepdims=True), rows.var(red, keepdims=True)
        out[f"group{g}_y"] = rel_err(np.asarray(y)[2 * devices_in_group[0]:2 * devices_in_group[-1] + 2],
                                     (rows - mean) / np.sqrt(var + EPS))
        for d in devices_in_group:
            out[f"group{g}_device{d}_running_mean"] = rel_err(np.asarray(rm)[d], 0.1 * mean.ravel())
            out[f"group{g}_device{d}_running_var"] = rel_err(np.asarray(rv)[d],
                                                              0.9 + 0.1 * rows.var(red, ddof=1).ravel())
    return out


# ----------------------------------------------------------------------------- collectives
def _count_prims(jaxpr, counts):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in COLLECTIVES:
            counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
        for sub in _subjaxprs(eqn):
            _count_prims(sub, counts)
    return counts


def _subjaxprs(eqn):
    for v in eqn.params.values():
        for item in v if isinstance(v, (list, tuple)) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _hlo_collectives(lowered):
    """Collective ops in the compiled (optimized) HLO, by op name."""
    counts = {}
    for line in lowered.compile().as_text().splitlines():
        for op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"):
            if f" {op}(" in line or f" {op}-start(" in line:
                counts[op] = counts.get(op, 0) + 1
    return counts


def collective_counts(mesh):
    """Collectives in the shard_map'd BN training step: jaxpr primitives and compiled HLO ops.

    Counted with ``check_vma=False`` so the count is available even when the checked form is
    rejected (the collectives are the same; the checker adds only non-communicating ``pvary``).
    """
    c = 3
    params, stats = jn.batch_norm_init(c)
    x = make_x(np.random.default_rng(0), (8, c, 4, 4), 1)
    norm = bn(axis=1)

    def fwd(x, p, s):
        return jax.shard_map(
            lambda x, p, s: norm(x, p, s, AX),
            mesh=mesh,
            check_vma=False,
            in_specs=(P(AX), P(), P()),
            out_specs=(P(AX), P()),
        )(x, p, s)

    def bwd_x(x, ct):
        # Gradient w.r.t. x only; parameter gradients add their own psums (AD, not the library).
        return jax.vjp(lambda x: fwd(x, params, stats)[0], x)[1](ct)[0]

    data, rep = NamedSharding(mesh, P(AX)), NamedSharding(mesh, P())
    sharded = jax.jit(lambda x, p, s: norm(x, p, s, None))
    return {
        "forward_jaxpr": _count_prims(jax.make_jaxpr(fwd)(x, params, stats).jaxpr, {}),
        "forward_hlo": _hlo_collectives(jax.jit(fwd).lower(x, params, stats)),
        "fwd_and_bwd_x_jaxpr": _count_prims(jax.make_jaxpr(bwd_x)(x, x).jaxpr, {}),
        "fwd_and_bwd_x_hlo": _hlo_collectives(jax.jit(bwd_x).lower(x, x)),
        "jit_sharded_forward_hlo": _hlo_collectives(
            sharded.lower(jax.device_put(x, data), jax.device_put(params, rep), jax.device_put(stats, rep))
        ),
    }


# ----------------------------------------------------------------------------- main


def run_case(name, mesh):
    kind, *rest = name.split("/")
    mode, rest = (rest[0], rest[1:]) if rest else (None, [])
    if kind == "bn_train" and rest[0] in LAYOUTS:
        shape, axis = LAYOUTS[rest[0]]
        mom = None if rest[1] == "momentum=None" else 0.1
        return case_bn_train(mode, mesh, shape=shape, axis=axis, momentum=mom)
    if kind == "bn_train" and rest == ["per_device_batch_1"]:
        # One example per device: illegal for a lone device, legal for the global batch of 4
        # (PyTorch's SyncBatchNorm checks the global count).
        return case_bn_train(mode, mesh, shape=(4, 5), axis=1, momentum=0.1)
    if kind in ("bn_grad", "bn_grad_inside"):
        shape, axis = LAYOUTS[rest[0]]
        return case_bn_grad(mode, mesh, shape=shape, axis=axis, inside=kind == "bn_grad_inside")
    if kind == "control":
        return case_bn_train(mode, mesh, shape=LAYOUTS["nchw"][0], axis=1, momentum=0.1)
    if kind == "bn_jvp":
        return case_bn_jvp(mesh)
    if kind == "masked_counts":
        return case_masked_counts(mode, mesh)
    if kind == "groups":
        return case_groups(mode, mesh)
    if kind == "instance_train":
        return case_instance(mode, mesh)
    if kind == "group":
        return case_group(mode, mesh)
    if kind == "collectives":
        return collective_counts(mesh)
    raise ValueError(name)


def main(argv) -> int:
    mesh = jax.make_mesh((_N_DEV,), (AX,), axis_types=(AxisType.Auto,))
    wanted = argv or case_names()
    cases = {}
    for name in wanted:
        try:
            cases[name] = run_case(name, mesh)
        except Exception as e:  # noqa: BLE001 - one failing mode must not hide the others
            cases[name] = {
                "error": f"{type(e).__name__}: {e}".strip()[:1500],
                "traceback": traceback.format_exc(limit=-6),
            }
    signatures = {
        name: str(inspect.signature(getattr(jn, name)))
        for name in ("batch_norm", "instance_norm", "group_norm")
        if hasattr(jn, name)
    }
    json.dump(
        {"devices": jax.device_count(), "jax": jax.__version__, "cases": cases, "signatures": signatures}, sys.stdout
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
