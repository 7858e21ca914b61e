"""The one statistics core: every normalization in jaxnorm calls these functions.

A normalization layer is a *spec of axes*: which axes of ``x`` are reduced to form the statistics (``reduce_axes``)
and along which axis the affine parameters live. Everything numerical happens here:

* :func:`stable_moments` / :func:`moments` — mean and *biased* variance, stable (shifted one-pass), accumulated in
  at least float32, optionally combined across a named mapped axis (synchronized statistics).
* :func:`normalize` — ``y = (x − μ) / √(σ² + ε) · γ + β`` from batch statistics, with a closed-form ``custom_vjp``.
* :func:`normalize_with` — ``x̂`` from given (running) statistics; :func:`affine` — ``x̂ · γ + β``.
* :func:`mean_square` — ``E[x²]`` for RMSNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

Axes = tuple[int, ...]


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Statistics are accumulated in at least float32 (float16/bfloat16 → float32, float64 stays)."""
    return jnp.promote_types(dtype, jnp.float32)


def _shift(x: jax.Array, reduce_axes: Axes) -> jax.Array:
    """One sample of ``x`` per statistics group (index 0 along every reduced axis), kept as a broadcastable slice.

    Why: ``Var[x] = E[(x−s)²] − E[x−s]²`` holds for any constant ``s``; choosing ``s`` from the data puts it within a
    few standard deviations of the mean, so the subtraction in the one-pass formula no longer cancels catastrophically
    (the naive ``E[x²] − E[x]²`` loses every digit once |mean| / std ≳ 1e3 in float32).
    """
    index = tuple(slice(0, 1) if a in reduce_axes else slice(None) for a in range(x.ndim))
    return lax.stop_gradient(x[index])


def _distinct(tree, tag: int):
    """The same values behind an optimization barrier, so XLA treats expressions built on them as different.

    Used where several fused passes each recompute a cheap elementwise expression of ``x`` (``x − s``, ``x̂``):
    without it, common-subexpression elimination merges them into one materialized full-size tensor, which costs an
    extra write and read of ``x``'s size — the dominant cost of a memory-bound normalization. Each use site passes
    its own ``tag`` (a dummy operand of that size) so that XLA cannot merge the barriers themselves either.
    """
    values, token = lax.optimization_barrier((tree, jnp.zeros((tag,), jnp.int8)))
    # XLA drops barrier operands whose results are unused, after which equal barriers are merged again: make every
    # value depend on the token (a float ``0 * t`` is not folded: it would be NaN for an infinite ``t``).
    return jax.tree.map(lambda v: v + 0 * token[0].astype(v.dtype), values)


def group_size(shape: Sequence[int], reduce_axes: Axes) -> int:
    """Number of elements in one statistics group (static)."""
    return math.prod(shape[a] for a in reduce_axes)


# The plain one-pass variance E[x²] − E[x]² is used only where it is as accurate as the shifted one: with float32
# sums of relative error γ its error is ≲ γ (σ² + 3μ²), i.e. (1 + 3K)γ relative to σ² when μ² ≤ K σ². The shifted
# formula's error is the same expression with μ replaced by μ − s, and |μ − s| (one sample from the mean) is ≲ 2σ,
# so K = 4 keeps the plain formula within the shifted formula's typical bound.
_PLAIN_VARIANCE_MAX_MEAN_SQ_OVER_VAR = 4.0


def _plain_moments(x: jax.Array, reduce_axes: Axes, n: int) -> tuple[jax.Array, jax.Array]:
    """``(E[x], E[x²] − E[x]²)``: two plain sums with no broadcast operand (the fastest reductions on XLA:CPU)."""
    mean = jnp.sum(x, axis=reduce_axes, keepdims=True) / n
    var = jnp.sum(jnp.square(x), axis=reduce_axes, keepdims=True) / n - mean * mean
    return mean, var


