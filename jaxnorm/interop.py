"""PyTorch interop and inference helpers: state dicts in both directions, and BN folding.

jaxnorm's parameter and buffer names are PyTorch's (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``), so one norm layer's state dict maps one-to-one
(:func:`from_torch_state_dict`, :func:`to_torch_state_dict`). For whole Flax linen models,
:func:`flax_to_torch_state_dict` and :func:`torch_to_flax_variables` also rename and transpose the
Flax layer kernels into PyTorch's layouts.

torch is never imported here: tensors are recognised by duck typing (``.detach()``), so this module
works (on NumPy arrays) where torch is not installed.

Example:
  >>> import jaxnorm as jn
  >>> params, stats = jn.batch_norm_init(3)
  >>> sd = jn.to_torch_state_dict(params, stats, prefix="bn1.")     # load into torch with torch.from_numpy
  >>> list(sd), sd["bn1.num_batches_tracked"].dtype
  (['bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.num_batches_tracked'], dtype('int64'))
  >>> params2, stats2 = jn.from_torch_state_dict(sd, prefix="bn1")
  >>> sorted(params2), stats2["num_batches_tracked"].dtype
  (['bias', 'weight'], dtype('int32'))

References:
  PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from numpy.typing import NDArray

from jaxnorm._types import COUNTER, PARAM_KEYS, STATS_KEYS, BatchStats, Params

__all__ = [
    "fold_batch_norm",
    "from_torch_state_dict",
    "to_torch_state_dict",
    "flax_to_torch_state_dict",
    "torch_to_flax_variables",
]

def _check_state_dict(name: str, state_dict: object) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{name}: expected a state dict (a mapping of names to tensors), got "
                        f"{type(state_dict).__name__}")


def _lookup(state_dict: Mapping[str, Any], key: str, is_counter: bool, used: set[str],
            missing: list[str]) -> NDArray[Any] | None:
    """``state_dict[key]`` as NumPy (``key`` recorded in ``used``); for a ``num_batches_tracked`` entry the state dict
    lacks, 0 (checkpoints older than PyTorch 0.4.1 have none; PyTorch loads 0); else None (recorded in ``missing``)."""
    if key in state_dict:
        used.add(key)
        return _to_numpy(state_dict[key])
    if is_counter:
        return np.zeros((), np.int64)
    missing.append(key)
    return None


def _to_numpy(value: Any) -> NDArray[Any]:
    """A torch tensor (any device, requires_grad or not), JAX array or array-like as NumPy.

    Callers copy the result (``jnp.array``): on CPU ``tensor.numpy()`` shares the tensor's memory, and
    ``jnp.asarray`` may share that again, so a later in-place update in PyTorch (e.g. a training-mode
    forward updating ``running_mean``) would silently change the "immutable" JAX array.
    """
    if hasattr(value, "detach"):  # torch.Tensor, recognised without importing torch
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value)


def _norm_layer_problem(layer: Mapping[str, Any], where: str) -> str | None:
    """Why the entries of one layer (keys without prefix) are not one norm layer's, or None."""
    unknown = sorted(set(layer) - set(PARAM_KEYS + STATS_KEYS))
    if unknown:
        return f"{where}: expected only {PARAM_KEYS + STATS_KEYS}, got also {unknown}"
    shapes = {k: tuple(np.shape(v)) for k, v in layer.items()}
    for a, b in (("weight", "bias"), ("running_mean", "running_var"), ("weight", "running_mean")):
        if a in shapes and b in shapes and shapes[a] != shapes[b]:
            return (f"{where}: expected {a!r} and {b!r} of the same shape, got {shapes[a]} and {shapes[b]} "
                    "(is this a normalization layer?)")
    if ("running_mean" in layer) != ("running_var" in layer):
        return f"{where}: expected both 'running_mean' and 'running_var', got only one of them"
    return None


