"""Batch normalization (PyTorch ``nn.BatchNorm1d/2d/3d`` semantics) as pure functions.

Spec: statistics over every axis except the channel axis; parameters and running statistics per channel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm import _checks, _stats

Params = dict[str, jax.Array]
BatchStats = dict[str, jax.Array]


def batch_norm_init(
    num_features: int, *, affine: bool = True, track_running_stats: bool = True, dtype=jnp.float32
) -> tuple[Params, BatchStats]:
    """Initial ``(params, batch_stats)`` as PyTorch creates them.

    ``params = {"weight": ones(C), "bias": zeros(C)}`` (``{}`` when ``affine=False``);
    ``batch_stats = {"running_mean": zeros(C), "running_var": ones(C), "num_batches_tracked": int32 0}``
    (``{}`` when ``track_running_stats=False``).
    """
    c = _checks.check_num_features("batch_norm_init", num_features)
    params = {"weight": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)} if affine else {}
    stats = (
        {"running_mean": jnp.zeros((c,), dtype), "running_var": jnp.ones((c,), dtype),
         "num_batches_tracked": jnp.zeros((), jnp.int32)}
        if track_running_stats else {}
    )
    return params, stats


def _param_shape(ndim: int, axis: int, channels: int) -> tuple[int, ...]:
    return tuple(channels if a == axis else 1 for a in range(ndim))


def batch_norm(
    x: jax.Array,
    params: Params,
    batch_stats: BatchStats,
    *,
    train: bool,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    axis: int = 1,
    axis_name: str | None = None,
    _name: str = "batch_norm",
) -> tuple[jax.Array, BatchStats]:
    r"""Batch normalization over all axes but the channel ``axis``; returns ``(y, new_batch_stats)``.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}\,\gamma + \beta

    * ``train=True``: ``μ, σ²`` are the batch mean and *biased* variance over ``(N, *spatial)``; the running
      statistics become ``(1 − m)·running + m·batch`` with the *unbiased* batch variance
      (``m = momentum``, or ``1/num_batches_tracked`` when ``momentum=None``) and ``num_batches_tracked += 1``.
    * ``train=False``: ``μ, σ²`` are ``running_mean``/``running_var``; with an empty ``batch_stats``
      (``track_running_stats=False``) the batch statistics are used. The collection is returned unchanged.
    * ``axis_name``: statistics over the whole named mapped axis (``shard_map``/``pmap``/``vmap``) — synchronized BN;
      running statistics then equal single-device BN on the full batch.

    Statistics are computed in at least float32; ``y`` has ``x``'s dtype. ``train`` must be a Python bool.
    """
    _checks.check_floating(_name, x)
    if x.ndim < 2:
        raise ValueError(f"{_name}: expected at least 2-D input (N, C, ...), got {x.ndim}-D input with shape {x.shape}")
    axis = _checks.channel_axis(_name, x, axis)
    channels = x.shape[axis]
    _checks.check_params(_name, params, (channels,))
    _checks.check_batch_stats(_name, batch_stats, channels)
    _checks.check_momentum(_name, momentum)
    if not isinstance(train, bool):
        raise TypeError(f"{_name}: expected train to be a Python bool (static under jit), got {type(train).__name__}")

    shape = _param_shape(x.ndim, axis, channels)
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    new_stats = batch_stats
    if train or not batch_stats:
        if axis_name is None and _stats.group_size(x.shape, reduce_axes) == 1:
            raise ValueError(f"{_name}: expected more than 1 value per channel when training, got input shape "
                             f"{tuple(x.shape)} (one value for each of the {channels} channels)")
        weight, bias = _stats.broadcast_params(params, shape)
        y, mean, var = _stats.normalize(x, weight, bias, reduce_axes, eps, axis_name)
        if train and batch_stats:
            count = jnp.asarray(_stats.group_size(x.shape, reduce_axes), mean.dtype)
            if axis_name is not None:
                count = count * jax.lax.axis_size(axis_name)
            new_stats = _stats.update_running_stats(batch_stats, mean.reshape(channels), var.reshape(channels),
                                                    count, momentum)
    else:
        mean = jnp.reshape(batch_stats["running_mean"], shape)
        var = jnp.reshape(batch_stats["running_var"], shape)
        y = _stats.affine(_stats.normalize_with(x, mean, var, eps), params, shape)
    return y.astype(x.dtype), new_stats


def _ranked(name: str, ranks: tuple[int, ...], layout: str):
    def fn(
        x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
        eps: float = 1e-5, axis: int = 1, axis_name: str | None = None,
    ) -> tuple[jax.Array, BatchStats]:
        _checks.check_rank(name, x, ranks, layout)
        return batch_norm(x, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                          axis_name=axis_name, _name=name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"{batch_norm.__doc__.splitlines()[0]}\n\n    PyTorch ``{name}`` rank check: {layout}. "
                  "Arguments and return value as :func:`batch_norm`.")
    return fn


batch_norm_1d = _ranked("batch_norm_1d", (2, 3), "(N, C) or (N, C, L)")
batch_norm_2d = _ranked("batch_norm_2d", (4,), "(N, C, H, W)")
batch_norm_3d = _ranked("batch_norm_3d", (5,), "(N, C, D, H, W)")
