"""Instance normalization (PyTorch ``nn.InstanceNorm1d/2d/3d`` semantics) as pure functions.

Spec: statistics per (sample, channel) over the spatial axes; optional per-channel affine; optional running
statistics that track the batch-average of the per-instance statistics (used when ``train=False``).
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp

from jaxnorm import _checks, _running, _stats
from jaxnorm._types import COUNTER, BatchStats, Params, channel_shape
from jaxnorm.batch_norm import _running_statistics, batch_norm_init


def instance_norm_init(
    num_features: int, *, affine: bool = False, track_running_stats: bool = False, dtype=jnp.float32
) -> tuple[Params, BatchStats]:
    """Initial ``(params, batch_stats)``; PyTorch's InstanceNorm defaults are ``affine=False``,
    ``track_running_stats=False`` (both collections empty)."""
    _checks.check_num_features("instance_norm_init", num_features)
    return batch_norm_init(num_features, affine=affine, track_running_stats=track_running_stats, dtype=dtype)


def _instance_norm(name: str, x, params, batch_stats, *, train, momentum, eps, axis, axis_name, mask):
    _checks.check_floating(name, x)
    if x.ndim < 3:
        raise ValueError(f"{name}: expected at least 3-D batched input (N, C, L...), got {x.ndim}-D input with "
                         f"shape {tuple(x.shape)}")
    axis = _checks.channel_axis(name, x, axis)
    channels = x.shape[axis]
    _checks.check_params(name, params, (channels,))
    _checks.check_batch_stats(name, batch_stats, channels)
    _checks.check_momentum(name, momentum)
    _checks.check_train(name, train)
    mask = _checks.check_mask(name, mask, x)
    if not (train or not batch_stats):
        y = _running_statistics(x, params, batch_stats, eps=eps, axis=axis, mask=mask)
        return y.astype(x.dtype), batch_stats
    spatial = tuple(a for a in range(1, x.ndim) if a != axis)
    if mask is None and _stats.group_size(x.shape, spatial) == 1:
        raise ValueError(f"{name}: expected more than 1 spatial element when training, got input shape "
                         f"{tuple(x.shape)}")
    weight, bias = _stats.broadcast_params(params, channel_shape(x.ndim, axis, channels))
    y, mean, var, count = _stats.normalize(x, weight, bias, _stats.Spec(spatial, eps), mask=mask)
    new_stats = batch_stats
    if train and batch_stats:
        # PyTorch folds N into C and runs batch norm, then averages the per-sample running stats over N.
        avg_mean, avg_var, valid = _running.average_of_groups(mean, var, count, (0,), channels,
                                                              masked=mask is not None, axis_name=axis_name)
        updated = _running.update(batch_stats, avg_mean, avg_var, 0.0 if momentum is None else momentum,
                                  valid=valid)
        new_stats = {**updated, COUNTER: batch_stats[COUNTER]}
    return y.astype(x.dtype), new_stats


def instance_norm(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None, mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
    r"""Instance normalization of a batched input (N, C, *spatial) (or channels-last with ``axis=-1``).

    .. math::
        y_{nc\cdot} = \frac{x_{nc\cdot} - \mu_{nc}}{\sqrt{\sigma^2_{nc} + \varepsilon}}\,\gamma_c + \beta_c

    with ``μ_nc, σ²_nc`` the mean and biased variance over the spatial axes of sample ``n``, channel ``c``.

    Args:
      x, params, batch_stats, train, momentum, eps, axis: as :func:`jaxnorm.batch_norm`. With running statistics
        (``track_running_stats=True``), ``train=True`` updates them as PyTorch does: ``running = (1 − m)·running +
        m·mean_n(per-instance statistic)`` using the *unbiased* per-instance variance. PyTorch's quirks are kept:
        ``momentum=None`` means factor 0 (the running statistics never move) and ``num_batches_tracked`` is never
        incremented. ``train=False`` with running statistics normalizes with them.
      axis_name: only averages the running-statistics update over a named mapped axis (so replicas agree); the
        normalization itself is per sample and needs no cross-device statistics.
      mask: boolean, broadcastable to ``x``, True = valid: each instance's statistics over its valid values; ``y``
        is 0 off the mask; the running statistics average the instances with at least two valid values.

    Returns:
      ``(y, batch_stats)``.

    Raises:
      ValueError / TypeError: as :func:`jaxnorm.batch_norm`; also one spatial element when training.
    """
    with jax.named_scope("instance_norm"):  # the layer's operations carry its name in profiles and HLO dumps
        return _instance_norm("instance_norm", x, params, batch_stats, train=train, momentum=momentum, eps=eps,
                              axis=axis, axis_name=axis_name, mask=mask)


def _ranked(name: str, batched_rank: int, layout: str):
    def fn(
        x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
        eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None, mask: jax.Array | None = None,
    ) -> tuple[jax.Array, BatchStats]:
        _checks.check_rank(name, x, (batched_rank - 1, batched_rank), layout)
        unbatched = x.ndim == batched_rank - 1
        xb = x[None] if unbatched else x  # PyTorch treats (C, *spatial) as one sample
        mb = mask
        if unbatched and mask is not None and jnp.ndim(mask) == x.ndim:
            mb = mask[None]
        with jax.named_scope(name):
            y, stats = _instance_norm(name, xb, params, batch_stats, train=train, momentum=momentum, eps=eps,
                                      axis=axis, axis_name=axis_name, mask=mb)
            return (y[0] if unbatched else y), stats

    fn.__name__ = fn.__qualname__ = name
    fn.layout = layout
    fn.__doc__ = (f"Instance normalization with PyTorch ``{name}``'s rank check: {layout} (an unbatched input is "
                  "normalized as a batch of one). Arguments and return value as :func:`instance_norm`; ``axis`` "
                  "refers to the batched layout.")
    return fn


instance_norm_1d = _ranked("instance_norm_1d", 3, "(C, L) or (N, C, L)")
instance_norm_2d = _ranked("instance_norm_2d", 4, "(C, H, W) or (N, C, H, W)")
instance_norm_3d = _ranked("instance_norm_3d", 5, "(C, D, H, W) or (N, C, D, H, W)")
