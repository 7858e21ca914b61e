"""Layer normalization and RMS normalization (PyTorch ``nn.LayerNorm`` / ``nn.RMSNorm``) as pure functions.

Spec: statistics over the trailing ``normalized_shape`` axes of each sample; elementwise parameters of that shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxnorm import _checks, _stats
from jaxnorm._types import Params


def layer_norm_init(
    normalized_shape: int | tuple[int, ...], *, elementwise_affine: bool = True, bias: bool = True,
    dtype: DTypeLike = jnp.float32,
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


def _trailing(name: str, x: jax.Array, params: Params, normalized_shape: int | tuple[int, ...],
              mask: jax.Array | None) -> tuple[tuple[int, ...], tuple[int, ...], jax.Array | None]:
    """Checks; returns ``(reduce axes, parameter broadcast shape, mask)``."""
    _checks.check_floating(name, x)
    shape = _checks.normalized_shape_tuple(name, normalized_shape)
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"{name}: normalized_shape {shape} must match the trailing dims of the input, got input shape "
                         f"{tuple(x.shape)}")
    _checks.check_params(name, params, shape)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    return axes, (1,) * (x.ndim - len(shape)) + shape, _checks.check_mask(name, mask, x)


def layer_norm(
    x: jax.Array, params: Params, normalized_shape: int | tuple[int, ...], *, eps: float = 1e-5,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Layer normalization over the trailing ``normalized_shape`` dims of ``x``.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \varepsilon}}\odot\gamma + \beta

    Args:
      x: input whose trailing dims are ``normalized_shape``.
      params: ``{"weight"[, "bias"]}`` of shape ``normalized_shape``, or ``{}``.
      normalized_shape: an int or a tuple of ints.
      eps: added to the variance.
      mask: boolean, broadcastable to ``x``, True = valid: statistics over the valid values; ``y`` is 0 off the mask.

    Returns:
      ``y`` with ``x``'s shape and dtype (statistics in at least float32).

    Raises:
      ValueError: ``normalized_shape`` not the trailing dims, parameter shapes, a mask that does not broadcast.
      TypeError: non-floating ``x`` or non-boolean mask.
    """
    axes, shape, mask = _trailing("layer_norm", x, params, normalized_shape, mask)
    with jax.named_scope("layer_norm"):  # the layer's operations carry its name in profiles and HLO dumps
        y: jax.Array = _stats.normalize(x, *_stats.broadcast_params(params, shape), _stats.Spec(axes, eps),
                                        mask=mask)[0]
        return y.astype(x.dtype)


def rms_norm_init(
    normalized_shape: int | tuple[int, ...], *, elementwise_affine: bool = True, dtype: DTypeLike = jnp.float32
) -> Params:
    """``{"weight": ones(normalized_shape)}``, or ``{}`` when ``elementwise_affine=False``."""
    shape = _checks.normalized_shape_tuple("rms_norm_init", normalized_shape)
    return {"weight": jnp.ones(shape, dtype)} if elementwise_affine else {}


def rms_norm(
    x: jax.Array, params: Params, normalized_shape: int | tuple[int, ...], *, eps: float | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims.

    .. math::
        y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \varepsilon}}\odot\gamma

    Args:
      x, normalized_shape, mask: as :func:`layer_norm`.
      params: ``{"weight"}`` of shape ``normalized_shape``, or ``{}`` (RMSNorm has no bias).
      eps: ``None`` uses ``finfo(x.dtype).eps`` as PyTorch does.

    Returns:
      ``y`` with ``x``'s shape and dtype (``E[x²]`` accumulated in at least float32).

    Raises:
      ValueError / TypeError: as :func:`layer_norm`; also a ``bias`` in ``params``.
    """
    axes, shape, mask = _trailing("rms_norm", x, params, normalized_shape, mask)
    if "bias" in params:
        raise ValueError(f"rms_norm: params has keys {sorted(params)}; expected only 'weight' (RMSNorm has no bias)")
    eps = float(jnp.finfo(x.dtype).eps) if eps is None else eps
    with jax.named_scope("rms_norm"):
        y: jax.Array = _stats.normalize(x, *_stats.broadcast_params(params, shape),
                                        _stats.Spec(axes, eps, center=False), mask=mask)[0]
        return y.astype(x.dtype)
