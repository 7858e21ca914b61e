"""Flax NNX modules with ``torch.nn`` names and hyperparameters that adapt jaxnorm's pure functions.

Parameters are ``nnx.Param`` attributes ``weight``/``bias`` (``None`` when the layer has none); running statistics are
``nnx.BatchStat`` attributes ``running_mean``/``running_var`` (float32) and ``num_batches_tracked`` (int32 scalar),
``None`` without ``track_running_stats``. So ``nnx.state(model, nnx.BatchStat)`` holds exactly PyTorch's buffers and
``jaxnorm.nnx_to_torch_state_dict`` needs no renaming for these layers.

The stateful layers (BatchNorm*, InstanceNorm*) follow NNX's mode switches as ``nnx.BatchNorm`` does: the attribute
``use_running_average`` is set by ``model.train()`` (False) / ``model.eval()`` (True) and by
``nnx.view(model, use_running_average=...)``, and a call may override it. With ``use_running_average=False`` a layer
normalizes with the batch statistics and updates its BatchStats in place (under ``nnx.jit``/``nnx.grad`` too, as NNX
propagates Variable updates); with ``True`` it uses the running statistics (batch statistics when it keeps none), as
PyTorch's ``eval()`` does. Every module's ``__call__`` takes ``mask=`` (boolean, True = valid) as the pure functions.

Bad constructor arguments raise the pure functions' errors (the checks of :mod:`jaxnorm._checks`), naming the class,
e.g. ``BatchNorm2d: expected num_features >= 1, got 0``; bad inputs raise the pure functions' errors when called.
Initial values are PyTorch's constants (ones and zeros), so ``rngs`` is accepted only so that these layers are built
like every other NNX layer; it is not used.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import jaxnorm.nnx as jnnx
  >>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), jnnx.BatchNorm1d(4), jnnx.LayerNorm(4))
  >>> y = model(jnp.ones((3, 2)))                             # training mode: the BatchStats are updated
  >>> int(model.layers[1].num_batches_tracked[...])
  1
  >>> model.eval()                                            # running statistics from now on
  >>> model.layers[1].use_running_average
  True

References:
  Flax NNX, https://flax.readthedocs.io/en/latest/nnx_basics.html; the layers' own papers are cited in their
  classes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxnorm import _checks
from jaxnorm._types import PARAM_KEYS, STATS_KEYS, BatchNormFunction, BatchStats, InstanceNormFunction, Params
from jaxnorm.batch_norm import batch_norm, batch_norm_1d, batch_norm_2d, batch_norm_3d, batch_norm_init
from jaxnorm.frozen import FROZEN_KEYS, frozen_batch_norm
from jaxnorm.group_norm import _check_groups, group_norm, group_norm_init
from jaxnorm.instance_norm import (
    instance_norm,
    instance_norm_1d,
    instance_norm_2d,
    instance_norm_3d,
    instance_norm_init,
)
from jaxnorm.layer_norm import layer_norm, layer_norm_init, rms_norm, rms_norm_init

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNorm", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "FrozenBatchNorm", "freeze_batch_norm",
           "convert_flax_norms", "convert_sync_batch_norm"]


def _variable(kind: type[nnx.Variable[Any]], tree: Mapping[str, jax.Array], key: str,
              dtype: DTypeLike | None = None) -> Any:
    """``kind(tree[key])`` (cast to ``dtype``), or a None data attribute when the layer has no such entry
    (``nnx.data`` lets a later assignment store a Variable there, as in ``nnx.BatchNorm``)."""
    if key not in tree:
        return nnx.data(None)
    return kind(tree[key] if dtype is None else tree[key].astype(dtype))


def _values(module: nnx.Module, keys: Sequence[str]) -> dict[str, jax.Array]:
    """The current values of the module's Variables among ``keys`` (absent ones are None and left out)."""
    return {key: getattr(module, key)[...] for key in keys if getattr(module, key) is not None}


