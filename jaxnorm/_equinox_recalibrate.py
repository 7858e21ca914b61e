"""``recalibrate_batch_stats`` for Equinox models: :func:`jaxnorm.recalibrate_batch_stats` (documented there)
dispatches here. It imports Equinox, so ``import jaxnorm`` does not import this module.

How the layers are reached, with no class changed: the model is rebuilt (:func:`jaxnorm.equinox.replace_layers`)
with each BatchNorm layer wrapped in an :class:`_Observed` layer that calls it in training mode and adds the whole
batch (its examples all-gathered over the vmap axes) to an accumulator kept in the ``eqx.nn.State`` under an index of
its own. Each batch runs, jitted, through the vmapped model with the caller's state plus those entries; only the
accumulators come back (the layers' own updates of their statistics are dropped, as the linen and NNX forms drop
them), and the BatchNorm layers' entries of a new state are set from them at the end.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxnorm import _checks
from jaxnorm import equinox as jeqx
from jaxnorm._types import BatchStats
from jaxnorm.recalibrate import _accumulate, _finish, _inputs, _start

__all__ = ["recalibrate_equinox"]

NAME = "recalibrate_batch_stats"
# A wrapped layer's state entry: its accumulator, and how often it was called (0: the batches did not reach it)
Entry = dict[str, Any]
Step = Callable[[Any, eqx.nn.State, dict[str, Entry], jax.Array], dict[str, Entry]]


class _Observed(eqx.nn.StatefulLayer):
    """A BatchNorm layer called in training mode whatever its mode, whose every call adds the whole batch to the
    accumulator under ``accumulator`` in the state."""

    layer: Any  # a jaxnorm.equinox BatchNorm1d/2d/3d with running statistics
    accumulator: eqx.nn.StateIndex[Entry]
    estimator: str = eqx.field(static=True)

    def is_stateful(self) -> bool:
        """Always: ``eqx.nn.Sequential`` passes it the state."""
        return True

    def __call__(self, x: jax.Array, state: Any = jeqx._NO_STATE, *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None) -> tuple[jax.Array, eqx.nn.State]:
        """``(y, state)`` of the layer in training mode (batch statistics, as in training), the accumulator updated."""
        del inference
        y, state = self.layer(x, state, key=key, inference=False, mask=mask)
        names = jeqx._names(self.layer.axis_name)
        checked = _checks.check_mask(NAME, mask, x)
        batch_mask = None if checked is None else jeqx._gather(NAME, checked, names)
        entry = state.get(self.accumulator)
        acc = _accumulate(self.estimator, entry["acc"], jeqx._gather(NAME, x, names), eps=self.layer.eps,
                          axis=jeqx._batched_axis(NAME, self.layer.axis, x), mask=batch_mask)
        return y, state.set(self.accumulator, {"acc": acc, "calls": entry["calls"] + 1})


def _targets(model: Any) -> dict[str, Any]:
    """The layers to recalibrate, by dotted path: jaxnorm's BatchNorm1d/2d/3d with running statistics (BatchRenorm,
    whose training output depends on its running statistics, is left alone, as it is in linen models)."""
    return {path: layer for path, layer in jeqx.named_layers(model)
            if isinstance(layer, jeqx._BatchNorm) and not isinstance(layer, jeqx.BatchRenorm) and layer.is_stateful()}


def _axis_names(model: Any, targets: Mapping[str, Any]) -> tuple[Hashable, ...]:
    """The vmap axes the batch runs over: the BatchNorm layers' ``axis_name`` (the batch on the last of a tuple)."""
    names = {tuple(jeqx._names(layer.axis_name)) for layer in targets.values()}
    if len(names) != 1 or () in names:
        found = sorted({f"{path}: {layer.axis_name!r}" for path, layer in targets.items()})
        raise ValueError(f"{NAME}: expected the BatchNorm layers of {type(model).__name__} to share one axis_name (the "
                         f"batch's vmap axis), got {found}; jaxnorm.equinox.convert_sync_batch_norm(model, 'batch') "
                         "gives them one")
    return names.pop()


def _ungrouped(layer: Any) -> Any:
    """``layer`` without ``axis_index_groups``: on one host its statistics are those of the whole batch."""
    if layer.axis_index_groups is None:
        return layer
    new = copy.copy(layer)  # static fields cannot be set by eqx.tree_at; a copy keeps every other field
    object.__setattr__(new, "axis_index_groups", None)
    return new