def _fast_two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a + b`` as an unevaluated sum ``hi + lo`` with ``hi = fl(a + b)`` (exact when ``|a| ≥ |b|``, Dekker)."""
    hi = a + b
    return hi, (a - hi) + b


def _shifted_local_moments(x: jax.Array, reduce_axes: Axes, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(mean_hi, mean_lo, var)``: the shifted one-pass moments (always stable), the mean as ``hi + lo``."""
    shift = _shift(x, reduce_axes)
    delta = jnp.sum(x - shift, axis=reduce_axes, keepdims=True) / n
    # A distinct (barriered) copy of the shift keeps XLA from CSE-ing ``x − s`` into one materialized tensor that both
    # sums then read: each sum fuses its own subtraction and reads ``x`` directly.
    mean_d2 = jnp.sum(jnp.square(x - _distinct(shift, 1)), axis=reduce_axes, keepdims=True) / n
    # |shift| ≥ |delta| up to a few standard deviations, so hi + lo is the mean to float32 rounding of ``delta``.
    return *_fast_two_sum(shift, delta), mean_d2 - delta * delta


@jax.custom_batching.custom_vmap
def _all_true(ok: jax.Array) -> jax.Array:
    """``jnp.all(ok)``; under ``vmap`` one decision for the whole batch (an unbatched predicate).

    Why: a ``lax.cond`` whose predicate is batched becomes a ``select`` that runs *both* branches; with one
    predicate for all mapped examples it stays a branch. Either branch is correct for every example.
    """
    return jnp.all(ok)


@_all_true.def_vmap
def _all_true_vmap(axis_size, in_batched, ok):
    return jnp.all(ok), False


