"""BatchNorm's training-regime variants against independent references.

* Batch Renormalization: the paper's Algorithm 1 in float64 NumPy (forward, running statistics) and float64 autodiff
  with ``r, d`` held constant (gradients); Keras 3's ``BatchNormalization(renorm=True)`` on the JAX backend as a
  live oracle when Keras is installed (its first training step, where both use the same correction statistics).
* Ghost BN (``virtual_batch_size``): float64 BN of each virtual batch; the running update is the average of the
  virtual batches' statistics.
* Frozen BN: torchvision's ``FrozenBatchNorm2d`` formula in float64; no gradient, no update, same outputs as eval.
* Synchronized statistics under ``vmap(axis_name=...)`` (no devices needed): devices with unequal numbers of valid
  values (one with none) and ``axis_index_groups`` against BN of the union of each group's valid values.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
import jaxnorm.linen as jnn

EPS = 1e-5
RNG = np.random.default_rng(7)
os.environ.setdefault("KERAS_BACKEND", "jax")  # read when keras is first imported (the Keras oracle below)


def _params(c):
    return {"weight": jnp.asarray(RNG.uniform(0.5, 2, c), jnp.float32), "bias": jnp.asarray(RNG.normal(size=c),
                                                                                            jnp.float32)}


def _stats(mean, var, tracked=5):
    return {"running_mean": jnp.asarray(mean, jnp.float32), "running_var": jnp.asarray(var, jnp.float32),
            "num_batches_tracked": jnp.asarray(tracked, jnp.int32)}


def _close(got, want, tol=1e-5):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


# ----------------------------------------------------------------------------------------- Batch Renormalization
def _renorm_algorithm_1(x, w, b, rm, rv, r_max, d_max, momentum=0.1):
    """The paper's Algorithm 1 (training step) in float64, with PyTorch's running statistics."""
    x = np.asarray(x, np.float64)
    mean, var = x.mean(0), x.var(0)
    sigma_b, sigma = np.sqrt(var + EPS), np.sqrt(np.asarray(rv, np.float64) + EPS)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mean - rm) / sigma, -d_max, d_max)
    y = ((x - mean) / sigma_b * r + d) * w + b
    n = x.shape[0]
    return y, (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var * n / (n - 1)


@pytest.mark.parametrize("r_max, d_max", [(3.0, 5.0), (1.2, 0.3), (1.0, 0.0)])
def test_batch_renorm_follows_algorithm_1(r_max, d_max):
    x = (RNG.normal(size=(16, 4)) * np.array([0.5, 1, 2, 4]) + np.array([0, 1, -2, 3])).astype(np.float32)
    params, rm, rv = _params(4), RNG.normal(size=4), RNG.uniform(0.2, 3, 4)
    y, new = jn.batch_renorm(jnp.asarray(x), params, _stats(rm, rv), train=True, r_max=r_max, d_max=d_max)
    want_y, want_rm, want_rv = _renorm_algorithm_1(x, np.asarray(params["weight"]), np.asarray(params["bias"]), rm,
                                                   rv, r_max, d_max)
    _close(y, want_y)
    _close(new["running_mean"], want_rm)
    _close(new["running_var"], want_rv)
    assert int(new["num_batches_tracked"]) == 6
    if r_max == 1.0 and d_max == 0.0:  # no correction: BatchNorm
        _close(y, jn.batch_norm_1d(jnp.asarray(x), params, _stats(rm, rv), train=True)[0], 1e-6)


def test_batch_renorm_gradients_hold_r_and_d_constant():
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.normal(size=(12, 3)) * 2 + 1)
        params = {"weight": jnp.asarray(RNG.uniform(0.5, 2, 3)), "bias": jnp.asarray(RNG.normal(size=3))}
        rm, rv = jnp.asarray(RNG.normal(size=3)), jnp.asarray(RNG.uniform(0.2, 3, 3))
        stats = {"running_mean": rm, "running_var": rv, "num_batches_tracked": jnp.asarray(0, jnp.int32)}

        def reference(x, p):
            mean, var = x.mean(0, keepdims=True), x.var(0, keepdims=True)
            sigma_b, sigma = jnp.sqrt(var + EPS), jnp.sqrt(rv[None] + EPS)
            r = jax.lax.stop_gradient(jnp.clip(sigma_b / sigma, 1 / 1.5, 1.5))
            d = jax.lax.stop_gradient(jnp.clip((mean - rm[None]) / sigma, -0.5, 0.5))
            return ((x - mean) / sigma_b * r + d) * p["weight"][None] + p["bias"][None]

        got = jax.jit(jax.jacrev(lambda x, p: jn.batch_renorm(x, p, stats, train=True, r_max=1.5, d_max=0.5)[0],
                                 argnums=(0, 1)))(x, params)
        want = jax.jit(jax.jacrev(reference, argnums=(0, 1)))(x, params)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


def test_batch_renorm_matches_keras_first_step():
    """Keras 3 (JAX backend) with the same correction statistics: ``renorm_mean = running_mean``, ``renorm_stddev =
    √(running_var + ε)`` — Keras keeps separate moving averages for the correction, jaxnorm uses the running ones."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"Keras runs on {keras.backend.backend()}, not JAX")
    x = (RNG.normal(size=(16, 3)) * 2 + 1).astype(np.float32)
    params, rm, rv = _params(3), RNG.normal(size=3).astype(np.float32), RNG.uniform(0.2, 3, 3).astype(np.float32)
    layer = keras.layers.BatchNormalization(axis=1, epsilon=EPS, renorm=True,
                                            renorm_clipping={"rmax": 1.5, "rmin": 1 / 1.5, "dmax": 0.5})
    layer.build(x.shape)
    layer.set_weights([np.asarray(params["weight"]), np.asarray(params["bias"]), rm, rv, np.sqrt(rv + EPS), rm,
                       np.sqrt(rv + EPS)])
    trainable = [v.value for v in layer.trainable_variables]
    others = [v.value for v in layer.non_trainable_variables]

    def keras_y(x, trainable):
        return layer.stateless_call(trainable, others, x, training=True)[0]

    def ours(x, p):
        return jn.batch_renorm(x, p, _stats(rm, rv), train=True, r_max=1.5, d_max=0.5)[0]

    def outputs_and_vjps(x, ct):  # both sides in one compiled program (stateless_call is pure)
        (y_ours, vjp_ours), (y_keras, vjp_keras) = jax.vjp(ours, x, params), jax.vjp(keras_y, x, trainable)
        return y_ours, y_keras, vjp_ours(ct), vjp_keras(ct)

    ct = jnp.asarray(RNG.normal(size=x.shape), jnp.float32)
    y_ours, y_keras, got, want = jax.jit(outputs_and_vjps)(jnp.asarray(x), ct)
    _close(y_ours, y_keras)
    _close(got[0], want[0], 2e-5)
    _close(got[1]["weight"], want[1][0], 2e-5)
    _close(got[1]["bias"], want[1][1], 2e-5)


