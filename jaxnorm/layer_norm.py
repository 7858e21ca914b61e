"""Layer normalization and RMS normalization (PyTorch ``nn.LayerNorm`` / ``nn.RMSNorm``) as pure functions.

Spec: statistics over the trailing ``normalized_shape`` axes of each sample; elementwise parameters of that shape.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  >>> [round(float(v), 3) for v in jn.layer_norm(x, jn.layer_norm_init(4), 4)[0]]
  [-1.342, -0.447, 0.447, 1.342]
  >>> [round(float(v), 3) for v in jn.rms_norm(x, {}, 4)[0]]           # x / sqrt(mean(x**2))
  [0.365, 0.73, 1.095, 1.461]

References:
  Ba, Kiros & Hinton, Layer Normalization, 2016, https://arxiv.org/abs/1607.06450;
  Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxnorm import _checks, _stats
from jaxnorm._types import Params

__all__ = ["layer_norm_init", "layer_norm", "rms_norm_init", "rms_norm"]


def layer_norm_init(
    normalized_shape: int | tuple[int, ...], *, elementwise_affine: bool = True, bias: bool = True,
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """``{"weight": ones(shape), "bias": zeros(shape)}``; no ``bias`` when ``bias=False``; ``{}`` when
    ``elementwise_affine=False`` (PyTorch's defaults and names).

    Example:
      >>> import jaxnorm as jn
      >>> {k: v.shape for k, v in jn.layer_norm_init((2, 3)).items()}
      {'weight': (2, 3), 'bias': (2, 3)}
      >>> sorted(jn.layer_norm_init(3, bias=False))
      ['weight']

    References:
      Ba, Kiros & Hinton, Layer Normalization, 2016, https://arxiv.org/abs/1607.06450
    """
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

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> x = jnp.array([[1.0, 2.0, 3.0, 100.0]])        # the last value is padding
      >>> mask = jnp.array([[True, True, True, False]])
      >>> [round(float(v), 3) for v in jn.layer_norm(x, {}, 4, mask=mask)[0]]
      [-1.225, 0.0, 1.225, 0.0]

    References:
      Ba, Kiros & Hinton, Layer Normalization, 2016, https://arxiv.org/abs/1607.06450
    """
    axes, shape, mask = _trailing("layer_norm", x, params, normalized_shape, mask)
    with jax.named_scope("layer_norm"):  # the layer's operations carry its name in profiles and HLO dumps
        y: jax.Array = _stats.normalize(x, *_stats.broadcast_params(params, shape), _stats.Spec(axes, eps),
                                        mask=mask)[0]
        return y.astype(x.dtype)


def rms_norm_init(
    normalized_shape: int | tuple[int, ...], *, elementwise_affine: bool = True, dtype: DTypeLike = jnp.float32
) -> Params:
    """``{"weight": ones(normalized_shape)}``, or ``{}`` when ``elementwise_affine=False``.

    Example:
      >>> import jaxnorm as jn
      >>> jn.rms_norm_init(3)["weight"].tolist(), jn.rms_norm_init(3, elementwise_affine=False)
      ([1.0, 1.0, 1.0], {})

    References:
      Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467
    """
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

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> y = jn.rms_norm(jnp.array([[3.0, 4.0]]), {"weight": jnp.array([1.0, 2.0])}, 2)
      >>> [round(float(v), 3) for v in y[0]]             # (3, 4) / sqrt(12.5) * (1, 2)
      [0.849, 2.263]

    References:
      Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467
    """
    axes, shape, mask = _trailing("rms_norm", x, params, normalized_shape, mask)
    if "bias" in params:
        raise ValueError(f"rms_norm: params has keys {sorted(params)}; expected only 'weight' (RMSNorm has no bias)")
    eps = float(jnp.finfo(x.dtype).eps) if eps is None else eps
    with jax.named_scope("rms_norm"):
        y: jax.Array = _stats.normalize(x, *_stats.broadcast_params(params, shape),
                                        _stats.Spec(axes, eps, center=False), mask=mask)[0]
        return y.astype(x.dtype)