def _plain_or_shifted_moments(x: jax.Array, reduce_axes: Axes, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The plain moments when every group is well conditioned (``μ² ≤ 4σ²``), else the shifted ones.

    Why: on XLA:CPU a reduction whose operand subtracts a broadcast shift runs ~1.8× slower than a plain ``Σx``,
    ``Σx²`` pass, and typical activations (centred, or post-ReLU with ``μ²/σ² ≈ 0.5``) are well conditioned. An
    ill-conditioned batch (large offsets, constant or non-finite groups) pays for the shifted sums as well.
    """
    mean, var = _plain_moments(x, reduce_axes, n)
    well_conditioned = _all_true(lax.stop_gradient(mean * mean <= _PLAIN_VARIANCE_MAX_MEAN_SQ_OVER_VAR * var))
    return lax.cond(well_conditioned, lambda: (mean, jnp.zeros_like(mean), var),
                    lambda: _shifted_local_moments(x, reduce_axes, n))


def stable_moments(
    x: jax.Array, reduce_axes: Axes, *, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Stable moments of ``x`` over ``reduce_axes`` as ``(mean_hi, mean_lo, var, count)``, ``mean = hi + lo``.

    .. math::
        s = x_{\text{first}},\quad d = x - s,\quad
        \delta = \tfrac{1}{n}\textstyle\sum d,\quad
        \sigma^2 = \max\!\big(0,\ \tfrac{1}{n}\sum d^2 - \delta^2\big),\quad
        \mu = s + \delta = \mu_{hi} + \mu_{lo}

    Both sums are taken in one pass over ``x`` in at least float32 (kept dims). The mean is returned as an
    unevaluated sum ``hi + lo`` because rounding ``μ`` itself costs up to half an ulp of ``|μ|`` — at offset 1e5 that
    is 4e-3, 40 % of a 1e-2 standard deviation — whereas ``(x − hi) − lo`` is exact to float32 rounding of the
    deviation (``x − hi`` is exact for ``x`` near the mean, Sterbenz).

    On the CPU the plain sums ``Σx``, ``Σx²`` (``s = 0``, ``lo = 0``) are taken first and kept when every group has
    ``μ² ≤ 4σ²``, where they are as accurate as the shifted ones and faster there (:func:`_plain_or_shifted_moments`);
    other platforms fuse the shift for free and always use it.

    With ``axis_name`` the per-device ``(hiᵢ, loᵢ, σᵢ²)`` are gathered in **one** collective and combined with Chan's
    parallel formula ``σ² = mean σᵢ² + mean (μᵢ − μ)²`` (computed relative to device 0's ``hi``) — exact and as
    stable as the local statistics; a ``psum`` of ``Σx`` and ``Σx²`` would reintroduce the cancellation the shift
    removed. SPMD devices see equal local shapes, so every device contributes the same count ``n``.
    ``count`` is the global number of elements per group (a float scalar).
    """
    x = x.astype(compute_dtype(x.dtype))
    n = group_size(x.shape, reduce_axes)
    hi, lo, var = lax.platform_dependent(x, cpu=partial(_plain_or_shifted_moments, reduce_axes=reduce_axes, n=n),
                                         default=partial(_shifted_local_moments, reduce_axes=reduce_axes, n=n))
    var = jnp.maximum(var, 0.0)
    if axis_name is None:
        return hi, lo, var, jnp.asarray(n, x.dtype)
    # All-gather as ONE psum of rows placed by device index: a psum's result is replicated (the same value and, under
    # shard_map, the same "invariant" type on every device), which an all_gather's is not.
    devices = lax.axis_size(axis_name)
    local = jnp.stack([hi, lo, var])
    one_hot = (jnp.arange(devices) == lax.axis_index(axis_name)).reshape((devices,) + (1,) * local.ndim)
    gathered = lax.psum(jnp.where(one_hot, local[None], 0.0), axis_name)  # (devices, 3, ...)
    # Every device combines relative to device 0's mean, so all replicas get bit-identical statistics;
    # (hi_j − hi_0) is exact for nearby means (Sterbenz).
    shift = lax.stop_gradient(gathered[0, 0])
    means = (gathered[:, 0] - shift) + gathered[:, 1]
    delta = jnp.mean(means, axis=0)
    var = jnp.mean(gathered[:, 2], axis=0) + jnp.mean(jnp.square(means - delta), axis=0)
    return *_fast_two_sum(shift, delta), var, jnp.asarray(n * devices, x.dtype)


def moments(
    x: jax.Array, reduce_axes: Axes, *, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean and biased variance over ``reduce_axes`` (kept dims) and the global count; see :func:`stable_moments`."""
    hi, lo, var, n = stable_moments(x, reduce_axes, axis_name=axis_name)
    return hi + lo, var, n


def mean_square(x: jax.Array, reduce_axes: Axes) -> jax.Array:
    """``E[x²]`` over ``reduce_axes`` (kept), in at least float32 — the RMSNorm statistic."""
    x = x.astype(compute_dtype(x.dtype))
    return jnp.mean(x * x, axis=reduce_axes, keepdims=True)


def normalize(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, reduce_axes: Axes, eps: float,
    axis_name: str | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Normalize with batch statistics over ``reduce_axes`` and apply the affine map; returns ``(y, μ, σ²)``.

    .. math::
        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \qquad y = \hat x\,\gamma + \beta

    ``weight``/``bias`` (or None) are already shaped to broadcast against ``x``; ``y``, ``μ``, ``σ²`` are in the
    compute dtype (≥ float32), ``μ``/``σ²`` with ``reduce_axes`` kept as size-1 dims.

    Without ``axis_name`` the gradient is the closed form of :func:`_normalize_local`. With ``axis_name`` (statistics
    over a named mapped axis) the forward is differentiated by autodiff through the collective instead: a
    ``custom_vjp`` whose rules contain a collective fails in JAX 0.10 when a VJP is taken outside ``vmap(axis_name)``,
    and its per-device parameter gradients would not type-check under ``shard_map``'s replication checks.
    """
    if axis_name is None:
        return _normalize_local(x, weight, bias, reduce_axes, eps)
    outputs, _ = _normalize_fwd(x, weight, bias, reduce_axes, eps, axis_name)
    return outputs


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize_local(
    x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, reduce_axes: Axes, eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r""":func:`normalize` on one device, with a closed-form backward pass.

    The backward pass is the closed form rather than autodiff through the one-pass moments (which would read ``x``
    and the cotangent several more times). With ``ĝ = g γ`` and bars for means over each group of ``n``:

    .. math::
        \frac{\partial L}{\partial x} = \frac{1}{\sqrt{\sigma^2+\varepsilon}}
        \big(\hat g - \overline{\hat g} - \hat x\,\overline{\hat g\hat x}\big)
        + \frac{g_\mu + 2 g_{\sigma^2}(x-\mu)}{n},\qquad
        \frac{\partial L}{\partial \gamma} = \textstyle\sum_P g\hat x,\quad
        \frac{\partial L}{\partial \beta} = \sum_P g

    where ``P`` are the axes the parameters broadcast over. Where ``P`` and the reduced axes share axes (BatchNorm:
    all of them; InstanceNorm and GroupNorm: the spatial ones), ``Σ g`` and ``Σ g·x̂`` over those axes are the only
    full-size reductions and every other sum is taken on their small results, so the backward reads ``x`` and
    ``g`` in three passes in all. LayerNorm, whose parameters vary along the reduced axes, needs four sums.
    """
    outputs, _ = _normalize_fwd(x, weight, bias, reduce_axes, eps)
    return outputs


def _apply_affine(x_hat, weight, bias):
    y = x_hat if weight is None else x_hat * weight.astype(x_hat.dtype)
    return y if bias is None else y + bias.astype(x_hat.dtype)


def _normalize_fwd(x, weight, bias, reduce_axes, eps, axis_name=None):
    x = x.astype(compute_dtype(x.dtype))
    mean_hi, mean_lo, var, n = stable_moments(x, reduce_axes, axis_name=axis_name)
    inv_std = lax.rsqrt(var + eps)
    hi, lo, i = _distinct((mean_hi, mean_lo, inv_std), 2)
    y = _apply_affine(((x - hi) - lo) * i, weight, bias)
    # The mean travels to the backward as hi + lo, not as a slice of x, which XLA would re-slice inside every fused
    # pass there (losing the fast reduction fusion).
    return (y, mean_hi, var), (x, weight, bias, mean_hi, mean_lo, inv_std, n)


def _unwrap(primal):
    return None if primal is None else primal.value


def _normalize_fwd_rule(x, weight, bias, reduce_axes, eps):
    # symbolic_zeros=True: primals arrive as CustomVJPPrimal(value, perturbed).
    return _normalize_fwd(_unwrap(x), _unwrap(weight), _unwrap(bias), reduce_axes, eps)


def _param_axes(x, param) -> Axes:
    return tuple(a for a in range(x.ndim) if param.shape[a] == 1 and x.shape[a] != 1)


def _is_zero(cotangent) -> bool:
    return isinstance(cotangent, jax.custom_derivatives.SymbolicZero)


def _normalize_bwd(reduce_axes, eps, residuals, cotangents):
    x, weight, bias, mean_hi, mean_lo, inv_std, n = residuals
    g, g_mean, g_var = cotangents
    if _is_zero(g):
        g = jnp.zeros_like(x)
    param = weight if weight is not None else bias
    param_axes = _param_axes(x, param) if param is not None else reduce_axes
    # "Fine" axes are reduced both for the statistics and for the parameter gradients. Two full-size sums over them
    # (Σ g and Σ g·x̂) serve every other sum, which then runs on small arrays: BatchNorm (fine = all reduced axes),
    # InstanceNorm (spatial), GroupNorm (spatial: per-(n, c) sums, then per group / per channel).
    fine = tuple(a for a in reduce_axes if a in param_axes)

    # Every full-size expression below is recomputed inside the fused pass that needs it, from small per-group
    # operands behind their own barrier (see _distinct), so that no x̂, x − μ or g·γ is ever written out.
    def small(tag):
        return _distinct((mean_hi, mean_lo, inv_std, weight), tag)

    def g_hat(w):
        return g if w is None else g * w.astype(g.dtype)

    def sum_g_centered(gg, hi, axes):  # Σ gg·(x − hi): one broadcast operand fewer than Σ gg·x̂
        return jnp.sum(gg * (x - hi), axis=axes, keepdims=True)

    if fine:
        hi, lo, i, _ = small(1)
        sum_g = jnp.sum(g, axis=fine, keepdims=True)
        sum_gx = i * (sum_g_centered(g, hi, fine) + lo * sum_g)  # Σ_fine g·x̂ (i, lo are constant on fine axes)
        rest = tuple(a for a in reduce_axes if a not in fine)
        w = 1.0 if weight is None else weight.astype(g.dtype)
        sums = jnp.stack([jnp.sum(w * sum_g, axis=rest, keepdims=True), jnp.sum(w * sum_gx, axis=rest, keepdims=True)])
        param_rest = tuple(a for a in param_axes if a not in fine)
        param_sums = (jnp.sum(sum_gx, axis=param_rest, keepdims=True), jnp.sum(sum_g, axis=param_rest, keepdims=True))
    else:  # LayerNorm: parameters vary along the reduced axes; four full-size sums
        hi, lo, i, w = small(1)
        sum_gh = jnp.sum(g_hat(w), axis=reduce_axes, keepdims=True)
        hi, lo, i, w = small(4)
        sum_ghx = i * (sum_g_centered(g_hat(w), hi, reduce_axes) + lo * sum_gh)
        sums = jnp.stack([sum_gh, sum_ghx])
        hi, lo, i, _ = small(2)
        param_sums = (jnp.sum(g * (((x - hi) + lo) * i), axis=param_axes, keepdims=True) if weight is not None
                      else None,
                      jnp.sum(g, axis=param_axes, keepdims=True) if bias is not None else None)
    g_bar, gx_bar = sums[0] / n, sums[1] / n
    hi, lo, i, w = small(3)
    centered = (x - hi) + lo
    dx = i * (g_hat(w) - g_bar - centered * i * gx_bar)
    if not _is_zero(g_mean):  # only when someone differentiates through the batch statistics themselves
        dx = dx + g_mean / n
    if not _is_zero(g_var):
        dx = dx + 2.0 * g_var * centered / n
    d_weight = None if weight is None else param_sums[0].reshape(weight.shape).astype(weight.dtype)
    d_bias = None if bias is None else param_sums[1].reshape(bias.shape).astype(bias.dtype)
    return dx, d_weight, d_bias


_normalize_local.defvjp(_normalize_fwd_rule, _normalize_bwd, symbolic_zeros=True)


def normalize_with(x: jax.Array, mean: jax.Array, var: jax.Array, eps: float) -> jax.Array:
    """``(x − mean) / √(var + ε)`` with given (e.g. running) statistics, in the compute dtype."""
    x = x.astype(compute_dtype(x.dtype))
    return (x - mean) * lax.rsqrt(var.astype(x.dtype) + eps)


def broadcast_params(params: dict, shape: Sequence[int]) -> tuple[jax.Array | None, jax.Array | None]:
    """``(weight, bias)`` from a params dict, reshaped to the broadcast ``shape``; None where absent."""
    return tuple(jnp.reshape(params[k], shape) if k in params else None for k in ("weight", "bias"))


def affine(x_hat: jax.Array, params: dict, shape: Sequence[int]) -> jax.Array:
    """``x̂ · weight + bias`` with the parameters reshaped to the broadcast ``shape``; missing keys are skipped."""
    return _apply_affine(x_hat, *broadcast_params(params, shape))


def update_running_stats(
    batch_stats: dict, mean: jax.Array, var: jax.Array, count: jax.Array, momentum: float | None
) -> dict:
    r"""PyTorch's running-statistics update from one batch.

    .. math::
        r_\mu \leftarrow (1-m)\,r_\mu + m\,\mu_B,\qquad
        r_{\sigma^2} \leftarrow (1-m)\,r_{\sigma^2} + m\,\tfrac{n}{n-1}\sigma^2_B

    with ``m = momentum``, or ``m = 1 / num_batches_tracked`` (after the increment) when ``momentum`` is None — the
    cumulative average. The running variance uses the *unbiased* batch variance (``n`` = global group size).
    """
    tracked = batch_stats["num_batches_tracked"] + 1
    dtype = batch_stats["running_mean"].dtype
    factor = (1.0 / tracked).astype(dtype) if momentum is None else jnp.asarray(momentum, dtype)
    unbiased = var * (count / jnp.maximum(count - 1.0, 1.0))
    mean, unbiased = lax.stop_gradient(mean.astype(dtype)), lax.stop_gradient(unbiased.astype(dtype))
    return {
        "running_mean": (1 - factor) * batch_stats["running_mean"] + factor * mean,
        "running_var": (1 - factor) * batch_stats["running_var"] + factor * unbiased,
        "num_batches_tracked": tracked.astype(batch_stats["num_batches_tracked"].dtype),
    }
