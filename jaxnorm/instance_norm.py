"""Instance normalization (PyTorch ``nn.InstanceNorm1d/2d/3d`` semantics) as pure functions.

Spec: statistics per (sample, channel) over the spatial axes; optional per-channel affine; optional running
statistics that track the batch-average of the per-instance statistics (used when ``train=False``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm import _checks, _stats
from jaxnorm.batch_norm import BatchStats, Params, _param_shape, batch_norm_init


def instance_norm_init(
    num_features: int, *, affine: bool = False, track_running_stats: bool = False, dtype=jnp.float32
) -> tuple[Params, BatchStats]:
    """Initial ``(params, batch_stats)``; PyTorch's InstanceNorm defaults are ``affine=False``,
    ``track_running_stats=False`` (both collections empty)."""
    _checks.check_num_features("instance_norm_init", num_features)
    return batch_norm_init(num_features, affine=affine, track_running_stats=track_running_stats, dtype=dtype)


def instance_norm(
    x: jax.Array,
    params: Params,
    batch_stats: BatchStats,
    *,
    train: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    axis: int = 1,
    axis_name: str | None = None,
    _name: str = "instance_norm",
) -> tuple[jax.Array, BatchStats]:
    r"""Instance normalization of a batched input (N, C, *spatial) (or channels-last with ``axis=-1``).

    .. math::
        y_{nc\cdot} = \frac{x_{nc\cdot} - \mu_{nc}}{\sqrt{\sigma^2_{nc} + \varepsilon}}\,\gamma_c + \beta_c

    with ``μ_nc, σ²_nc`` the mean and biased variance over the spatial axes of sample ``n``, channel ``c``.
    With running statistics (``track_running_stats=True``), ``train=True`` updates them as PyTorch does:
    ``running = (1 − m)·running + m·mean_n(batch statistic)`` using the *unbiased* per-instance variance.
    PyTorch quirks kept: ``momentum=None`` means factor 0 (running statistics never move) and
    ``num_batches_tracked`` is never incremented. ``train=False`` with running statistics normalizes with them.

    ``axis_name`` only averages the running-statistics update over a named mapped axis (so replicas agree); the
    normalization itself is per sample and needs no cross-device statistics.
    """
    _checks.check_floating(_name, x)
    if x.ndim < 3:
        raise ValueError(f"{_name}: expected at least 3-D batched input (N, C, L...), got {x.ndim}-D input with "
                         f"shape {tuple(x.shape)}")
    axis = _checks.channel_axis(_name, x, axis)
    channels = x.shape[axis]
    _checks.check_params(_name, params, (channels,))
    _checks.check_batch_stats(_name, batch_stats, channels)
    _checks.check_momentum(_name, momentum)
    if not isinstance(train, bool):
        raise TypeError(f"{_name}: expected train to be a Python bool (static under jit), got {type(train).__name__}")

    shape = _param_shape(x.ndim, axis, channels)
    spatial = tuple(a for a in range(1, x.ndim) if a != axis)
    new_stats = batch_stats
    if train or not batch_stats:
        if _stats.group_size(x.shape, spatial) == 1:
            raise ValueError(f"{_name}: expected more than 1 spatial element when training, got input shape "
                             f"{tuple(x.shape)}")
        y, mean, var = _stats.normalize(x, *_stats.broadcast_params(params, shape), spatial, eps, None)
        if train and batch_stats:
            # PyTorch folds N into C and runs batch norm, then averages the per-sample running stats over N.
            count = jnp.asarray(_stats.group_size(x.shape, spatial), mean.dtype)
            batch_mean = jnp.mean(mean, axis=0).reshape(channels)
            batch_var = jnp.mean(var, axis=0).reshape(channels)
            if axis_name is not None:
                batch_mean, batch_var = jax.lax.pmean((batch_mean, batch_var), axis_name)
            factor = 0.0 if momentum is None else momentum
            updated = _stats.update_running_stats(batch_stats, batch_mean, batch_var, count, factor)
            new_stats = {**updated, "num_batches_tracked": batch_stats["num_batches_tracked"]}
    else:
        mean = jnp.reshape(batch_stats["running_mean"], shape)
        var = jnp.reshape(batch_stats["running_var"], shape)
        y = _stats.affine(_stats.normalize_with(x, mean, var, eps), params, shape)
    return y.astype(x.dtype), new_stats


def _ranked(name: str, batched_rank: int, layout: str):
    def fn(
        x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
        eps: float = 1e-5, axis: int = 1, axis_name: str | None = None,
    ) -> tuple[jax.Array, BatchStats]:
        _checks.check_rank(name, x, (batched_rank - 1, batched_rank), layout)
        unbatched = x.ndim == batched_rank - 1
        xb = x[None] if unbatched else x  # PyTorch treats (C, *spatial) as one sample
        y, stats = instance_norm(xb, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                                 axis_name=axis_name, _name=name)
        return (y[0] if unbatched else y), stats

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"Instance normalization with PyTorch ``{name}``'s rank check: {layout} (an unbatched input is "
                  "normalized as a batch of one). Arguments and return value as :func:`instance_norm`; ``axis`` "
                  "refers to the batched layout.")
    return fn


instance_norm_1d = _ranked("instance_norm_1d", 3, "(C, L) or (N, C, L)")
instance_norm_2d = _ranked("instance_norm_2d", 4, "(C, H, W) or (N, C, H, W)")
instance_norm_3d = _ranked("instance_norm_3d", 5, "(C, D, H, W) or (N, C, D, H, W)")
