"""Masked statistics (``mask=``, True = valid) for every family, against references on the valid values alone.

The reference semantics is PyTorch's: BatchNorm with a mask equals ``torch.nn.functional.batch_norm`` applied to the
valid values only — a padded batch's first ``n`` examples, or a padded sequence batch's valid time steps
concatenated — in outputs (at valid positions), running statistics (unbiased with the *valid* count) and gradients.
Families PyTorch has no masked form of (IN, GN, LN, RMS) are checked against float64 NumPy on the valid values.
Then the rules where the data do not allow statistics (no valid value, one valid value), NaN/inf padding, the
stable core with masks at large offsets, ``vmap`` over per-example masks, and the errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

EPS = 1e-5
RNG = np.random.default_rng(0)


def _params(c, seed=1):
    rng = np.random.default_rng(seed)
    return {"weight": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}


def _stats(c, seed=2):
    rng = np.random.default_rng(seed)
    return {"running_mean": jnp.asarray(rng.normal(size=c), jnp.float32),
            "running_var": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
            "num_batches_tracked": jnp.asarray(3, jnp.int32)}


def _torch_bn(valid_rows, params, stats, ct_rows, momentum=0.1):
    """torch BN on ``(M, C)`` valid rows: ``(y, running_mean, running_var, dx, dweight, dbias)``."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(np.asarray(valid_rows), requires_grad=True)
    w = torch.tensor(np.asarray(params["weight"]), requires_grad=True)
    b = torch.tensor(np.asarray(params["bias"]), requires_grad=True)
    rm, rv = torch.tensor(np.asarray(stats["running_mean"])), torch.tensor(np.asarray(stats["running_var"]))
    y = torch.nn.functional.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=EPS)
    y.backward(torch.tensor(np.asarray(ct_rows)))
    return tuple(t.detach().numpy() for t in (y, rm, rv, x.grad, w.grad, b.grad))


@functools.partial(jax.jit, static_argnames="axis")  # one compiled program, not one per operation
def _bn_and_grads(x, params, stats, mask, ct, axis=1):
    y, vjp, new = jax.vjp(lambda x, p: jn.batch_norm(x, p, stats, train=True, axis=axis, mask=mask), x, params,
                          has_aux=True)
    dx, dp = vjp(ct)
    return y, new, dx, dp


def _close(got, want, tol=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(want)))))


@pytest.mark.parametrize("channels_last", [False, True])
def test_padded_batch_equals_torch_on_the_valid_examples(channels_last):
    n, n_valid, c = 8, 5, 3
    x = RNG.normal(size=(n, c, 4, 4)).astype(np.float32) * 2 + 1
    x[n_valid:] = np.nan  # padding may hold anything
    ct = RNG.normal(size=x.shape).astype(np.float32)
    mask = np.arange(n)[:, None, None, None] < n_valid
    to = (lambda a: np.moveaxis(a, 1, -1)) if channels_last else (lambda a: a)
    params, stats = _params(c), _stats(c)
    y, new, dx, dp = _bn_and_grads(jnp.asarray(to(x)), params, stats, jnp.asarray(to(mask)), jnp.asarray(to(ct)),
                                   axis=-1 if channels_last else 1)
    rows = lambda a: np.moveaxis(a[:n_valid], 1, -1).reshape(-1, c)  # noqa: E731  (N, C, H, W) -> (M, C)
    t_y, t_rm, t_rv, t_dx, t_dw, t_db = _torch_bn(rows(x), params, stats, rows(ct))
    back = (lambda a: np.moveaxis(a, -1, 1)) if channels_last else (lambda a: a)
    _close(rows(back(np.asarray(y))), t_y)
    _close(new["running_mean"], t_rm)
    _close(new["running_var"], t_rv)  # unbiased with the valid count 5·16, not 8·16
    _close(rows(back(np.asarray(dx))), t_dx)
    _close(dp["weight"], t_dw)
    _close(dp["bias"], t_db)
    assert np.all(back(np.asarray(y))[n_valid:] == 0) and np.all(back(np.asarray(dx))[n_valid:] == 0)
    assert int(new["num_batches_tracked"]) == 4