def _with_entries(state: eqx.nn.State, entries: Mapping[Hashable, Any]) -> eqx.nn.State:
    """A State holding ``state``'s entries and ``entries`` (keyed by their index's marker). ``eqx.nn.State`` has no
    method that adds an entry, so the new one is built as its pytree unflattening builds it."""
    values, markers = state.tree_flatten()  # type: ignore[no-untyped-call]
    combined: eqx.nn.State = eqx.nn.State.tree_unflatten(  # type: ignore[no-untyped-call]
        (*markers, *entries), (*values, *entries.values()))
    return combined


def _step(static: Any, axis_names: tuple[Hashable, ...], indices: Mapping[str, eqx.nn.StateIndex[Entry]],
          call_kwargs: Mapping[str, Any]) -> Step:
    """The jitted ``step(dynamic part of the model, state, accumulators, batch) -> accumulators``."""

    def run(model: Any, x: jax.Array, state: eqx.nn.State) -> dict[str, Entry]:
        _, out = model(x, state, **call_kwargs)
        return {path: out.get(index) for path, index in indices.items()}

    @jax.jit
    def step(dynamic: Any, state: eqx.nn.State, accs: dict[str, Entry], x: jax.Array) -> dict[str, Entry]:
        call = functools.partial(run, eqx.combine(dynamic, static))
        for name in reversed(axis_names):  # the innermost vmap is the batch's (the last name), the others of size 1
            call = jax.vmap(call, in_axes=(0, None), out_axes=None, axis_name=name)
        combined = _with_entries(state, {indices[path].marker: acc for path, acc in accs.items()})
        result: dict[str, Entry] = call(x.reshape((1,) * (len(axis_names) - 1) + x.shape), combined)
        return result

    return step


def _updated(state: eqx.nn.State, targets: Mapping[str, Any], accs: Mapping[str, Entry],
             estimator: str) -> eqx.nn.State:
    """A new state whose reached BatchNorm layers hold their recalibrated statistics (the caller's stays valid)."""
    new: eqx.nn.State = jax.tree_util.tree_map(lambda a: a, state)
    for path, layer in targets.items():
        if int(accs[path]["calls"]):
            old: BatchStats = new.get(layer.state_index)
            stats = _finish(estimator, accs[path]["acc"])
            new = new.set(layer.state_index, {key: jnp.asarray(stats[key], old[key].dtype) for key in old})
    return new


def recalibrate_equinox(model: Any, *args: Any, estimator: str, **call_kwargs: Any) -> tuple[Any, eqx.nn.State]:
    """:func:`jaxnorm.recalibrate_batch_stats` of an Equinox model, ``args = (state, batches)``: ``(model, new
    state)``."""
    if len(args) != 2 or not isinstance(args[0], eqx.nn.State):
        got = ", ".join(type(arg).__name__ for arg in args)
        raise TypeError(f"{NAME}: expected the Equinox model's eqx.nn.State and the batches, "
                        f"recalibrate_batch_stats(model, state, batches), got model and ({got})")
    state, batches = args
    targets = _targets(model)
    if not targets:
        raise ValueError(f"{NAME}: expected {type(model).__name__} to contain a jaxnorm BatchNorm layer with running "
                         "statistics, found none")
    axis_names = _axis_names(model, targets)
    accs: dict[str, Entry] = {path: {"acc": _start(estimator, layer.num_features), "calls": jnp.zeros((), jnp.int32)}
                              for path, layer in targets.items()}
    indices = {path: eqx.nn.StateIndex(acc) for path, acc in accs.items()}
    observed = jeqx.replace_layers(model, lambda path, layer: _Observed(_ungrouped(layer), indices[path], estimator)
                                   if path in targets else layer)
    dynamic, static = eqx.partition(observed, eqx.is_array)
    step = _step(static, axis_names, indices, call_kwargs)
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"{NAME}: expected at least one batch to recalibrate on, got none")
    for batch in itertools.chain([first], iterator):
        accs = step(dynamic, state, accs, jnp.asarray(_inputs(batch)))
        if batch is first and not any(int(entry["calls"]) for entry in accs.values()):
            raise ValueError(f"{NAME}: expected {type(model).__name__} to contain a jaxnorm BatchNorm layer with "
                             "running statistics that the batches reach, found none")
    return model, _updated(state, targets, accs, estimator)

