"""``recalibrate_batch_stats`` for Flax NNX models: :func:`jaxnorm.recalibrate_batch_stats` (documented there)
dispatches here. It imports ``flax.nnx``, so recalibrating a linen model does not (nor does ``import jaxnorm``).

How the layers are reached, with no class changed: NNX has no method interceptor, so the forward pass runs on a
traced copy of the model (``nnx.merge``) whose BatchNorm layers are given, as an *instance* attribute, a pure function
that runs the layer's own in training mode and reports the input to the accumulation of :mod:`jaxnorm.recalibrate`;
the model itself and every class are untouched. At the end the layers' BatchStats are set **in place**.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import jax
from flax import nnx

from jaxnorm import nnx as jnnx
from jaxnorm._types import BatchNormFunction, BatchStats, Params
from jaxnorm.recalibrate import Visit, _accumulate_batches

__all__ = ["recalibrate_nnx"]

# The layers recalibrated: every subclass of jaxnorm.nnx's BatchNorm base (BatchNorm1d/2d/3d, and the any-rank
# BatchNorm that convert_flax_norms makes)
_NNX_BATCH_NORM = jnnx._BatchNorm


def _observed(layer: jnnx._BatchNorm, path: str, visit: Visit) -> BatchNormFunction:
    """The pure function of ``layer``'s class, always in training mode (batch statistics, as in training, whatever
    the layer's mode), that reports every call's input to ``visit``."""
    function = type(layer)._function

    def observed(x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
                 eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
                 axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
                 virtual_batch_size: int | None = None) -> tuple[jax.Array, BatchStats]:
        del train
        out = function(x, params, batch_stats, train=True, momentum=momentum, eps=eps, axis=axis, axis_name=axis_name,
                       axis_index_groups=axis_index_groups, mask=mask, virtual_batch_size=virtual_batch_size)
        visit(path, layer, x, mask)
        return out

    return observed


def recalibrate_nnx(model: nnx.Module, batches: Iterable[Any], *, estimator: str, **call_kwargs: Any) -> nnx.Module:
    """The NNX form of :func:`jaxnorm.recalibrate_batch_stats`: each batch through ``model(x, **call_kwargs)`` on a
    traced copy, then the BN layers' BatchStats updated in place; returns ``model``."""
    graphdef, state = nnx.split(model)

    def forward(state: Any, x: jax.Array, visit: Visit) -> None:
        copy = nnx.merge(graphdef, state)  # the updates of this traced copy are dropped; the model is untouched
        for path, layer in nnx.iter_modules(copy):
            if isinstance(layer, _NNX_BATCH_NORM) and layer.track_running_stats:
                layer._function = _observed(layer, jnnx.dotted_path(path), visit)  # this copy's layer only, not its class
        copy(x, **call_kwargs)

    results = _accumulate_batches(forward, state, batches, estimator, type(model).__name__)
    modules = {jnnx.dotted_path(p): m for p, m in nnx.iter_modules(model)}
    for path, stats in results.items():
        for key, value in stats.items():
            getattr(modules[str(path)], key)[...] = value
    return model
