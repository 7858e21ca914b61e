r"""Coming from Flax, Keras 3 or Haiku: another library's normalization checkpoints as jaxnorm's, PyTorch's semantics.

One layer: :func:`from_flax_batch_norm`, :func:`from_keras_batch_norm` and :func:`from_haiku_batch_norm` return
jaxnorm's ``(params, batch_stats)``; :func:`batch_norm_options` gives the hyperparameters to pass with them
(``momentum`` in PyTorch's convention, ``eps``, ``axis``). Whole models: :func:`convert_flax_variables` (linen
variables onto the same model built with :mod:`jaxnorm.linen` layers), :func:`convert_flax_norms` and
:func:`convert_sync_batch_norm` (NNX models, in place; also re-exported by :mod:`jaxnorm.nnx`).

What carries over: the affine parameters, the running mean and variance the source layer normalizes with in eval
mode, so that the converted layer's eval outputs are the source layer's (to float32 rounding), and ``eps``. What
cannot:

- **Momentum convention.** Flax, Keras and Haiku weigh the *old* average: ``ra = 0.99·ra + 0.01·batch`` for their
  default ``momentum=0.99`` / ``decay_rate=0.99``; PyTorch's ``momentum`` weighs the *new* batch, so the same update
  is PyTorch's ``momentum=0.01`` (:func:`momentum_from_decay`).
- **Biased running variance.** Those libraries average the *biased* batch variance ``Σ(x−μ)²/n``; PyTorch (and
  jaxnorm) the *unbiased* one ``Σ(x−μ)²/(n−1)``. The converted average stays as it was accumulated (it is what the
  source normalizes with); it cannot be turned into PyTorch's, which would need the size ``n`` of every batch that
  went into it. From the next training step on, jaxnorm adds unbiased variances, so each new term is ``n/(n−1)``
  times the source's (0.8 % for ``n = 128``).
- **num_batches_tracked.** None of them counts batches (Haiku's averages count updates: that counter is carried);
  the counter starts at 0. It matters only for ``momentum=None`` (PyTorch's cumulative average).
- Haiku's averages are zero-debiased (Adam's correction ``hidden / (1 − decay^t)``); PyTorch's are not, so after
  the conversion the running statistics move as PyTorch's do, not as Haiku's would.

Keras' ``epsilon`` default is ``1e-3`` (PyTorch, Flax and Haiku use ``1e-5``); Flax's LayerNorm, GroupNorm and
RMSNorm default to ``epsilon=1e-6``: always pass the converted ``eps``.

Every name is also at the top level (``jn.from_flax_batch_norm``, ...; loaded on first use); the NNX converters
are :func:`jaxnorm.nnx.convert_flax_norms` and :func:`jaxnorm.nnx.convert_sync_batch_norm`, Equinox's
``jaxnorm.equinox.convert_sync_batch_norm``.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> params, stats = jn.from_flax_batch_norm({"scale": jnp.ones(2)}, {"mean": jnp.zeros(2), "var": jnp.full(2, 4.0)})
  >>> y, _ = jn.batch_norm(jnp.array([[2.0, 4.0]]), params, stats, train=False, eps=0.0)   # Flax's eval output
  >>> y.tolist(), jn.momentum_from_decay(0.99)                # Flax's momentum=0.99 is PyTorch's 0.01
  ([[1.0, 2.0]], 0.01)

References:
  Ioffe & Szegedy, Batch Normalization, ICML 2015, https://arxiv.org/abs/1502.03167 (the biased/unbiased variance:
  its Algorithm 2); PyTorch's ``torch.nn.BatchNorm2d``,
  https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html;
  ``flax.linen.BatchNorm``, https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html;
  ``keras.layers.BatchNormalization``, https://keras.io/api/layers/normalization_layers/batch_normalization/;
  ``haiku.BatchNorm`` and ``haiku.ExponentialMovingAverage``, https://dm-haiku.readthedocs.io/en/latest/api.html
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnorm._types import COUNTER, BatchStats, Params

__all__ = [
    "from_flax_batch_norm",
    "from_keras_batch_norm",
    "from_haiku_batch_norm",
    "batch_norm_options",
    "momentum_from_decay",
    "convert_flax_variables",
    "convert_flax_norms",
    "convert_sync_batch_norm",
]

Tree = Mapping[str, Any]  # a (nested) dict of arrays: Flax variables, Haiku params or state

# Flax's leaf names -> jaxnorm's (PyTorch's). Flax's BatchNorm keeps no counter.
_FLAX_NAMES = {"weight": "scale", "running_mean": "mean", "running_var": "var"}


def momentum_from_decay(decay: float) -> float:
    """PyTorch's ``momentum`` for a Flax/Keras ``momentum`` or Haiku ``decay_rate``: ``1 − decay``.

    Flax, Keras and Haiku update ``ra = decay·ra + (1 − decay)·batch``; PyTorch ``ra = (1 − m)·ra + m·batch``. The
    result is rounded to 15 significant digits, so that ``0.99`` gives ``0.01`` and not ``0.010000000000000009``
    (the two are the same float32).

    >>> momentum_from_decay(0.99), momentum_from_decay(0.9)
    (0.01, 0.1)

    Raises:
      ValueError: ``decay`` outside ``[0, 1]``.

    References:
      ``flax.linen.BatchNorm``,
      https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html#flax.linen.BatchNorm;
      PyTorch's ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating, np.integer)) or not 0 <= decay <= 1:
        raise ValueError(f"momentum_from_decay: expected a decay in [0, 1] (Flax/Keras momentum, Haiku decay_rate), "
                         f"got {decay!r}")
    return float(f"{1.0 - float(decay):.15g}")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _numpy(value: Any) -> np.ndarray:
    """An array-like, an ``nnx.Variable`` or a Keras variable as a NumPy copy."""
    if isinstance(value, nnx.Variable):
        value = value.get_value()
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(value, keras.Variable):
        value = keras.ops.convert_to_numpy(value)
    return np.array(value)


