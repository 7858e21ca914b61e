r"""Precise BN: recompute BatchNorm running statistics over a set of batches with the final weights.

After training, each BN layer's running statistics are an exponential moving average over batches seen
while the weights were still changing. Recalibrating with the final weights (PyTorch's
``torch.optim.swa_utils.update_bn``; "precise BN" in Wu & Johnson, 2021) replaces them by exact averages
over a set of batches. Works on Flax linen models (``jaxnorm.linen`` BatchNorm layers), Flax NNX models
(``jaxnorm.nnx`` BatchNorm layers, also the any-rank ``BatchNorm`` of ``convert_flax_norms``;
:mod:`jaxnorm._nnx_recalibrate`) and Equinox models (``jaxnorm.equinox`` BatchNorm layers;
:mod:`jaxnorm._equinox_recalibrate`). Those two modules are imported only for a model of theirs, so recalibrating a
linen model imports neither ``flax.nnx`` nor Equinox.

How the layers are reached, without changing any class: every batch runs through the model under ``jax.jit``,
and each BN layer reports its input to an accumulator (one per layer, passed through the jitted step). Linen:
Flax's own method interceptor (``nn.intercept_methods``) sees the layers' calls. NNX has no interceptor, so the
forward pass runs on a traced copy of the model (``nnx.merge``) whose BN layers are given, as an *instance*
attribute, a pure function that runs the layer's own in training mode and reports the input; the model itself
and every class are untouched. Equinox: the model is rebuilt with each BN layer wrapped in a layer that keeps its
accumulator in the ``eqx.nn.State``. PyTorch's ``update_bn`` instead resets the layers' statistics, sets
``momentum=None`` on them and runs the batches: that is exactly the ``"mean"`` estimator's accumulator (the pure
function's cumulative average), but ``"population"`` needs each batch's per-channel count, which only the layer's
input tells.

Which layers and what they get:

The layers are the front-end's BatchNorm layers (``BatchNorm1d/2d/3d``, and NNX's any-rank ``BatchNorm``) with
``track_running_stats=True`` that the batches reach; BatchRenorm layers are left alone. They are forced into
training mode, so they normalize by each batch's statistics and the layers after them see what they saw in
training; other layers run as ``apply_kwargs``/``call_kwargs`` (linen) or the model's mode (NNX: call
``model.eval()`` first to keep dropout off; Equinox: ``eqx.nn.inference_mode(model)``) say. With
:math:`\mu_b`, :math:`s^2_b` and :math:`n_b` the per-channel mean, *unbiased* variance and number of values of
a layer's input in batch :math:`b = 1..B`:

- ``estimator="mean"`` (PyTorch's ``torch.optim.swa_utils.update_bn``: reset, then one training-mode pass per
  batch with ``momentum=None``): :math:`\text{running\_mean} = \frac1B \sum_b \mu_b`,
  :math:`\text{running\_var} = \frac1B \sum_b s^2_b`. Every batch weighs the same, whatever its size, and
  the spread of the batch means is not counted.
- ``estimator="population"`` (fvcore's ``update_bn_stats`` approach): the mean and unbiased variance of all
  batches concatenated, :math:`\text{running\_mean} = \frac1n \sum_b n_b \mu_b` and
  :math:`\text{running\_var} = \frac{1}{n-1} \sum_{b,i} (x_{bi} - \text{running\_mean})^2` with
  :math:`n = \sum_b n_b`, accumulated across batches in float32 with Chan et al.'s pairwise merge of
  (count, mean, :math:`M_2`), which stays accurate at large offsets (no :math:`\sum x^2`).

Either way ``num_batches_tracked = B`` and the layers' own ``momentum`` plays no part. A layer's ``mask=``
argument is honoured (statistics over the valid values); ``virtual_batch_size``, ``axis_index_groups`` and the
devices of ``axis_name`` are not: the statistics are those of each whole batch on this device.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> import jaxnorm.nnx as jnnx
  >>> bn = jnnx.BatchNorm1d(2)
  >>> batches = [jnp.array([[0.0, 1.0], [2.0, 3.0]]), jnp.array([[4.0, 5.0], [6.0, 7.0]])]
  >>> _ = jn.recalibrate_batch_stats(bn, batches)           # NNX: in place
  >>> [float(v) for v in bn.running_mean[...]], [float(v) for v in bn.running_var[...]]
  ([3.0, 4.0], [2.0, 2.0])

References:
  Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021, https://arxiv.org/abs/2105.07576 (precise BN);
  PyTorch's ``torch.optim.swa_utils.update_bn``, https://pytorch.org/docs/stable/optim.html#swa-and-ema;
  Chan, Golub & LeVeque, Updating Formulae and a Pairwise Algorithm for Computing Sample Variances, 1979
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import linen
from jaxnorm._types import COUNTER, BatchStats
from jaxnorm.batch_norm import batch_norm, batch_norm_init

if TYPE_CHECKING:
    from flax import nnx

__all__ = ["recalibrate_batch_stats"]

ESTIMATORS = ("mean", "population")
# The layers recalibrated: every subclass of the front-end's BatchNorm base (BatchNorm1d/2d/3d; NNX's, with the any-rank
# BatchNorm that convert_flax_norms makes, in jaxnorm._nnx_recalibrate); linen's BatchRenorm, whose training output
# depends on its running statistics, is not one
_LINEN_BATCH_NORM = linen._BatchNorm
Accumulator = dict[str, jax.Array]


class _Layer(Protocol):
    """What the accumulation reads of a BN layer (linen or NNX)."""

    @property
    def num_features(self) -> int: ...

    @property
    def eps(self) -> float: ...

    @property
    def axis(self) -> int: ...


# visit(path, layer, x, mask): called for every call of a BN layer with running statistics, after the layer ran;
# ``path`` names the layer (a tuple of names for linen, a dotted string for NNX)
Visit = Callable[[Hashable, _Layer, jax.Array, "jax.Array | None"], None]
# forward(state, x, visit): one batch through the model, every BN layer's call reported to ``visit``
Forward = Callable[[Any, jax.Array, Visit], None]


# --------------------------------------------------------------------------------------------
# The two estimators: a per-layer accumulator, updated once per batch
# --------------------------------------------------------------------------------------------


def _start(estimator: str, channels: int) -> Accumulator:
    """The empty accumulator; for "mean" it is PyTorch's ``reset_running_stats`` (mean 0, variance 1, counter 0:
    the first cumulative update weighs these by exactly 0, so even NaN running statistics are cleared)."""
    reset = batch_norm_init(channels, affine=False)[1]
    if estimator == "mean":
        return reset
    zeros = jnp.zeros((channels,), jnp.float32)
    return {"count": zeros, "mean": zeros, "m2": zeros, COUNTER: reset[COUNTER]}


def _values_per_channel(x: jax.Array, axis: int, mask: jax.Array | None) -> jax.Array:
    """How many (valid) values of each channel the batch holds, as float32 (C,)."""
    axis %= x.ndim
    if mask is None:
        return jnp.full((x.shape[axis],), x.size // x.shape[axis], jnp.float32)
    others = tuple(a for a in range(x.ndim) if a != axis)
    return jnp.sum(jnp.broadcast_to(mask, x.shape), axis=others, dtype=jnp.float32)


def _accumulate(estimator: str, acc: Accumulator, x: jax.Array, *, eps: float, axis: int,
                mask: jax.Array | None) -> Accumulator:
    r"""Add one batch (the input ``x`` of one BN layer) to the layer's accumulator.

    "mean": the pure function's cumulative update (``momentum=None``). "population": the batch's per-channel count
    :math:`n_b`, mean :math:`\mu_b` and :math:`M_{2,b} = (n_b - 1)\,s^2_b` (from the pure function, whose variance is
    stable) merged into the running :math:`(n_a, \mu_a, M_{2,a})` with Chan et al.'s formula

    .. math::
        n = n_a + n_b,\quad \delta = \mu_b - \mu_a,\quad \mu = \mu_a + \delta\,\frac{n_b}{n},\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2\,n_a\,\frac{n_b}{n},

    which never forms :math:`\sum x^2` (that cancels catastrophically in float32 at large offsets). With a mask, a
    channel's values in a batch count only if there are at least two of them (the pure function's rule).
    """
    if estimator == "mean":
        return batch_norm(x, {}, acc, train=True, momentum=None, eps=eps, axis=axis, mask=mask)[1]
    channels = acc["mean"].shape[0]
    _, batch = batch_norm(x, {}, _start("mean", channels), train=True, momentum=1.0, eps=eps, axis=axis, mask=mask)
    n_b = _values_per_channel(x, axis, mask)
    n_b = jnp.where(n_b >= 2, n_b, 0.0)  # the pure function kept the reset values for these channels
    n_a, mean_a = acc["count"], acc["mean"]
    n = n_a + n_b
    share = n_b / jnp.maximum(n, 1.0)
    delta = batch["running_mean"] - mean_a
    m2_b = batch["running_var"] * jnp.maximum(n_b - 1.0, 0.0)
    return {"count": n, "mean": mean_a + delta * share, "m2": acc["m2"] + m2_b + delta**2 * n_a * share,
            COUNTER: acc[COUNTER] + batch[COUNTER]}


def _finish(estimator: str, acc: Accumulator) -> BatchStats:
    """The running statistics from the accumulator (a channel that never had data keeps mean 0, variance 1)."""
    if estimator == "mean":
        return acc
    var = jnp.where(acc["count"] > 1, acc["m2"] / jnp.maximum(acc["count"] - 1.0, 1.0), 1.0)
    return {"running_mean": acc["mean"], "running_var": var, COUNTER: acc[COUNTER]}


def _inputs(batch: Any) -> jax.Array:
    """A batch's model input: the batch, or its first element when it is ``(inputs, labels, ...)``."""
    x: jax.Array = batch[0] if isinstance(batch, (tuple, list)) else batch
    return x


