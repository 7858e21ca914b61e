"""Flax linen modules with ``torch.nn`` hyperparameter names that adapt jaxnorm's pure functions.

Parameters live in ``"params"`` as ``weight``/``bias``; running statistics in the ``"batch_stats"`` collection as
``running_mean``/``running_var``/``num_batches_tracked``. Stateful modules are called ``module(x, train=...)``;
with ``train=True`` apply them with ``mutable=["batch_stats"]``. ``init`` does not count as a training step. Every
module takes ``mask=`` (boolean, True = valid) as the pure functions do. The modules compute nothing themselves:
each calls one pure function (:func:`jaxnorm.batch_norm_2d`, ...), so their numbers and errors are that function's.

Example:
  >>> import flax.linen as nn
  >>> import jax, jax.numpy as jnp
  >>> import jaxnorm.linen as jnn
  >>> class Net(nn.Module):
  ...     @nn.compact
  ...     def __call__(self, x, *, train):
  ...         return nn.relu(jnn.BatchNorm1d(4, axis=-1)(nn.Dense(4)(x), train=train))
  >>> x = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
  >>> variables = Net().init(jax.random.key(0), x, train=False)
  >>> sorted(variables["batch_stats"]["BatchNorm1d_0"])
  ['num_batches_tracked', 'running_mean', 'running_var']
  >>> y, updates = Net().apply(variables, x, train=True, mutable=["batch_stats"])
  >>> int(updates["batch_stats"]["BatchNorm1d_0"]["num_batches_tracked"])
  1

References:
  Heek et al., Flax: A neural network library and ecosystem for JAX, https://github.com/google/flax (linen);
  the layers' own papers are cited in their classes.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxnorm import _checks
from jaxnorm._types import BatchStats, Params
from jaxnorm.batch_norm import batch_norm, batch_norm_1d, batch_norm_2d, batch_norm_3d
from jaxnorm.batch_renorm import batch_renorm
from jaxnorm.frozen import FROZEN_KEYS, frozen_batch_norm
from jaxnorm.group_norm import group_norm
from jaxnorm.instance_norm import instance_norm, instance_norm_1d, instance_norm_2d, instance_norm_3d
from jaxnorm.layer_norm import layer_norm, rms_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm"]

# ``normalize(params, batch_stats) -> (y, new_batch_stats)``: one call of a stateful layer's pure function
Normalize = Callable[[Params, BatchStats], tuple[jax.Array, BatchStats]]


def _affine_params(module: nn.Module, shape: tuple[int, ...], param_dtype: DTypeLike, bias: bool = True) -> Params:
    params = {"weight": module.param("weight", nn.initializers.ones, shape, param_dtype)}
    if bias:
        params["bias"] = module.param("bias", nn.initializers.zeros, shape, param_dtype)
    return params


def _stateful_call(module: _Stateful, x: jax.Array, train: bool, normalize: Normalize) -> jax.Array:
    """The body of BatchNorm*/InstanceNorm*/BatchRenorm: gather collections, call the pure function, write stats back.

    A layer whose ``batch_stats`` hold its weight was frozen by :func:`jaxnorm.freeze_batch_norm`: it computes
    :func:`jaxnorm.frozen_batch_norm` and updates nothing.
    """
    if module.has_variable("batch_stats", "weight"):
        frozen: BatchStats = {k: module.get_variable("batch_stats", k) for k in FROZEN_KEYS}
        return frozen_batch_norm(x, {k: frozen[k] for k in ("weight", "bias")}, frozen, eps=module.eps,
                                 axis=module.axis)
    c = (module.num_features,)
    params = _affine_params(module, c, module.param_dtype) if module.affine else {}
    variables = {}
    if module.track_running_stats:
        variables = {
            "running_mean": module.variable("batch_stats", "running_mean", jnp.zeros, c, jnp.float32),
            "running_var": module.variable("batch_stats", "running_var", jnp.ones, c, jnp.float32),
            "num_batches_tracked": module.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32),
        }
    y, new_stats = normalize(params, {k: v.value for k, v in variables.items()})
    if train and variables and not module.is_initializing():
        for key, var in variables.items():
            var.value = new_stats[key]
    return y


class _Stateful(nn.Module):
    """The fields shared by BatchNorm*, InstanceNorm* and BatchRenorm (PyTorch's hyperparameters)."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    axis: int = 1
    axis_name: str | None = None
    param_dtype: DTypeLike = jnp.float32


class _BatchNorm(_Stateful):
    """BatchNorm's own options: statistics synchronized within device groups, Ghost BN. A subclass sets
    ``_function``, the rank-checked pure function it calls (a class attribute, not a dataclass field)."""

    axis_index_groups: tuple[tuple[int, ...], ...] | None = None
    virtual_batch_size: int | None = None
    _function = staticmethod(batch_norm)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x``: batch statistics and a running-statistics update with ``train=True`` (apply with
        ``mutable=["batch_stats"]``), the running statistics with ``train=False``; 0 where ``mask`` is False."""

        def normalize(params: Params, stats: BatchStats) -> tuple[jax.Array, BatchStats]:
            return self._function(x, params, stats, train=train, momentum=self.momentum, eps=self.eps, axis=self.axis,
                                  axis_name=self.axis_name, axis_index_groups=self.axis_index_groups, mask=mask,
                                  virtual_batch_size=self.virtual_batch_size)

        return _stateful_call(self, x, train, normalize)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d(num_features, eps, momentum, affine, track_running_stats)``; calls
    :func:`jaxnorm.batch_norm_1d`. Also ``axis`` (``-1`` for channels-last), ``axis_name`` and
    ``axis_index_groups`` (synchronized statistics), ``virtual_batch_size`` (Ghost BN), ``param_dtype``.

    Shape:
      - Input: ``(N, C)`` or ``(N, C, L)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> bn, x = jnn.BatchNorm1d(3), jnp.arange(12.0).reshape(4, 3)
      >>> variables = bn.init(jax.random.key(0), x, train=False)
      >>> y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
      >>> [round(float(v), 2) for v in updates["batch_stats"]["running_mean"]]
      [0.45, 0.55, 0.65]

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """

    _function = staticmethod(batch_norm_1d)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)``; calls
    :func:`jaxnorm.batch_norm_2d`. Also ``axis`` (``-1`` for Flax's channels-last convolutions), ``axis_name`` and
    ``axis_index_groups`` (synchronized statistics), ``virtual_batch_size`` (Ghost BN), ``param_dtype``.

    Shape:
      - Input: ``(N, C, H, W)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> bn, x = jnn.BatchNorm2d(3, axis=-1), jnp.ones((2, 4, 4, 3))   # NHWC
      >>> variables = bn.init(jax.random.key(0), x, train=False)
      >>> jax.tree.map(jnp.shape, variables["params"])
      {'bias': (3,), 'weight': (3,)}
      >>> bn.apply(variables, x, train=False).shape
      (2, 4, 4, 3)

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """

    _function = staticmethod(batch_norm_2d)


class BatchNorm3d(_BatchNorm):
    """``torch.nn.BatchNorm3d(num_features, eps, momentum, affine, track_running_stats)``; calls
    :func:`jaxnorm.batch_norm_3d`. Also ``axis``, ``axis_name``, ``axis_index_groups``, ``virtual_batch_size``,
    ``param_dtype`` as :class:`BatchNorm2d`.

    Shape:
      - Input: ``(N, C, D, H, W)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> bn, x = jnn.BatchNorm3d(2, momentum=None), jnp.ones((2, 2, 2, 3, 3))   # momentum=None: cumulative
      >>> variables = bn.init(jax.random.key(0), x, train=False)
      >>> y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
      >>> [float(v) for v in updates["batch_stats"]["running_mean"]]
      [1.0, 1.0]

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
    """

    _function = staticmethod(batch_norm_3d)


class BatchRenorm(_Stateful):
    """Batch Renormalization (:func:`jaxnorm.batch_renorm`) for any rank; ``r_max``/``d_max`` may be given per call
    (e.g. from :func:`jaxnorm.renorm_clip_schedule`), else the module's.

    Shape:
      - Input: ``(N, C, *)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> rn, x = jnn.BatchRenorm(3), jnp.arange(12.0).reshape(4, 3)
      >>> variables = rn.init(jax.random.key(0), x, train=False)
      >>> y, updates = rn.apply(variables, x, train=True, r_max=1.0, d_max=0.0, mutable=["batch_stats"])
      >>> [round(float(v), 3) for v in y[:, 0]]    # r_max = 1, d_max = 0: BatchNorm
      [-1.342, -0.447, 0.447, 1.342]

    References:
      Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models,
      NeurIPS 2017, https://arxiv.org/abs/1702.03275
    """

    r_max: float = 3.0
    d_max: float = 5.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None,
                 r_max: float | jax.Array | None = None, d_max: float | jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` as :func:`jaxnorm.batch_renorm`, with this call's clips (the module's when None)."""

        def normalize(params: Params, stats: BatchStats) -> tuple[jax.Array, BatchStats]:
            return batch_renorm(x, params, stats, train=train, momentum=self.momentum, eps=self.eps, axis=self.axis,
                                axis_name=self.axis_name, mask=mask, r_max=self.r_max if r_max is None else r_max,
                                d_max=self.d_max if d_max is None else d_max)

        return _stateful_call(self, x, train, normalize)


class _InstanceNorm(_Stateful):
    """PyTorch's InstanceNorm defaults: ``affine=False``, ``track_running_stats=False``. A subclass sets
    ``_function``, the rank-checked pure function it calls."""

    affine: bool = False
    track_running_stats: bool = False
    _function = staticmethod(instance_norm)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Normalize each instance of ``x``; with running statistics, ``train=False`` normalizes with them and
        ``train=True`` updates them (apply with ``mutable=["batch_stats"]``)."""

        def normalize(params: Params, stats: BatchStats) -> tuple[jax.Array, BatchStats]:
            return self._function(x, params, stats, train=train, momentum=self.momentum, eps=self.eps, axis=self.axis,
                                  axis_name=self.axis_name, mask=mask)

        return _stateful_call(self, x, train, normalize)


class InstanceNorm1d(_InstanceNorm):
    """``torch.nn.InstanceNorm1d(num_features, eps, momentum, affine=False, track_running_stats=False)``; calls
    :func:`jaxnorm.instance_norm_1d`. Also ``axis`` (of the batched layout), ``axis_name`` (averages the
    running-statistics update over a mapped axis), ``param_dtype``.

    Shape:
      - Input: ``(N, C, L)`` or ``(C, L)`` (one instance).
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> inorm, x = jnn.InstanceNorm1d(2), jnp.arange(12.0).reshape(2, 2, 3)
      >>> variables = inorm.init(jax.random.key(0), x, train=True)
      >>> variables                      # PyTorch's defaults: no parameters, no running statistics
      {}
      >>> [round(float(v), 3) for v in inorm.apply(variables, x, train=True)[0, 0]]
      [-1.225, 0.0, 1.225]

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """

    _function = staticmethod(instance_norm_1d)


class InstanceNorm2d(_InstanceNorm):
    """``torch.nn.InstanceNorm2d(num_features, eps, momentum, affine=False, track_running_stats=False)``; calls
    :func:`jaxnorm.instance_norm_2d`. Also ``axis``, ``axis_name``, ``param_dtype`` as :class:`InstanceNorm1d`.

    Shape:
      - Input: ``(N, C, H, W)`` or ``(C, H, W)`` (one instance).
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> inorm, x = jnn.InstanceNorm2d(3, affine=True, track_running_stats=True), jnp.ones((2, 3, 4, 4))
      >>> variables = inorm.init(jax.random.key(0), x, train=False)
      >>> sorted(variables), sorted(variables["params"])
      (['batch_stats', 'params'], ['bias', 'weight'])
      >>> inorm.apply(variables, x, train=False).shape      # eval: the running statistics
      (2, 3, 4, 4)

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """

    _function = staticmethod(instance_norm_2d)


class InstanceNorm3d(_InstanceNorm):
    """``torch.nn.InstanceNorm3d(num_features, eps, momentum, affine=False, track_running_stats=False)``; calls
    :func:`jaxnorm.instance_norm_3d`. Also ``axis``, ``axis_name``, ``param_dtype`` as :class:`InstanceNorm1d`.

    Shape:
      - Input: ``(N, C, D, H, W)`` or ``(C, D, H, W)`` (one instance).
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> inorm, x = jnn.InstanceNorm3d(2), jnp.arange(16.0).reshape(2, 2, 2, 2)   # unbatched (C, D, H, W)
      >>> inorm.apply({}, x, train=True).shape
      (2, 2, 2, 2)

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
    """

    _function = staticmethod(instance_norm_3d)


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)``; calls :func:`jaxnorm.layer_norm`.

    Shape:
      - Input: ``(*, *normalized_shape)``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> ln, x = jnn.LayerNorm(4), jnp.arange(8.0).reshape(2, 4)
      >>> variables = ln.init(jax.random.key(0), x)
      >>> [round(float(v), 3) for v in ln.apply(variables, x)[1]]
      [-1.342, -0.447, 0.447, 1.342]

    References:
      Ba, Kiros & Hinton, Layer Normalization, 2016, https://arxiv.org/abs/1607.06450
    """

    normalized_shape: int | tuple[int, ...]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize ``x`` over its trailing ``normalized_shape`` dims (``mask``: True = valid)."""
        shape = _checks.normalized_shape_tuple("LayerNorm", self.normalized_shape)
        params = _affine_params(self, shape, self.param_dtype, self.bias) if self.elementwise_affine else {}
        return layer_norm(x, params, shape, eps=self.eps, mask=mask)


class RMSNorm(nn.Module):
    """``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine)``; calls :func:`jaxnorm.rms_norm`.

    Shape:
      - Input: ``(*, *normalized_shape)``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> rms, x = jnn.RMSNorm(2), jnp.array([[3.0, 4.0]])
      >>> variables = rms.init(jax.random.key(0), x)
      >>> [round(float(v), 3) for v in rms.apply(variables, x)[0]]     # x / sqrt(mean(x**2))
      [0.849, 1.131]

    References:
      Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467
    """

    normalized_shape: int | tuple[int, ...]
    eps: float | None = None
    elementwise_affine: bool = True
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Divide ``x`` by its root mean square over the trailing ``normalized_shape`` dims (``mask``: True = valid)."""
        shape = _checks.normalized_shape_tuple("RMSNorm", self.normalized_shape)
        params = _affine_params(self, shape, self.param_dtype, bias=False) if self.elementwise_affine else {}
        return rms_norm(x, params, shape, eps=self.eps, mask=mask)


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm(num_groups, num_channels, eps, affine)``; calls :func:`jaxnorm.group_norm`. Also
    ``axis`` (``-1`` for channels-last) and ``param_dtype``.

    Shape:
      - Input: ``(N, C, *)``, channels on ``axis``.
      - Output: the input's shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> gn, x = jnn.GroupNorm(2, 4), jnp.arange(16.0).reshape(2, 4, 2)
      >>> variables = gn.init(jax.random.key(0), x)
      >>> [round(float(v), 3) for v in gn.apply(variables, x)[0, :2].ravel()]   # group 0 of sample 0
      [-1.342, -0.447, 0.447, 1.342]

    References:
      Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494
    """

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True
    axis: int = 1
    param_dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalize each group of channels of each sample of ``x`` (``mask``: True = valid)."""
        params = _affine_params(self, (self.num_channels,), self.param_dtype) if self.affine else {}
        return group_norm(x, params, self.num_groups, eps=self.eps, axis=self.axis, mask=mask)
