"""Precise BN: recompute BatchNorm running statistics as exact population averages.

After training, each BN layer's running statistics are an exponential moving average over batches seen
while the weights were still changing. Recalibrating with the final weights (PyTorch's
``torch.optim.swa_utils.update_bn``; "precise BN" in Wu & Johnson, 2021) replaces them by the exact
average over a set of batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import linen
from jaxnorm._types import STATS_KEYS as _STAT_KEYS
from jaxnorm.batch_norm import batch_norm

__all__ = ["recalibrate_batch_stats"]

_BATCH_NORMS = (linen.BatchNorm1d, linen.BatchNorm2d, linen.BatchNorm3d)


def _is_tracking_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BATCH_NORMS) and module.track_running_stats


def _cumulative_bn_interceptor(visited: set[tuple[str, ...]]):
    """A method interceptor that runs every jaxnorm BatchNorm call in training mode and replaces the
    module's own running-statistics update (momentum ``m``) by the cumulative one (``momentum=None``):
    after the ``n``-th batch, ``running = (1 - 1/n) running + (1/n) batch``, i.e. the mean so far."""
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not _is_tracking_batch_norm(module):
            return next_fun(*args, **kwargs)
        if not args:
            raise ValueError(f"expected the input of BatchNorm {'/'.join(module.path)} as a positional argument")
        previous = {k: module.get_variable("batch_stats", k) for k in _STAT_KEYS}
        y = next_fun(*args, **{**kwargs, "train": True})  # normalizes with batch stats, as in training
        _, cumulative = batch_norm(
            args[0], {}, previous, train=True, momentum=None, eps=module.eps, axis=module.axis
        )
        for key, value in cumulative.items():
            module.put_variable("batch_stats", key, value)
        visited.add(tuple(module.path))
        return y

    return interceptor


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _replace(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of nested dict ``tree`` with the subtree at ``path`` replaced (the input is not modified)."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
    return out


def _reset(stats: Mapping[str, Any]) -> dict[str, Any]:
    """PyTorch's ``reset_running_stats``: mean 0, variance 1, counter 0 (the first cumulative update
    then weighs the old values by exactly 0, so even NaN running stats are cleared)."""
    return {
        "running_mean": jnp.zeros_like(stats["running_mean"]),
        "running_var": jnp.ones_like(stats["running_var"]),
        "num_batches_tracked": jnp.zeros_like(stats["num_batches_tracked"]),
    }


def recalibrate_batch_stats(model: nn.Module, variables: Mapping[str, Any], batches: Iterable[Any], **apply_kwargs) -> dict[str, Any]:
    r"""Recompute every jaxnorm BatchNorm layer's running statistics over ``batches`` ("precise BN").

    For each BN layer (``jaxnorm.linen.BatchNorm1d/2d/3d`` with ``track_running_stats=True``), with
    :math:`\mu_b` and :math:`s^2_b` the per-channel mean and *unbiased* variance of the layer's input in
    batch :math:`b = 1..B`, the new statistics are

    .. math::
        \text{running\_mean} = \frac1B \sum_b \mu_b, \qquad
        \text{running\_var} = \frac1B \sum_b s^2_b, \qquad \text{num\_batches\_tracked} = B,

    exactly what PyTorch's ``torch.optim.swa_utils.update_bn`` computes (reset the statistics, then one
    training-mode pass per batch with ``momentum=None``). Note that ``running_var`` averages per-batch
    unbiased variances, as PyTorch does; it is not the pooled variance of all samples, which would also
    count the spread of the batch means. The layers' own ``momentum`` plays no part.

    Every batch is run through ``model.apply(variables, batch, mutable=["batch_stats"], **apply_kwargs)``
    (jitted), with the BN layers forced into training mode: they normalize by each batch's statistics,
    as in training, while the layers after them see what they saw in training. Pass e.g. ``train=False``
    in ``apply_kwargs`` to keep dropout off, or ``rngs=...`` if the model needs them.

    Args:
      model: a Flax linen module containing jaxnorm BatchNorm layers.
      variables: its variables (``params``, ``batch_stats``, ...).
      batches: an iterable of model inputs; a tuple or list ``(inputs, labels, ...)`` contributes its
        first element (as in PyTorch's ``update_bn``).
      **apply_kwargs: passed to ``model.apply`` for every batch.

    Returns:
      New variables: ``batch_stats`` of the BN layers recomputed; everything else (``params``, other
      layers' statistics) unchanged.

    Raises:
      ValueError: ``batches`` is empty or the model has no running-statistics BatchNorm layer.
    """
    if "batch_stats" not in variables:
        raise ValueError(f"expected variables with a 'batch_stats' collection, got collections {sorted(variables)}")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("expected at least one batch to recalibrate on, got none")
    inputs = lambda batch: batch[0] if isinstance(batch, (tuple, list)) else batch  # noqa: E731

    visited: set[tuple[str, ...]] = set()
    interceptor = _cumulative_bn_interceptor(visited)

    def step(others, batch_stats, x):  # variables are arguments, not closed over: no baked-in constants
        with nn.intercept_methods(interceptor):
            _, state = model.apply({**others, "batch_stats": batch_stats}, x, mutable=["batch_stats"], **apply_kwargs)
        return state["batch_stats"]

    others = {col: tree for col, tree in variables.items() if col != "batch_stats"}
    # A shape-only trace finds the BN layers (their module paths), so exactly those are reset.
    jax.eval_shape(step, others, variables["batch_stats"], inputs(first))
    if not visited:
        raise ValueError(f"expected {type(model).__name__} to contain a jaxnorm BatchNorm layer with running statistics, found none")
    bn_paths = sorted(visited)
    stats = variables["batch_stats"]
    for path in bn_paths:
        stats = _replace(stats, path, _reset(_get(stats, path)))

    step = jax.jit(step)
    for batch in itertools.chain([first], iterator):
        stats = step(others, stats, inputs(batch))

    # Other stateful layers updated their statistics on the way; only the BN layers' results are kept.
    new_stats = variables["batch_stats"]
    for path in bn_paths:
        new_stats = _replace(new_stats, path, _get(stats, path))
    return {**variables, "batch_stats": new_stats}