def test_batch_renorm_errors_and_schedule():
    x = jnp.ones((4, 3))
    _, stats = jn.batch_norm_init(3)
    with pytest.raises(ValueError, match="expected r_max >= 1.0, got r_max=0.5"):
        jn.batch_renorm(x, {}, stats, train=True, r_max=0.5)
    with pytest.raises(ValueError, match="expected d_max >= 0.0, got d_max=-1"):
        jn.batch_renorm(x, {}, stats, train=True, d_max=-1)
    with pytest.raises(ValueError, match="batch_renorm: expected running statistics"):
        jn.batch_renorm(x, {}, {}, train=True)
    r, d = jax.jit(jn.renorm_clip_schedule)(jnp.asarray([0, 5000, 15000, 25000, 40000, 90000]))
    np.testing.assert_allclose(r, [1, 1, 1 + 2 * 10 / 35, 1 + 2 * 20 / 35, 3, 3], rtol=1e-6)
    np.testing.assert_allclose(d, [0, 0, 2.5, 5, 5, 5], rtol=1e-6)


def test_linen_batch_renorm_calls_the_pure_function():
    x = jnp.asarray(RNG.normal(size=(8, 3, 5)), jnp.float32) * 3 + 2
    module = jnn.BatchRenorm(3, r_max=2.0, d_max=1.0)
    variables = module.init(jax.random.key(0), x, train=False)
    y, state = module.apply(variables, x, train=True, r_max=1.2, mutable=["batch_stats"])
    want, stats = jn.batch_renorm(x, variables["params"], variables["batch_stats"], train=True, r_max=1.2, d_max=1.0)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], stats)


