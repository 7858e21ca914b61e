"""Layer normalization and RMS normalization (PyTorch ``nn.LayerNorm`` / ``nn.RMSNorm``) as pure functions.

Spec: statistics over the trailing ``normalized_shape`` axes of each sample; elementwise parameters of that shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _checks, _stats
from jaxnorm.batch_norm import Params


def layer_norm_init(
    normalized_shape: int | tuple[int, ...], *, elementwise_affine: bool = True, bias: bool = True, dtype=jnp.float32
) -> Params:
    """``{"weight": ones(shape), "bias": zeros(shape)}``; no ``bias`` when ``bias=False``; ``{}`` when
    ``elementwise_affine=False`` (PyTorch's defaults and names)."""
    shape = _checks.normalized_shape_tuple("layer_norm_init", normalized_shape)
    if not elementwise_affine:
        return {}
    params = {"weight": jnp.ones(shape, dtype)}
    if bias:
        params["bias"] = jnp.zeros(shape, dtype)
    return params


def _trailing_axes(name: str, x: jax.Array, normalized_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    _checks.check_floating(name, x)
    shape = _checks.normalized_shape_tuple(name, normalized_shape)
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"{name}: normalized_shape {shape} must match the trailing dims of the input, got input shape "
                         f"{tuple(x.shape)}")
    return shape, tuple(range(x.ndim - len(shape), x.ndim))


def layer_norm(
    x: jax.Array, params: Params, normalized_shape: int | tuple[int, ...], *, eps: float = 1e-5
) -> jax.Array:
    r"""Layer normalization over the trailing ``normalized_shape`` dims of ``x``.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \varepsilon}}\odot\gamma + \beta

    with the mean and biased variance over the last ``len(normalized_shape)`` axes, ``γ, β`` of shape
    ``normalized_shape`` (either may be absent). Statistics in at least float32; ``y`` has ``x``'s dtype.
    """
    shape, axes = _trailing_axes("layer_norm", x, normalized_shape)
    _checks.check_params("layer_norm", params, shape)
    y, _, _ = _stats.normalize(x, *_stats.broadcast_params(params, (1,) * (x.ndim - len(shape)) + shape), axes, eps,
                               None)
    return y.astype(x.dtype)


def rms_norm_init(
    normalized_shape: int | tuple[int, ...], *, elementwise_affine: bool = True, dtype=jnp.float32
) -> Params:
    """``{"weight": ones(normalized_shape)}``, or ``{}`` when ``elementwise_affine=False``."""
    shape = _checks.normalized_shape_tuple("rms_norm_init", normalized_shape)
    return {"weight": jnp.ones(shape, dtype)} if elementwise_affine else {}


def rms_norm(
    x: jax.Array, params: Params, normalized_shape: int | tuple[int, ...], *, eps: float | None = None
) -> jax.Array:
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims.

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \varepsilon}}\odot\gamma

    ``eps=None`` uses ``finfo(x.dtype).eps`` as PyTorch does. ``E[x²]`` is accumulated in at least float32.
    """
    shape, axes = _trailing_axes("rms_norm", x, normalized_shape)
    _checks.check_params("rms_norm", params, shape)
    if "bias" in params:
        raise ValueError(f"rms_norm: params has keys {sorted(params)}; expected only 'weight' (RMSNorm has no bias)")
    eps = float(jnp.finfo(x.dtype).eps) if eps is None else eps
    x32 = x.astype(_stats.compute_dtype(x.dtype))
    y = x32 * lax.rsqrt(_stats.mean_square(x32, axes) + eps)
    return _stats.affine(y, params, shape).astype(x.dtype)
