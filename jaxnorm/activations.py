"""Per-layer activation statistics of any Flax linen or NNX model — the lesson's per-layer std print, made general.

One row per module call, in execution order, and the first layer whose output has a NaN or inf. (The module is not
called ``inspect``: that name would shadow the standard library's.) NNX models are observed by
:mod:`jaxnorm._nnx_activations`, imported only for one, so inspecting a linen model does not import ``flax.nnx``.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> import jaxnorm.nnx as jnnx
  >>> from jaxnorm.activations import activation_stats, format_table
  >>> class Net(nnx.Module):
  ...     def __init__(self, rngs):
  ...         self.fc, self.bn = nnx.Linear(3, 4, rngs=rngs), jnnx.BatchNorm1d(4)
  ...     def __call__(self, x):
  ...         return jnp.log(self.bn(self.fc(x)))             # NaN where the normalized value is negative
  >>> stats = activation_stats(Net(nnx.Rngs(0)), jnp.arange(6.0).reshape(2, 3))
  >>> [row.path for row in stats.layers], stats.first_nonfinite
  (['fc', 'bn', '(root)'], '(root)')
  >>> round(stats["bn"].std, 3)                              # each channel ±1: sqrt(8 / 7)
  1.069
  >>> format_table(stats).splitlines()[0].split()
  ['layer', 'shape', 'mean', 'std', 'zeros', 'max|x|', 'finite']

References:
  Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS 2010,
  https://proceedings.mlr.press/v9/glorot10a.html (per-layer activation statistics)
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np

if TYPE_CHECKING:
    from flax import nnx

__all__ = ["LayerStats", "ActivationStats", "activation_stats", "format_table"]

ROOT = "(root)"  # the name of the whole model's output row


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Statistics of one module call's output (one array leaf of it).

    ``std`` is Bessel-corrected (as ``torch.Tensor.std()``); ``mean``, ``std`` and ``max_abs`` are
    taken over all elements in float64 (float32 activations can neither overflow nor underflow
    there), so they are NaN/inf once the output is not all finite.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> from jaxnorm.activations import activation_stats
      >>> ln, x = jnn.LayerNorm(4), jnp.array([[0.0, 1.0, 2.0, 3.0]])
      >>> row = activation_stats(ln, ln.init(jax.random.key(0), x), x)["(root)"]
      >>> row.shape, row.dtype, abs(row.mean) < 1e-6, row.finite
      ((1, 4), 'float32', True, True)

    References:
      Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS 2010,
      https://proceedings.mlr.press/v9/glorot10a.html (per-layer activation statistics)
    """

    path: str  # module path joined by "." ("(root)" for the model's output), "[i]" per extra leaf/call
    shape: tuple[int, ...]
    dtype: str
    mean: float
    std: float
    frac_zeros: float  # fraction of exact zeros, e.g. dead ReLUs
    max_abs: float
    finite: bool  # all elements finite

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """Rows in execution order (a module's row follows those of the modules it calls).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm.activations import activation_stats
      >>> stats = activation_stats(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.ones((4, 2)))
      >>> len(stats), stats.as_dicts()[0]["shape"], stats.first_nonfinite
      (1, (4, 3), None)

    References:
      Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS 2010,
      https://proceedings.mlr.press/v9/glorot10a.html (per-layer activation statistics)
    """

    layers: tuple[LayerStats, ...]
    first_nonfinite: str | None  # path of the first row whose output is not all finite

    def as_dicts(self) -> list[dict[str, Any]]:
        return [row.as_dict() for row in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, path: str) -> LayerStats:
        for row in self.layers:
            if row.path == path:
                return row
        raise KeyError(f"ActivationStats: no layer {path!r}; layers: {[row.path for row in self.layers]}")


def _row(path: str, value: Any) -> LayerStats:
    x = np.asarray(value)
    shape, dtype = x.shape, str(x.dtype)
    x = x.astype(np.float64).ravel()
    with warnings.catch_warnings():  # NaN/inf inputs and 1-element outputs are reported, not warned about
        warnings.simplefilter("ignore", RuntimeWarning)
        std = float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
        return LayerStats(
            path=path,
            shape=shape,
            dtype=dtype,
            mean=float(np.mean(x)) if x.size else float("nan"),
            std=std,
            frac_zeros=float(np.mean(x == 0)) if x.size else float("nan"),
            max_abs=float(np.max(np.abs(x))) if x.size else float("nan"),
            finite=bool(np.all(np.isfinite(x))),
        )


def _rows_for(name: str, outputs: Sequence[Any]) -> list[LayerStats]:
    """Rows for one module path's captured outputs (one entry per call; pytrees are flattened)."""
    rows = []
    for call, output in enumerate(outputs):
        leaves = jax.tree_util.tree_flatten_with_path(output)[0]
        leaves = [(p, v) for p, v in leaves if hasattr(v, "shape") and hasattr(v, "dtype")]
        for keypath, value in leaves:
            suffix = ((f"[call {call}]" if len(outputs) > 1 else "")
                      + (jax.tree_util.keystr(keypath) if len(leaves) > 1 else ""))
            rows.append(_row(name + suffix, value))
    return rows


def _captured(intermediates: Mapping[str, Any], path: tuple[str, ...]) -> tuple[Any, ...]:
    node = intermediates
    for name in path:
        node = node.get(name, {})
    return tuple(node.get("__call__", ())) if isinstance(node, Mapping) else ()


