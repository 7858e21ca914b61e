"""Whole Flax NNX models: Flax's norm layers replaced by jaxnorm's, and synchronized BatchNorm; the code behind
:func:`jaxnorm.nnx.convert_flax_norms` and :func:`jaxnorm.nnx.convert_sync_batch_norm` (documented there; also
:mod:`jaxnorm.migrate`'s), loaded on their first use.

A layer's path is its attribute path in the model joined by dots, list items by their index (``blocks.0.bn``), the
prefix of its keys in :func:`jaxnorm.nnx_to_torch_state_dict` (and PyTorch's ``named_modules()`` name). Layers are
replaced by assigning the parent's attribute (or list item), as :func:`jaxnorm.nnx.freeze_batch_norm` does; a model
that is itself a norm layer cannot be changed in place, so every function returns the model: use the result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import jax.numpy as jnp
from flax import nnx

from jaxnorm import _checks
from jaxnorm import nnx as jnnx
from jaxnorm.migrate import momentum_from_decay
from jaxnorm.nnx import BatchNorm, dotted_path, replace_at

__all__ = ["BatchNorm", "convert_flax_norms", "convert_sync_batch_norm"]


def _replace(model: nnx.Module, make: Callable[[str, nnx.Module], nnx.Module | None]) -> tuple[nnx.Module, int]:
    """``model`` with every module ``m`` at dotted path ``p`` for which ``make(p, m)`` returns a module replaced by
    it, in place (the model itself, path ``""``, by returning the new one); and the number replaced. Every
    replacement is made before any is assigned, so an error leaves the model unchanged."""
    replacements = []
    for path, module in list(nnx.iter_modules(model)):
        new = make(dotted_path(path), module)
        if new is not None:
            replacements.append((path, new))
    for path, new in replacements:
        if not path:
            return new, 1
        replace_at(model, path, new)
    return model, len(replacements)


def _last_axis(axes: Any) -> bool:
    return axes in (-1, (-1,), [-1])


def _affine(layer: Any, scale: nnx.Variable[Any] | None, bias: nnx.Variable[Any] | None) -> None:
    """Give ``layer`` (built without affine parameters) Flax's ``scale``/``bias`` Variables themselves (their
    values, dtype and metadata); a bias without a scale gets a weight of ones (PyTorch has no bias-only layer)."""
    if scale is None and bias is not None:
        scale = nnx.Param(jnp.ones_like(bias[...]))
    if scale is not None:
        layer.weight = scale
    if bias is not None and hasattr(layer, "bias"):
        layer.bias = bias


def _param_dtype(*variables: nnx.Variable[Any] | None) -> Any:
    return next((v[...].dtype for v in variables if v is not None), jnp.float32)


def _from_batch_norm(name: str, path: str, m: nnx.BatchNorm) -> BatchNorm:
    if not isinstance(m.axis, int):
        raise ValueError(f"{name}: {path or 'model'} (nnx.BatchNorm): expected one channel axis, got axis={m.axis!r}")
    layer = BatchNorm(m.num_features, eps=m.epsilon, momentum=momentum_from_decay(m.momentum), affine=False,
                      axis=m.axis, axis_name=m.axis_name, axis_index_groups=m.axis_index_groups,
                      # None (Flax: given at each call) is kept: jaxnorm's layer then also needs it per call
                      use_running_average=cast(bool, m.use_running_average),
                      param_dtype=_param_dtype(m.scale, m.bias))
    _affine(layer, m.scale, m.bias)
    layer.affine = layer.weight is not None
    layer.running_mean, layer.running_var = m.mean, m.var  # num_batches_tracked stays 0: Flax counts nothing
    return layer


def _check_axes(name: str, path: str, m: Any, expected: str, ok: bool) -> None:
    kind = f"{path or 'model'} (nnx.{type(m).__name__})"
    if not ok:
        raise ValueError(f"{name}: {kind}: expected {expected} (what the jaxnorm layer normalizes over), got "
                         f"reduction_axes={m.reduction_axes!r}, feature_axes={getattr(m, 'feature_axes', None)!r}")
    if m.axis_name is not None:
        raise ValueError(f"{name}: {kind}: expected axis_name=None (jaxnorm's {type(m).__name__} has no statistics "
                         f"over a named axis), got {m.axis_name!r}")


def _from_per_example(name: str, path: str, m: Any) -> nnx.Module:
    """nnx.LayerNorm, nnx.RMSNorm and nnx.GroupNorm as jaxnorm's."""
    scale, bias = m.scale, getattr(m, "bias", None)
    dtype = _param_dtype(scale, bias)
    if isinstance(m, nnx.GroupNorm):
        _check_axes(name, path, m, "reduction_axes=None (all axes but the batch axis)", m.reduction_axes is None)
        channels = next((v[...].shape[0] for v in (scale, bias) if v is not None), m.num_groups * m.group_size)
        group_norm = jnnx.GroupNorm(m.num_groups, channels, eps=m.epsilon, affine=False, axis=m.feature_axis,
                                    param_dtype=dtype)
        _affine(group_norm, scale, bias)
        group_norm.affine = group_norm.weight is not None
        return group_norm
    last = _last_axis(m.reduction_axes) and _last_axis(m.feature_axes)
    _check_axes(name, path, m, "reduction_axes=-1 and feature_axes=-1 (the last axis)", last)
    layer: Any
    if isinstance(m, nnx.RMSNorm):
        layer = jnnx.RMSNorm(m.num_features, eps=m.epsilon, elementwise_affine=False, param_dtype=dtype)
    else:
        layer = jnnx.LayerNorm(m.num_features, eps=m.epsilon, elementwise_affine=False, param_dtype=dtype)
    _affine(layer, scale, bias)
    layer.elementwise_affine = layer.weight is not None
    return cast(nnx.Module, layer)


