r"""Batch normalization (PyTorch ``nn.BatchNorm1d/2d/3d`` semantics) as pure functions, with its training-regime
variants: masks, synchronized statistics (optionally within device groups), Ghost BN and Batch Renormalization.

Spec: statistics over every axis except the channel axis; parameters and running statistics per channel.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> params, stats = jn.batch_norm_init(2)
  >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])          # (N, C)
  >>> y, stats = jn.batch_norm(x, params, stats, train=True)
  >>> [[round(float(v), 3) for v in row] for row in y], [round(float(v), 2) for v in stats["running_var"]]
  ([[-1.0, -1.0], [1.0, 1.0]], [1.1, 20.9])

References:
  Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
  Shift, ICML 2015, https://arxiv.org/abs/1502.03167;
  Hoffer, Hubara & Soudry, Train longer, generalize better (Ghost Batch Normalization), NeurIPS 2017,
  https://arxiv.org/abs/1705.08741
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxnorm import _checks, _running, _stats
from jaxnorm._types import BatchStats, Params, channel_shape

Groups = tuple[tuple[int, ...], ...]  # axis_index_groups, checked
Clips = tuple[jax.Array, jax.Array]  # Batch Renormalization's (r_max, d_max)

__all__ = ["batch_norm_init", "batch_norm", "batch_norm_1d", "batch_norm_2d", "batch_norm_3d"]


def batch_norm_init(
    num_features: int, *, affine: bool = True, track_running_stats: bool = True, dtype: DTypeLike = jnp.float32
) -> tuple[Params, BatchStats]:
    """Initial ``(params, batch_stats)`` as PyTorch creates them.

    Returns:
      ``params = {"weight": ones(C), "bias": zeros(C)}`` (``{}`` when ``affine=False``) and
      ``batch_stats = {"running_mean": zeros(C), "running_var": ones(C), "num_batches_tracked": int32 0}``
      (``{}`` when ``track_running_stats=False``).

    Raises:
      ValueError: ``num_features < 1``.

    Example:
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(3)
      >>> {k: v.tolist() for k, v in stats.items()}
      {'running_mean': [0.0, 0.0, 0.0], 'running_var': [1.0, 1.0, 1.0], 'num_batches_tracked': 0}
      >>> jn.batch_norm_init(3, affine=False, track_running_stats=False)
      ({}, {})

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167; PyTorch's ``torch.nn.BatchNorm1d``,
      https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm1d.html
    """
    c = _checks.check_num_features("batch_norm_init", num_features)
    params = {"weight": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)} if affine else {}
    stats = (
        {"running_mean": jnp.zeros((c,), dtype), "running_var": jnp.ones((c,), dtype),
         "num_batches_tracked": jnp.zeros((), jnp.int32)}
        if track_running_stats else {}
    )
    return params, stats


def split_axis(a: jax.Array, axis: int, sizes: tuple[int, int]) -> jax.Array:
    """Reshape ``axis`` of ``a`` into two axes of ``sizes`` (a size-1, broadcast axis into two size-1 axes)."""
    new = (1, 1) if a.shape[axis] == 1 else sizes
    return a.reshape(a.shape[:axis] + new + a.shape[axis + 1:])


def _check(name: str, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
           momentum: float | None, axis: int, axis_name: Hashable | None,
           axis_index_groups: Sequence[Sequence[int]] | None,
           mask: jax.Array | None) -> tuple[int, Groups | None, jax.Array | None]:
    _checks.check_floating(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected at least 2-D input (N, C, ...), got {x.ndim}-D input with shape {x.shape}")
    axis = _checks.channel_axis(name, x, axis)
    _checks.check_params(name, params, (x.shape[axis],))
    _checks.check_batch_stats(name, batch_stats, x.shape[axis])
    _checks.check_momentum(name, momentum)
    _checks.check_train(name, train)
    groups = _checks.check_axis_index_groups(name, axis_index_groups, axis_name)
    return axis, groups, _checks.check_mask(name, mask, x)


def _batch_statistics(name: str, x: jax.Array, params: Params, batch_stats: BatchStats, *, momentum: float | None,
                      eps: float, axis: int, axis_name: Hashable | None, groups: Groups | None,
                      mask: jax.Array | None, ghost: int | None, renorm: Clips | None,
                      update: bool) -> tuple[jax.Array, BatchStats]:
    """Training-mode BN (or BN without running statistics): ``(y, updated batch_stats)``."""
    channels = x.shape[axis]
    xv, mv, axis_v = x, mask, axis
    if ghost is not None:  # (N, ...) -> (N / v, v, ...): statistics per virtual batch, kept along the new axis 0
        xv = split_axis(x, 0, (x.shape[0] // ghost, ghost))
        mv = None if mask is None else split_axis(mask, 0, (x.shape[0] // ghost, ghost))
        axis_v = axis + 1
    reduce_axes = tuple(a for a in range(xv.ndim) if a != axis_v and (ghost is None or a != 0))
    sync = axis_name if ghost is None else None  # ghost batches are local; only their running update is shared
    if sync is None and mask is None and _stats.group_size(xv.shape, reduce_axes) == 1:
        raise ValueError(f"{name}: expected more than 1 value per channel when training, got input shape "
                         f"{tuple(x.shape)} (one value for each of the {channels} channels"
                         + (f" in each virtual batch of {ghost})" if ghost else ")"))
    stats_shape = channel_shape(xv.ndim, axis_v, channels)
    weight, bias = _stats.broadcast_params(params, stats_shape)
    correction = None if renorm is None else _stats.Renorm(batch_stats["running_mean"].reshape(stats_shape),
                                                           batch_stats["running_var"].reshape(stats_shape), *renorm)
    spec = _stats.Spec(reduce_axes, eps, axis_name=sync, groups=groups if ghost is None else None)
    y, mean, var, count = _stats.normalize(xv, weight, bias, spec, mask=mv, renorm=correction)
    y = y.reshape(x.shape)
    if not update:
        return y, batch_stats
    if ghost is None:
        count = jnp.broadcast_to(count, mean.shape).reshape(channels)
        return y, _running.from_batch(batch_stats, mean.reshape(channels), var.reshape(channels), count, momentum,
                                      masked=mask is not None)
    avg_mean, avg_var, valid = _running.average_of_groups(mean, var, count, (0,), channels, masked=mask is not None,
                                                          axis_name=axis_name)
    return y, _running.update(batch_stats, avg_mean, avg_var, momentum, valid=valid)


def _running_statistics(x: jax.Array, params: Params, batch_stats: BatchStats, *, eps: float, axis: int,
                        mask: jax.Array | None) -> jax.Array:
    """Eval-mode BN with the running statistics."""
    shape = channel_shape(x.ndim, axis, x.shape[axis])
    dtype = _stats.compute_dtype(x.dtype)  # float32 statistics of a float64 input are promoted, not the input demoted
    mean = jnp.reshape(batch_stats["running_mean"], shape).astype(dtype)
    var = jnp.reshape(batch_stats["running_var"], shape).astype(dtype)
    y = _stats.affine(_stats.normalize_with(x, mean, var, eps), params, shape)
    return y if mask is None else jnp.where(mask, y, jnp.zeros((), y.dtype))


def _batch_norm(name: str, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                momentum: float | None, eps: float, axis: int, axis_name: Hashable | None = None,
                axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
                virtual_batch_size: int | None = None, renorm: Clips | None = None) -> tuple[jax.Array, BatchStats]:
    """Every batch normalization of this package, its errors and its named scope calling it ``name``."""
    axis, groups, mask = _check(name, x, params, batch_stats, train=train, momentum=momentum, axis=axis,
                                axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask)
    ghost = _checks.check_virtual_batch_size(name, virtual_batch_size, x.shape[0])
    with jax.named_scope(name):  # the layer's operations carry its name in profiles and HLO dumps
        if train or not batch_stats:
            y, new_stats = _batch_statistics(name, x, params, batch_stats, momentum=momentum, eps=eps, axis=axis,
                                             axis_name=axis_name, groups=groups, mask=mask, ghost=ghost,
                                             renorm=renorm if train else None, update=train and bool(batch_stats))
        else:
            y, new_stats = _running_statistics(x, params, batch_stats, eps=eps, axis=axis, mask=mask), batch_stats
        return y.astype(x.dtype), new_stats


def batch_norm(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
    virtual_batch_size: int | None = None,
) -> tuple[jax.Array, BatchStats]:
    r"""Batch normalization over all axes but the channel ``axis``,
    :math:`y = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}\,\gamma + \beta`; returns ``(y, new_batch_stats)``.

    Args:
      x: input ``(N, C, ...)`` (channels-last with ``axis=-1``), any floating dtype (statistics in at least float32).
      params: ``{"weight", "bias"}`` of shape ``(C,)``, or ``{}``.
      batch_stats: ``{"running_mean", "running_var", "num_batches_tracked"}``, or ``{}`` (no running statistics).
      train: a Python bool. ``True``: ``μ, σ²`` are the batch mean and *biased* variance over ``(N, *spatial)``; the
        running statistics become ``(1 − m)·running + m·batch`` with the *unbiased* batch variance (``m =
        momentum``, or ``1/num_batches_tracked`` when ``momentum=None``) and ``num_batches_tracked += 1``.
        ``False``: ``μ, σ²`` are the running statistics (batch statistics if ``batch_stats`` is empty), unchanged.
      momentum: the new batch's weight in the running statistics, in [0, 1], or None (cumulative average); eps:
        added to the variance; axis: the channel axis (not the batch axis 0).
      axis_name: statistics over the whole named mapped axis (``shard_map``/``pmap``/``vmap``), synchronized BN:
        the single-device result on the full batch, devices weighted by their number of valid values.
      axis_index_groups: with ``axis_name``, synchronize within each group of device indices only (e.g.
        ``[[0, 1], [2, 3]]``, a partition of the axis).
      mask: boolean, broadcastable to ``x``, True = valid: BN on the valid values alone (the running variance
        unbiased with the valid count); ``y`` is 0 where the mask is False. A channel with fewer than two valid
        values keeps its running statistics (``num_batches_tracked`` counts the batch if any channel was updated).
      virtual_batch_size: Ghost BN: statistics per consecutive sub-batch of this many examples (dividing ``N``);
        one running update per call, with the virtual batches' average mean and unbiased variance. With
        ``axis_name`` the virtual batches are each device's own; only the running update is averaged over devices.

    Returns:
      ``(y, batch_stats)``: the output (``x``'s shape and dtype) and the updated running statistics.

    Raises:
      ValueError: wrong rank, channel or key mismatch, one value per channel in training, a mask that does not
        broadcast, a virtual batch size not dividing the batch, momentum outside [0, 1].
      TypeError: non-floating ``x``, non-boolean mask, ``train`` not a bool.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(2)
      >>> x = jnp.arange(16.0).reshape(4, 2, 2)                     # (N, C, L)
      >>> mask = jnp.array([True, True, True, False])[:, None, None]  # the last example is padding
      >>> y, stats = jn.batch_norm(x, params, stats, train=True, mask=mask)
      >>> float(abs(y[3]).max()), [round(float(v), 2) for v in stats["running_mean"]]
      (0.0, [0.45, 0.65])
      >>> y, _ = jn.batch_norm(x, params, stats, train=True, virtual_batch_size=2)   # Ghost BN
      >>> [round(float(v), 3) for v in y[:2, 0].ravel()]              # normalized within examples 0-1
      [-1.213, -0.728, 0.728, 1.213]

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167;
      Hoffer, Hubara & Soudry, Train longer, generalize better (Ghost Batch Normalization), NeurIPS 2017,
      https://arxiv.org/abs/1705.08741
    """
    return _batch_norm("batch_norm", x, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                       axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask,
                       virtual_batch_size=virtual_batch_size)


def batch_norm_1d(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
    virtual_batch_size: int | None = None,
) -> tuple[jax.Array, BatchStats]:
    """:func:`batch_norm` for the input of PyTorch's ``BatchNorm1d``: ``(N, C)`` or ``(N, C, L)``.

    Arguments, return value and errors as :func:`batch_norm`; also a ValueError for an input of another rank.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(3)
      >>> y, stats = jn.batch_norm_1d(jnp.arange(12.0).reshape(4, 3), params, stats, train=True)
      >>> y.shape, [round(float(v), 3) for v in y[:, 0]]
      ((4, 3), [-1.342, -0.447, 0.447, 1.342])

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """
    _checks.check_rank("batch_norm_1d", x, (2, 3), "(N, C) or (N, C, L)")
    return _batch_norm("batch_norm_1d", x, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                       axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask,
                       virtual_batch_size=virtual_batch_size)


def batch_norm_2d(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
    virtual_batch_size: int | None = None,
) -> tuple[jax.Array, BatchStats]:
    """:func:`batch_norm` for the input of PyTorch's ``BatchNorm2d``: ``(N, C, H, W)`` (``(N, H, W, C)`` with
    ``axis=-1``).

    Arguments, return value and errors as :func:`batch_norm`; also a ValueError for an input of another rank.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(3)
      >>> x = jnp.arange(48.0).reshape(2, 3, 2, 4)
      >>> y, stats = jn.batch_norm_2d(x, params, stats, train=True)
      >>> [round(float(v), 2) for v in stats["running_mean"]]
      [1.55, 2.35, 3.15]
      >>> y_eval, _ = jn.batch_norm_2d(x, params, stats, train=False)   # the running statistics
      >>> y_eval.shape, y_eval.dtype
      ((2, 3, 2, 4), dtype('float32'))

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """
    _checks.check_rank("batch_norm_2d", x, (4,), "(N, C, H, W)")
    return _batch_norm("batch_norm_2d", x, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                       axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask,
                       virtual_batch_size=virtual_batch_size)


def batch_norm_3d(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
    axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
    virtual_batch_size: int | None = None,
) -> tuple[jax.Array, BatchStats]:
    """:func:`batch_norm` for the input of PyTorch's ``BatchNorm3d``: ``(N, C, D, H, W)``.

    Arguments, return value and errors as :func:`batch_norm`; also a ValueError for an input of another rank.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(2)
      >>> y, stats = jn.batch_norm_3d(jnp.ones((2, 2, 3, 4, 4)), params, stats, train=True)
      >>> y.shape, float(abs(y).max())                # a constant input normalizes to 0
      ((2, 2, 3, 4, 4), 0.0)
      >>> jn.batch_norm_3d(jnp.ones((2, 2, 4, 4)), params, stats, train=True)
      Traceback (most recent call last):
      ValueError: batch_norm_3d: expected 5-D input (N, C, D, H, W), got 4-D input with shape (2, 2, 4, 4)

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """
    _checks.check_rank("batch_norm_3d", x, (5,), "(N, C, D, H, W)")
    return _batch_norm("batch_norm_3d", x, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                       axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask,
                       virtual_batch_size=virtual_batch_size)
