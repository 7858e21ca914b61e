"""Functional core: shapes, collections, purity, PyTorch semantics checked against float64 NumPy and the lesson."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn


def _np_bn_reference(x, axis, weight=None, bias=None, eps=1e-5):
    x = np.asarray(x, np.float64)
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.reshape(weight, shape) + np.reshape(bias, shape)
    n = x.size // x.shape[axis]
    return y, mean.reshape(-1), var.reshape(-1) * n / (n - 1)


class TestBatchNorm(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_train_and_eval_match_float64_reference(self):
        rng = np.random.default_rng(0)
        for shape, axis in [((8, 3), 1), ((4, 3, 7), 1), ((4, 3, 5, 6), 1), ((4, 5, 6, 3), -1), ((2, 3, 2, 3, 4), 1)]:
            x = (rng.normal(size=shape) * 2 + 3).astype(np.float32)
            c = shape[axis]
            w, b = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
            params, stats = jn.batch_norm_init(c)
            params = {"weight": jnp.asarray(w), "bias": jnp.asarray(b)}
            step = self.variant(lambda x, p, s, axis=axis: jn.batch_norm(x, p, s, train=True, momentum=0.25, axis=axis))
            y, new = step(jnp.asarray(x), params, stats)
            ref_y, ref_mean, ref_unbiased = _np_bn_reference(x, axis, w, b)
            chex.assert_shape(y, shape)
            chex.assert_trees_all_equal_shapes_and_dtypes(new, stats)
            np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=2e-5)
            np.testing.assert_allclose(new["running_mean"], 0.25 * ref_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(new["running_var"], 0.75 + 0.25 * ref_unbiased, rtol=1e-5)
            assert int(new["num_batches_tracked"]) == 1
            # eval uses the running statistics and leaves them unchanged
            evaluate = self.variant(lambda x, p, s, axis=axis: jn.batch_norm(x, p, s, train=False, axis=axis))
            y_eval, same = evaluate(jnp.asarray(x), params, new)
            rshape = [1] * len(shape)
            rshape[axis] = c
            ref_eval = ((x - np.reshape(new["running_mean"], rshape)) / np.sqrt(np.reshape(new["running_var"], rshape)
                        + 1e-5)) * np.reshape(w, rshape) + np.reshape(b, rshape)
            np.testing.assert_allclose(y_eval, ref_eval, rtol=1e-5, atol=2e-5)
            chex.assert_trees_all_equal(same, new)

    @chex.variants(with_jit=True, without_jit=True)
    def test_momentum_none_is_cumulative_average(self):
        rng = np.random.default_rng(1)
        batches = [rng.normal(size=(6, 4)).astype(np.float32) * (i + 1) + i for i in range(4)]
        params, stats = jn.batch_norm_init(4, affine=False)
        step = self.variant(lambda x, s: jn.batch_norm_1d(x, {}, s, train=True, momentum=None))
        for x in batches:
            _, stats = step(jnp.asarray(x), stats)
        np.testing.assert_allclose(stats["running_mean"], np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
        np.testing.assert_allclose(stats["running_var"], np.mean([b.var(0, ddof=1) for b in batches], 0), rtol=1e-5)
        assert int(stats["num_batches_tracked"]) == 4
        assert params == {}

    @chex.variants(with_jit=True, without_jit=True)
    def test_no_running_stats_uses_batch_statistics_in_eval(self):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3, 4)).astype(np.float32) + 7)
        params, stats = jn.batch_norm_init(3, track_running_stats=False)
        assert stats == {}
        y_eval, out = self.variant(lambda x: jn.batch_norm_1d(x, params, {}, train=False))(x)
        y_train, _ = self.variant(lambda x: jn.batch_norm_1d(x, params, {}, train=True))(x)
        assert out == {}
        np.testing.assert_allclose(y_eval, _np_bn_reference(np.asarray(x), 1)[0], atol=2e-5)
        chex.assert_trees_all_close(y_eval, y_train)

    def test_lesson_batchnorm1d_running_stats(self):
        # The lesson's printed numbers (seed.md, nn.BatchNorm1d, momentum 0.3, features 1..5, batch 3).
        x = jnp.tile(jnp.arange(1.0, 6.0).reshape(1, 5, 1), (3, 1, 1))
        params, stats = jn.batch_norm_init(5)
        _, stats = jn.batch_norm_1d(x, params, stats, train=True, momentum=0.3)
        np.testing.assert_allclose(stats["running_mean"], [0.3, 0.6, 0.9, 1.2, 1.5], rtol=1e-6)
        np.testing.assert_allclose(stats["running_var"], [0.7] * 5, rtol=1e-6)
        _, stats = jn.batch_norm_1d(x, params, stats, train=True, momentum=0.3)
        np.testing.assert_allclose(stats["running_mean"], [0.51, 1.02, 1.53, 2.04, 2.55], rtol=1e-6)
        np.testing.assert_allclose(stats["running_var"], [0.49] * 5, rtol=1e-6)
        assert params["weight"].shape == params["bias"].shape == stats["running_mean"].shape == (5,)

    def test_purity_inputs_untouched_and_repeatable(self):
        x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3, 2, 2)).astype(np.float32))
        params, stats = jn.batch_norm_init(3)
        before = jax.tree.map(np.array, stats)
        y1, s1 = jn.batch_norm_2d(x, params, stats, train=True)
        y2, s2 = jn.batch_norm_2d(x, params, stats, train=True)
        chex.assert_trees_all_equal((y1, s1), (y2, s2))
        chex.assert_trees_all_equal(jax.tree.map(np.array, stats), before)

    def test_half_precision_keeps_dtype_and_float32_stats(self):
        for dtype in (jnp.float16, jnp.bfloat16):
            x = (jnp.arange(64.0).reshape(4, 4, 2, 2) * 10).astype(dtype)
            params, stats = jn.batch_norm_init(4)
            y, new = jn.batch_norm_2d(x, params, stats, train=True)
            assert y.dtype == dtype
            assert new["running_mean"].dtype == new["running_var"].dtype == jnp.float32
            ref = _np_bn_reference(np.asarray(x.astype(jnp.float32)), 1)[0]
            np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=2e-2)

    def test_grad_vmap_and_jit_compose(self):
        x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 6, 4)).astype(np.float32))
        params, stats = jn.batch_norm_init(4)
        loss = lambda p, x: jnp.sum(jn.batch_norm(x, p, stats, train=True, axis=-1)[0] ** 3)
        grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, x)
        chex.assert_shape(grads["weight"], (3, 4))
        # the same values as each example's gradient on its own, computed eagerly without vmap or jit
        for i in range(3):
            one = jax.grad(loss)(params, x[i])
            chex.assert_trees_all_close(jax.tree.map(lambda g, i=i: g[i], grads), one, rtol=1e-5, atol=1e-6)


def test_layer_norm_matches_float64():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32) * 4 - 2
    for shape in [(6,), (5, 6), (4, 5, 6)]:
        axes = tuple(range(x.ndim - len(shape), x.ndim))
        w, b = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
        x64 = x.astype(np.float64)
        ref = (x64 - x64.mean(axes, keepdims=True)) / np.sqrt(x64.var(axes, keepdims=True) + 1e-5)
        for params, expected in [({"weight": w, "bias": b}, ref * w + b), ({"weight": w}, ref * w), ({}, ref)]:
            for fn in (jn.layer_norm, jax.jit(jn.layer_norm, static_argnums=2)):
                y = fn(jnp.asarray(x), jax.tree.map(jnp.asarray, params), shape)
                chex.assert_shape(y, x.shape)
                np.testing.assert_allclose(y, expected, rtol=1e-5, atol=3e-5)
    assert set(jn.layer_norm_init(6, bias=False)) == {"weight"} and jn.layer_norm_init(6, elementwise_affine=False) == {}


def test_rms_norm_matches_float64_and_default_eps():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 8)).astype(np.float32) * 1e-4  # small enough that eps matters
    w = rng.normal(size=8).astype(np.float32)
    x64 = x.astype(np.float64)
    for eps, eps_value in [(None, np.finfo(np.float32).eps), (1e-6, 1e-6)]:
        ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps_value) * w
        np.testing.assert_allclose(jn.rms_norm(jnp.asarray(x), {"weight": jnp.asarray(w)}, 8, eps=eps), ref, rtol=1e-5)
    assert jn.rms_norm_init((2, 3))["weight"].shape == (2, 3)


@pytest.mark.parametrize("axis", [1, -1])
def test_group_norm_matches_float64(axis):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 6, 4, 5)).astype(np.float32) * 3 + 1
    w, b = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    for groups in (1, 2, 3, 6):
        g = x.astype(np.float64).reshape(3, groups, -1)
        ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
        ref = ref * w[:, None, None] + b[:, None, None]
        xin = x if axis == 1 else np.moveaxis(x, 1, -1)
        y = jax.jit(jn.group_norm, static_argnums=2, static_argnames="axis")(
            jnp.asarray(xin), {"weight": jnp.asarray(w), "bias": jnp.asarray(b)}, groups, axis=axis)
        y = y if axis == 1 else np.moveaxis(np.asarray(y), -1, 1)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=3e-5)


class TestInstanceNorm(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_train_eval_and_unbatched(self):
        rng = np.random.default_rng(8)
        x = rng.normal(size=(4, 3, 10)).astype(np.float32) * 2 + 5
        x64 = x.astype(np.float64)
        ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
        params, stats = jn.instance_norm_init(3, affine=True, track_running_stats=True)
        y, new = self.variant(lambda x, s: jn.instance_norm_1d(x, params, s, train=True))(jnp.asarray(x), stats)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=3e-5)
        np.testing.assert_allclose(new["running_mean"], 0.1 * x64.mean(-1).mean(0), rtol=1e-5)
        np.testing.assert_allclose(new["running_var"], 0.9 + 0.1 * x64.var(-1, ddof=1).mean(0), rtol=1e-5)
        assert int(new["num_batches_tracked"]) == 0  # PyTorch's InstanceNorm never increments it
        y_eval, same = self.variant(lambda x, s: jn.instance_norm_1d(x, params, s, train=False))(jnp.asarray(x), new)
        ref_eval = (x64 - np.asarray(new["running_mean"])[:, None]) / np.sqrt(np.asarray(new["running_var"])[:, None]
                                                                              + 1e-5)
        np.testing.assert_allclose(y_eval, ref_eval, rtol=1e-5, atol=3e-5)
        chex.assert_trees_all_equal(same, new)
        y_unbatched, _ = self.variant(lambda x: jn.instance_norm_1d(x, {}, {}, train=False))(jnp.asarray(x[0]))
        chex.assert_shape(y_unbatched, (3, 10))
        np.testing.assert_allclose(y_unbatched, ref[0], rtol=1e-5, atol=3e-5)

    def test_momentum_none_freezes_running_stats_like_pytorch(self):
        params, stats = jn.instance_norm_init(2, track_running_stats=True)
        x = jnp.arange(24.0).reshape(3, 2, 4)
        _, new = jn.instance_norm_1d(x, params, stats, train=True, momentum=None)
        chex.assert_trees_all_equal(new, stats)

    def test_ranked_variants_accept_2d_and_3d_layouts(self):
        x4 = jnp.ones((2, 3, 4, 5)) * jnp.arange(20.0).reshape(1, 1, 4, 5)
        chex.assert_shape(jn.instance_norm_2d(x4, {}, {}, train=True)[0], (2, 3, 4, 5))
        chex.assert_shape(jn.instance_norm_2d(x4[0], {}, {}, train=True)[0], (3, 4, 5))
        chex.assert_shape(jn.instance_norm_3d(jnp.repeat(x4[..., None], 2, axis=-1), {}, {}, train=True)[0], (2, 3, 4, 5, 2))
