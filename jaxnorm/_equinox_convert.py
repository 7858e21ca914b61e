"""``convert_sync_batch_norm`` for Equinox models (re-exported by :mod:`jaxnorm.equinox`; imports Equinox, so
``import jaxnorm`` does not import this module)."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from typing import Any

import equinox as eqx

from jaxnorm import _checks

__all__ = ["convert_sync_batch_norm"]


def convert_sync_batch_norm(model: Any, axis_name: Hashable | Sequence[Hashable],
                            *, axis_index_groups: Sequence[Sequence[int]] | None = None) -> Any:
    """PyTorch's ``SyncBatchNorm.convert_sync_batchnorm`` for Equinox: a copy of ``model`` whose BatchNorm layers
    (``jaxnorm.equinox.BatchNorm1d/2d/3d`` and ``BatchRenorm``) take their statistics over ``axis_name``.

    ``axis_name`` *replaces* each layer's own: a per-example model vmapped over ``"batch"`` on each device of a
    ``shard_map`` over ``"data"`` needs ``("data", "batch")``. ``axis_index_groups`` groups the indices of the axis (one
    name) as PyTorch's ``process_group``. The state is unchanged (each layer keeps its ``state_index``).

    Args:
      model: an Equinox model (a pytree of modules).
      axis_name: a name or a tuple of names.
      axis_index_groups: ``None`` or a partition of the axis' indices.

    Returns:
      The new model (Equinox modules are immutable; the input is unchanged).

    Raises:
      TypeError: groups that are not lists of ints. ValueError: no axis name, or no BatchNorm layer in ``model``.

    >>> import equinox as eqx
    >>> import jaxnorm.equinox as jeqx
    >>> model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([jeqx.BatchNorm1d(2)])
    >>> convert_sync_batch_norm(model, ("data", "batch")).layers[0].axis_name
    ('data', 'batch')

    References:
      PyTorch's ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``,
      https://pytorch.org/docs/stable/generated/torch.nn.SyncBatchNorm.html
    """
    name = "convert_sync_batch_norm"
    if axis_name is None:
        raise ValueError(f"{name}: expected the name(s) of the mapped axes, got axis_name=None")
    axis_name = tuple(axis_name) if isinstance(axis_name, list) else axis_name
    groups = _checks.check_axis_index_groups(name, axis_index_groups, axis_name)
    batch_norms = (jeqx._BatchNorm,)  # the shared base of BatchNorm1d/2d/3d and BatchRenorm
    if not any(isinstance(layer, batch_norms) for _, layer in jeqx.named_layers(model)):
        raise ValueError(f"{name}: found no BatchNorm layer in {type(model).__name__}")

    def synced(path: str, layer: eqx.Module) -> eqx.Module:
        if not isinstance(layer, batch_norms):
            return layer
        new = copy.copy(layer)  # the static fields cannot be set by eqx.tree_at; a copy keeps every other field
        object.__setattr__(new, "axis_name", axis_name)
        object.__setattr__(new, "axis_index_groups", groups)
        return new

    return jeqx.replace_layers(model, synced)

# Last: jaxnorm.equinox imports this module's names at its end, so that whichever of the two is imported first, the
# names the other needs exist by then.
from jaxnorm import equinox as jeqx  # noqa: E402