def _layer_prefixes(state_dict: Mapping[str, Any]) -> list[str]:
    """Prefixes of the layers in a whole model's state dict that look like norm layers, for error messages."""
    layers: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        if "." in key:
            prefix, name = key.rsplit(".", 1)
            layers.setdefault(prefix + ".", {})[name] = value
    return sorted(p for p, layer in layers.items() if _norm_layer_problem(layer, p) is None)


# --------------------------------------------------------------------------------------------
# One norm layer
# --------------------------------------------------------------------------------------------


def from_torch_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> tuple[Params, BatchStats]:
    """One PyTorch normalization layer's state dict as jaxnorm ``(params, batch_stats)``.

    Works for ``BatchNorm1d/2d/3d``, ``InstanceNorm*`` (with ``affine`` / ``track_running_stats``),
    ``LayerNorm``, ``GroupNorm`` and ``RMSNorm``: whatever of ``weight``, ``bias``, ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` is present is returned under the same key.

    Args:
      state_dict: ``module.state_dict()`` — values may be torch tensors (any device) or NumPy/JAX
        arrays. It may be a whole model's state dict; ``prefix`` then selects the layer.
      prefix: the layer's key prefix, e.g. ``"bn1."`` or ``"layer1.0.bn1"`` (a missing trailing dot
        is added). Only keys directly under the prefix are read.

    Returns:
      ``params`` (``{"weight", "bias"}``, or a subset, or ``{}``) and ``batch_stats``
      (``{"running_mean", "running_var", "num_batches_tracked"}`` or ``{}``) as JAX arrays; the
      counter becomes ``int32`` (PyTorch stores ``int64``). A missing counter (checkpoints older than
      PyTorch 0.4.1) is set to 0, as PyTorch itself does when loading them.

    Raises:
      ValueError: no entry under ``prefix``, an entry that is not a norm-layer parameter or buffer,
        or shapes that do not belong to one norm layer.

    Example:
      >>> import numpy as np
      >>> import jaxnorm as jn
      >>> sd = {"conv.weight": np.ones((4, 3, 3, 3)), "bn.weight": np.ones(4), "bn.bias": np.zeros(4),
      ...       "bn.running_mean": np.zeros(4), "bn.running_var": np.ones(4)}   # a checkpoint before 0.4.1
      >>> params, stats = jn.from_torch_state_dict(sd, prefix="bn.")
      >>> sorted(params), int(stats["num_batches_tracked"])
      (['bias', 'weight'], 0)

    References:
      PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
    """
    _check_state_dict("from_torch_state_dict", state_dict)
    if prefix and not prefix.endswith("."):
        prefix += "."
    layer = {k[len(prefix):]: _to_numpy(v) for k, v in state_dict.items()
             if k.startswith(prefix) and "." not in k[len(prefix):]}
    if not layer:
        raise ValueError(f"from_torch_state_dict: expected entries directly under prefix {prefix!r}, got none; norm "
                         f"layers in this state dict: {_layer_prefixes(state_dict) or 'none'}")
    problem = _norm_layer_problem(layer, f"from_torch_state_dict: state dict prefix {prefix!r}")
    if problem:
        raise ValueError(problem)

    params = {k: jnp.array(layer[k]) for k in PARAM_KEYS if k in layer}
    batch_stats = {}
    if "running_mean" in layer:
        batch_stats = {"running_mean": jnp.array(layer["running_mean"]), "running_var": jnp.array(layer["running_var"]),
                       COUNTER: jnp.array(layer.get(COUNTER, 0), dtype=jnp.int32).reshape(())}
    return params, batch_stats


