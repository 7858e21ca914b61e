"""Flax linen modules with ``torch.nn`` hyperparameter names that adapt jaxnorm's pure functions.

Parameters live in ``"params"`` as ``weight``/``bias``; running statistics in the ``"batch_stats"`` collection as
``running_mean``/``running_var``/``num_batches_tracked``. Stateful modules are called ``module(x, train=...)``;
with ``train=True`` apply them with ``mutable=["batch_stats"]``. ``init`` does not count as a training step. Every
module takes ``mask=`` (boolean, True = valid) as the pure functions do.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import _checks
from jaxnorm._per_rank import per_rank
from jaxnorm.batch_norm import batch_norm, batch_norm_1d, batch_norm_2d, batch_norm_3d
from jaxnorm.batch_renorm import batch_renorm
from jaxnorm.frozen import FROZEN_KEYS, frozen_batch_norm
from jaxnorm.group_norm import group_norm
from jaxnorm.instance_norm import instance_norm_1d, instance_norm_2d, instance_norm_3d
from jaxnorm.layer_norm import layer_norm, rms_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm"]


def _affine_params(module: nn.Module, shape, bias: bool = True) -> dict:
    params = {"weight": module.param("weight", nn.initializers.ones, shape, module.param_dtype)}
    if bias:
        params["bias"] = module.param("bias", nn.initializers.zeros, shape, module.param_dtype)
    return params


def _stateful_call(module: nn.Module, x: jax.Array, train: bool, mask, options: dict) -> jax.Array:
    """The body of BatchNorm*/InstanceNorm*/BatchRenorm: gather collections, call the pure function, write stats back.

    A layer whose ``batch_stats`` hold its weight was frozen by :func:`jaxnorm.freeze_batch_norm`: it computes
    :func:`jaxnorm.frozen_batch_norm` and updates nothing.
    """
    if module.has_variable("batch_stats", "weight"):
        frozen = {k: module.get_variable("batch_stats", k) for k in FROZEN_KEYS}
        return frozen_batch_norm(x, {k: frozen[k] for k in ("weight", "bias")}, frozen, eps=module.eps,
                                 axis=module.axis)
    c = (module.num_features,)
    params = _affine_params(module, c) if module.affine else {}
    variables = {}
    if module.track_running_stats:
        variables = {
            "running_mean": module.variable("batch_stats", "running_mean", jnp.zeros, c, jnp.float32),
            "running_var": module.variable("batch_stats", "running_var", jnp.ones, c, jnp.float32),
            "num_batches_tracked": module.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32),
        }
    stats = {k: v.value for k, v in variables.items()}
    y, new_stats = module._function(x, params, stats, train=train, momentum=module.momentum, eps=module.eps,
                                    axis=module.axis, axis_name=module.axis_name, mask=mask, **options)
    if train and variables and not module.is_initializing():
        for key, var in variables.items():
            var.value = new_stats[key]
    return y


class _Stateful(nn.Module):
    """Shared fields of BatchNorm*/InstanceNorm*; ``_function`` (a plain class attribute, not a dataclass field)
    is the rank-checked pure function to call."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    axis: int = 1
    axis_name: str | None = None
    param_dtype: jnp.dtype = jnp.float32
    _function = staticmethod(batch_norm)

    def _options(self) -> dict:
        return {}

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        return _stateful_call(self, x, train, mask, self._options())


class _BatchNorm(_Stateful):
    """BatchNorm's own options: statistics synchronized within device groups, Ghost BN."""

    axis_index_groups: tuple[tuple[int, ...], ...] | None = None
    virtual_batch_size: int | None = None

    def _options(self) -> dict:
        return {"axis_index_groups": self.axis_index_groups, "virtual_batch_size": self.virtual_batch_size}


BatchNorm1d = per_rank(_BatchNorm, batch_norm_1d, "BatchNorm1d", __name__)
BatchNorm2d = per_rank(_BatchNorm, batch_norm_2d, "BatchNorm2d", __name__)
BatchNorm3d = per_rank(_BatchNorm, batch_norm_3d, "BatchNorm3d", __name__)


class BatchRenorm(_Stateful):
    """Batch Renormalization (:func:`jaxnorm.batch_renorm`) for any rank; ``r_max``/``d_max`` may be given per call
    (e.g. from :func:`jaxnorm.renorm_clip_schedule`), else the module's."""

    r_max: float = 3.0
    d_max: float = 5.0
    _function = staticmethod(batch_renorm)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None, r_max=None,
                 d_max=None) -> jax.Array:
        clips = {"r_max": self.r_max if r_max is None else r_max, "d_max": self.d_max if d_max is None else d_max}
        return _stateful_call(self, x, train, mask, clips)


class _InstanceNorm(_Stateful):
    """PyTorch's InstanceNorm defaults: ``affine=False``, ``track_running_stats=False``."""

    affine: bool = False
    track_running_stats: bool = False


InstanceNorm1d = per_rank(_InstanceNorm, instance_norm_1d, "InstanceNorm1d", __name__)
InstanceNorm2d = per_rank(_InstanceNorm, instance_norm_2d, "InstanceNorm2d", __name__)
InstanceNorm3d = per_rank(_InstanceNorm, instance_norm_3d, "InstanceNorm3d", __name__)


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)``; see :func:`jaxnorm.layer_norm`."""

    normalized_shape: int | tuple[int, ...]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        shape = _checks.normalized_shape_tuple("LayerNorm", self.normalized_shape)
        params = _affine_params(self, shape, self.bias) if self.elementwise_affine else {}
        return layer_norm(x, params, shape, eps=self.eps, mask=mask)


class RMSNorm(nn.Module):
    """``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine)``; see :func:`jaxnorm.rms_norm`."""

    normalized_shape: int | tuple[int, ...]
    eps: float | None = None
    elementwise_affine: bool = True
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        shape = _checks.normalized_shape_tuple("RMSNorm", self.normalized_shape)
        params = _affine_params(self, shape, bias=False) if self.elementwise_affine else {}
        return rms_norm(x, params, shape, eps=self.eps, mask=mask)


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm(num_groups, num_channels, eps, affine)``; ``axis=-1`` for channels-last."""

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True
    axis: int = 1
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        params = _affine_params(self, (self.num_channels,)) if self.affine else {}
        return group_norm(x, params, self.num_groups, eps=self.eps, axis=self.axis, mask=mask)