def convert_flax_norms(model: nnx.Module) -> nnx.Module:
    """:func:`jaxnorm.nnx.convert_flax_norms` (documented there): every Flax NNX norm layer replaced by jaxnorm's.

    >>> from flax import nnx
    >>> model = convert_flax_norms(nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
    ...                                          nnx.LayerNorm(3, rngs=nnx.Rngs(0))))
    >>> type(model.layers[1]).__module__, model.layers[1].eps
    ('jaxnorm.nnx', 1e-06)
    """
    name = "convert_flax_norms"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{name}: expected a flax.nnx.Module, got {type(model).__name__}")

    def make(path: str, m: nnx.Module) -> nnx.Module | None:
        if isinstance(m, nnx.BatchNorm):
            return _from_batch_norm(name, path, m)
        if isinstance(m, (nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
            return _from_per_example(name, path, m)
        return None

    model, count = _replace(model, make)
    if not count:
        raise ValueError(f"{name}: found no nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm or nnx.RMSNorm in "
                         f"{type(model).__name__}")
    return model


def convert_sync_batch_norm(model: nnx.Module, axis_name: Hashable,
                            *, axis_index_groups: Sequence[Sequence[int]] | None = None) -> nnx.Module:
    """:func:`jaxnorm.nnx.convert_sync_batch_norm` (documented there): every BatchNorm synchronized over
    ``axis_name``, in place.

    >>> from flax import nnx
    >>> import jaxnorm.nnx as jnnx
    >>> model = convert_sync_batch_norm(nnx.Sequential(jnnx.BatchNorm1d(2)), "data", axis_index_groups=[[0, 1]])
    >>> model.layers[0].axis_name, model.layers[0].axis_index_groups
    ('data', ((0, 1),))
    """
    name = "convert_sync_batch_norm"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{name}: expected a flax.nnx.Module, got {type(model).__name__}")
    if axis_name is None:
        raise ValueError(f"{name}: expected the name of a mapped axis, got axis_name=None")
    groups = _checks.check_axis_index_groups(name, axis_index_groups, axis_name)
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, (jnnx._BatchNorm, nnx.BatchNorm))]
    if not layers:
        raise ValueError(f"{name}: found no BatchNorm layer in {type(model).__name__}")
    for layer in layers:
        layer.axis_name, layer.axis_index_groups = axis_name, groups
    return model