def to_torch_state_dict(params: Mapping[str, Any], batch_stats: Mapping[str, Any], *,
                        prefix: str = "") -> dict[str, NDArray[Any]]:
    """jaxnorm ``(params, batch_stats)`` of one norm layer as a PyTorch-style state dict.

    Returns NumPy arrays (writable copies) under PyTorch's keys, in PyTorch's order (parameters, then
    buffers), with ``num_batches_tracked`` as a 0-d ``int64`` as PyTorch stores it. Load it with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``. ``prefix`` (e.g.
    ``"bn1."``) is prepended to every key.

    Example:
      >>> import jaxnorm as jn
      >>> sd = jn.to_torch_state_dict(*jn.instance_norm_init(2, affine=True))   # InstanceNorm: no buffers
      >>> {k: v.tolist() for k, v in sd.items()}
      {'weight': [1.0, 1.0], 'bias': [0.0, 0.0]}

    References:
      PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
    """
    for name, tree, allowed in (("params", params, PARAM_KEYS), ("batch_stats", batch_stats, STATS_KEYS)):
        if not isinstance(tree, Mapping):
            raise TypeError(f"to_torch_state_dict: expected {name} to be a dict, got {type(tree).__name__}")
        unknown = sorted(set(tree) - set(allowed))
        if unknown:
            raise ValueError(f"to_torch_state_dict: expected {name} keys among {allowed}, got also {unknown}")
    out = {prefix + k: np.array(params[k]) for k in PARAM_KEYS if k in params}
    for k in STATS_KEYS:
        if k in batch_stats:
            dtype = np.int64 if k == COUNTER else None
            out[prefix + k] = np.array(batch_stats[k], dtype=dtype)
    return out


# --------------------------------------------------------------------------------------------
# Folding an eval-mode BN into the preceding linear layer
# --------------------------------------------------------------------------------------------


def fold_batch_norm(kernel: ArrayLike, bias: ArrayLike | None, params: Mapping[str, ArrayLike],
                    batch_stats: Mapping[str, ArrayLike], *, eps: float = 1e-5,
                    out_axis: int = -1) -> tuple[jax.Array, jax.Array]:
    r"""Fold an eval-mode BatchNorm into the dense/conv layer that feeds it.

    For ``z = W * x + b`` followed by eval-mode BN with running statistics :math:`\mu, \sigma^2`,

    .. math::
        \mathrm{BN}(z) = \gamma \frac{W * x + b - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta
                       = \underbrace{s\,W}_{W'} * x + \underbrace{s\,(b - \mu) + \beta}_{b'},
        \qquad s = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}},

    :math:`s` scaling every output channel of the kernel: the same function with one layer fewer (training-mode
    BN cannot be folded: it uses batch statistics).

    Args:
      kernel: the layer's weight, output channels on ``out_axis``: ``-1`` for Flax layouts (Dense ``(in, out)``,
        Conv ``(kh, kw, in, out)``), ``0`` for PyTorch's (Linear ``(out, in)``, Conv ``(out, in, kh, kw)``), ``1``
        for PyTorch's ConvTranspose ``(in, out, kh, kw)``.
      bias: the layer's bias ``(C,)``, or ``None`` for a layer without bias (e.g. ``bias=False``).
      params, batch_stats, eps: the BN's ``{"weight", "bias"}`` (``{}`` for ``affine=False``), running statistics
        (``running_mean``, ``running_var``) and epsilon.

    Returns:
      ``(kernel', bias')`` in the inputs' dtypes (``bias'`` in the kernel's when ``bias`` is ``None``); the
      arithmetic is done in at least float32.

    Raises:
      ValueError: no running statistics, or channel counts that do not agree.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> kernel, bias, x = jnp.arange(6.0).reshape(2, 3), jnp.ones(3), jnp.array([[1.0, -1.0]])   # Dense 2 -> 3
      >>> params, stats = jn.batch_norm_init(3)
      >>> stats = {**stats, "running_mean": jnp.array([1.0, 2.0, 3.0]), "running_var": jnp.array([4.0, 1.0, 9.0])}
      >>> k2, b2 = jn.fold_batch_norm(kernel, bias, params, stats, eps=0.0)
      >>> want, _ = jn.batch_norm(x @ kernel + bias[None], params, stats, train=False, eps=0.0)
      >>> bool(jnp.allclose(x @ k2 + b2[None], want))
      True

    References:
      Jacob et al., Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference,
      CVPR 2018, https://arxiv.org/abs/1712.05877 (section 3.2, folding batch normalization); PyTorch's
      ``torch.nn.utils.fusion.fuse_conv_bn_weights``
    """
    kernel = jnp.asarray(kernel)
    named = _fold_operands(kernel, bias, params, batch_stats, out_axis)  # checked: channels agree
    mean, var, channels = named["running_mean"], named["running_var"], kernel.shape[out_axis]
    compute = jnp.promote_types(kernel.dtype, jnp.float32)
    gamma = named.get("BN weight", jnp.ones(channels, compute)).astype(compute)
    beta = named.get("BN bias", jnp.zeros(channels, compute)).astype(compute)
    b = named.get("layer bias", jnp.zeros(channels, compute)).astype(compute)
    scale = gamma / jnp.sqrt(var.astype(compute) + eps)
    broadcast = tuple(channels if a == out_axis % kernel.ndim else 1 for a in range(kernel.ndim))
    new_kernel = (kernel.astype(compute) * scale.reshape(broadcast)).astype(kernel.dtype)
    bias_dtype = kernel.dtype if bias is None else named["layer bias"].dtype
    new_bias = ((b - mean.astype(compute)) * scale + beta).astype(bias_dtype)
    return new_kernel, new_bias