def test_padded_sequences_equal_torch_on_the_concatenated_valid_steps():
    n, c, length = 4, 5, 7
    lengths = np.array([7, 3, 1, 5])
    x = RNG.normal(size=(n, c, length)).astype(np.float32) + 3
    ct = RNG.normal(size=x.shape).astype(np.float32)
    mask = (np.arange(length)[None, :] < lengths[:, None])[:, None, :]  # (N, 1, L)
    x_padded = np.where(mask, x, 1e30).astype(np.float32)
    params, stats = _params(c), _stats(c)
    y, new, dx, dp = _bn_and_grads(jnp.asarray(x_padded), params, stats, jnp.asarray(mask), jnp.asarray(ct))
    valid = np.broadcast_to(mask, x.shape).transpose(0, 2, 1)  # (N, L, C)
    rows = lambda a: np.asarray(a).transpose(0, 2, 1)[valid].reshape(-1, c)  # noqa: E731  (16 valid steps, C)
    t_y, t_rm, t_rv, t_dx, t_dw, t_db = _torch_bn(rows(x), params, stats, rows(ct))
    for got, want in ((rows(y), t_y), (new["running_mean"], t_rm), (new["running_var"], t_rv),
                      (rows(dx), t_dx), (dp["weight"], t_dw), (dp["bias"], t_db)):
        _close(got, want)


def _np_normalize(x, mask, axes, eps=EPS):
    """float64 reference over the valid values of each group; 0 off the mask."""
    x = np.asarray(x, np.float64)
    m = np.broadcast_to(mask, x.shape)
    count = m.sum(axes, keepdims=True)
    mean = np.where(m, x, 0).sum(axes, keepdims=True) / np.maximum(count, 1)
    var = np.where(m, (x - mean) ** 2, 0).sum(axes, keepdims=True) / np.maximum(count, 1)
    return np.where(m, (x - mean) / np.sqrt(var + eps), 0)


def test_instance_group_layer_and_rms_norm_use_only_the_valid_values():
    x = RNG.normal(size=(3, 4, 6, 5)).astype(np.float32) * 3 - 2
    mask = RNG.uniform(size=(3, 1, 6, 5)) < 0.6  # shared by the channels
    mask[:, :, 0, 0] = True
    xp = np.where(mask, x, np.inf).astype(np.float32)
    xp, mask_ = jnp.asarray(xp), jnp.asarray(mask)  # each norm jitted: one program each, not one per operation
    got = np.asarray(jax.jit(lambda x, m: jn.instance_norm_2d(x, {}, {}, train=True, mask=m)[0])(xp, mask_))
    _close(got, _np_normalize(x, mask, (2, 3)), 1e-5)
    got = np.asarray(jax.jit(lambda x, m: jn.group_norm(x, {}, 2, mask=m))(xp, mask_))
    grouped = lambda a: a.reshape(3, 2, 2, 6, 5)  # noqa: E731
    _close(got, _np_normalize(grouped(x), grouped(np.broadcast_to(mask, x.shape)), (2, 3, 4)).reshape(x.shape), 1e-5)
    got = np.asarray(jax.jit(lambda x, m: jn.layer_norm(x, {}, (6, 5), mask=m))(xp, mask_))
    _close(got, _np_normalize(x, mask, (2, 3)), 1e-5)
    ms = np.where(mask, x.astype(np.float64) ** 2, 0).sum((2, 3), keepdims=True) / mask.sum((2, 3), keepdims=True)
    got = np.asarray(jax.jit(lambda x, m: jn.rms_norm(x, {}, (6, 5), eps=1e-6, mask=m))(xp, mask_))
    _close(got, np.where(mask, x / np.sqrt(ms + 1e-6), 0), 1e-5)


