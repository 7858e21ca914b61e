"""Every JAX transformation, forward mode included: the README's "works with" table, cell by cell.

Each cell applies one transformation to one jaxnorm norm and to a plain-autodiff float64 reference implementation of
the same norm (two-pass statistics written below in ``jax.numpy``, no jaxnorm code) and compares the results to
1e-9 relative in float64, where any wrong term of the custom derivative would show up orders of magnitude above.
The ``vmap`` row maps each transformation over a batch of inputs and tangents. Separate tests cover ``scan`` +
``checkpoint`` over stacked layers, ``axis_name`` (synchronized BN under ``vmap``; ``shard_map``/``pmap`` are in
``test_sync_bn.py``, which needs devices), ``jax.export`` for cpu/cuda/tpu, float64 and half precision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

EPS = 1e-5
TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Family:
    shape: tuple[int, ...]
    fn: Callable  # (x, params) -> y with jaxnorm
    ref: Callable  # (x, params) -> y, plain autodiff
    params: Callable  # (rng) -> params


def _stats_like(c):
    rng = np.random.default_rng(11)
    return {"running_mean": jnp.asarray(rng.normal(size=c)), "running_var": jnp.asarray(rng.uniform(0.5, 2, c)),
            "num_batches_tracked": jnp.asarray(0, jnp.int32)}


def _standardize(x, axes, eps=EPS):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True) + eps)


def _channel(v, ndim, axis=1):
    return v.reshape(tuple(-1 if a == axis else 1 for a in range(ndim)))


def _affine_channels(y, p):
    return y * _channel(p["weight"], y.ndim) + _channel(p["bias"], y.ndim)


def _channel_params(c):
    return lambda rng: {"weight": jnp.asarray(rng.uniform(0.5, 2, c)), "bias": jnp.asarray(rng.normal(size=c))}


def _bn_eval_ref(x, p):
    s = _stats_like(3)
    y = (x - _channel(s["running_mean"], x.ndim)) / jnp.sqrt(_channel(s["running_var"], x.ndim) + EPS)
    return _affine_channels(y, p)


def _gn_ref(x, p):
    g = x.reshape(x.shape[0], 2, -1)
    return _affine_channels(_standardize(g, (2,)).reshape(x.shape), p)


FAMILIES = {
    "batch_norm": Family((4, 3, 2, 2), lambda x, p: jn.batch_norm_2d(x, p, _stats_like(3), train=True)[0],
                         lambda x, p: _affine_channels(_standardize(x, (0, 2, 3)), p), _channel_params(3)),
    "batch_norm eval": Family((4, 3, 2, 2), lambda x, p: jn.batch_norm_2d(x, p, _stats_like(3), train=False)[0],
                              _bn_eval_ref, _channel_params(3)),
    "instance_norm": Family((2, 3, 2, 3), lambda x, p: jn.instance_norm_2d(x, p, {}, train=True)[0],
                            lambda x, p: _affine_channels(_standardize(x, (2, 3)), p), _channel_params(3)),
    "layer_norm": Family((3, 2, 4), lambda x, p: jn.layer_norm(x, p, (2, 4)),
                         lambda x, p: _standardize(x, (1, 2)) * p["weight"][None] + p["bias"][None],
                         lambda rng: {"weight": jnp.asarray(rng.uniform(0.5, 2, (2, 4))),
                                      "bias": jnp.asarray(rng.normal(size=(2, 4)))}),
    "group_norm": Family((2, 4, 3), lambda x, p: jn.group_norm(x, p, 2), _gn_ref, _channel_params(4)),
    "rms_norm": Family((3, 5), lambda x, p: jn.rms_norm(x, p, 5, eps=1e-6),
                       lambda x, p: x / jnp.sqrt(jnp.mean(x * x, axis=1, keepdims=True) + 1e-6) * p["weight"][None],
                       lambda rng: {"weight": jnp.asarray(rng.uniform(0.5, 2, 5))}),
}


def _loss(f):
    return lambda x, p: jnp.sum(jnp.sin(f(x, p)))  # not linear in y: second derivatives are not trivially zero


TRANSFORMS = {
    "jit": lambda f, x, p, t, tp: f(x, p),
    "grad": lambda f, x, p, t, tp: jax.grad(_loss(f), argnums=(0, 1))(x, p),
    "jvp": lambda f, x, p, t, tp: jax.jvp(f, (x, p), (t, tp)),
    "jacfwd": lambda f, x, p, t, tp: jax.jacfwd(f, argnums=(0, 1))(x, p),
    "jacrev": lambda f, x, p, t, tp: jax.jacrev(f, argnums=(0, 1))(x, p),
    "linearize": lambda f, x, p, t, tp: jax.linearize(f, x, p)[1](t, tp),
    "hessian": lambda f, x, p, t, tp: jax.hessian(_loss(f), argnums=(0, 1))(x, p),
    "grad of grad": lambda f, x, p, t, tp: jax.grad(
        lambda x, p: jnp.sum(jnp.square(jax.grad(_loss(f))(x, p))), argnums=(0, 1))(x, p),
}


def _inputs(family: Family, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    x = jnp.asarray(rng.normal(size=lead + family.shape) * 1.5 + 0.7)
    t = jnp.asarray(rng.normal(size=lead + family.shape))
    p = family.params(rng)
    tp = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), p)
    return x, p, t, tp


def _assert_close(got, want, what):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == np.float64 and g.shape == w.shape, (what, g.dtype, g.shape, w.shape)
        scale = max(1.0, float(np.max(np.abs(w))))
        err = float(np.max(np.abs(g - w))) / scale
        assert err <= TOL, f"{what}: relative error {err:.2e} > {TOL:g}"


def _every_transform(f, names, *args):
    """All the transformations of ``f`` at once: one compiled program per family (compilation is most of the cost)."""
    return {name: TRANSFORMS[name](f, *args) for name in names}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_transformation_matches_float64_autodiff(family):
    fam = FAMILIES[family]
    with jax.enable_x64(True):
        args = _inputs(fam)
        got = jax.jit(lambda *a: _every_transform(fam.fn, TRANSFORMS, *a))(*args)
        want = jax.jit(lambda *a: _every_transform(fam.ref, TRANSFORMS, *a))(*args)
        for name in TRANSFORMS:
            _assert_close(got[name], want[name], f"{name} of {family}")


@pytest.mark.parametrize("family", FAMILIES)
def test_vmap_of_every_transformation_matches(family):
    fam = FAMILIES[family]
    names = [t for t in TRANSFORMS if t != "jit"]
    with jax.enable_x64(True):
        x, p, t, tp = _inputs(fam, seed=1, batch=2)

        def mapped(f):
            return jax.jit(jax.vmap(lambda x, t: _every_transform(f, names, x, p, t, tp)))(x, t)

        got, want = mapped(fam.fn), mapped(fam.ref)
        for name in names:
            _assert_close(got[name], want[name], f"vmap of {name} of {family}")


@pytest.mark.parametrize("family", ["batch_norm", "layer_norm", "rms_norm"])
def test_scan_with_checkpoint_over_stacked_layers(family):
    fam = FAMILIES[family]
    with jax.enable_x64(True):
        x, p, t, _ = _inputs(fam, seed=2)
        width = fam.shape[-1]
        weights = jnp.asarray(np.random.default_rng(3).normal(size=(3, width, width)) / np.sqrt(width))

        def network(f):
            def run(x, weights):
                def layer(h, w):
                    return jax.checkpoint(lambda h: jnp.tanh(f(h @ w, p)))(h), None

                return jax.lax.scan(layer, x, weights)[0]

            return run

        def both(f):
            run = network(f)
            return {"grad": jax.grad(lambda x, w: jnp.sum(jnp.sin(run(x, w))), argnums=(0, 1))(x, weights),
                    "jvp": jax.jvp(run, (x, weights), (t, weights))}

        got, want = jax.jit(lambda: both(fam.fn))(), jax.jit(lambda: both(fam.ref))()
        for name in got:
            _assert_close(got[name], want[name], f"scan+checkpoint {name} of {family}")


def test_synchronized_batch_norm_jvp_and_grad_under_vmap_axis_name():
    fam = FAMILIES["batch_norm"]
    with jax.enable_x64(True):
        x, p, t, tp = _inputs(fam, seed=4)

        def sharded(x, p):  # 4 mapped "devices" of one example each, statistics over all of them
            def one(xi):
                return jn.batch_norm_2d(xi[None], p, {}, train=True, axis_name="d")[0][0]

            return jax.vmap(one, axis_name="d")(x)

        names = ("jvp", "grad", "hessian")
        got = jax.jit(lambda *a: _every_transform(sharded, names, *a))(x, p, t, tp)
        want = jax.jit(lambda *a: _every_transform(fam.ref, names, *a))(x, p, t, tp)
        for name in names:
            _assert_close(got[name], want[name], f"{name} of synchronized BN")


@pytest.mark.parametrize("family", FAMILIES)
def test_export_lowers_for_cpu_cuda_and_tpu(family):
    fam = FAMILIES[family]
    x, p, t, tp = (jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), v) for v in _inputs(fam))

    def step(x, p, t, tp):
        y, y_dot = jax.jvp(fam.fn, (x, p), (t, tp))
        return y_dot, jax.grad(_loss(fam.fn), argnums=(0, 1))(x, p)

    exported = jax.export.export(jax.jit(step), platforms=("cpu", "cuda", "tpu"))(x, p, t, tp)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    _assert_close_f32(exported.call(x, p, t, tp), jax.jit(step)(x, p, t, tp))


def test_export_of_the_large_input_path_lowers_for_cpu_cuda_and_tpu():
    """Inputs of _PLAIN_SUMS_MIN_SIZE elements or more carry the CPU's plain-or-shifted conditional: exported for
    the three platforms, the CPU program is the jitted one, on well-conditioned and on offset data."""
    from jaxnorm import _stats

    x = jnp.asarray(np.random.default_rng(8).normal(size=(16, 8, 16, 16)), jnp.float32)
    assert x.size >= _stats._PLAIN_SUMS_MIN_SIZE
    params, stats = jn.batch_norm_init(8)
    ln = jn.layer_norm_init(16)

    def step(x, params):
        loss = lambda x, params: jnp.sum(jnp.sin(jn.batch_norm_2d(x, params, stats, train=True)[0])  # noqa: E731
                                         + jn.layer_norm(x, ln, 16))
        return jax.value_and_grad(loss, argnums=(0, 1))(x, params)

    exported = jax.export.export(jax.jit(step), platforms=("cpu", "cuda", "tpu"))(x, params)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    assert exported.mlir_module().count("stablehlo.case") >= 2  # the platform choice and the CPU's conditional
    for data in (x, x + 1e3):  # plain sums, then the shifted branch
        _assert_close_f32(exported.call(data, params), jax.jit(step)(data, params))


def _assert_close_f32(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("family", FAMILIES)
def test_float64_inputs_give_float64_statistics_and_outputs(family):
    fam = FAMILIES[family]
    with jax.enable_x64(True):
        x, p, _, _ = _inputs(fam, seed=5)
        x = x * 1e-3 + 1e4  # offset 1e7 standard deviations: float32 statistics would lose every digit here
        y, want = jax.jit(lambda x, p: (fam.fn(x, p), fam.ref(x, p)))(x, p)
        assert y.dtype == jnp.float64
        _assert_close(y, want, f"float64 {family}")
        if family == "batch_norm":
            params, stats = jn.batch_norm_init(3, dtype=jnp.float64)
            _, new = jax.jit(lambda x: jn.batch_norm_2d(x, params, stats, train=True))(x)
            assert new["running_var"].dtype == jnp.float64
            want = x.var(axis=(0, 2, 3), ddof=1) * 0.1 + 0.9
            np.testing.assert_allclose(np.asarray(new["running_var"]), np.asarray(want), rtol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_inputs_keep_their_dtype_with_float32_statistics(family):
    """bfloat16/float16 inputs: the output, its forward-mode tangent and the input gradient have the input's dtype
    and are the float32 results (from the same rounded input, tangent and cotangent) rounded once: within one
    rounding unit of the output dtype (2^-8 for bfloat16, 2^-11 for float16) of their largest magnitude."""
    fam = FAMILIES[family]
    x, p, t, _ = (jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), v) for v in _inputs(fam, seed=6))
    c = jnp.asarray(np.random.default_rng(7).normal(size=x.shape), jnp.float32)  # a cotangent that is not constant

    def derivatives(x, t, c):
        y, y_dot = jax.jvp(lambda x: fam.fn(x, p), (x,), (t,))
        dx = jax.vjp(lambda x: fam.fn(x, p), x)[1](c.astype(y.dtype))[0]
        return y, y_dot, dx

    @jax.jit
    def run(x, t, c):
        out = {}
        for dtype in (jnp.bfloat16, jnp.float16):
            rounded = [v.astype(dtype) for v in (x, t, c)]
            out[jnp.dtype(dtype).name] = (derivatives(*rounded),
                                          derivatives(*(v.astype(jnp.float32) for v in rounded)))
        return out

    for name, (half, full) in run(x, t, c).items():
        bound = 2.0 ** -8 if name == "bfloat16" else 2.0 ** -11
        for what, got, want in zip(("y", "jvp tangent", "input gradient"), half, full, strict=True):
            assert got.dtype == jnp.dtype(name), (what, got.dtype)
            err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)))
            assert err <= bound * float(jnp.max(jnp.abs(want))), f"{name} {family} {what}: error {err:.2e}"
