"""Instance normalization (PyTorch ``nn.InstanceNorm1d/2d/3d`` semantics) as pure functions.

Spec: statistics per (sample, channel) over the spatial axes; optional per-channel affine; optional running
statistics that track the batch-average of the per-instance statistics (used when ``train=False``).

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> x = jnp.arange(12.0).reshape(2, 2, 3)             # (N, C, L)
  >>> y, _ = jn.instance_norm_1d(x, {}, {}, train=True)  # PyTorch's defaults: no affine, no running statistics
  >>> [round(float(v), 3) for v in y[1, 1]]
  [-1.225, 0.0, 1.225]

References:
  Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
  https://arxiv.org/abs/1607.08022
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxnorm import _checks, _running, _stats
from jaxnorm._types import COUNTER, BatchStats, Params, channel_shape
from jaxnorm.batch_norm import _running_statistics, batch_norm_init

__all__ = ["instance_norm_init", "instance_norm", "instance_norm_1d", "instance_norm_2d", "instance_norm_3d"]


def instance_norm_init(
    num_features: int, *, affine: bool = False, track_running_stats: bool = False, dtype: DTypeLike = jnp.float32
) -> tuple[Params, BatchStats]:
    """Initial ``(params, batch_stats)``; PyTorch's InstanceNorm defaults are ``affine=False``,
    ``track_running_stats=False`` (both collections empty).

    Example:
      >>> import jaxnorm as jn
      >>> jn.instance_norm_init(3)
      ({}, {})
      >>> params, stats = jn.instance_norm_init(3, affine=True, track_running_stats=True)
      >>> sorted(params), sorted(stats)
      (['bias', 'weight'], ['num_batches_tracked', 'running_mean', 'running_var'])

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """
    _checks.check_num_features("instance_norm_init", num_features)
    return batch_norm_init(num_features, affine=affine, track_running_stats=track_running_stats, dtype=dtype)


def _check(name: str, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
           momentum: float | None, axis: int, mask: jax.Array | None) -> tuple[int, jax.Array | None]:
    """The checks of every instance normalization; returns the channel axis (non-negative) and the mask."""
    _checks.check_floating(name, x)
    if x.ndim < 3:
        raise ValueError(f"{name}: expected at least 3-D batched input (N, C, L...), got {x.ndim}-D input with "
                         f"shape {tuple(x.shape)}")
    axis = _checks.channel_axis(name, x, axis)
    _checks.check_params(name, params, (x.shape[axis],))
    _checks.check_batch_stats(name, batch_stats, x.shape[axis])
    _checks.check_momentum(name, momentum)
    _checks.check_train(name, train)
    return axis, _checks.check_mask(name, mask, x)


def _instance_norm(name: str, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                   momentum: float | None, eps: float, axis: int, axis_name: Hashable | None,
                   mask: jax.Array | None) -> tuple[jax.Array, BatchStats]:
    """Every instance normalization of this package, its errors and its named scope calling it ``name``."""
    axis, mask = _check(name, x, params, batch_stats, train=train, momentum=momentum, axis=axis, mask=mask)
    if not (train or not batch_stats):
        with jax.named_scope(name):
            y = _running_statistics(x, params, batch_stats, eps=eps, axis=axis, mask=mask)
            return y.astype(x.dtype), batch_stats
    channels = x.shape[axis]
    spatial = tuple(a for a in range(1, x.ndim) if a != axis)
    if mask is None and _stats.group_size(x.shape, spatial) == 1:
        raise ValueError(f"{name}: expected more than 1 spatial element when training, got input shape "
                         f"{tuple(x.shape)}")
    with jax.named_scope(name):  # the layer's operations carry its name in profiles and HLO dumps
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

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> x = jnp.arange(12.0).reshape(2, 3, 2)                 # channels-last (N, L, C)
      >>> y, _ = jn.instance_norm(x, {}, {}, train=True, axis=-1)
      >>> [round(float(v), 3) for v in y[0, :, 0]]              # sample 0, channel 0: values 0, 2, 4
      [-1.225, 0.0, 1.225]

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """
    return _instance_norm("instance_norm", x, params, batch_stats, train=train, momentum=momentum, eps=eps,
                          axis=axis, axis_name=axis_name, mask=mask)