def _mapping(name: str, what: str, tree: Any) -> Mapping[str, Any]:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{name}: expected {what} to be a dict, got {type(tree).__name__}")
    return tree


def _channel_vector(name: str, where: str, value: Any, *, keepdims: bool = False) -> np.ndarray:
    """A per-channel ``(C,)`` vector (``keepdims``: also Haiku's ``(1, ..., C, ..., 1)``), else a ValueError."""
    array = _numpy(value)
    if keepdims and array.ndim > 1 and sum(d != 1 for d in array.shape) <= 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        expected = "(C,) or (1, ..., C, ..., 1)" if keepdims else "(C,)"
        raise ValueError(f"{name}: {where}: expected a per-channel vector {expected} (jaxnorm has one channel axis), "
                         f"got shape {array.shape}")
    return array


def _unused(name: str, unused: list[str]) -> None:
    if unused:
        raise ValueError(f"{name}: source entries {sorted(unused)} have no place in jaxnorm's layer (strict=False "
                         "ignores them)")


Vectors = dict[str, tuple[str, "np.ndarray[Any, Any] | None"]]  # jaxnorm key: (source path, per-channel vector)


def _batch_norm_state(name: str, vectors: Vectors, counter: int = 0) -> tuple[Params, BatchStats]:
    """jaxnorm's ``(params, batch_stats)`` from ``{jaxnorm key: (source path, vector or None)}``.

    A bias without a scale (Keras ``scale=False``, Flax ``use_scale=False``) gets ``weight = 1``: jaxnorm's BatchNorm,
    like PyTorch's, has no bias-only form; the affine map, and so every output, is the same.
    """
    present = {key: (where, value) for key, (where, value) in vectors.items() if value is not None}
    channels = {key: value.shape for key, (_, value) in present.items()}
    if len(set(channels.values())) > 1:
        listed = ", ".join(f"{present[key][0]} {shape}" for key, shape in channels.items())
        raise ValueError(f"{name}: expected every per-channel vector of the same shape, got {listed}")
    if "bias" in present and "weight" not in present:
        present["weight"] = ("", np.ones_like(present["bias"][1]))
    params: Params = {key: jnp.array(present[key][1]) for key in ("weight", "bias") if key in present}
    stats: BatchStats = {key: jnp.array(present[key][1]) for key in ("running_mean", "running_var")}
    stats[COUNTER] = jnp.array(counter, jnp.int32).reshape(())
    return params, stats


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