class _Stateful(nnx.Module):
    """Shared body of BatchNorm*/InstanceNorm*: gather the Variables, call the pure function, write the stats back.

    A family sets ``_init`` (its ``*_init``) and implements ``_normalize`` (a call of its pure function).
    """

    _init = staticmethod(batch_norm_init)

    def __init__(self, num_features: int, *, eps: float, momentum: float | None, affine: bool,
                 track_running_stats: bool, axis: int, axis_name: Hashable | None, use_running_average: bool,
                 param_dtype: DTypeLike):
        _checks.check_num_features(type(self).__name__, num_features)
        _checks.check_momentum(type(self).__name__, momentum)
        params, stats = self._init(num_features, affine=affine, track_running_stats=track_running_stats)
        self.weight = _variable(nnx.Param, params, "weight", param_dtype)
        self.bias = _variable(nnx.Param, params, "bias", param_dtype)
        self.running_mean = _variable(nnx.BatchStat, stats, "running_mean")
        self.running_var = _variable(nnx.BatchStat, stats, "running_var")
        self.num_batches_tracked = _variable(nnx.BatchStat, stats, "num_batches_tracked")
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        self.track_running_stats, self.use_running_average = track_running_stats, use_running_average
        self.axis, self.axis_name, self.param_dtype = axis, axis_name, param_dtype

    def _normalize(self, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                   mask: jax.Array | None) -> tuple[jax.Array, BatchStats]:
        """``(y, new batch_stats)`` of this family's pure function with the layer's hyperparameters."""
        raise NotImplementedError

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x``; in training mode also update the running statistics in place.

        Args:
          x: the input, laid out as the layer's pure function expects (channels on ``axis``).
          use_running_average: ``False``: batch statistics, and the BatchStats are updated (PyTorch's ``train()``);
            ``True``: running statistics (PyTorch's ``eval()``). ``None``: the module's attribute.
          mask: boolean, broadcastable to ``x``, True = valid (see the pure function).

        Returns:
          ``y`` with ``x``'s shape and dtype.

        Raises:
          TypeError: ``use_running_average`` is not a Python bool; and whatever the pure function raises.
        """
        if use_running_average is None:
            use_running_average = self.use_running_average
        if not isinstance(use_running_average, bool):
            raise TypeError(f"{type(self).__name__}: expected use_running_average to be a Python bool (static under "
                            f"jit), got {type(use_running_average).__name__}")
        train = not use_running_average
        y, new_stats = self._normalize(x, _values(self, PARAM_KEYS), _values(self, STATS_KEYS), train=train,
                                       mask=mask)
        if train:
            for key, value in new_stats.items():
                getattr(self, key)[...] = value
        return y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Used by ``nnx.view(model, use_running_average=...)``, as ``nnx.BatchNorm.set_view``.

        Args:
          use_running_average: the new mode; ``None`` leaves it unchanged.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


class _BatchNorm(_Stateful):
    """``torch.nn.BatchNorm*d`` with jaxnorm's training-regime options; see :func:`jaxnorm.batch_norm`.

    ``axis_name``/``axis_index_groups``: synchronized statistics inside ``nnx.vmap``/``shard_map``;
    ``virtual_batch_size``: Ghost BN. A subclass sets ``_function``, the rank-checked pure function it calls; an
    instance may hold its own (:func:`jaxnorm.recalibrate_batch_stats` gives a traced copy's layers one that
    reports their inputs).
    """

    _function: BatchNormFunction = staticmethod(batch_norm)

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, axis: int = 1, axis_name: Hashable | None = None,
                 axis_index_groups: Sequence[Sequence[int]] | None = None, virtual_batch_size: int | None = None,
                 use_running_average: bool = False, param_dtype: DTypeLike = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, axis=axis, axis_name=axis_name,
                         use_running_average=use_running_average, param_dtype=param_dtype)
        # a tuple of tuples: static attributes are part of the (hashed) graph definition under nnx.jit
        self.axis_index_groups = _checks.check_axis_index_groups(type(self).__name__, axis_index_groups, axis_name)
        self.virtual_batch_size = virtual_batch_size

    def _normalize(self, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                   mask: jax.Array | None) -> tuple[jax.Array, BatchStats]:
        return self._function(x, params, batch_stats, train=train, momentum=self.momentum, eps=self.eps,
                              axis=self.axis, axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
                              mask=mask, virtual_batch_size=self.virtual_batch_size)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d(num_features, eps, momentum, affine, track_running_stats)``; calls
    :func:`jaxnorm.batch_norm_1d`. Also ``axis`` (``-1`` for channels-last), ``axis_name`` and
    ``axis_index_groups`` (synchronized statistics), ``virtual_batch_size`` (Ghost BN), ``use_running_average``
    (set by ``model.train()``/``model.eval()``), ``param_dtype``.

    Shape:
      - Input: ``(N, C)`` or ``(N, C, L)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> bn = jnnx.BatchNorm1d(3)
      >>> y = bn(jnp.arange(12.0).reshape(4, 3))          # training mode: batch statistics, BatchStats updated
      >>> [round(float(v), 2) for v in bn.running_mean[...]], int(bn.num_batches_tracked[...])
      ([0.45, 0.55, 0.65], 1)

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """

    _function = staticmethod(batch_norm_1d)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)``; calls
    :func:`jaxnorm.batch_norm_2d`. Also ``axis`` (``-1`` for NNX's channels-last convolutions), ``axis_name``,
    ``axis_index_groups``, ``virtual_batch_size``, ``use_running_average``, ``param_dtype`` as
    :class:`BatchNorm1d`.

    Shape:
      - Input: ``(N, C, H, W)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jaxnorm.nnx as jnnx
      >>> bn = jnnx.BatchNorm2d(3, axis=-1)
      >>> sorted(nnx.to_pure_dict(nnx.state(bn, nnx.BatchStat)))
      ['num_batches_tracked', 'running_mean', 'running_var']
      >>> bn.eval()                                         # running statistics from now on
      >>> bn(jnp.ones((2, 4, 4, 3))).shape
      (2, 4, 4, 3)

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """

    _function = staticmethod(batch_norm_2d)


class BatchNorm3d(_BatchNorm):
    """``torch.nn.BatchNorm3d(num_features, eps, momentum, affine, track_running_stats)``; calls
    :func:`jaxnorm.batch_norm_3d`. Other options as :class:`BatchNorm2d`.

    Shape:
      - Input: ``(N, C, D, H, W)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> bn = jnnx.BatchNorm3d(2, affine=False)
      >>> bn.weight is None, bn(jnp.ones((2, 2, 2, 3, 3))).shape
      (True, (2, 2, 2, 3, 3))

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """

    _function = staticmethod(batch_norm_3d)


class BatchNorm(_BatchNorm):
    """``torch.nn.functional.batch_norm`` as a layer for inputs of any rank ``(N, C, *)``, as Flax's
    ``nnx.BatchNorm``; calls :func:`jaxnorm.batch_norm`. :func:`convert_flax_norms` puts it in place of an
    ``nnx.BatchNorm``, whose input rank is not known until it is called. Arguments, attributes and BatchStats as
    :class:`BatchNorm2d` (``axis=-1`` for channels-last); PyTorch's own classes check the rank, this one does not.

    Shape:
      - Input: ``(N, C, *)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> bn = jnnx.BatchNorm(2, axis=-1)
      >>> bn(jnp.ones((4, 2))).shape, bn(jnp.ones((2, 3, 5, 2))).shape     # any rank
      ((4, 2), (2, 3, 5, 2))
      >>> int(bn.num_batches_tracked[...])
      2

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """


class _InstanceNorm(_Stateful):
    """``torch.nn.InstanceNorm*d`` (PyTorch's defaults ``affine=False``, ``track_running_stats=False``); see
    :func:`jaxnorm.instance_norm`. Without running statistics both modes normalize per instance. A subclass sets
    ``_function``, the rank-checked pure function it calls."""

    _init = staticmethod(instance_norm_init)
    _function: InstanceNormFunction = staticmethod(instance_norm)

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, axis: int = 1, axis_name: Hashable | None = None,
                 use_running_average: bool = False, param_dtype: DTypeLike = jnp.float32,
                 rngs: nnx.Rngs | None = None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, axis=axis, axis_name=axis_name,
                         use_running_average=use_running_average, param_dtype=param_dtype)

    def _normalize(self, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                   mask: jax.Array | None) -> tuple[jax.Array, BatchStats]:
        return self._function(x, params, batch_stats, train=train, momentum=self.momentum, eps=self.eps,
                              axis=self.axis, axis_name=self.axis_name, mask=mask)


class InstanceNorm1d(_InstanceNorm):
    """``torch.nn.InstanceNorm1d(num_features, eps, momentum, affine=False, track_running_stats=False)``; calls
    :func:`jaxnorm.instance_norm_1d`. Also ``axis`` (of the batched layout), ``axis_name`` (averages the
    running-statistics update over a mapped axis), ``use_running_average``, ``param_dtype``.

    Shape:
      - Input: ``(N, C, L)`` or ``(C, L)`` (one instance).
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> inorm = jnnx.InstanceNorm1d(2)
      >>> [round(float(v), 3) for v in inorm(jnp.arange(12.0).reshape(2, 2, 3))[0, 0]]
      [-1.225, 0.0, 1.225]

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """

    _function = staticmethod(instance_norm_1d)


class InstanceNorm2d(_InstanceNorm):
    """``torch.nn.InstanceNorm2d(num_features, eps, momentum, affine=False, track_running_stats=False)``; calls
    :func:`jaxnorm.instance_norm_2d`. Other options as :class:`InstanceNorm1d`.

    Shape:
      - Input: ``(N, C, H, W)`` or ``(C, H, W)`` (one instance).
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> inorm = jnnx.InstanceNorm2d(3, affine=True, track_running_stats=True)
      >>> y = inorm(jnp.arange(24.0).reshape(3, 2, 4))     # training mode updates the running statistics
      >>> [round(float(v), 2) for v in inorm.running_mean[...]]
      [0.35, 1.15, 1.95]

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """

    _function = staticmethod(instance_norm_2d)


class InstanceNorm3d(_InstanceNorm):
    """``torch.nn.InstanceNorm3d(num_features, eps, momentum, affine=False, track_running_stats=False)``; calls
    :func:`jaxnorm.instance_norm_3d`. Other options as :class:`InstanceNorm1d`.

    Shape:
      - Input: ``(N, C, D, H, W)`` or ``(C, D, H, W)`` (one instance).
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> jnnx.InstanceNorm3d(2)(jnp.arange(16.0).reshape(2, 2, 2, 2)).shape
      (2, 2, 2, 2)

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """

    _function = staticmethod(instance_norm_3d)


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)``; calls :func:`jaxnorm.layer_norm`.

    Shape:
      - Input: ``(*, *normalized_shape)``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> ln = jnnx.LayerNorm(4, bias=False)
      >>> ln.bias is None, [round(float(v), 3) for v in ln(jnp.arange(4.0)[None])[0]]
      (True, [-1.342, -0.447, 0.447, 1.342])

    References:
      Ba, Kiros & Hinton, Layer Normalization, 2016, https://arxiv.org/abs/1607.06450
    """

    def __init__(self, normalized_shape: int | Sequence[int], *, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, param_dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs | None = None):
        self.normalized_shape = _checks.normalized_shape_tuple(type(self).__name__, normalized_shape)
        params = layer_norm_init(self.normalized_shape, elementwise_affine=elementwise_affine, bias=bias,
                                 dtype=param_dtype)
        self.weight = _variable(nnx.Param, params, "weight")
        self.bias = _variable(nnx.Param, params, "bias")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.param_dtype = param_dtype

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``y`` of :func:`jaxnorm.layer_norm` over the trailing ``normalized_shape`` dims (``mask``: True = valid)."""
        return layer_norm(x, _values(self, PARAM_KEYS), self.normalized_shape, eps=self.eps, mask=mask)


class RMSNorm(nnx.Module):
    """``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine)``; calls :func:`jaxnorm.rms_norm`.

    Shape:
      - Input: ``(*, *normalized_shape)``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> [round(float(v), 3) for v in jnnx.RMSNorm(2)(jnp.array([[3.0, 4.0]]))[0]]     # x / sqrt(mean(x**2))
      [0.849, 1.131]

    References:
      Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467
    """

    def __init__(self, normalized_shape: int | Sequence[int], *, eps: float | None = None,
                 elementwise_affine: bool = True, param_dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs | None = None):
        self.normalized_shape = _checks.normalized_shape_tuple(type(self).__name__, normalized_shape)
        params = rms_norm_init(self.normalized_shape, elementwise_affine=elementwise_affine, dtype=param_dtype)
        self.weight = _variable(nnx.Param, params, "weight")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.param_dtype = param_dtype

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``y`` of :func:`jaxnorm.rms_norm` (``eps=None``: ``finfo(x.dtype).eps``; ``mask``: True = valid)."""
        return rms_norm(x, _values(self, ("weight",)), self.normalized_shape, eps=self.eps, mask=mask)


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm(num_groups, num_channels, eps, affine)``; calls :func:`jaxnorm.group_norm`; ``axis=-1``
    for channels-last.

    Shape:
      - Input: ``(N, C, *)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> gn = jnnx.GroupNorm(2, 4, axis=-1)
      >>> gn(jnp.ones((2, 5, 4))).shape, gn.weight[...].shape
      ((2, 5, 4), (4,))

    References:
      Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494
    """

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-5, affine: bool = True, axis: int = 1,
                 param_dtype: DTypeLike = jnp.float32, rngs: nnx.Rngs | None = None):
        _check_groups(type(self).__name__, num_groups, num_channels)
        params = group_norm_init(num_groups, num_channels, affine=affine, dtype=param_dtype)
        self.weight = _variable(nnx.Param, params, "weight")
        self.bias = _variable(nnx.Param, params, "bias")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.axis = axis
        self.param_dtype = param_dtype

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """``y`` of :func:`jaxnorm.group_norm` (``mask``: True = valid)."""
        return group_norm(x, _values(self, PARAM_KEYS), self.num_groups, eps=self.eps, axis=self.axis, mask=mask)


class FrozenBatchNorm(nnx.Module):
    """torchvision's ``FrozenBatchNorm2d`` for any rank: :func:`jaxnorm.frozen_batch_norm` with the layer's weight,
    bias and running statistics, all four ``nnx.BatchStat`` (so an ``nnx.Optimizer(..., wrt=nnx.Param)`` never
    sees them, and nothing updates them). Made by :func:`freeze_batch_norm` from a trained layer.

    Shape:
      - Input: ``(N, C, *)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm.nnx as jnnx
      >>> frozen = jnnx.FrozenBatchNorm(jnp.ones(2), jnp.zeros(2), jnp.array([1.0, 2.0]), jnp.ones(2), eps=0.0)
      >>> frozen(jnp.array([[1.0, 2.0], [2.0, 3.0]])).tolist()
      [[0.0, 0.0], [1.0, 1.0]]

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html
    """

    def __init__(self, weight: jax.Array, bias: jax.Array, running_mean: jax.Array, running_var: jax.Array, *,
                 eps: float = 1e-5, axis: int = 1):
        self.weight, self.bias = nnx.BatchStat(weight), nnx.BatchStat(bias)
        self.running_mean, self.running_var = nnx.BatchStat(running_mean), nnx.BatchStat(running_var)
        self.eps, self.axis = eps, axis

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None,
                 mask: jax.Array | None = None) -> jax.Array:
        """The fixed affine map (``use_running_average`` is accepted and ignored: a frozen layer has one mode); 0 off
        the mask."""
        del use_running_average
        values = {k: getattr(self, k)[...] for k in FROZEN_KEYS}
        y = frozen_batch_norm(x, {k: values[k] for k in PARAM_KEYS}, values, eps=self.eps, axis=self.axis)
        return y if mask is None else jnp.where(mask, y, jnp.zeros((), y.dtype))


def _frozen(layer: _Stateful) -> FrozenBatchNorm:
    mean = layer.running_mean[...]
    weight = jnp.ones_like(mean) if layer.weight is None else layer.weight[...]
    bias = jnp.zeros_like(mean) if layer.bias is None else layer.bias[...]
    return FrozenBatchNorm(weight, bias, mean, layer.running_var[...], eps=layer.eps, axis=layer.axis)


def replace_at(model: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
    """Put ``new`` where ``path`` leads in ``model``: attribute names, and indices into ``nnx.List``s."""
    parent: Any = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, str(key))
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, str(path[-1]), new)


def dotted_path(path: Sequence[Any]) -> str:
    """A module path of ``nnx.iter_modules`` as PyTorch names it: ``blocks.0.bn``."""
    return ".".join(str(key) for key in path)


def freeze_batch_norm(model: nnx.Module, *, where: Callable[[str], bool] | None = None) -> nnx.Module:
    """Replace, in place, the layers of ``model`` that have running statistics (jaxnorm's ``BatchNorm*d`` and
    :class:`BatchNorm`, and ``InstanceNorm*d`` with ``track_running_stats=True``) by a :class:`FrozenBatchNorm` built
    from each: all of them, or those whose dotted path ``where`` selects (open_clip's ``module_match``).

    Args:
      model: an NNX model.
      where: ``None`` (every such layer), or ``where(path) -> bool`` of a layer's attribute path joined by dots,
        list items by their index (``blocks.0.bn``): the prefix of its keys in :func:`jaxnorm.nnx_to_torch_state_dict`.

    Returns:
      ``model`` (changed in place), for chaining.

    Raises:
      TypeError: not an NNX module, or ``where`` not callable.
      ValueError: no such layer in ``model`` (a model that is itself one such layer cannot be replaced in place), or
        ``where`` selects none of them (the message lists their paths).

    Example:
      >>> from flax import nnx
      >>> import jaxnorm.nnx as jnnx
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnnx.BatchNorm1d(3), jnnx.BatchNorm1d(3))
      >>> [type(m).__name__ for m in jnnx.freeze_batch_norm(model, where=lambda path: path == "layers.1").layers]
      ['Linear', 'FrozenBatchNorm', 'BatchNorm1d']
      >>> sorted(nnx.to_pure_dict(nnx.state(model, nnx.Param))["layers"])    # the frozen layer's arrays are not trained
      [0, 2]

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html; open_clip's
      ``freeze_batch_norm_2d(module, module_match)``, https://github.com/mlfoundations/open_clip
    """
    name = "freeze_batch_norm"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{name}: expected a flax.nnx.Module, got {type(model).__name__}")
    layers = [(path, module) for path, module in nnx.iter_modules(model)
              if isinstance(module, _Stateful) and module.track_running_stats and path]
    chosen = set(_checks.layers_to_freeze(name, where, [dotted_path(p) for p, _ in layers], type(model).__name__))
    for path, module in (layer for layer in layers if dotted_path(layer[0]) in chosen):
        replace_at(model, path, _frozen(module))
    return model


def convert_flax_norms(model: nnx.Module) -> nnx.Module:
    """Replace, in place, every ``nnx.BatchNorm``, ``nnx.LayerNorm``, ``nnx.GroupNorm`` and ``nnx.RMSNorm`` of
    ``model`` by the jaxnorm layer that computes the same thing with PyTorch's semantics.

    Carried over: the parameters and running statistics (the Variables themselves, so their values, dtypes and
    metadata), ``epsilon`` -> ``eps``, ``momentum`` -> PyTorch's ``1 − momentum``
    (:func:`jaxnorm.migrate.momentum_from_decay`), ``axis``, ``axis_name``/``axis_index_groups`` and
    ``use_running_average`` of BatchNorm (so ``model.eval()`` still switches it). ``nnx.BatchNorm`` becomes
    :class:`BatchNorm` (any rank, as Flax's), LayerNorm/RMSNorm over the last axis become
    :class:`LayerNorm`/:class:`RMSNorm` ``(num_features)``, GroupNorm :class:`GroupNorm` ``(..., axis=feature_axis)``.
    In eval mode the model's outputs stay the same (to float32 rounding).

    What cannot carry over: the biased running variance Flax accumulated (PyTorch's is unbiased; see
    :mod:`jaxnorm.migrate`); ``num_batches_tracked`` starts at 0; a bias without a scale gets a trainable weight of
    ones; Flax's ``dtype`` (outputs now have the input's dtype), ``use_fast_variance`` (jaxnorm's variance is always
    the stable one) and Flax's mask convention (jaxnorm zeroes the output off the mask). Calls must pass
    ``use_running_average=``/``mask=`` by keyword. ``nnx.InstanceNorm`` is left as it is. Build the optimizer after
    the conversion (it holds the model's Variables).

    Args:
      model: an NNX model.

    Returns:
      ``model`` (changed in place), or the converted layer if ``model`` is itself one.

    Raises:
      TypeError: not an NNX module. ValueError: no Flax norm layer, or one with no jaxnorm counterpart (several
      channel axes, statistics over other axes, or over a named axis for LayerNorm/GroupNorm/RMSNorm); the message
      names its path. Nothing is changed then.

    Example:
      >>> from flax import nnx
      >>> import jaxnorm.nnx as jnnx
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)),
      ...                        nnx.LayerNorm(3, rngs=nnx.Rngs(0)))
      >>> model = jnnx.convert_flax_norms(model)
      >>> [type(m).__name__ for m in model.layers], model.layers[1].momentum, model.layers[2].eps
      (['Linear', 'BatchNorm', 'LayerNorm'], 0.01, 1e-06)

    References:
      Flax's ``flax.nnx.BatchNorm``/``LayerNorm``/``GroupNorm``/``RMSNorm``,
      https://flax.readthedocs.io/en/latest/api_reference/flax.nnx/nn/normalization.html; PyTorch's
      ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    from jaxnorm._nnx_convert import convert_flax_norms as convert  # it imports this module: loaded on first use

    return convert(model)