def _ranked(name: str, batched_rank: int, layout: str, x: jax.Array, params: Params, batch_stats: BatchStats, *,
            train: bool, momentum: float | None, eps: float, axis: int, axis_name: Hashable | None,
            mask: jax.Array | None) -> tuple[jax.Array, BatchStats]:
    """An instance normalization whose input is ``batched_rank``-D, or one rank less for a single instance."""
    _checks.check_rank(name, x, (batched_rank - 1, batched_rank), layout)
    unbatched = x.ndim == batched_rank - 1
    xb = x[None] if unbatched else x  # PyTorch treats (C, *spatial) as one sample
    mb = mask
    if unbatched and mask is not None and jnp.ndim(mask) == x.ndim:
        mb = mask[None]
    y, stats = _instance_norm(name, xb, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                              axis_name=axis_name, mask=mb)
    return (y[0] if unbatched else y), stats


def instance_norm_1d(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None, mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
    """:func:`instance_norm` for the input of PyTorch's ``InstanceNorm1d``: ``(N, C, L)``, or ``(C, L)``, which is
    normalized as a batch of one (``axis`` refers to the batched layout).

    Arguments, return value and errors as :func:`instance_norm`; also a ValueError for an input of another rank.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> y, _ = jn.instance_norm_1d(jnp.array([[1.0, 2.0, 3.0]]), {}, {}, train=True)   # (C, L): one instance
      >>> y.shape, [round(float(v), 3) for v in y[0]]
      ((1, 3), [-1.225, 0.0, 1.225])

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """
    return _ranked("instance_norm_1d", 3, "(C, L) or (N, C, L)", x, params, batch_stats, train=train,
                   momentum=momentum, eps=eps, axis=axis, axis_name=axis_name, mask=mask)


def instance_norm_2d(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None, mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
    """:func:`instance_norm` for the input of PyTorch's ``InstanceNorm2d``: ``(N, C, H, W)``, or ``(C, H, W)``,
    which is normalized as a batch of one (``axis`` refers to the batched layout).

    Arguments, return value and errors as :func:`instance_norm`; also a ValueError for an input of another rank.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.instance_norm_init(3, track_running_stats=True)
      >>> x = jnp.arange(24.0).reshape(3, 2, 4)
      >>> y, stats = jn.instance_norm_2d(x, params, stats, train=True)
      >>> [round(float(v), 2) for v in stats["running_mean"]], int(stats["num_batches_tracked"])   # never counts
      ([0.35, 1.15, 1.95], 0)

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """
    return _ranked("instance_norm_2d", 4, "(C, H, W) or (N, C, H, W)", x, params, batch_stats, train=train,
                   momentum=momentum, eps=eps, axis=axis, axis_name=axis_name, mask=mask)


def instance_norm_3d(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None, mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
    """:func:`instance_norm` for the input of PyTorch's ``InstanceNorm3d``: ``(N, C, D, H, W)``, or
    ``(C, D, H, W)``, which is normalized as a batch of one (``axis`` refers to the batched layout).

    Arguments, return value and errors as :func:`instance_norm`; also a ValueError for an input of another rank.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> y, _ = jn.instance_norm_3d(jnp.ones((2, 3, 2, 2, 2)), {}, {}, train=True)
      >>> y.shape, float(abs(y).max())                 # a constant instance normalizes to 0
      ((2, 3, 2, 2, 2), 0.0)

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """
    return _ranked("instance_norm_3d", 5, "(C, D, H, W) or (N, C, D, H, W)", x, params, batch_stats, train=train,
                   momentum=momentum, eps=eps, axis=axis, axis_name=axis_name, mask=mask)