def test_a_channel_without_data_or_with_one_value_keeps_its_running_statistics():
    x = RNG.normal(size=(6, 3)).astype(np.float32)
    mask = np.ones((6, 3), bool)
    mask[:, 1] = False  # channel 1: no valid value
    mask[1:, 2] = False  # channel 2: one valid value
    x[~mask] = np.nan
    params, stats = _params(3), _stats(3)
    bn = jax.jit(lambda p, m: jn.batch_norm_1d(jnp.asarray(x), p, stats, train=True, mask=m))
    y, new = bn(params, jnp.asarray(mask))
    y = np.asarray(y)
    assert np.isfinite(y).all() and np.all(y[~mask] == 0)
    np.testing.assert_allclose(y[0, 2], params["bias"][2], rtol=1e-6)  # x − μ = 0 for the lone value
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(np.asarray(new[key])[1:], np.asarray(stats[key])[1:])
        assert np.asarray(new[key])[0] != np.asarray(stats[key])[0]  # channel 0 had data
    assert int(new["num_batches_tracked"]) == 4
    # A batch with no data at all moves nothing, the counter included; gradients stay finite (zero).
    nothing = jnp.zeros((6, 3), bool)
    _, same = bn(params, nothing)
    jax.tree.map(np.testing.assert_array_equal, same, stats)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(bn(p, nothing)[0])))(params)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("offset", [1e3, 1e5])
def test_masked_statistics_stay_stable_at_large_offsets(offset):
    # The shift must be a valid value: garbage in the padding (1e30 here) would destroy the shifted sums.
    x = (RNG.normal(size=(32, 4, 8)) * 1e-2 + offset * np.array([1.0, -0.5, 0.25, 1.0])[:, None]).astype(np.float32)
    mask = np.ones((32, 1, 8), bool)
    mask[:3] = False
    mask[:, :, 5:] &= RNG.uniform(size=(32, 1, 3)) < 0.5
    xp = np.where(mask, x, 1e30).astype(np.float32)
    y, _ = jax.jit(lambda x, m: jn.batch_norm_1d(x, {}, {}, train=True, mask=m))(jnp.asarray(xp), jnp.asarray(mask))
    assert np.abs(np.asarray(y) - _np_normalize(x, mask, (0, 2))).max() <= 6e-6  # README's stability bound, masked or not


def test_per_example_masks_under_vmap_equal_one_by_one():
    x = RNG.normal(size=(4, 6, 8)).astype(np.float32)
    mask = RNG.uniform(size=(4, 6, 1)) < 0.7
    mask[:, 0] = True
    one = jax.jit(lambda xi, mi: jn.layer_norm(xi, {}, 8, mask=mi))
    got = jax.jit(jax.vmap(one))(jnp.asarray(x), jnp.asarray(mask))
    want = [one(jnp.asarray(x[i]), jnp.asarray(mask[i])) for i in range(4)]
    np.testing.assert_allclose(np.asarray(got), np.stack(want), rtol=1e-6, atol=1e-6)


def test_a_mask_of_the_wrong_shape_or_dtype_is_a_clear_error():
    x = jnp.zeros((4, 3, 5))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 2, 5\) does not broadcast to the input's shape "
                                         r"\(4, 3, 5\)"):
        jn.batch_norm_1d(x, {}, {}, train=True, mask=jnp.ones((4, 2, 5), bool))
    with pytest.raises(TypeError, match="expected a boolean mask .* got dtype float32"):
        jn.layer_norm(x, {}, 5, mask=jnp.ones((4, 3, 5)))


def test_no_mask_traces_no_masking_op():
    """``mask=None`` is the unmasked program: no select anywhere in the forward or the backward."""
    x = jnp.ones((4, 3, 5))
    p, s = jn.batch_norm_init(3)

    def step(x, p):
        return jax.vjp(lambda x, p: jn.batch_norm_1d(x, p, s, train=True)[0], x, p)[1](x)

    text = str(jax.make_jaxpr(step)(x, p))
    assert "select_n" not in text and " min " not in text
    masked = str(jax.make_jaxpr(lambda x, p: jax.vjp(
        lambda x, p: jn.batch_norm_1d(x, p, s, train=True, mask=x > 0)[0], x, p)[1](x))(x, p))
    assert "select_n" in masked  # the check above can see masking ops when there are some
