"""Whole Equinox models (and their ``eqx.nn.State``) <-> PyTorch-style flat state dicts.

The Equinox counterpart of :func:`jaxnorm.torch_to_nnx` / :func:`jaxnorm.nnx_to_torch_state_dict`, with the same key
rules (:mod:`jaxnorm.interop`'s checks are reused): a key is the path of an array in the model, attributes joined by
dots and sequence items by their index (``layer1.0.conv1.weight``; an ``eqx.nn.Sequential``'s ``layers`` field is
left out, as PyTorch's ``nn.Sequential`` numbers its modules directly), so a model whose attributes are named like
the PyTorch module's loads its ``state_dict`` directly. Layouts are PyTorch's already (``eqx.nn.Linear`` weight
``(out, in)``, ``eqx.nn.Conv`` weight ``(out, in, *k)``) except ``eqx.nn.Conv``'s bias, ``(out, 1, ...)`` against
PyTorch's ``(out,)``. A jaxnorm stateful layer's running statistics live in the state and map to
``<layer>.running_mean``, ``<layer>.running_var`` and ``<layer>.num_batches_tracked``.

torch is never imported here: tensors are recognised by duck typing, as in :mod:`jaxnorm.interop`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._types import COUNTER, PARAM_KEYS, STATS_KEYS, BatchStats
from jaxnorm.interop import _check_keys, _check_state_dict, _lookup

__all__ = ["equinox_to_torch_state_dict", "torch_to_equinox"]


class _Entry(NamedTuple):
    """One tensor of the state dict: where it lives (a key path of the model, or a stateful layer and a buffer name)
    and its value there (an array, or a ShapeDtypeStruct in an abstract model)."""

    key: str
    path: tuple[Any, ...] | None  # the model's key path, or None for a running statistic
    layer: Any  # the jaxnorm layer holding the running statistic (None for a model leaf)
    value: Any
    torch_shape: tuple[int, ...]


KeyPath = tuple[Any, ...]
# Loaded model leaves, [(key path, value)]
Leaves = list[tuple[KeyPath, jax.Array]]
# Loaded running statistics, {state index marker: (layer, {buffer name: value})}
Stats = dict[Hashable, tuple[Any, BatchStats]]


def _is_array(node: Any) -> bool:
    return eqx.is_array(node) or isinstance(node, jax.ShapeDtypeStruct)


def _stop(node: Any) -> bool:
    return _is_array(node) or isinstance(node, (jeqx._Stateful, eqx.nn.Conv, eqx.nn.ConvTranspose,
                                                eqx.nn.BatchNorm, eqx.nn.StateIndex))


def _layer_entries(path: KeyPath, name: str, layer: jeqx._Stateful, state: eqx.nn.State,
                   function: str) -> Iterator[_Entry]:
    """A jaxnorm stateful layer's parameters, then its running statistics from ``state`` (PyTorch's order)."""
    for key in PARAM_KEYS:
        value = getattr(layer, key)
        if value is not None:
            yield _Entry(f"{name}.{key}".lstrip("."), (*path, jax.tree_util.GetAttrKey(key)), None, value,
                         tuple(value.shape))
    if layer.state_index is None:
        return
    stats = jeqx._layer_stats(function, name, layer, state)
    for key in STATS_KEYS:
        yield _Entry(f"{name}.{key}".lstrip("."), None, layer, stats[key], tuple(stats[key].shape))


def _entries(model: Any, state: eqx.nn.State, function: str) -> list[_Entry]:
    """Every tensor of the model's PyTorch state dict, in the model's field order (errors name ``function``).

    Raises:
      TypeError: ``state`` is not an ``eqx.nn.State``.
      ValueError: a layer without a PyTorch layout here (``eqx.nn.ConvTranspose``, ``eqx.nn.BatchNorm``, another
        stateful layer), a state of another model, two arrays with the same key.
    """
    if not isinstance(state, eqx.nn.State):
        raise TypeError(f"{function}: expected state to be an eqx.nn.State (model, state = "
                        f"eqx.nn.make_with_state(Model)(...)), got {type(state).__name__}")
    entries: list[_Entry] = []
    for path, name, node in jeqx._walk(model, _stop):
        if isinstance(node, jeqx._Stateful):
            entries += _layer_entries(path, name, node, state, function)
        elif isinstance(node, eqx.nn.Conv):
            for key in ("weight", "bias"):
                value = getattr(node, key)
                if value is not None:  # bias (out, 1, ...) is PyTorch's (out,)
                    entries.append(_Entry(f"{name}.{key}".lstrip("."), (*path, jax.tree_util.GetAttrKey(key)),
                                          None, value, tuple(value.shape[:1] if key == "bias" else value.shape)))
        elif isinstance(node, (eqx.nn.ConvTranspose, eqx.nn.BatchNorm, eqx.nn.StateIndex)):
            why = {eqx.nn.ConvTranspose: "its weight is laid out (out, in, *k) and used unflipped, PyTorch's "
                                         "ConvTranspose (in, out, *k)",
                   eqx.nn.BatchNorm: "its running statistics are not PyTorch's (use jaxnorm.equinox.BatchNorm*d)"}
            reason = next((v for k, v in why.items() if isinstance(node, k)), "it keeps state PyTorch has no key for")
            raise ValueError(f"{function}: {name or 'the model'} ({type(node).__name__}) has no PyTorch state-dict "
                             f"layout here: {reason}")
        elif _is_array(node):
            entries.append(_Entry(name, path, None, node, tuple(node.shape)))
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry.key] = seen.get(entry.key, 0) + 1
    clashes = sorted(k for k, n in seen.items() if n > 1)
    if clashes:
        raise ValueError(f"{function}: several arrays of the model map to the PyTorch keys {clashes}")
    return entries


def equinox_to_torch_state_dict(model: Any, state: eqx.nn.State) -> dict[str, np.ndarray]:
    """An Equinox model's arrays and its jaxnorm layers' running statistics as a flat PyTorch-style state dict.

    Keys are the arrays' paths (module docstring); ``eqx.nn.Conv`` biases become ``(out,)``, ``num_batches_tracked``
    a 0-d int64 as PyTorch stores it; every other array keeps its layout. Non-array fields (activations, bools,
    static hyperparameters) are not part of it.

    Args:
      model: an Equinox model (any pytree of modules).
      state: its ``eqx.nn.State`` (from ``eqx.nn.make_with_state``).

    Returns:
      ``{key: array}``: writable NumPy copies in the model's field order; load them with
      ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

    Raises:
      TypeError: ``state`` is not an ``eqx.nn.State``.
      ValueError: a layer without a PyTorch layout, a state of another model, two arrays with one key.

    >>> import equinox as eqx, jax
    >>> import jaxnorm.equinox as jeqx
    >>> model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([eqx.nn.Linear(2, 3, key=jax.random.key(0)),
    ...                                                           jeqx.BatchNorm1d(3)])
    >>> {key: value.shape for key, value in jeqx.equinox_to_torch_state_dict(model, state).items()}
    {'0.weight': (3, 2), '0.bias': (3,), '1.weight': (3,), '1.bias': (3,), '1.running_mean': (3,), \
'1.running_var': (3,), '1.num_batches_tracked': ()}

    References:
      PyTorch's ``torch.nn.Module.state_dict``,
      https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.state_dict
    """
    out: dict[str, np.ndarray] = {}
    for entry in _entries(model, state, "equinox_to_torch_state_dict"):
        value = np.array(entry.value, dtype=np.int64 if entry.key.endswith(COUNTER) and entry.layer else None)
        out[entry.key] = np.array(value.reshape(entry.torch_shape), order="C")  # 0-d stays 0-d
    return out


def torch_to_equinox(state_dict: Mapping[str, Any], model: Any, state: eqx.nn.State, *,
                     strict: bool = True) -> tuple[Any, eqx.nn.State]:
    """Load a PyTorch-style state dict into an Equinox model and its state; the inverse of
    :func:`equinox_to_torch_state_dict`.

    Every array of ``model`` and every running statistic of its jaxnorm layers is read from ``state_dict[key]``,
    checked against PyTorch's shape and cast to the model's dtype (``num_batches_tracked`` int64 -> int32). All
    entries are checked before anything is built, and the inputs are not modified (``model`` and ``state`` stay
    usable). The model and state may be abstract, ``eqx.filter_eval_shape(eqx.nn.make_with_state(Model), ...)``, so
    that no initializer runs for values that are overwritten anyway.

    Args:
      state_dict: ``torch_model.state_dict()`` (tensors on any device) or a dict of NumPy/JAX arrays.
      model: the Equinox model (concrete or abstract); it fixes the keys, shapes and dtypes.
      state: its ``eqx.nn.State``.
      strict: also fail on state-dict entries the model has no array for (PyTorch's ``strict=True``);
        ``num_batches_tracked`` entries are never required to be matched, and a missing one loads as 0 (PyTorch's
        rule for checkpoints older than 0.4.1).

    Returns:
      ``(model, state)``: new objects holding the loaded values.

    Raises:
      TypeError: ``state_dict`` is not a mapping, ``state`` not an ``eqx.nn.State``.
      ValueError: missing (or, with ``strict``, unexpected) keys, a shape that does not match (the message names
        both), and :func:`equinox_to_torch_state_dict`'s errors.

    >>> import equinox as eqx, jax, numpy as np
    >>> import jaxnorm.equinox as jeqx
    >>> model, state = eqx.nn.make_with_state(jeqx.BatchNorm1d)(2)
    >>> sd = {"weight": np.array([2.0, 3.0]), "bias": np.zeros(2), "running_mean": np.ones(2),
    ...       "running_var": np.ones(2), "num_batches_tracked": np.array(5)}
    >>> model, state = jeqx.torch_to_equinox(sd, model, state)
    >>> model.weight, state.get(model.state_index)["num_batches_tracked"]
    (Array([2., 3.], dtype=float32), Array(5, dtype=int32))

    References:
      PyTorch's ``torch.nn.Module.load_state_dict``,
      https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.load_state_dict
    """
    name = "torch_to_equinox"
    _check_state_dict(name, state_dict)
    leaves, stats, used, missing = _read(state_dict, _entries(model, state, name))
    _check_keys(state_dict, used, missing, strict, "model", name=name)
    return _rebuilt(model, state, leaves, stats)


def _read(state_dict: Mapping[str, Any], entries: list[_Entry]) -> tuple[Leaves, Stats, set[str], list[str]]:
    """``(model leaves [(path, value)], running statistics {marker: (layer, dict)}, used keys, missing keys)``: every
    entry's tensor checked against PyTorch's shape and converted to the Equinox shape and dtype."""
    leaves: Leaves = []
    stats: Stats = {}
    used: set[str] = set()
    missing: list[str] = []
    for entry in entries:
        value = _lookup(state_dict, entry.key, entry.layer is not None and entry.key.endswith(COUNTER), used, missing)
        if value is None:
            continue
        if value.shape != entry.torch_shape:
            raise ValueError(f"torch_to_equinox: state dict entry {entry.key!r}: expected shape {entry.torch_shape} "
                             f"(Equinox shape {tuple(entry.value.shape)}), got {value.shape}")
        loaded = jnp.array(value.reshape(entry.value.shape), dtype=entry.value.dtype)  # a copy: see interop._to_numpy
        if entry.path is not None:  # a model leaf (entry.layer is None)
            leaves.append((entry.path, loaded))
        else:
            buffers = stats.setdefault(entry.layer.state_index.marker, (entry.layer, {}))[1]
            buffers[entry.key.rsplit(".", 1)[-1]] = loaded
    return leaves, stats, used, missing


def _rebuilt(model: Any, state: eqx.nn.State, leaves: Leaves, stats: Stats) -> tuple[Any, eqx.nn.State]:
    """New model and state holding the loaded values (``eqx.tree_at``: the caller's objects stay valid)."""
    if leaves:
        model = eqx.tree_at(lambda m: [jeqx._at(m, path) for path, _ in leaves], model, [v for _, v in leaves])
    state = jax.tree_util.tree_map(lambda a: a, state)  # a new State: setting entries leaves the caller's usable
    if stats:
        layers = [layer for layer, _ in stats.values()]
        state = eqx.tree_at(lambda s: [s.get(layer.state_index) for layer in layers], state,
                            [values for _, values in stats.values()])
    return model, state

# Last: jaxnorm.equinox imports this module's names at its end, so that whichever of the two is imported first, the
# names the other needs exist by then.
from jaxnorm import equinox as jeqx  # noqa: E402
