r"""The lesson's deep MLP ``y_{l+1} = relu(bn(y_l @ W[l]))`` and the std of its activations after every layer.

Numerics. The activations are float32, like PyTorch's, so the *network* overflows/underflows exactly as the
lesson's does; the *statistic* must not add failures of its own. A naive ``sqrt(mean(y**2) - mean(y)**2)``
in float32 overflows once ``|y| > ~1.8e19`` (``y**2 > 3.4e38``) and underflows below ``~1.1e-19``
(``y**2`` below the smallest normal, 1.2e-38), while the lesson prints stds from 2.5e-40 to 7.5e36. So
:func:`layer_stds` divides by ``m = max|y|`` first: the scaled values lie in ``[-1, 1]``, their squared
deviations cannot overflow, and any that underflow are below float32's relative resolution of the result
anyway; the std is ``m * std(y / m)``. The first layer whose activations are not all finite, and every layer
after it, reports NaN (the lesson's ``output is nan in 35 layers``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import jaxnorm as jn


def _scaled_std(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""``(std(y, ddof=1), all_finite(y))``, safe for any finite float32 magnitude.

    ``std(y) = m * std(y / m)`` with ``m = max|y|``: the scaled values are in ``[-1, 1]`` so
    ``sum((s - mean(s))**2) <= n`` cannot overflow; dividing ``y`` by ``m`` (not multiplying by ``1/m``)
    stays exact-ish even when ``m`` is denormal on hardware that keeps denormals (``1/m`` would be inf).
    """
    finite = jnp.all(jnp.isfinite(y))
    m = jnp.max(jnp.abs(y))
    scale = jnp.where(finite & (m > 0), m, jnp.ones_like(m))  # all-zero or non-finite: avoid 0/0, inf/inf
    s = y / scale
    d = s - jnp.mean(s)  # two-pass: no E[s^2] - E[s]^2 cancellation
    std = scale * jnp.sqrt(jnp.sum(d * d) / (y.size - 1))
    return std, finite


@functools.partial(jax.jit, static_argnames="batch_norm")
def _layer_stds(weights: jax.Array, x: jax.Array, batch_norm: bool) -> jax.Array:
    # weight 1, bias 0; the running stats are updated but not used (training mode normalizes with batch stats).
    bn_params, bn_stats = jn.batch_norm_init(weights.shape[-1], dtype=weights.dtype)

    def layer(carry, w):
        h, bad = carry
        # HIGHEST: float32 matmul as PyTorch does it; GPU/TPU default precision (TF32/bf16 passes) would
        # change the very numbers this study is about.
        h = jnp.matmul(h, w, precision=jax.lax.Precision.HIGHEST)
        if batch_norm:
            h, _ = jn.batch_norm_1d(h, bn_params, bn_stats, train=True)
        h = jax.nn.relu(h)
        std, finite = _scaled_std(h)
        bad = bad | ~finite  # sticky: once the signal is gone, later layers are meaningless
        return (h, bad), jnp.where(bad, jnp.nan, std)

    _, stds = jax.lax.scan(layer, (x, jnp.zeros((), bool)), weights)
    return stds


def layer_stds(weights, x, *, batch_norm: bool = False) -> jax.Array:
    r"""Per-layer std of the activations of the MLP ``y_{l+1} = relu(bn(y_l @ W[l]))``, ``y_0 = x``.

    Args:
      weights: ``(L, n, n)`` array of kernels in Flax layout (``(n_in, n_out)``; a PyTorch ``nn.Linear``
        weight is the transpose). ``n_in == n_out`` since layer ``l``'s output is layer ``l+1``'s input.
      x: ``(batch, n)`` input.
      batch_norm: insert training-mode batch normalization (weight 1, bias 0, batch statistics,
        ``eps = 1e-5``) between the matmul and the ReLU, as the lesson's ``bn_*`` runs do.

    Returns:
      ``(L,)`` array ``s`` with ``s[l] = std(y_{l+1})`` over all ``batch * n`` entries with Bessel's
      correction (``torch.Tensor.std()``), computed as ``m * std(y / m)``, ``m = max|y|``, so it neither
      overflows nor underflows while the activations are finite. ``s[l]`` is NaN from the first layer whose
      activations are not all finite on. Jit-compiled; the layer loop is a ``jax.lax.scan``.

    Raises:
      ValueError: wrong ranks, non-square kernels, or ``x``'s width not matching ``n``.
      TypeError: non-floating input.
    """
    weights, x = jnp.asarray(weights), jnp.asarray(x)
    if weights.ndim != 3:
        raise ValueError(f"layer_stds: expected weights of shape (L, n_in, n_out), got shape {weights.shape}")
    if weights.shape[1] != weights.shape[2]:
        raise ValueError("layer_stds: expected square kernels (n_in == n_out, each layer feeds the next), "
                         f"got weights of shape {weights.shape}")
    if x.ndim != 2 or x.shape[1] != weights.shape[1]:
        raise ValueError(f"layer_stds: expected x of shape (batch, {weights.shape[1]}), got shape {x.shape}")
    if x.shape[0] * x.shape[1] < 2:
        raise ValueError(f"layer_stds: expected at least 2 activations per layer for a Bessel-corrected std, "
                         f"got x of shape {x.shape}")
    dtype = jnp.result_type(weights, x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"layer_stds: expected floating weights and x, got {weights.dtype} and {x.dtype}")
    return _layer_stds(weights.astype(dtype), x.astype(dtype), batch_norm=bool(batch_norm))