def convert_sync_batch_norm(model: nnx.Module, axis_name: Hashable,
                            *, axis_index_groups: Sequence[Sequence[int]] | None = None) -> nnx.Module:
    """PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``: every BatchNorm of ``model`` computes its statistics over
    the named axis ``axis_name`` (``nnx.shard_map``/``jax.shard_map``, ``nnx.pmap``, ``nnx.vmap``), in place.

    jaxnorm's ``BatchNorm1d/2d/3d`` (and :class:`BatchNorm`) get ``axis_name`` and ``axis_index_groups``
    (statistics within groups of devices, PyTorch's ``process_group``); Flax's own ``nnx.BatchNorm`` gets its
    attributes of the same names (Flax's synchronized statistics: convert it first with :func:`convert_flax_norms`
    for PyTorch's semantics). Other layers are left alone (PyTorch does not synchronize InstanceNorm either). The
    result equals BatchNorm on the whole batch (every device's examples together).

    Args:
      model: an NNX model.
      axis_name: the mapped axis to synchronize over.
      axis_index_groups: ``None`` (the whole axis) or a partition of the axis' indices.

    Returns:
      ``model`` (changed in place).

    Raises:
      TypeError: not an NNX module, or groups that are not lists of ints. ValueError: no axis name, or no BatchNorm.

    Example:
      >>> from flax import nnx
      >>> import jaxnorm.nnx as jnnx
      >>> model = jnnx.convert_sync_batch_norm(nnx.Sequential(jnnx.BatchNorm1d(2)), "data",
      ...                                      axis_index_groups=[[0, 1]])
      >>> model.layers[0].axis_name, model.layers[0].axis_index_groups
      ('data', ((0, 1),))

    References:
      PyTorch's ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``,
      https://pytorch.org/docs/stable/generated/torch.nn.SyncBatchNorm.html
    """
    from jaxnorm._nnx_convert import convert_sync_batch_norm as convert  # it imports this module: loaded on first use

    return convert(model, axis_name, axis_index_groups=axis_index_groups)