def _fold_operands(kernel: jax.Array, bias: ArrayLike | None, params: Mapping[str, ArrayLike],
                   batch_stats: Mapping[str, ArrayLike], out_axis: int) -> dict[str, jax.Array]:
    """The per-channel vectors :func:`fold_batch_norm` needs, by name, each checked to be ``(channels,)``."""
    if not -kernel.ndim <= out_axis < kernel.ndim:
        raise ValueError(f"fold_batch_norm: expected out_axis in [{-kernel.ndim}, {kernel.ndim}) for a kernel of shape "
                         f"{kernel.shape}, got {out_axis}")
    if "running_mean" not in batch_stats or "running_var" not in batch_stats:
        raise ValueError(
            "fold_batch_norm: expected batch_stats with 'running_mean' and 'running_var', got keys "
            f"{sorted(batch_stats)}; a BN without running statistics normalizes by the batch and cannot be folded"
        )
    channels = kernel.shape[out_axis]
    named = {"running_mean": jnp.asarray(batch_stats["running_mean"]),
             "running_var": jnp.asarray(batch_stats["running_var"]),
             **{f"BN {k}": jnp.asarray(v) for k, v in params.items()}}
    if bias is not None:
        named["layer bias"] = jnp.asarray(bias)
    for name, value in named.items():
        if value.shape != (channels,):
            raise ValueError(
                f"fold_batch_norm: kernel of shape {kernel.shape} has {channels} output channels on "
                f"out_axis={out_axis}; "
                f"expected {name} of shape ({channels},), got {value.shape}"
            )
    return named


# --------------------------------------------------------------------------------------------
# Whole Flax linen models <-> PyTorch-style flat state dicts
# --------------------------------------------------------------------------------------------

