"""The one statistics core: every normalization in jaxnorm calls these functions.

A normalization layer is a *spec of axes*: which axes of ``x`` are reduced to form the statistics (``reduce_axes``)
and along which axis the affine parameters live. Everything numerical happens here:

* :func:`shifted_moments` / :func:`moments` — mean and *biased* variance, stable (shifted one-pass), accumulated in at least float32,
  optionally combined across a named mapped axis (synchronized statistics).
* :func:`standardize` — ``x̂ = (x − μ) / √(σ² + ε)`` from batch statistics, with a closed-form ``custom_vjp``.
* :func:`normalize_with` — the same map from given (running) statistics.
* :func:`affine` — ``y = x̂ · γ + β`` broadcast along the parameter axes.
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


def group_size(shape: Sequence[int], reduce_axes: Axes) -> int:
    """Number of elements in one statistics group (static)."""
    return math.prod(shape[a] for a in reduce_axes)


def shifted_moments(
    x: jax.Array, reduce_axes: Axes, *, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Stable moments of ``x`` over ``reduce_axes`` as ``(shift, delta, var, count)`` with ``mean = shift + delta``.

    .. math::
        s = x_{\text{first}},\quad d = x - s,\quad
        \delta = \tfrac{1}{n}\textstyle\sum d,\quad
        \sigma^2 = \max\!\big(0,\ \tfrac{1}{n}\sum d^2 - \delta^2\big)

    Both sums are taken in one pass over ``x`` in at least float32 (kept dims). The mean is returned split as
    ``shift + delta`` because rounding ``μ`` itself costs up to half an ulp of ``|μ|`` — at offset 1e5 that is 4e-3,
    40 % of a 1e-2 standard deviation — whereas ``(x − s) − δ`` is exact to float32 rounding of the deviation.

    With ``axis_name`` the per-device ``(sᵢ, δᵢ, σᵢ²)`` are gathered in **one** collective and combined with Chan's
    parallel formula ``σ² = mean σᵢ² + mean (μᵢ − μ)²`` (computed relative to the local shift) — exact and as
    stable as the local statistics; a ``psum`` of ``Σx`` and ``Σx²`` would reintroduce the cancellation the shift
    removed. SPMD devices see equal local shapes, so every device contributes the same count ``n``.
    ``count`` is the global number of elements per group (a float scalar).
    """
    x = x.astype(compute_dtype(x.dtype))
    n = group_size(x.shape, reduce_axes)
    shift = _shift(x, reduce_axes)
    d = x - shift
    delta = jnp.sum(d, axis=reduce_axes, keepdims=True) / n
    var = jnp.maximum(jnp.sum(d * d, axis=reduce_axes, keepdims=True) / n - delta * delta, 0.0)
    if axis_name is None:
        return shift, delta, var, jnp.asarray(n, x.dtype)
    gathered = lax.all_gather(jnp.stack([shift, delta, var]), axis_name)  # (devices, 3, ...)
    # Every device's mean relative to *this* device's shift: (s_j − s) is exact for nearby shifts (Sterbenz).
    means = (gathered[:, 0] - shift) + gathered[:, 1]
    delta = jnp.mean(means, axis=0)
    var = jnp.mean(gathered[:, 2], axis=0) + jnp.mean(jnp.square(means - delta), axis=0)
    return shift, delta, var, jnp.asarray(n * gathered.shape[0], x.dtype)


def moments(
    x: jax.Array, reduce_axes: Axes, *, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean and biased variance over ``reduce_axes`` (kept dims) and the global count; see :func:`shifted_moments`."""
    shift, delta, var, n = shifted_moments(x, reduce_axes, axis_name=axis_name)
    return shift + delta, var, n


def mean_square(x: jax.Array, reduce_axes: Axes) -> jax.Array:
    """``E[x²]`` over ``reduce_axes`` (kept), in at least float32 — the RMSNorm statistic."""
    x = x.astype(compute_dtype(x.dtype))
    return jnp.mean(x * x, axis=reduce_axes, keepdims=True)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def standardize(
    x: jax.Array, reduce_axes: Axes, eps: float, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""``x̂ = (x − μ) / √(σ² + ε)`` with batch statistics over ``reduce_axes``; returns ``(x̂, μ, σ²)``.

    ``x̂`` is in the compute dtype (≥ float32). The backward pass is the closed form (two reductions, one map)

    .. math::
        \frac{\partial L}{\partial x} = \frac{1}{\sqrt{\sigma^2+\varepsilon}}
        \Big(g - \overline{g} - \hat x\,\overline{g\hat x}\Big)
        + \frac{g_\mu}{n} + \frac{2 g_{\sigma^2} (x-\mu)}{n}

    where bars are means over the (global, with ``axis_name``) group, instead of autodiff through the one-pass
    moments, which would read ``x`` and the cotangent several more times.
    """
    outputs, _ = _standardize_fwd(x, reduce_axes, eps, axis_name)
    return outputs


def _standardize_fwd(x, reduce_axes, eps, axis_name):
    x = x.astype(compute_dtype(x.dtype))
    shift, delta, var, n = shifted_moments(x, reduce_axes, axis_name=axis_name)
    inv_std = lax.rsqrt(var + eps)
    x_hat = ((x - shift) - delta) * inv_std
    return (x_hat, shift + delta, var), (x, shift, delta, inv_std, n)


def _standardize_bwd(reduce_axes, eps, axis_name, residuals, cotangents):
    x, shift, delta, inv_std, n = residuals
    g, g_mean, g_var = cotangents
    centered = (x - shift) - delta
    x_hat = centered * inv_std
    # Both reductions in one stacked array so that synchronized BN needs one collective for the backward, too.
    sums = jnp.stack(
        [jnp.sum(g, axis=reduce_axes, keepdims=True), jnp.sum(g * x_hat, axis=reduce_axes, keepdims=True)]
    )
    if axis_name is not None:
        sums = lax.psum(sums, axis_name)
    g_bar, gx_bar = sums[0] / n, sums[1] / n
    dx = inv_std * (g - g_bar - x_hat * gx_bar) + (g_mean + 2.0 * g_var * centered) / n
    return (dx,)


standardize.defvjp(_standardize_fwd, _standardize_bwd)


def normalize_with(x: jax.Array, mean: jax.Array, var: jax.Array, eps: float) -> jax.Array:
    """``(x − mean) / √(var + ε)`` with given (e.g. running) statistics, in the compute dtype."""
    x = x.astype(compute_dtype(x.dtype))
    return (x - mean) * lax.rsqrt(var.astype(x.dtype) + eps)


def affine(x_hat: jax.Array, params: dict, shape: Sequence[int]) -> jax.Array:
    """``x̂ · weight + bias`` with the parameters reshaped to the broadcast ``shape``; missing keys are skipped."""
    y = x_hat
    if "weight" in params:
        y = y * jnp.reshape(params["weight"], shape).astype(y.dtype)
    if "bias" in params:
        y = y + jnp.reshape(params["bias"], shape).astype(y.dtype)
    return y


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