# ------------------------------------------------------------------------------------------------------ Ghost BN
def test_ghost_batch_norm_normalizes_each_virtual_batch_and_averages_the_update():
    x = (RNG.normal(size=(12, 3, 4)) * 2 + RNG.normal(size=(12, 1, 1)) * 3).astype(np.float32)
    params, rm, rv = _params(3), RNG.normal(size=3), RNG.uniform(0.5, 2, 3)

    @jax.jit  # the three calls below in one program
    def ghost_and_whole(x):
        return (jn.batch_norm_1d(x, params, _stats(rm, rv), train=True, virtual_batch_size=4, momentum=0.3),
                jn.batch_norm_1d(x, params, {}, train=True, virtual_batch_size=12)[0],
                jn.batch_norm_1d(x, params, {}, train=True)[0])

    (y, new), whole, plain = ghost_and_whole(jnp.asarray(x))
    w, b = np.asarray(params["weight"])[:, None], np.asarray(params["bias"])[:, None]
    means, unbiased = [], []
    for k in range(3):
        ghost = x[4 * k:4 * k + 4].astype(np.float64)
        mean, var = ghost.mean((0, 2)), ghost.var((0, 2))
        _close(np.asarray(y)[4 * k:4 * k + 4], (ghost - mean[:, None]) / np.sqrt(var[:, None] + EPS) * w + b)
        means.append(mean)
        unbiased.append(ghost.var((0, 2), ddof=1))
    _close(new["running_mean"], 0.7 * rm + 0.3 * np.mean(means, 0))
    _close(new["running_var"], 0.7 * rv + 0.3 * np.mean(unbiased, 0))
    _close(whole, plain, 1e-6)  # one virtual batch of the whole batch is plain BN


def test_ghost_batch_norm_errors():
    x = jnp.ones((6, 3, 2))
    with pytest.raises(ValueError, match=r"virtual_batch_size \(4\) must divide the batch size \(6\)"):
        jn.batch_norm_1d(x, {}, {}, train=True, virtual_batch_size=4)
    with pytest.raises(ValueError, match="one value for each of the 3 channels in each virtual batch of 1"):
        jn.batch_norm_1d(jnp.ones((6, 3)), {}, {}, train=True, virtual_batch_size=1)
    with pytest.raises(ValueError, match="expected virtual_batch_size to be a positive int"):
        jn.batch_norm_1d(x, {}, {}, train=True, virtual_batch_size=0)


# ------------------------------------------------------------------------------------------------------ Frozen BN
def test_frozen_batch_norm_is_torchvisions_affine_map_without_gradients():
    x = RNG.normal(size=(4, 3, 5, 5)).astype(np.float32)
    params, rm, rv = _params(3), RNG.normal(size=3), RNG.uniform(0.5, 2, 3)
    y = jn.frozen_batch_norm(jnp.asarray(x), params, _stats(rm, rv))
    scale = np.asarray(params["weight"], np.float64) / np.sqrt(rv + EPS)  # torchvision FrozenBatchNorm2d.forward
    shift = np.asarray(params["bias"], np.float64) - rm * scale
    _close(y, x * scale[:, None, None] + shift[:, None, None])
    float_stats = {k: v for k, v in _stats(rm, rv).items() if k != "num_batches_tracked"}
    grads = jax.grad(lambda p, s: jnp.sum(jn.frozen_batch_norm(jnp.asarray(x), p, s) ** 2), argnums=(0, 1))(
        params, float_stats)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        x = jnn.BatchNorm1d(4, name="bn")(nn.Dense(4, name="fc")(x), train=train)
        x = jnn.InstanceNorm1d(2, affine=False, track_running_stats=True, name="inorm")(x.reshape(-1, 2, 2),
                                                                                         train=train)
        return nn.Dense(2, name="head")(x.reshape(-1, 4))


def test_freeze_batch_norm_turns_a_linen_model_into_its_eval_mode_without_params_or_updates():
    model, x = _Net(), jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    _, trained = model.apply(variables, x * 3 + 1, train=True, mutable=["batch_stats"])
    variables = {**variables, **trained}
    frozen = jn.freeze_batch_norm(variables)
    assert set(frozen["params"]) == {"fc", "head"}
    assert set(frozen["batch_stats"]["bn"]) == {"weight", "bias", "running_mean", "running_var"}  # torchvision's
    np.testing.assert_array_equal(frozen["batch_stats"]["inorm"]["weight"], np.ones(2))
    y, state = model.apply(frozen, x, train=True, mutable=["batch_stats"])
    _close(y, model.apply(variables, x, train=False), 1e-6)
    jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], frozen["batch_stats"])
    with pytest.raises(ValueError, match="found no layer with running statistics"):
        jn.freeze_batch_norm({"params": {}, "batch_stats": {}})