def from_flax_batch_norm(params: Mapping[str, Any], batch_stats: Mapping[str, Any], *,
                         strict: bool = True) -> tuple[Params, BatchStats]:
    """One Flax BatchNorm's variables (``flax.linen.BatchNorm`` or ``flax.nnx.BatchNorm``) as jaxnorm's
    ``(params, batch_stats)``.

    ``scale`` -> ``weight``, ``bias`` -> ``bias``, ``mean`` -> ``running_mean``, ``var`` -> ``running_var``;
    ``num_batches_tracked`` is 0 (Flax keeps no counter). A layer with ``use_scale=False`` and a bias gets
    ``weight = 1`` (same outputs; leave it out of the optimizer to train as Flax did). With the options of
    :func:`batch_norm_options` (``momentum=0.99`` becomes PyTorch's ``0.01``) eval outputs are Flax's; Flax's ``var``
    averages *biased* batch variances and cannot be made PyTorch's unbiased average (see :mod:`jaxnorm.migrate`).

    Args:
      params: the layer's ``{"scale", "bias"}`` (either may be missing): ``variables["params"]["bn"]`` for linen,
        ``nnx.state(bn, nnx.Param)`` or ``{"scale": bn.scale[...], ...}`` for NNX.
      batch_stats: the layer's ``{"mean", "var"}`` (``variables["batch_stats"]["bn"]``, ``nnx.state(bn,
        nnx.BatchStat)``).
      strict: fail on other entries (nothing is dropped silently).

    Returns:
      ``(params, batch_stats)`` under PyTorch's names, as :func:`jaxnorm.batch_norm` takes them.

    Raises:
      TypeError: not dicts. ValueError: no ``mean``/``var``, shapes that are not one ``(C,)``, or (``strict``) other
      entries.

    >>> import jax.numpy as jnp, jaxnorm as jn
    >>> params, stats = from_flax_batch_norm({"scale": jnp.array([2.0]), "bias": jnp.array([0.5])},
    ...                                      {"mean": jnp.array([1.0]), "var": jnp.array([4.0])})
    >>> sorted(params), sorted(stats)
    (['bias', 'weight'], ['num_batches_tracked', 'running_mean', 'running_var'])
    >>> jn.batch_norm(jnp.array([[3.0]]), params, stats, train=False)[0].round(4).tolist()
    [[2.5]]

    References:
      ``flax.linen.BatchNorm``,
      https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html#flax.linen.BatchNorm;
      PyTorch's ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    name = "from_flax_batch_norm"
    params, batch_stats = _mapping(name, "params", params), _mapping(name, "batch_stats", batch_stats)
    for key in ("mean", "var"):
        if key not in batch_stats:
            raise ValueError(f"{name}: batch_stats has no {key!r}: expected Flax BatchNorm's {{'mean', 'var'}}, got "
                             f"keys {sorted(batch_stats)}")
    if strict:
        _unused(name, [f"params[{k!r}]" for k in params if k not in ("scale", "bias")]
                + [f"batch_stats[{k!r}]" for k in batch_stats if k not in ("mean", "var")])
    vectors: Vectors = {}
    for key, tree, source in (("weight", params, "scale"), ("bias", params, "bias"),
                              ("running_mean", batch_stats, "mean"), ("running_var", batch_stats, "var")):
        where = f"{'params' if tree is params else 'batch_stats'}[{source!r}]"
        vectors[key] = (where, _channel_vector(name, where, tree[source]) if source in tree else None)
    return _batch_norm_state(name, vectors)


def _keras_layer(name: str, layer: Any) -> Any:
    """``layer`` if it is a built Keras 3 ``BatchNormalization``, else a TypeError/ValueError."""
    keras = sys.modules.get("keras")  # a Keras layer exists only if Keras is imported: never import it here
    if keras is None or not isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(f"{name}: expected a Keras 3 keras.layers.BatchNormalization, got {type(layer).__module__}."
                        f"{type(layer).__name__}")
    if not layer.built:
        raise ValueError(f"{name}: Keras layer {layer.name!r} is not built (it has no weights yet): call it on an "
                         "input or layer.build(input_shape) first")
    return layer


def from_keras_batch_norm(layer: Any, *, strict: bool = True) -> tuple[Params, BatchStats]:
    """A Keras 3 ``keras.layers.BatchNormalization`` (any backend) as jaxnorm's ``(params, batch_stats)``.

    ``gamma`` -> ``weight``, ``beta`` -> ``bias``, ``moving_mean`` -> ``running_mean``, ``moving_variance`` ->
    ``running_var``, ``num_batches_tracked`` = 0. ``scale=False`` leaves ``weight`` out (or sets it to 1 when the
    layer has a bias: same outputs), ``center=False`` leaves ``bias`` out. The layer's ``axis`` (its channel axis,
    ``-1`` by default), ``epsilon`` (``1e-3`` by default!) and ``momentum`` (``0.99`` weighs the old average: PyTorch's
    ``0.01``) come from :func:`batch_norm_options`. Keras' ``moving_variance`` averages *biased* batch variances and
    cannot be made PyTorch's unbiased average (see :mod:`jaxnorm.migrate`). ``renorm=True`` layers keep extra
    averages for the correction (jaxnorm's :func:`jaxnorm.batch_renorm` uses the running statistics themselves):
    ``strict`` refuses them.

    Args:
      layer: a built ``keras.layers.BatchNormalization``.
      strict: fail on weights other than the four above (nothing is dropped silently).

    Returns:
      ``(params, batch_stats)`` under PyTorch's names.

    Raises:
      TypeError: not a Keras 3 BatchNormalization. ValueError: not built, or (``strict``) other weights.

    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import keras, numpy as np
    >>> layer = keras.layers.BatchNormalization(center=False)
    >>> layer.build((2, 3))
    >>> params, stats = from_keras_batch_norm(layer)
    >>> sorted(params), stats["running_var"].tolist(), batch_norm_options(layer)
    (['weight'], [1.0, 1.0, 1.0], {'momentum': 0.01, 'eps': 0.001, 'axis': -1})

    References:
      Keras' ``BatchNormalization``,
      https://keras.io/api/layers/normalization_layers/batch_normalization/;
      PyTorch's ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    name = "from_keras_batch_norm"
    layer = _keras_layer(name, layer)
    weights = {w.path: w for w in layer.weights}
    known = {getattr(layer, attr).path: key for attr, key in (("gamma", "weight"), ("beta", "bias"),
             ("moving_mean", "running_mean"), ("moving_variance", "running_var")) if getattr(layer, attr) is not None}
    if strict:
        _unused(name, [path for path in weights if path not in known])
    vectors: Vectors = {key: ("", None) for key in ("weight", "bias")}
    vectors.update({key: (path, _channel_vector(name, path, weights[path])) for path, key in known.items()})
    return _batch_norm_state(name, vectors)


def _haiku_entries(name: str, params: Tree, state: Tree, module: str) -> tuple[Tree, Tree, Tree]:
    """The module's ``params`` entry and its two averages' state entries, checked; they are named as Haiku names
    them: ``{module}`` and ``{module}/~/mean_ema``, ``{module}/~/var_ema``."""
    emas: dict[str, Tree] = {}
    for ema in ("mean_ema", "var_ema"):
        key = f"{module}/~/{ema}"
        if key not in state:
            found = sorted(k[: -len("/~/mean_ema")] for k in state if k.endswith("/~/mean_ema"))
            raise ValueError(f"{name}: state has no {key!r}: expected hk.BatchNorm's averages under module={module!r}; "
                             f"BatchNorm modules in this state: {found or 'none'}")
        emas[ema] = _mapping(name, f"state[{key!r}]", state[key])
        for entry in ("average", "counter"):
            if entry not in emas[ema]:
                raise ValueError(f"{name}: state[{key!r}] has no {entry!r}: expected hk.ExponentialMovingAverage's "
                                 f"{{'hidden', 'average', 'counter'}}, got keys {sorted(emas[ema])}")
    return _mapping(name, f"params[{module!r}]", params.get(module, {})), emas["mean_ema"], emas["var_ema"]


def _haiku_unused(params: Tree, state: Tree, module: str) -> list[str]:
    """Entries of the module (its own names, its submodules') that are not a BatchNorm's."""

    def inside(key: str) -> bool:
        return key == module or key.startswith(module + "/")

    unused = [f"params[{k!r}]" for k in params if inside(k) and k != module]
    unused += [f"params[{module!r}][{k!r}]" for k in params.get(module, {}) if k not in ("scale", "offset")]
    emas = {f"{module}/~/mean_ema", f"{module}/~/var_ema"}
    unused += [f"state[{k!r}]" for k in state if inside(k) and k not in emas]
    unused += [f"state[{k!r}][{e!r}]" for k in emas for e in state[k] if e not in ("hidden", "average", "counter")]
    return unused


def from_haiku_batch_norm(params: Mapping[str, Any], state: Mapping[str, Any], *, module: str = "batch_norm",
                          strict: bool = True) -> tuple[Params, BatchStats]:
    """One ``hk.BatchNorm`` of a Haiku model as jaxnorm's ``(params, batch_stats)``.

    ``scale`` -> ``weight``, ``offset`` -> ``bias`` (absent with ``create_scale``/``create_offset=False``; an offset
    without a scale gets ``weight = 1``), the zero-debiased averages Haiku normalizes with at inference
    (``mean_ema``/``var_ema``'s ``average``) -> ``running_mean``/``running_var``, their update ``counter`` ->
    ``num_batches_tracked``. Haiku's ``(1, ..., C)`` shapes become ``(C,)``. ``hidden`` (the average before
    debiasing) has no PyTorch counterpart and is not used. Pass ``momentum=momentum_from_decay(decay_rate)``, the
    module's ``eps`` (Haiku's default ``1e-5`` is PyTorch's) and ``axis=-1`` for Haiku's default
    ``data_format="channels_last"``. Not carried: the debiasing, and the *biased* variance Haiku averages (see
    :mod:`jaxnorm.migrate`).

    Args:
      params: the whole ``params`` of ``hk.transform_with_state``.
      state: the whole ``state``.
      module: the BatchNorm's module name as it appears in ``params`` (``"batch_norm"``, ``"net/~/batch_norm_1"``).
      strict: fail on entries under ``module`` that are not a BatchNorm's (nothing is dropped silently).

    Returns:
      ``(params, batch_stats)`` under PyTorch's names.

    Raises:
      TypeError: not dicts. ValueError: no averages under ``module`` (the message lists the BatchNorm modules
      found), shapes that are not one channel vector, counters that disagree, or (``strict``) other entries.

    >>> import jax.numpy as jnp
    >>> state = {"batch_norm/~/mean_ema": {"average": jnp.array([[1.0, 2.0]]), "counter": jnp.array(3)},
    ...          "batch_norm/~/var_ema": {"average": jnp.array([[4.0, 9.0]]), "counter": jnp.array(3)}}
    >>> params, stats = from_haiku_batch_norm({}, state)
    >>> params, stats["running_var"].tolist(), int(stats["num_batches_tracked"])
    ({}, [4.0, 9.0], 3)

    References:
      Haiku's ``hk.BatchNorm``, https://dm-haiku.readthedocs.io/en/latest/api.html#batchnorm;
      PyTorch's ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    name = "from_haiku_batch_norm"
    params, state = _mapping(name, "params", params), _mapping(name, "state", state)
    own, mean_ema, var_ema = _haiku_entries(name, params, state, module)
    if strict:
        _unused(name, _haiku_unused(params, state, module))
    counters = [int(_numpy(ema["counter"])) for ema in (mean_ema, var_ema)]
    if counters[0] != counters[1]:
        raise ValueError(f"{name}: expected mean_ema and var_ema of {module!r} to have one counter, got {counters}")
    vectors: Vectors = {}
    for key, tree, where in (("weight", own, "scale"), ("bias", own, "offset"), ("running_mean", mean_ema, "average"),
                             ("running_var", var_ema, "average")):
        path = f"params[{module!r}][{where!r}]" if tree is own else f"{module}/~/{key[8:]}_ema/average"
        vectors[key] = (path, _channel_vector(name, path, tree[where], keepdims=True) if where in tree else None)
    return _batch_norm_state(name, vectors, counters[0])


def batch_norm_options(layer: Any) -> dict[str, Any]:
    """The hyperparameters of a Flax or Keras BatchNorm for jaxnorm: ``{"momentum", "eps", "axis"}`` in PyTorch's
    conventions, for ``jn.batch_norm(..., **options)`` or ``jaxnorm.linen/nnx.BatchNorm2d(C, **options)``.

    ``momentum`` is :func:`momentum_from_decay` of the layer's; ``eps`` its ``epsilon``; ``axis`` its channel axis.
    A Flax layer with ``axis_name`` adds ``axis_name`` and ``axis_index_groups`` (synchronized statistics). Flax's
    ``dtype`` (its computation dtype) has no counterpart: jaxnorm returns the input's dtype. Haiku's modules exist
    only inside a transformed function: pass ``momentum_from_decay(decay_rate)``, ``eps`` and ``axis`` yourself.

    Args:
      layer: ``flax.nnx.BatchNorm``, ``flax.linen.BatchNorm`` (bound or not) or ``keras.layers.BatchNormalization``.

    Raises:
      TypeError: another kind of layer. ValueError: several channel axes (jaxnorm has one).

    >>> import flax.linen as nn
    >>> batch_norm_options(nn.BatchNorm(momentum=0.9, epsilon=1e-3))
    {'momentum': 0.1, 'eps': 0.001, 'axis': -1}

    References:
      ``flax.linen.BatchNorm``,
      https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html#flax.linen.BatchNorm;
      Keras' ``BatchNormalization``,
      https://keras.io/api/layers/normalization_layers/batch_normalization/;
      PyTorch's ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    name = "batch_norm_options"
    keras = sys.modules.get("keras")
    if isinstance(layer, (nnx.BatchNorm, nn.BatchNorm)) or (
            keras is not None and isinstance(layer, keras.layers.BatchNormalization)):
        axis = layer.axis
    else:
        raise TypeError(f"{name}: expected flax.nnx.BatchNorm, flax.linen.BatchNorm or "
                        f"keras.layers.BatchNormalization, got {type(layer).__module__}.{type(layer).__name__}")
    if not isinstance(axis, (int, np.integer)):
        raise ValueError(f"{name}: expected one channel axis (an int), got axis={axis!r}")
    options: dict[str, Any] = {"momentum": momentum_from_decay(layer.momentum), "eps": float(layer.epsilon),
                               "axis": int(axis)}
    if getattr(layer, "axis_name", None) is not None:
        options.update(axis_name=layer.axis_name, axis_index_groups=layer.axis_index_groups)
    return options


# --------------------------------------------------------------------------------------------
# Whole linen models
# --------------------------------------------------------------------------------------------

# jaxnorm's per-rank classes are auto-named BatchNorm2d_0 where Flax's are BatchNorm_0
_AUTO_NAME = re.compile(r"^(BatchNorm|InstanceNorm)[123]d_(\d+)$")


def _source_module(name: str, key: str, template: Tree, source: Tree, where: str) -> str | None:
    """The key of ``source`` holding the template's module ``key``: the same name, or Flax's auto-name
    (``BatchNorm_k`` for ``BatchNorm2d_k``) when the template's siblings use one rank, so that the match is
    unambiguous."""
    if key in source:
        return key
    match = _AUTO_NAME.match(key)
    if not match or f"{match[1]}_{match[2]}" not in source:
        return None
    ranks = sorted(k for k in template if (m := _AUTO_NAME.match(k)) and m[1] == match[1])  # key's family
    if len({k.rsplit("_", 1)[0] for k in ranks}) > 1:
        raise ValueError(f"{name}: {where}: template modules {ranks} cannot be matched to Flax's auto-named "
                         f"{match[1]}_* modules: give the modules names (name=...) in both models")
    return f"{match[1]}_{match[2]}"


def _convert(name: str, template: Tree, source: Any, path: tuple[str, ...], out: dict[str, Any],
             found: set[tuple[str, ...]], missing: list[str]) -> None:
    """Fill ``out`` (shaped as ``template``) from ``source``; record the source paths used and the template paths
    without a source."""
    source = source if isinstance(source, Mapping) else {}
    for key, leaf in template.items():
        here = "/".join((*path, str(key)))
        if isinstance(leaf, Mapping):
            src = _source_module(name, key, template, source, here)
            _convert(name, leaf, source.get(src, {}), (*path, str(src if src else key)), out.setdefault(key, {}),
                     found, missing)
            continue
        src = next((k for k in (key, _FLAX_NAMES.get(key)) if k in source and not isinstance(source[k], Mapping)),
                   None)
        if src is None and key != COUNTER:
            missing.append(here)
            continue
        value = np.zeros((), np.int32) if src is None else _numpy(source[src])
        shape = tuple(np.shape(leaf))
        if value.shape != shape:
            raise ValueError(f"{name}: {here}: expected shape {shape} (the template's), got {value.shape} from Flax's "
                             f"{'/'.join((*path, str(src)))}")
        if src is not None:
            found.add((*path, str(src)))
        out[key] = jnp.array(value, dtype=getattr(leaf, "dtype", value.dtype))


def _source_leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(tree, Mapping):
        for key, sub in tree.items():
            yield from _source_leaves(sub, (*path, str(key)))
    else:
        yield path


def convert_flax_variables(variables: Mapping[str, Any], template: Mapping[str, Any], *,
                           strict: bool = True) -> dict[str, Any]:
    """The variables of a linen model built with Flax's norm layers, mapped onto the same model built with
    :mod:`jaxnorm.linen` layers.

    Every leaf of ``template`` (the jaxnorm model's ``init`` output, or ``jax.eval_shape`` of it) is read from
    ``variables`` at the same path: the same name (``kernel``, ``bias``, ...), or Flax's name for it (``scale`` ->
    ``weight``, ``mean`` -> ``running_mean``, ``var`` -> ``running_var``); ``num_batches_tracked`` is 0 (Flax keeps
    none). Module names must be the same; jaxnorm's auto-named ``BatchNorm2d_0`` is matched to Flax's ``BatchNorm_0``
    when unambiguous. Values are cast to the template's dtypes. What cannot carry over (momentum convention, biased
    variance, ``eps`` defaults: ``1e-6`` for Flax's LayerNorm/GroupNorm/RMSNorm): see :mod:`jaxnorm.migrate`; build
    the jaxnorm model with ``momentum=momentum_from_decay(...)``, Flax's ``eps`` and ``axis=-1`` (Flax is
    channels-last).

    Args:
      variables: the Flax model's variables (``{"params": ..., "batch_stats": ...}``).
      template: the jaxnorm model's variables; it fixes the structure, shapes and dtypes of the result.
      strict: also fail on Flax leaves the template has no place for (nothing is dropped silently).

    Returns:
      New variables with the template's structure.

    Raises:
      TypeError: not dicts. ValueError: template leaves without a Flax value, shapes that disagree (the message names
      the path, expected and got), ambiguous auto-names, or (``strict``) unused Flax leaves.

    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxnorm.linen as jnn
    >>> x = jnp.ones((2, 3))
    >>> flax_vars = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    >>> template = jnn.BatchNorm1d(3, axis=-1).init(jax.random.key(0), x, train=False)
    >>> sorted(convert_flax_variables(flax_vars, template)["batch_stats"])
    ['num_batches_tracked', 'running_mean', 'running_var']

    References:
      ``flax.linen.BatchNorm``,
      https://flax.readthedocs.io/en/latest/api_reference/flax.linen/layers.html#flax.linen.BatchNorm;
      PyTorch's ``torch.nn.BatchNorm2d``, https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html
    """
    name = "convert_flax_variables"
    variables, template = _mapping(name, "variables", variables), _mapping(name, "template", template)
    out: dict[str, Any] = {}
    found: set[tuple[str, ...]] = set()
    missing: list[str] = []
    _convert(name, template, variables, (), out, found, missing)
    if missing:
        raise ValueError(f"{name}: the Flax variables have no value for the template's {missing}")
    if strict:
        _unused(name, ["/".join(p) for p in _source_leaves(variables) if p not in found])
    return out


# --------------------------------------------------------------------------------------------
# Whole NNX models (defined in jaxnorm._nnx_convert, re-exported by jaxnorm.nnx)
# --------------------------------------------------------------------------------------------


def convert_flax_norms(model: nnx.Module) -> nnx.Module:
    """See :func:`jaxnorm.nnx.convert_flax_norms`: every Flax NNX norm layer of ``model`` replaced by jaxnorm's.

    >>> from flax import nnx
    >>> model = convert_flax_norms(nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0))))
    >>> type(model.layers[0]).__name__, model.layers[0].momentum
    ('BatchNorm', 0.01)

    References:
      Flax's ``flax.nnx`` normalization layers,
      https://flax.readthedocs.io/en/latest/api_reference/flax.nnx/nn/normalization.html
    """
    from jaxnorm._nnx_convert import convert_flax_norms as convert

    return convert(model)


def convert_sync_batch_norm(model: Any, axis_name: Any, *,
                            axis_index_groups: Sequence[Sequence[int]] | None = None) -> Any:
    """PyTorch's ``SyncBatchNorm.convert_sync_batchnorm`` for NNX models (:func:`jaxnorm.nnx.convert_sync_batch_norm`,
    in place) and Equinox models (``jaxnorm.equinox.convert_sync_batch_norm``, a new model): every BatchNorm computes
    its statistics over ``axis_name``.

    >>> from flax import nnx
    >>> import jaxnorm.nnx as jnnx
    >>> model = convert_sync_batch_norm(nnx.Sequential(jnnx.BatchNorm2d(3)), "data")
    >>> model.layers[0].axis_name
    'data'

    References:
      PyTorch's ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``,
      https://pytorch.org/docs/stable/generated/torch.nn.SyncBatchNorm.html
    """
    if isinstance(model, nnx.Module):
        from jaxnorm._nnx_convert import convert_sync_batch_norm as convert
    elif "equinox" in sys.modules and isinstance(model, sys.modules["equinox"].Module):
        from jaxnorm._equinox_convert import convert_sync_batch_norm as convert
    else:
        raise TypeError(f"convert_sync_batch_norm: expected a flax.nnx.Module or an equinox.Module, got "
                        f"{type(model).__name__}")
    return convert(model, axis_name, axis_index_groups=axis_index_groups)