def _stats(order: Sequence[str], outputs: Mapping[str, Sequence[Any]]) -> ActivationStats:
    """The rows of the named modules' captured outputs (one entry per call), in ``order``."""
    rows = []
    for path in order:
        rows += _rows_for(path, outputs[path])
    first = next((row.path for row in rows if not row.finite), None)
    return ActivationStats(layers=tuple(rows), first_nonfinite=first)


def _linen_activation_stats(model: nn.Module, variables: Mapping[str, Any], x: Any,
                            **apply_kwargs: Any) -> ActivationStats:
    mutable = apply_kwargs.pop("mutable", False)
    if mutable is not True:  # keep the caller's mutable collections, add what capturing needs
        extra = [mutable] if isinstance(mutable, str) else list(mutable or [])
        mutable = ["intermediates", *extra, *(["batch_stats"] if "batch_stats" in variables else [])]
    apply_kwargs.setdefault("capture_intermediates", True)

    order: list[tuple[str, ...]] = []

    def record(next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               context: nn.module.InterceptorContext) -> Any:
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) not in order:
            order.append(tuple(context.module.path))  # call-completion order: inner modules first
        return out

    with nn.intercept_methods(record):
        _, state = model.apply(variables, x, mutable=mutable, **apply_kwargs)
    intermediates = state.get("intermediates", {})
    names = {path: ".".join(path) or ROOT for path in order}
    return _stats(list(names.values()), {names[path]: _captured(intermediates, path) for path in order})


def activation_stats(model: nn.Module | nnx.Module, *args: Any, **kwargs: Any) -> ActivationStats:
    """Mean, std, fraction of zeros and finiteness of every module's output for one forward pass.

    Two forms, by the kind of model:

    - linen: ``activation_stats(model, variables, x, **apply_kwargs)`` runs ``model.apply(variables, x,
      capture_intermediates=True, **apply_kwargs)``. Training-mode runs (``train=True``) work too:
      ``batch_stats`` is made mutable, and the updated statistics are discarded.
    - NNX: ``activation_stats(model, *inputs, **call_kwargs)`` runs ``model(*inputs, **call_kwargs)`` in the
      model's current mode (``model.train()``/``model.eval()``, ``nnx.view``) on a copy (``nnx.clone``), so the
      model itself is not modified (a training-mode pass updates only the copy's BatchStats and RNG state). Every
      ``nnx.Module`` call is recorded; the row of a module at ``layers[0]`` is named ``layers.0``.

    Both run eagerly and report one row per module call, in the order the calls returned (a module's row follows
    those of the modules it calls; the model's own output, ``"(root)"``, comes last), plus the first row whose
    output has a NaN or inf — where a diverging network breaks.

    Args:
      model: a Flax linen or NNX module.
      *args: ``(variables, x)`` for linen; the positional inputs of the model for NNX.
      **kwargs: passed to ``model.apply`` (linen) or to the model's call (NNX).

    Returns:
      :class:`ActivationStats`.

    Raises:
      TypeError: ``model`` is neither a linen nor an NNX module.

    Example:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> from jaxnorm.activations import activation_stats
      >>> model = nn.Sequential([nn.Dense(4), jnn.LayerNorm(4), nn.relu])
      >>> x = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
      >>> stats = activation_stats(model, model.init(jax.random.key(0), x), x)
      >>> [row.path for row in stats.layers]
      ['layers_0', 'layers_1', '(root)']
      >>> abs(stats["layers_1"].mean) < 1e-6                   # LayerNorm output: mean 0 per row
      True

    References:
      Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS 2010,
      https://proceedings.mlr.press/v9/glorot10a.html (per-layer activation statistics)
    """
    flax_nnx = sys.modules.get("flax.nnx")  # an NNX model exists only if flax.nnx is imported: never import it here
    if flax_nnx is not None and isinstance(model, flax_nnx.Module):
        from jaxnorm._nnx_activations import nnx_activation_stats

        return nnx_activation_stats(model, *args, **kwargs)
    if isinstance(model, nn.Module):
        return _linen_activation_stats(model, *args, **kwargs)
    raise TypeError(f"activation_stats: expected a flax.linen or flax.nnx Module, got {type(model).__name__}")


def format_table(stats: ActivationStats) -> str:
    """A plain-text table of :func:`activation_stats` rows, with the first non-finite layer marked.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm.activations import activation_stats, format_table
      >>> print(format_table(activation_stats(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.zeros((4, 2)))))
      layer   shape  mean  std   zeros  max|x|  finite
      ------  -----  ----  ---  ------  ------  ------
      (root)    4x3     0    0  100.0%       0     yes
      all outputs finite

    References:
      Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS 2010,
      https://proceedings.mlr.press/v9/glorot10a.html (per-layer activation statistics)
    """
    if not isinstance(stats, ActivationStats):
        raise TypeError(f"format_table: expected ActivationStats (from activation_stats), got {type(stats).__name__}")
    header = ("layer", "shape", "mean", "std", "zeros", "max|x|", "finite")
    lines = [
        (row.path, "x".join(map(str, row.shape)) or "()", f"{row.mean:.4g}", f"{row.std:.4g}",
         f"{row.frac_zeros:.1%}", f"{row.max_abs:.4g}", "yes" if row.finite else "NO")
        for row in stats.layers
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:  # the layer name left-aligned, the numbers right-aligned
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    out = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)]
    out.append(
        f"first non-finite output: {stats.first_nonfinite}" if stats.first_nonfinite else "all outputs finite"
    )
    return "\n".join(out)