# ------------------------------------------------------------------------------- synchronized statistics, vmapped
def _vmapped_bn(x_shards, mask_shards, groups=None, params=None):
    stats = jn.batch_norm_init(x_shards.shape[2])[1]

    def one(x, m):
        return jn.batch_norm_1d(x, params or {}, stats, train=True, axis_name="d", axis_index_groups=groups, mask=m)

    return jax.jit(jax.vmap(one, axis_name="d"))(jnp.asarray(x_shards), None if mask_shards is None else
                                                 jnp.asarray(mask_shards))


def _np_bn_rows(rows):
    rows = np.asarray(rows, np.float64)
    mean, var = rows.mean(0), rows.var(0)
    return (rows - mean) / np.sqrt(var + EPS), 0.9 + 0.1 * rows.var(0, ddof=1), 0.1 * mean


def test_devices_with_unequal_valid_counts_equal_bn_on_the_concatenation():
    x = (RNG.normal(size=(4, 3, 2)) * 2 + RNG.normal(size=(4, 1, 1)) * 4).astype(np.float32)  # 4 devices x 3 rows
    valid = np.array([3, 0, 1, 2])  # rows per device; device 1 has none
    mask = (np.arange(3)[None, :] < valid[:, None])[:, :, None]
    y, stats = _vmapped_bn(np.where(mask, x, np.nan), mask)
    rows = x[np.broadcast_to(mask, x.shape)].reshape(-1, 2)
    want_y, want_var, want_mean = _np_bn_rows(rows)
    _close(np.asarray(y)[np.broadcast_to(mask, x.shape)].reshape(-1, 2), want_y)
    _close(stats["running_mean"][0], want_mean)
    _close(stats["running_var"][0], want_var)
    for key in ("running_mean", "running_var"):  # every device holds the same statistics
        assert np.ptp(np.asarray(stats[key]), axis=0).max() == 0


def test_axis_index_groups_synchronize_within_each_group():
    x = (RNG.normal(size=(4, 3, 2)) + np.array([0.0, 0.0, 10.0, 10.0])[:, None, None]).astype(np.float32)
    y, stats = _vmapped_bn(x, None, groups=[[0, 1], [2, 3]])
    for group in ([0, 1], [2, 3]):
        want_y, want_var, want_mean = _np_bn_rows(x[group].reshape(-1, 2))
        _close(np.asarray(y)[group].reshape(-1, 2), want_y)
        for d in group:
            _close(stats["running_mean"][d], want_mean)
            _close(stats["running_var"][d], want_var)
    with pytest.raises(ValueError, match=r"axis_index_groups must partition the 4 devices of axis 'd', got "
                                         r"\(\(0, 1\), \(2,\)\)"):
        _vmapped_bn(x, None, groups=[[0, 1], [2]])
    with pytest.raises(ValueError, match="needs axis_name"):
        jn.batch_norm_1d(jnp.ones((4, 2)), {}, {}, train=True, axis_index_groups=[[0, 1]])


def test_freeze_batch_norm_on_an_nnx_model_replaces_the_layers_in_place():
    from flax import nnx

    import jaxnorm.nnx as jnnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(5, 4, rngs=rngs)
            self.bn = jnnx.BatchNorm1d(4)

        def __call__(self, x):
            return self.bn(self.fc(x))

    model, x = Net(nnx.Rngs(0)), jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32)
    model(x * 3 + 1)  # training mode: the running statistics move
    want = nnx.view(model, use_running_average=True)(x)
    jn.freeze_batch_norm(model)
    assert isinstance(model.bn, jnnx.FrozenBatchNorm)
    model.train()
    _close(model(x), want, 1e-6)  # train or eval, the same fixed map
    params = nnx.state(model, nnx.Param)
    assert "bn" not in params and set(nnx.state(model.bn, nnx.BatchStat)) == {"weight", "bias", "running_mean",
                                                                              "running_var"}
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    assert set(grads) == {"fc"}
