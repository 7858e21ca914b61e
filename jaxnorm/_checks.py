"""Input validation shared by every normalization: clear errors at trace time, naming expected vs got.

All checks look only at static information (shapes, dtypes, dict keys), so they fire identically eagerly and under
``jit``/``vmap``/``grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._types import PARAM_KEYS, STATS_KEYS


def check_floating(name: str, x: jax.Array) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point input (float16/bfloat16/float32/float64), got dtype "
                        f"{dtype}")


def check_rank(name: str, x: jax.Array, allowed: Sequence[int], layout: str) -> None:
    if x.ndim not in allowed:
        want = " or ".join(f"{r}-D" for r in allowed)
        raise ValueError(f"{name}: expected {want} input {layout}, got {x.ndim}-D input with shape {tuple(x.shape)}")


def channel_axis(name: str, x: jax.Array, axis: int) -> int:
    """Normalize a possibly negative channel axis; the batch axis 0 cannot be the channel axis."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{name}: expected an int channel axis, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}: channel axis {axis} is out of range for a {x.ndim}-D input with shape "
                         f"{tuple(x.shape)}")
    axis = axis % x.ndim
    if axis == 0:
        raise ValueError(f"{name}: channel axis must not be the batch axis 0 (got axis={axis} for shape "
                         f"{tuple(x.shape)})")
    return axis


def check_num_features(name: str, num_features: object, what: str = "num_features") -> int:
    if not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool):
        raise TypeError(f"{name}: expected an int {what}, got {num_features!r}")
    if num_features < 1:
        raise ValueError(f"{name}: expected {what} >= 1, got {num_features}")
    return int(num_features)


