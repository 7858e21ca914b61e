r"""Running statistics: PyTorch's momentum update, and the rules for batches whose data do not allow one.

.. math::
    r_\mu \leftarrow (1-m)\,r_\mu + m\,\mu_B,\qquad
    r_{\sigma^2} \leftarrow (1-m)\,r_{\sigma^2} + m\,\tfrac{n}{n-1}\sigma^2_B

with ``m = momentum``, or ``m = 1 / num_batches_tracked`` (after the increment) when ``momentum`` is None — the
cumulative average. The variance is the *unbiased* batch variance, ``n`` the number of (valid) values per channel.

With a mask, ``n`` is known only at run time and may be too small: a channel with fewer than two valid values
(no data, or a single value, whose unbiased variance is undefined — PyTorch raises there) keeps its running
statistics unchanged, and ``num_batches_tracked`` counts a batch only if it updated some channel.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._types import COUNTER, BatchStats

MIN_VALUES = 2  # values per channel needed to estimate a variance


def unbiased(var: jax.Array, count: jax.Array) -> jax.Array:
    """Bessel's correction ``var · n / (n − 1)`` (``n = 1`` gives ``var``, which is 0 there)."""
    return var * (count / jnp.maximum(count - 1.0, 1.0))


def update(batch_stats: BatchStats, mean: jax.Array, unbiased_var: jax.Array, momentum: float | None, *,
           valid: jax.Array | None = None) -> BatchStats:
    """The momentum update from per-channel ``mean`` and ``unbiased_var`` (C,); ``valid`` (C,) bool: which channels
    had enough data (None: all, decided statically)."""
    rm, rv, tracked = batch_stats["running_mean"], batch_stats["running_var"], batch_stats[COUNTER]
    counted = jnp.ones((), tracked.dtype) if valid is None else jnp.any(valid).astype(tracked.dtype)
    tracked = tracked + counted
    dtype = rm.dtype
    factor = 1.0 / jnp.maximum(tracked, 1).astype(dtype) if momentum is None else jnp.asarray(momentum, dtype)
    mean, unbiased_var = lax.stop_gradient(mean.astype(dtype)), lax.stop_gradient(unbiased_var.astype(dtype))
    new_mean = (1 - factor) * rm + factor * mean
    new_var = (1 - factor) * rv + factor * unbiased_var
    if valid is not None:
        new_mean, new_var = jnp.where(valid, new_mean, rm), jnp.where(valid, new_var, rv)
    return {"running_mean": new_mean, "running_var": new_var, COUNTER: tracked}


def from_batch(batch_stats: BatchStats, mean: jax.Array, var: jax.Array, count: jax.Array, momentum: float | None, *,
               masked: bool) -> BatchStats:
    """BatchNorm's update from one batch's per-channel ``mean``, biased ``var`` and ``count`` (all (C,) or scalar)."""
    valid = count >= MIN_VALUES if masked else None
    return update(batch_stats, mean, unbiased(var, count), momentum, valid=valid)


def average_of_groups(mean: jax.Array, var: jax.Array, count: jax.Array, axes: tuple[int, ...], channels: int, *,
                      masked: bool,
                      axis_name: Hashable | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Per-channel average of several groups' statistics (InstanceNorm's instances, Ghost BN's virtual batches):
    ``(mean of means, mean of unbiased variances, valid)``, over ``axes`` and the named mapped axis.

    Every group with at least two valid values counts once; ``valid`` (None without a mask) says which channels
    had such a group.
    """
    unbiased_var = unbiased(var, count)
    if not masked:
        mean, unbiased_var = jnp.mean(mean, axis=axes), jnp.mean(unbiased_var, axis=axes)
        if axis_name is not None:
            mean, unbiased_var = lax.pmean((mean, unbiased_var), axis_name)
        return mean.reshape(channels), unbiased_var.reshape(channels), None
    weight = (jnp.broadcast_to(count, mean.shape) >= MIN_VALUES).astype(mean.dtype)
    sums = tuple(jnp.sum(v, axis=axes) for v in (weight * mean, weight * unbiased_var, weight))
    if axis_name is not None:
        sums = lax.psum(sums, axis_name)
    weighted_mean, weighted_var, groups = (s.reshape(channels) for s in sums)
    safe = jnp.maximum(groups, 1.0)
    return weighted_mean / safe, weighted_var / safe, groups > 0
