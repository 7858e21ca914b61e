"""The shared vocabulary of jaxnorm: collection types and PyTorch's key names, in one place.

``params`` and ``batch_stats`` are plain dicts under PyTorch's names, so one entry of a ``state_dict`` maps to one
entry here (``bn1.running_mean`` ↔ ``batch_stats["running_mean"]``).
"""

from __future__ import annotations

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