def normalized_shape_tuple(name: str, normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if not shape or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise ValueError(f"{name}: expected normalized_shape to be a positive int or a non-empty tuple of them, "
                         f"got {normalized_shape!r}")
    return tuple(int(d) for d in shape)


def check_keys(name: str, what: str, tree: Mapping[str, Any], allowed: Sequence[str],
               required: Sequence[str] = ()) -> None:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{name}: expected {what} to be a dict, got {type(tree).__name__}")
    keys = set(tree)
    extra, missing = keys - set(allowed), set(required) - keys
    if extra or missing:
        raise ValueError(f"{name}: {what} has keys {sorted(keys)}; expected {list(required) or 'a subset of'} "
                         f"{'' if required else list(allowed)}".rstrip()
                         + (f" (missing {sorted(missing)})" if missing else "")
                         + (f" (unexpected {sorted(extra)})" if extra else ""))


def check_params(name: str, params: Mapping[str, Any], shape: tuple[int, ...], *,
                 allow_bias_only: bool = False) -> None:
    """params is {} or {"weight"[, "bias"]} (LayerNorm may omit bias); every entry must have ``shape``."""
    check_keys(name, "params", params, PARAM_KEYS)
    if "bias" in params and "weight" not in params and not allow_bias_only:
        raise ValueError(f"{name}: params has 'bias' but no 'weight'; expected both, only 'weight', or neither")
    for key in params:
        got = tuple(jnp.shape(params[key]))
        if got != shape:
            raise ValueError(f"{name}: params['{key}'] has shape {got}, expected {shape} to match the input")


def check_batch_stats(name: str, batch_stats: Mapping[str, Any], num_channels: int) -> None:
    """batch_stats is {} (no running statistics) or exactly the three PyTorch buffers with (C,) / () shapes."""
    if not isinstance(batch_stats, Mapping):
        raise TypeError(f"{name}: expected batch_stats to be a dict, got {type(batch_stats).__name__}")
    if not batch_stats:
        return
    check_keys(name, "batch_stats", batch_stats, STATS_KEYS, STATS_KEYS)
    for key in ("running_mean", "running_var"):
        got = tuple(jnp.shape(batch_stats[key]))
        if got != (num_channels,):
            raise ValueError(f"{name}: batch_stats['{key}'] has shape {got}, expected ({num_channels},) "
                             f"to match the input's {num_channels} channels")
    got = tuple(jnp.shape(batch_stats["num_batches_tracked"]))
    if got != ():
        raise ValueError(f"{name}: batch_stats['num_batches_tracked'] must be a scalar, got shape {got}")


def check_momentum(name: str, momentum: object) -> None:
    if momentum is not None and not (isinstance(momentum, (int, float, np.integer, np.floating))
                                     and 0.0 <= momentum <= 1.0):
        raise ValueError(f"{name}: expected momentum in [0, 1] or None, got {momentum!r}")


def check_train(name: str, train: object) -> None:
    if not isinstance(train, bool):
        raise TypeError(f"{name}: expected train to be a Python bool (static under jit), got {type(train).__name__}")


def check_mask(name: str, mask: jax.Array | None, x: jax.Array) -> jax.Array | None:
    """None, or a boolean array broadcastable to ``x`` (True = valid), returned with ``x``'s rank (leading 1s)."""
    if mask is None:
        return None
    dtype = jnp.result_type(mask)
    if dtype != jnp.bool_:
        raise TypeError(f"{name}: expected a boolean mask (True = valid), got dtype {dtype}")
    shape = tuple(jnp.shape(mask))
    try:
        if jnp.broadcast_shapes(shape, tuple(x.shape)) != tuple(x.shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name}: mask of shape {shape} does not broadcast to the input's shape {tuple(x.shape)}") \
            from None
    return jnp.reshape(mask, (1,) * (x.ndim - len(shape)) + shape)


def check_axis_index_groups(name: str, groups: Sequence[Sequence[int]] | None,
                            axis_name: Hashable | None) -> tuple[tuple[int, ...], ...] | None:
    """None, or the groups as a tuple of tuples of ints (their partition of the axis is checked in the core)."""
    if groups is None:
        return None
    if axis_name is None:
        raise ValueError(f"{name}: axis_index_groups={groups!r} needs axis_name (the mapped axis to group)")
    try:
        out = tuple(tuple(int(i) for i in g) for g in groups)
    except TypeError:
        raise TypeError(f"{name}: expected axis_index_groups as a list of lists of device indices, got {groups!r}") \
            from None
    if not out or any(not g for g in out):
        raise ValueError(f"{name}: expected non-empty groups of device indices, got {groups!r}")
    return out


def check_virtual_batch_size(name: str, size: object, batch: int) -> int | None:
    if size is None:
        return None
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{name}: expected virtual_batch_size to be a positive int or None, got {size!r}")
    if batch % size:
        raise ValueError(f"{name}: virtual_batch_size ({size}) must divide the batch size ({batch})")
    return int(size)


def check_where(name: str, where: object) -> Callable[[str], bool]:
    """``where`` if it is callable (``where(dotted_path) -> bool``, open_clip's ``module_match``), else a TypeError."""
    if not callable(where):
        raise TypeError(f"{name}: expected where to be a function of the dotted layer path (e.g. 'block1.bn') "
                        f"returning a bool, got {type(where).__name__}")
    return cast(Callable[[str], bool], where)


def layers_to_freeze(name: str, where: object, paths: Sequence[str], owner: str) -> list[str]:
    """The layer ``paths`` (those with running statistics) that ``freeze_batch_norm(..., where=)`` freezes: all of
    them when ``where`` is None (a ValueError naming ``owner`` if there are none), else those ``where`` selects."""
    if where is None:
        if not paths:
            raise ValueError(f"{name}: found no layer with running statistics in {owner}")
        return list(paths)
    return selected(name, check_where(name, where), paths)


def selected(name: str, where: Callable[[str], bool], paths: Sequence[str]) -> list[str]:
    """The ``paths`` ``where`` selects; a ValueError listing them all if it selects none (a typo, not a no-op)."""
    chosen = [path for path in paths if where(path)]
    if not chosen:
        raise ValueError(f"{name}: where selected none of the layers with running statistics {list(paths)}")
    return chosen
