"""Group normalization (PyTorch ``nn.GroupNorm``) as a pure function.

Spec: channels split into ``num_groups`` contiguous groups; statistics per (sample, group) over the group's channels
and all spatial axes; per-channel affine. The channel axis is split in place with a reshape (no transpose), so
channels-first and channels-last inputs both normalize without moving data.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> x = jnp.arange(8.0).reshape(1, 4, 2)                  # (N, C, L): 2 groups of 2 channels
  >>> [round(float(v), 3) for v in jn.group_norm(x, {}, 2)[0, :2].ravel()]
  [-1.342, -0.447, 0.447, 1.342]

References:
  Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxnorm import _checks, _stats
from jaxnorm._types import Params
from jaxnorm.batch_norm import split_axis

__all__ = ["group_norm_init", "group_norm"]


def group_norm_init(num_groups: int, num_channels: int, *, affine: bool = True,
                    dtype: DTypeLike = jnp.float32) -> Params:
    """``{"weight": ones(C), "bias": zeros(C)}`` (``{}`` when ``affine=False``); checks ``C % num_groups == 0``.

    Example:
      >>> import jaxnorm as jn
      >>> sorted(jn.group_norm_init(2, 4)), jn.group_norm_init(2, 4, affine=False)
      (['bias', 'weight'], {})
      >>> jn.group_norm_init(3, 4)
      Traceback (most recent call last):
      ValueError: group_norm_init: num_channels (4) must be divisible by num_groups (3)

    References:
      Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494
    """
    _check_groups("group_norm_init", num_groups, num_channels)
    return {"weight": jnp.ones((num_channels,), dtype), "bias": jnp.zeros((num_channels,), dtype)} if affine else {}


def _check_groups(name: str, num_groups: int, num_channels: int) -> None:
    _checks.check_num_features(name, num_groups, "num_groups")
    _checks.check_num_features(name, num_channels, "num_channels")
    if num_channels % num_groups:
        raise ValueError(f"{name}: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")


def group_norm(
    x: jax.Array, params: Params, num_groups: int, *, eps: float = 1e-5, axis: int = 1, mask: jax.Array | None = None
) -> jax.Array:
    r"""Group normalization of ``x`` of shape (N, C, *) (or channels-last (N, *, C) with ``axis=-1``).

    .. math::
        y_{ng\cdot} = \frac{x_{ng\cdot} - \mu_{ng}}{\sqrt{\sigma^2_{ng} + \varepsilon}}\,\gamma_c + \beta_c

    with ``μ_ng, σ²_ng`` the mean and biased variance over the ``C / G`` channels of group ``g`` and all spatial
    positions of sample ``n``. One group is LayerNorm over (C, *); ``C`` groups is InstanceNorm.
    Statistics are per sample, so no cross-device (``axis_name``) variant is needed.

    Args:
      x: input of at least 2 dims; params: ``{"weight", "bias"}`` of shape (C,) or ``{}``; num_groups: divides C.
      eps: added to the variance; axis: the channel axis.
      mask: boolean, broadcastable to ``x``, True = valid: statistics over the valid values; ``y`` is 0 off the mask.

    Returns:
      ``y`` with ``x``'s shape and dtype.

    Raises:
      ValueError: rank < 2, ``C % num_groups != 0``, parameter shapes, a mask that does not broadcast.
      TypeError: non-floating ``x`` or non-boolean mask.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)                 # channels-last (N, L, C)
      >>> y_gn = jn.group_norm(x, {}, 1, axis=-1)               # one group: LayerNorm over (L, C)
      >>> bool(jnp.allclose(y_gn, jn.layer_norm(x, {}, (3, 4)), atol=1e-6))
      True

    References:
      Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494
    """
    name = "group_norm"
    _checks.check_floating(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected at least 2-D input (N, C, *), got {x.ndim}-D input with shape {x.shape}")
    axis = _checks.channel_axis(name, x, axis)
    channels = x.shape[axis]
    _check_groups(name, num_groups, channels)
    _checks.check_params(name, params, (channels,))
    mask = _checks.check_mask(name, mask, x)
    sizes = (num_groups, channels // num_groups)
    with jax.named_scope(name):  # the layer's operations carry its name in profiles and HLO dumps
        grouped = split_axis(x, axis, sizes)
        reduce_axes = tuple(a for a in range(1, grouped.ndim) if a != axis)  # all but N and the group axis
        # Per-channel parameters, split the same way as the channels: (..., G, C/G, ...).
        param_shape = tuple(grouped.shape[a] if a in (axis, axis + 1) else 1 for a in range(grouped.ndim))
        grouped_mask = None if mask is None else split_axis(mask, axis, sizes)
        y: jax.Array = _stats.normalize(grouped, *_stats.broadcast_params(params, param_shape),
                                        _stats.Spec(reduce_axes, eps), mask=grouped_mask)[0]
        return y.reshape(x.shape).astype(x.dtype)
