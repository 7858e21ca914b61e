"""Gradients of every normalization (issue 4): the closed-form ``custom_vjp`` against independent references.

For BN / IN / GN / LN / RMSNorm, channels-first and channels-last, with and without affine parameters, in
train mode (plus BN/IN eval with running statistics), three checks:

1. **float64 exactness.** Inside ``jax.enable_x64(True)`` (x64 is on only inside these tests), jaxnorm's VJP
   with a random cotangent is compared with reverse-mode autodiff of a from-scratch, two-pass reference
   written below in ``jax.numpy`` (no jaxnorm code), gradient w.r.t. input, weight and bias. In float64
   rounding is ~1e-16, so any error in the closed-form backward (a dropped term, ``n`` vs ``n-1``, a wrong
   reduction axis) shows up orders of magnitude above the tolerance ``F64_TOL = 1e-9``. This includes
   groups of 2 elements, where the exact input gradient is a near-total cancellation.
2. **Finite differences.** jaxnorm's float64 VJP against a central difference of jaxnorm's own forward along
   a random direction (what ``jax.test_util.check_grads(order=1, modes=("rev",))`` does, sharing the
   compiled VJP of check 1).
3. **float32 accuracy.** jaxnorm in float32 against the float64 reference, ``rel_err <= 3e-5`` with the same
   metric as the parity tests (denominator floored at 0.3 x the array's max magnitude).

Also checked: the statistics core's ``_stats.normalize`` with cotangents on all three outputs ``(y, mean,
var)`` (the ``g_mean``/``g_var`` terms of the closed form, unused by the public norms today), and the
cross-device backward (``axis_name`` under ``jax.vmap``) against single-device BN on the whole batch.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

F64_TOL = 1e-9
F32_TOL = 3e-5
FLOOR = 0.3


def rel_err(got, exp) -> float:
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    floor = max(FLOOR * float(np.max(np.abs(exp))), 1e-300)
    return float(np.max(np.abs(got - exp) / np.maximum(np.abs(exp), floor)))


# --------------------------------------------------------------------------- float64 references (two-pass)
def _standardize_ref(x, axes, eps):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)


def _affine_ref(x_hat, params, shape):
    shape = (1,) * (x_hat.ndim - len(shape)) + tuple(shape)  # explicit: the tests forbid rank promotion
    y = x_hat
    if "weight" in params:
        y = y * params["weight"].reshape(shape)
    if "bias" in params:
        y = y + params["bias"].reshape(shape)
    return y


def _channel_shape(x):  # (1, C, 1, ...)
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def ref_batch_norm(x, params, eps):
    """Channels-first BN with batch statistics: reduce over N and all spatial axes."""
    axes = (0,) + tuple(range(2, x.ndim))
    return _affine_ref(_standardize_ref(x, axes, eps), params, _channel_shape(x))


def ref_batch_norm_eval(x, params, running_mean, running_var, eps):
    shape = _channel_shape(x)
    x_hat = (x - running_mean.reshape(shape)) / jnp.sqrt(running_var.reshape(shape) + eps)
    return _affine_ref(x_hat, params, shape)


def ref_instance_norm(x, params, eps):
    return _affine_ref(_standardize_ref(x, tuple(range(2, x.ndim)), eps), params, _channel_shape(x))


def ref_group_norm(x, params, groups, eps):
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    x_hat = _standardize_ref(grouped, (2,), eps).reshape(x.shape)
    return _affine_ref(x_hat, params, _channel_shape(x))


def ref_layer_norm(x, params, normalized_shape, eps):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    return _affine_ref(_standardize_ref(x, axes, eps), params, normalized_shape)


def ref_rms_norm(x, params, normalized_shape, eps):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    y = x / jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + eps)
    return _affine_ref(y, {"weight": params["weight"]} if "weight" in params else {}, normalized_shape)


# --------------------------------------------------------------------------- cases
# (family, input shape in PyTorch layout, extra) -- small shapes; some with 2-element groups
CASES = [
    ("batch_norm", (5, 3), {}),
    ("batch_norm", (2, 3), {}),  # 2-element groups
    ("batch_norm", (3, 4, 5), {}),
    ("batch_norm", (2, 3, 4, 3), {}),
    ("batch_norm", (2, 2, 2, 3, 2), {}),
    ("batch_norm_eval", (3, 4, 5), {}),
    ("instance_norm", (3, 4, 5), {}),
    ("instance_norm", (2, 3, 2), {}),  # 2-element groups
    ("instance_norm", (2, 3, 4, 3), {}),
    ("instance_norm", (2, 2, 2, 3, 2), {}),
    ("instance_norm_eval", (2, 3, 4, 3), {}),
    ("group_norm", (3, 6, 5), {"groups": 2}),
    ("group_norm", (2, 6, 3, 4), {"groups": 3}),
    ("group_norm", (2, 6, 3, 4), {"groups": 1}),
    ("group_norm", (2, 6, 2, 2, 3), {"groups": 6}),
    ("group_norm", (3, 4, 1), {"groups": 2}),  # 2-element groups
    ("layer_norm", (3, 7), {"ns": (7,)}),
    ("layer_norm", (2, 3, 4, 5), {"ns": (4, 5)}),
    ("layer_norm", (2, 3, 4, 5), {"ns": (3, 4, 5)}),
    ("layer_norm", (4, 2), {"ns": (2,)}),  # 2-element groups
    ("rms_norm", (3, 7), {"ns": (7,)}),
    ("rms_norm", (2, 3, 4, 5), {"ns": (4, 5)}),
]
CHANNEL_FAMILIES = ("batch_norm", "batch_norm_eval", "instance_norm", "instance_norm_eval", "group_norm")
EPS = 1e-3  # not the default, so that a backward that drops eps is caught; variances are O(0.04..9)


def build(family: str, shape, extra: dict, affine: bool, channels_last: bool, dtype, seed: int):
    """(jaxnorm_fn(x, params) -> y, ref_fn(x, params) -> y, x, params, gy); all arrays in ``dtype``.

    ``x``/``gy`` are in the layout jaxnorm is called with; ``ref_fn`` takes the same layout and moves the
    channel axis itself, so both functions are compared on identical arguments.
    """
    rng = np.random.default_rng([seed, len(shape), affine, channels_last])
    channel = family in CHANNEL_FAMILIES
    bshape = tuple(s if a == 1 else 1 for a, s in enumerate(shape)) if channel else shape[:-1] + (1,)
    x = rng.uniform(-3, 3, bshape) + rng.uniform(0.2, 3, bshape) * rng.standard_normal(shape)
    gy = rng.standard_normal(shape)
    pshape = (shape[1],) if channel else extra["ns"]
    params = {}
    if affine:
        params["weight"] = rng.choice([-1.0, 1.0], pshape) * rng.uniform(0.5, 2.0, pshape)
        if family != "rms_norm":
            params["bias"] = 0.5 * rng.standard_normal(pshape)
    running_mean = rng.uniform(-3, 3, shape[1]) if channel else None
    running_var = rng.uniform(0.1, 4, shape[1]) if channel else None
    if channels_last:
        x, gy = np.moveaxis(x, 1, -1), np.moveaxis(gy, 1, -1)
    axis = -1 if channels_last else 1
    first = (lambda a: jnp.moveaxis(a, -1, 1)) if channels_last else (lambda a: a)
    last = (lambda a: jnp.moveaxis(a, 1, -1)) if channels_last else (lambda a: a)

    if family in ("batch_norm", "instance_norm", "batch_norm_eval", "instance_norm_eval"):
        base = family.removesuffix("_eval")
        train = not family.endswith("_eval")
        init = getattr(jn, base + "_init")
        _, stats = init(shape[1], affine=affine, track_running_stats=True)
        stats = dict(stats, running_mean=jnp.asarray(running_mean, jnp.float32),
                     running_var=jnp.asarray(running_var, jnp.float32))
        fn = getattr(jn, base)

        def jfn(x_, p_):
            return fn(x_, p_, stats, train=train, momentum=0.1, eps=EPS, axis=axis)[0]

        if train:
            ref = ref_batch_norm if base == "batch_norm" else ref_instance_norm

            def rfn(x_, p_):
                return last(ref(first(x_), p_, EPS))
        else:
            # the stored float32 running stats are what jaxnorm normalizes with; give the reference the same
            rm, rv = np.float32(running_mean).astype(np.float64), np.float32(running_var).astype(np.float64)

            def rfn(x_, p_):  # BN and IN alike: per-channel running statistics
                return last(ref_batch_norm_eval(first(x_), p_, jnp.asarray(rm), jnp.asarray(rv), EPS))
    elif family == "group_norm":
        def jfn(x_, p_):
            return jn.group_norm(x_, p_, extra["groups"], eps=EPS, axis=axis)

        def rfn(x_, p_):
            return last(ref_group_norm(first(x_), p_, extra["groups"], EPS))
    elif family == "layer_norm":
        def jfn(x_, p_):
            return jn.layer_norm(x_, p_, extra["ns"], eps=EPS)

        def rfn(x_, p_):
            return ref_layer_norm(x_, p_, extra["ns"], EPS)
    else:
        def jfn(x_, p_):
            return jn.rms_norm(x_, p_, extra["ns"], eps=EPS)

        def rfn(x_, p_):
            return ref_rms_norm(x_, p_, extra["ns"], EPS)

    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return jfn, rfn, cast(x), {k: cast(v) for k, v in params.items()}, cast(gy)


def vjp_all(fn, x, params, gy):
    """{"y", "dx", "dweight", "dbias"} of ``<fn(x, params), gy>``, under one ``jit`` (one compile, not one per op)."""

    @jax.jit
    def run(x_, p_, g_):
        y, vjp = jax.vjp(fn, x_, p_)
        dx, dparams = vjp(g_)
        return {"y": y, "dx": dx, **{"d" + k: v for k, v in dparams.items()}}

    return run(x, params, gy)


def case_ids():
    """Every case with affine parameters; without them only each family's first shape (the parameter-free
    gradient is the same closed form with weight 1, and the goldens check every affine=False case against PyTorch)."""
    out, plain_done = [], set()
    for family, shape, extra in CASES:
        first_of_family = family not in plain_done
        plain_done.add(family)
        for affine in (True, False) if first_of_family else (True,):
            layouts = (False, True) if family in CHANNEL_FAMILIES else (False,)
            for last in layouts:
                sid = "x".join(map(str, shape))
                tag = f"{family}-{sid}{'-g' + str(extra['groups']) if 'groups' in extra else ''}"
                tag += f"-{'affine' if affine else 'plain'}-{'last' if last else 'first'}"
                out.append(pytest.param(family, shape, extra, affine, last, id=tag))
    return out


def group_elems(family: str, shape, extra: dict) -> int:
    if family.startswith("batch_norm"):
        return math.prod(shape) // shape[1]
    if family.startswith("instance_norm"):
        return math.prod(shape[2:])
    if family == "group_norm":
        return math.prod(shape[1:]) // extra["groups"]
    return math.prod(extra["ns"])


def directional_derivative(fn, x, params, gy, direction, h=1e-5):
    """Central difference of ``<fn(x, params), gy>`` along ``direction`` (a pytree like ``(x, params)``): the
    numerical counterpart of ``<vjp(gy), direction>``, with an O(h^2) truncation error of ~1e-10 in float64."""
    loss = jax.jit(lambda x_, p_: jnp.vdot(fn(x_, p_), gy))

    def shifted(sign):
        return jax.tree.map(lambda a, d: a + sign * h * d, (x, params), direction)

    return (loss(*shifted(1.0)) - loss(*shifted(-1.0))) / (2 * h)


@pytest.mark.parametrize("family,shape,extra,affine,channels_last", case_ids())
def test_vjp_against_reference_autodiff_finite_differences_and_in_float32(family, shape, extra, affine,
                                                                          channels_last):
    """The three checks of the module docstring on one case. The inputs are float32 values held in float64,
    so that one compiled float64 reference serves both the float64 and the float32 comparison."""
    jfn, _, x32, p32, gy32 = build(family, shape, extra, affine, channels_last, jnp.float32, seed=0)
    got32 = vjp_all(jfn, x32, p32, gy32)
    with jax.enable_x64(True):
        jfn, rfn, _, _, _ = build(family, shape, extra, affine, channels_last, jnp.float64, seed=0)
        x, params, gy = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), (x32, p32, gy32))
        got, exp = vjp_all(jfn, x, params, gy), vjp_all(rfn, x, params, gy)
        assert sorted(got) == sorted(exp) == sorted(got32)
        for key in exp:  # 1. float64 exactness
            assert got[key].dtype == jnp.float64, f"{key}: jaxnorm computed in {got[key].dtype} under x64"
            err = rel_err(got[key], exp[key])
            assert err <= F64_TOL, f"{key}: float64 rel_err {err:.3e} > {F64_TOL:g}"
        # 2. jaxnorm's own forward, differentiated numerically, against its VJP (independent of the reference)
        rng = np.random.default_rng(1)
        direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), (x, params))
        numeric = float(directional_derivative(jfn, x, params, gy, direction))
        grads = (got["dx"], {k: got["d" + k] for k in params})
        analytic = float(sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction),
                                                             strict=True)))
        assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic)), (
            f"VJP {analytic!r} vs finite differences {numeric!r} along a random direction")
    # 3. float32 accuracy (2-element groups excluded: their float32 input gradient is pure cancellation, see
    #    test_parity_torch.py)
    if group_elems(family, shape, extra) >= 3:
        for key in exp:
            assert got32[key].dtype == jnp.float32
            err = rel_err(got32[key], exp[key])
            assert err <= F32_TOL, f"{key}: float32 rel_err {err:.3e} > {F32_TOL:g}"


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("reduce_axes", [(0,), (0, 2, 3), (2, 3), (1, 2, 3)])
def test_core_backward_with_mean_and_var_cotangents(reduce_axes, affine):
    """The statistics core's custom VJP for all three outputs ``(y, mean, var)``, including the ``g_mean`` and
    ``g_var`` terms of the closed form that no public norm exercises today (their mean/var feed only the
    stop-gradient running statistics). Uses the private ``jaxnorm._stats.normalize``."""
    from jaxnorm import _stats

    with jax.enable_x64(True):
        rng = np.random.default_rng(list(reduce_axes) + [affine])
        shape = (3, 4, 5, 2)
        x = jnp.asarray(rng.uniform(-2, 2, (3, 4, 1, 1)) + rng.uniform(0.3, 2) * rng.standard_normal(shape))
        # parameters broadcast along the channel axis 1, as every norm but LayerNorm/RMSNorm has them
        w = jnp.asarray(rng.uniform(0.5, 2, (1, 4, 1, 1))) if affine else None
        b = jnp.asarray(rng.standard_normal((1, 4, 1, 1))) if affine else None

        def ref(x_, w_, b_):
            mean = jnp.mean(x_, axis=reduce_axes, keepdims=True)
            var = jnp.mean(jnp.square(x_ - mean), axis=reduce_axes, keepdims=True)
            y = (x_ - mean) / jnp.sqrt(var + EPS)
            y = y if w_ is None else y * w_ + b_
            return y, mean, var

        def got_fn(x_, w_, b_):
            return _stats.normalize(x_, w_, b_, _stats.Spec(reduce_axes, EPS))[:3]

        cts = tuple(jnp.asarray(rng.standard_normal(o.shape)) for o in jax.eval_shape(ref, x, w, b))
        cases = (None, 0, 1, 2)  # all cotangents together, then each alone so that a wrong term cannot hide

        @functools.partial(jax.jit, static_argnums=0)  # one program per side, not one per operation
        def outputs_and_vjps(fn, x_, w_, b_):
            outs, vjp = jax.vjp(fn, x_, w_, b_)
            return outs, [vjp(cts if i is None else tuple(c if j == i else jnp.zeros_like(c) for j, c in
                                                          enumerate(cts))) for i in cases]

        (outs_got, vjps_got), (outs_ref, vjps_ref) = (outputs_and_vjps(f, x, w, b) for f in (got_fn, ref))
        for o_got, o_ref in zip(outs_got, outs_ref, strict=True):
            assert rel_err(o_got, o_ref) <= F64_TOL
        for i, got, exp in zip(cases, vjps_got, vjps_ref, strict=True):
            for name, g_, e_ in zip(("dx", "dweight", "dbias"), got, exp, strict=True):
                if e_ is not None:
                    err = rel_err(g_, e_)
                    assert err <= F64_TOL, f"{name}, cotangent on output {i}: rel_err {err:.3e}"


@pytest.mark.parametrize("channels_last", [False, True])
def test_synchronized_batch_norm_backward_under_vmap(channels_last):
    """BN with ``axis_name`` over 4 vmapped shards == BN of the whole batch, forward and all gradients."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = rng.uniform(-3, 3, (1, 3, 1)) + rng.uniform(0.2, 3, (1, 3, 1)) * rng.standard_normal((8, 3, 5))
        gy = rng.standard_normal(x.shape)
        params = {"weight": jnp.asarray(rng.uniform(0.5, 2, 3)), "bias": jnp.asarray(rng.standard_normal(3))}
        if channels_last:
            x, gy = np.moveaxis(x, 1, -1), np.moveaxis(gy, 1, -1)
        x, gy = jnp.asarray(x), jnp.asarray(gy)
        axis = -1 if channels_last else 1
        shards = lambda a: a.reshape((4, 2) + a.shape[1:])  # noqa: E731

        def sharded(x_, p_):
            fn = jax.vmap(lambda xs: jn.batch_norm(xs, p_, {}, train=True, eps=EPS, axis=axis, axis_name="d")[0],
                          axis_name="d")
            return fn(shards(x_)).reshape(x_.shape)

        def whole(x_, p_):
            first = jnp.moveaxis(x_, -1, 1) if channels_last else x_
            y = ref_batch_norm(first, p_, EPS)
            return jnp.moveaxis(y, 1, -1) if channels_last else y

        got, exp = vjp_all(sharded, x, params, gy), vjp_all(whole, x, params, gy)
        for key in exp:
            err = rel_err(got[key], exp[key])
            assert err <= F64_TOL, f"{key}: rel_err {err:.3e}"
