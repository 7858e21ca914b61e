"""The shared vocabulary of jaxnorm: collection types and PyTorch's key names, in one place.

``params`` and ``batch_stats`` are plain dicts under PyTorch's names, so one entry of a ``state_dict`` maps to one
entry here (``bn1.running_mean`` ↔ ``batch_stats["running_mean"]``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

import jax

Params = dict[str, jax.Array]  # {"weight": ..., "bias": ...}, a subset, or {}
BatchStats = dict[str, jax.Array]  # {"running_mean", "running_var", "num_batches_tracked"} or {}

PARAM_KEYS = ("weight", "bias")
STATS_KEYS = ("running_mean", "running_var", "num_batches_tracked")
COUNTER = "num_batches_tracked"
EPS = 1e-5  # PyTorch's default eps of BatchNorm, InstanceNorm, LayerNorm and GroupNorm


def channel_shape(ndim: int, axis: int, channels: int) -> tuple[int, ...]:
    """The broadcast shape of a per-channel vector for an ``ndim``-D input with channels on ``axis``."""
    return tuple(channels if a == axis else 1 for a in range(ndim))


class BatchNormFunction(Protocol):
    """The signature of :func:`jaxnorm.batch_norm` and of its rank-checked variants ``batch_norm_1d/2d/3d``."""

    def __call__(self, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                 momentum: float | None = 0.1, eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
                 axis_index_groups: Sequence[Sequence[int]] | None = None, mask: jax.Array | None = None,
                 virtual_batch_size: int | None = None) -> tuple[jax.Array, BatchStats]: ...


class InstanceNormFunction(Protocol):
    """The signature of :func:`jaxnorm.instance_norm` and of its rank-checked variants ``instance_norm_1d/2d/3d``."""

    def __call__(self, x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool,
                 momentum: float | None = 0.1, eps: float = 1e-5, axis: int = 1, axis_name: Hashable | None = None,
                 mask: jax.Array | None = None) -> tuple[jax.Array, BatchStats]: ...