# Flax leaf name -> PyTorch name. Flax's ``nn.BatchNorm`` keeps ``mean``/``var``: eval-mode outputs
# then agree, but note that Flax's running ``var`` is an average of *biased* batch variances.
_RENAME = {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean", "var": "running_var"}


def _kernel_perm(ndim: int) -> tuple[int, ...]:
    """Axis order taking a Flax kernel to PyTorch's layout.

    Dense ``(in, out) -> (out, in)``; Conv ``(*k, in, out) -> (out, in, *k)`` for 1, 2 or 3
    spatial dims (grouped convs too: Flax ``(*k, in/g, out)``, PyTorch ``(out, in/g, *k)``).
    """
    return (ndim - 1, ndim - 2, *range(ndim - 2))


def _iter_leaves(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, leaf) pairs of a nested dict, in insertion order (jax.tree sorts keys; we keep the model's)."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _iter_leaves(value, (*path, str(key)))
        else:
            yield (*path, str(key)), value


def _torch_key(path: tuple[str, ...]) -> str:
    return ".".join((*path[:-1], _RENAME.get(path[-1], path[-1])))


def _leaf_perm(path: tuple[str, ...], ndim: int, name: str) -> tuple[int, ...] | None:
    """The transpose taking this Flax leaf to PyTorch's layout, or None when layouts agree (``name``: the public
    function, for the error)."""
    if path[-1] != "kernel":
        return None
    if ndim < 2:
        raise ValueError(f"{name}: expected a kernel of rank >= 2 at {'/'.join(path)}, got rank {ndim}")
    return _kernel_perm(ndim)


def _collections(variables: Mapping[str, Any], collections: tuple[str, ...],
                 name: str) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    if not isinstance(variables, Mapping):
        raise TypeError(f"{name}: expected Flax variables (a dict of collections), got {type(variables).__name__}")
    for col in collections:
        for path, leaf in _iter_leaves(variables.get(col, {})):
            yield col, path, leaf


def flax_to_torch_state_dict(variables: Mapping[str, Any], *,
                             collections: tuple[str, ...] = ("params", "batch_stats")) -> dict[str, NDArray[Any]]:
    """A Flax linen model's variables as a flat PyTorch-style state dict of NumPy arrays.

    Module paths join with ``"."``; leaves are renamed and transposed to PyTorch's conventions:

    ============================  ===============================================
    Flax                          PyTorch
    ============================  ===============================================
    Dense ``kernel (in, out)``    Linear ``weight (out, in)``
    Conv ``kernel (*k, in, out)`` Conv ``weight (out, in, *k)``
    ``scale`` / ``embedding``     ``weight``
    ``mean`` / ``var``            ``running_mean`` / ``running_var``
    anything else (``bias``,      same name, same array (jaxnorm layers already use
    jaxnorm's norm leaves)        PyTorch's names); ``num_batches_tracked`` as int64
    ============================  ===============================================

    E.g. ``{"params": {"conv1": {"kernel", "bias"}, "bn1": {"weight", "bias"}},
    "batch_stats": {"bn1": {...}}}`` gives ``conv1.weight, conv1.bias, bn1.weight, bn1.bias,
    bn1.running_mean, ...``. Flax's ``ConvTranspose`` and ``DenseGeneral`` kernels have other
    PyTorch layouts and are not supported. Only ``collections`` are exported.

    Example:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> model = nn.Sequential([nn.Dense(3), nn.BatchNorm(use_running_average=True)])
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
      >>> sd = jn.flax_to_torch_state_dict(variables)
      >>> sorted(sd), sd["layers_0.weight"].shape      # doctest: +NORMALIZE_WHITESPACE
      (['layers_0.bias', 'layers_0.weight', 'layers_1.bias', 'layers_1.running_mean', 'layers_1.running_var',
        'layers_1.weight'], (3, 2))

    References:
      PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
    """
    out: dict[str, NDArray[Any]] = {}
    name = "flax_to_torch_state_dict"
    for col, path, leaf in _collections(variables, collections, name):
        key = _torch_key(path)
        if key in out:
            raise ValueError(f"{name}: two Flax leaves map to the PyTorch key {key!r} (second: {col}/{'/'.join(path)})")
        value = np.array(leaf, dtype=np.int64 if path[-1] == COUNTER else None)
        perm = _leaf_perm(path, value.ndim, name)
        out[key] = np.ascontiguousarray(value.transpose(perm)) if perm else value
    return out


def torch_to_flax_variables(
    state_dict: Mapping[str, Any],
    template_variables: Mapping[str, Any],
    *,
    strict: bool = True,
    collections: tuple[str, ...] = ("params", "batch_stats"),
) -> dict[str, Any]:
    """Load a PyTorch-style state dict into a Flax linen model's variables (inverse of
    :func:`flax_to_torch_state_dict`).

    The template (e.g. ``model.init(...)`` or ``jax.eval_shape(model.init, ...)``) fixes the structure,
    shapes and dtypes: every leaf of its ``collections`` is read from ``state_dict[key]`` (key and
    transpose as in :func:`flax_to_torch_state_dict`), checked against the template's shape and cast to
    its dtype (``num_batches_tracked`` int64 -> int32). Other collections of the template are copied.

    Args:
      state_dict: ``torch_model.state_dict()`` (tensors) or a dict of NumPy arrays.
      template_variables: Flax variables whose structure the result copies.
      strict: also fail on state-dict entries the template has no leaf for (as PyTorch's
        ``load_state_dict(strict=True)``). ``num_batches_tracked`` entries are never required
        to be matched: layers such as Flax's ``nn.BatchNorm`` keep no counter (and a counter
        missing from the state dict is loaded as 0, as PyTorch does for old checkpoints).

    Raises:
      ValueError: missing (or, with ``strict``, unexpected) keys, or a shape that does not match.

    Example:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp
      >>> import numpy as np
      >>> import jaxnorm as jn
      >>> template = jax.eval_shape(nn.Dense(3).init, jax.random.key(0), jnp.ones((1, 2)))   # no initializer runs
      >>> sd = {"weight": np.arange(6.0).reshape(3, 2), "bias": np.zeros(3)}                 # torch Linear (out, in)
      >>> jn.torch_to_flax_variables(sd, template)["params"]["kernel"].tolist()               # Flax Dense (in, out)
      [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]

    References:
      PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
    """
    name = "torch_to_flax_variables"
    _check_state_dict(name, state_dict)
    result = {col: tree for col, tree in template_variables.items() if col not in collections}
    used, missing = set[str](), list[str]()
    for col, path, leaf in _collections(template_variables, collections, name):
        key = _torch_key(path)
        value = _lookup(state_dict, key, path[-1] == COUNTER, used, missing)
        if value is None:
            continue
        node = result.setdefault(col, {})
        for module in path[:-1]:
            node = node.setdefault(module, {})
        node[path[-1]] = _as_template_leaf(value, leaf, key, col, path)
    _check_keys(state_dict, used, missing, strict, "template", name=name)
    return result


def _check_keys(state_dict: Mapping[str, Any], used: set[str], missing: list[str], strict: bool, target: str, *,
                name: str | None = None) -> None:
    """Raise ValueError naming the missing keys (and, if ``strict``, the unused ones) of a state dict loaded into
    ``target`` by the public function ``name``; PyTorch's ``num_batches_tracked`` counters may always be left
    unused."""
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith(COUNTER))
    problems = [f"missing keys {missing}"] if missing else []
    if strict and unexpected:
        problems.append(f"unexpected keys {unexpected} (strict=False ignores them)")
    if problems:
        where = f"{name}: " if name else ""
        raise ValueError(f"{where}state dict does not match the {target}: " + "; ".join(problems))


def _as_template_leaf(value: NDArray[Any], leaf: Any, key: str, col: str, path: tuple[str, ...]) -> jax.Array:
    """A state-dict tensor in the Flax layout, shape and dtype of the template's ``leaf`` (a copy: see _to_numpy)."""
    shape, dtype = tuple(np.shape(leaf)), getattr(leaf, "dtype", np.asarray(leaf).dtype)
    perm = _leaf_perm(path, len(shape), "torch_to_flax_variables")
    expected = tuple(shape[i] for i in perm) if perm else shape
    if value.shape != expected:
        raise ValueError(
            f"torch_to_flax_variables: state dict entry {key!r}: expected shape {expected} (Flax "
            f"{col}/{'/'.join(path)} of shape {shape}), got {value.shape}"
        )
    return jnp.array(value.transpose(np.argsort(perm)) if perm else value, dtype=dtype)