def _accumulate_batches(forward: Forward, state: Any, batches: Iterable[Any], estimator: str,
                        name: str) -> dict[Hashable, BatchStats]:
    """Run ``forward(state, x, visit)`` over the batches (jitted) and return each visited BN layer's new statistics,
    by module path. A shape-only trace first finds the layers (those the batches reach)."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("recalibrate_batch_stats: expected at least one batch to recalibrate on, got none")

    channels: dict[Hashable, int] = {}

    def find(path: Hashable, layer: _Layer, x: jax.Array, mask: jax.Array | None) -> None:
        channels.setdefault(path, layer.num_features)

    jax.eval_shape(lambda s, x: forward(s, x, find), state, _inputs(first))
    if not channels:
        raise ValueError(f"recalibrate_batch_stats: expected {name} to contain a jaxnorm BatchNorm layer with running "
                         "statistics, found none")

    @jax.jit
    def step(state: Any, accs: dict[Hashable, Accumulator], x: jax.Array) -> dict[Hashable, Accumulator]:
        accs = dict(accs)  # the model state is an argument, not closed over: no baked-in constants

        def visit(path: Hashable, layer: _Layer, x: jax.Array, mask: jax.Array | None) -> None:
            # a layer called twice per forward pass accumulates twice
            accs[path] = _accumulate(estimator, accs[path], x, eps=layer.eps, axis=layer.axis, mask=mask)

        forward(state, x, visit)
        return accs

    accs = {path: _start(estimator, c) for path, c in channels.items()}
    for batch in itertools.chain([first], iterator):
        accs = step(state, accs, _inputs(batch))
    return {path: _finish(estimator, acc) for path, acc in accs.items()}


# --------------------------------------------------------------------------------------------
# The two front-ends
# --------------------------------------------------------------------------------------------


def _linen_input(module: nn.Module, args: tuple[Any, ...]) -> jax.Array:
    if not args:
        raise ValueError(f"recalibrate_batch_stats: expected the input of {type(module).__name__} as a positional "
                         "argument")
    x: jax.Array = args[0]
    return x


def _recalibrate_linen(model: nn.Module, variables: Mapping[str, Any], batches: Iterable[Any], *, estimator: str,
                       **apply_kwargs: Any) -> dict[str, Any]:
    if "batch_stats" not in variables:
        raise ValueError("recalibrate_batch_stats: expected variables with a 'batch_stats' collection, got "
                         f"collections {sorted(variables)}")

    def forward(state: tuple[dict[str, Any], Any], x: jax.Array, visit: Visit) -> None:
        def interceptor(next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                        context: nn.module.InterceptorContext) -> Any:
            module = context.module
            if context.method_name != "__call__" or not (isinstance(module, _LINEN_BATCH_NORM)
                                                         and module.track_running_stats):
                return next_fun(*args, **kwargs)
            y = next_fun(*args, **{**kwargs, "train": True})  # normalizes with batch stats, as in training
            visit(tuple(module.path), module, _linen_input(module, args), kwargs.get("mask"))
            return y

        others, batch_stats = state
        with nn.intercept_methods(interceptor):
            model.apply({**others, "batch_stats": batch_stats}, x, mutable=["batch_stats"], **apply_kwargs)

    others = {col: tree for col, tree in variables.items() if col != "batch_stats"}
    results = _accumulate_batches(forward, (others, variables["batch_stats"]), batches, estimator,
                                  type(model).__name__)
    # Other stateful layers updated their statistics on the way; only the BN layers' results are kept.
    new_stats = variables["batch_stats"]
    for path, stats in results.items():
        assert isinstance(path, tuple)  # linen's module paths
        new_stats = _replace(new_stats, path, stats)
    return {**variables, "batch_stats": new_stats}


def _replace(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> Any:
    """A copy of nested dict ``tree`` with the subtree at ``path`` replaced (the input is not modified)."""
    if not path:
        return value
    return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def recalibrate_batch_stats(model: nn.Module | nnx.Module | Any, *args: Any, estimator: str = "mean",
                            **kwargs: Any) -> Any:
    r"""Recompute every jaxnorm BatchNorm layer's running statistics over a set of batches ("precise BN").

    Three forms, by the kind of model (which layers, and the estimators' formulas: the module docstring):

    - linen: ``new_variables = recalibrate_batch_stats(model, variables, batches, **apply_kwargs)``: each batch
      through ``model.apply(variables, x, mutable=["batch_stats"], **apply_kwargs)``; only the BN layers'
      ``batch_stats`` differ in the new variables.
    - NNX: ``recalibrate_batch_stats(model, batches, **call_kwargs)``: each batch through ``model(x, **call_kwargs)``
      on a traced copy, then the BN layers' BatchStats updated **in place** (as ``update_bn`` does); returns model.
    - Equinox: ``model, state = recalibrate_batch_stats(model, state, batches, **call_kwargs)``: each batch vmapped
      over the BN layers' shared ``axis_name`` (of a tuple of names, the last); a new state, the inputs stay valid.

    Args:
      model: a Flax linen or NNX module, or an Equinox model, containing jaxnorm BatchNorm layers.
      *args: as above; ``batches`` is an iterable of whole batches, of which a tuple or list ``(inputs, labels,
        ...)`` contributes its first element (as in PyTorch's ``update_bn``).
      estimator: ``"mean"`` or ``"population"``.
      **kwargs: passed to ``model.apply`` (linen; e.g. ``train=False``) or ``model(x, ...)`` for every batch.

    Raises:
      ValueError: an unknown ``estimator``, no batches, no ``batch_stats`` collection (linen), no jaxnorm
        BatchNorm layer with running statistics reached by the batches, or (Equinox) BN layers with different
        ``axis_name``.
      TypeError: ``model`` is none of those, or (Equinox) ``state`` is not an ``eqx.nn.State``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> import jaxnorm.linen as jnn
      >>> bn = jnn.BatchNorm1d(1)
      >>> batches = [jnp.array([[0.0], [2.0]]), jnp.array([[10.0], [12.0], [14.0], [16.0]])]
      >>> variables = bn.init(jax.random.key(0), batches[0], train=False)
      >>> for estimator in ("mean", "population"):
      ...     stats = jn.recalibrate_batch_stats(bn, variables, batches, estimator=estimator)["batch_stats"]
      ...     print(estimator, float(stats["running_mean"][0]), round(float(stats["running_var"][0]), 3))
      mean 7.0 4.333
      population 9.0 42.8

    References:
      Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021, https://arxiv.org/abs/2105.07576 (precise BN);
      PyTorch's ``torch.optim.swa_utils.update_bn``, https://pytorch.org/docs/stable/optim.html#swa-and-ema
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"recalibrate_batch_stats: expected estimator to be one of {ESTIMATORS}, got {estimator!r}")
    flax_nnx = sys.modules.get("flax.nnx")  # an NNX model exists only if flax.nnx is imported: never import it here
    if flax_nnx is not None and isinstance(model, flax_nnx.Module):
        from jaxnorm._nnx_recalibrate import recalibrate_nnx

        return recalibrate_nnx(model, *args, estimator=estimator, **kwargs)
    if isinstance(model, nn.Module):
        return _recalibrate_linen(model, *args, estimator=estimator, **kwargs)
    eqx = sys.modules.get("equinox")  # an Equinox model exists only if Equinox is imported: never import it here
    if eqx is not None and (isinstance(model, eqx.Module) or (args and isinstance(args[0], eqx.nn.State))):
        from jaxnorm._equinox_recalibrate import recalibrate_equinox

        return recalibrate_equinox(model, *args, estimator=estimator, **kwargs)
    raise TypeError(f"recalibrate_batch_stats: expected a flax.linen, flax.nnx or Equinox Module, got "
                    f"{type(model).__name__}")
