"""Whole Flax NNX models <-> PyTorch-style flat state dicts.

The NNX counterpart of :func:`jaxnorm.flax_to_torch_state_dict` / :func:`jaxnorm.torch_to_flax_variables`, with the
same key rules (kept in :mod:`jaxnorm.interop` and imported from there): a Variable's path in the model joined by
``"."`` (list indices too: ``layers.0.weight``, as PyTorch's ``ModuleList``/``Sequential``), its last name renamed
(``kernel``/``scale``/``embedding`` -> ``weight``, ``nnx.BatchNorm``'s ``mean``/``var`` -> ``running_mean``/
``running_var``) and kernels transposed to PyTorch's layouts. jaxnorm's own NNX layers already use PyTorch's names.
Only ``nnx.Param`` and ``nnx.BatchStat`` Variables are exported and loaded (PyTorch's parameters and buffers); RNG
and optimizer state are not part of a PyTorch ``state_dict``.

torch is never imported here: tensors are recognised by duck typing, as in :mod:`jaxnorm.interop`.

Example:
  >>> from flax import nnx
  >>> import jaxnorm as jn
  >>> import jaxnorm.nnx as jnnx
  >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnnx.BatchNorm1d(3))
  >>> sd = jn.nnx_to_torch_state_dict(model)
  >>> sd["layers.0.weight"].shape, int(sd["layers.1.num_batches_tracked"])
  ((3, 2), 0)
  >>> jn.torch_to_nnx(sd, model) is model
  True

References:
  PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html;
  Flax NNX, https://flax.readthedocs.io/en/latest/nnx_basics.html
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpy.typing import NDArray

from jaxnorm._types import COUNTER
from jaxnorm.interop import _check_keys, _check_state_dict, _leaf_perm, _lookup, _torch_key

__all__ = ["nnx_to_torch_state_dict", "torch_to_nnx"]

_EXPORTED = (nnx.Param, nnx.BatchStat)


def _variables(model: nnx.Module, name: str) -> Iterator[tuple[tuple[str, ...], str, nnx.Variable[Any]]]:
    """``(path, PyTorch key, Variable)`` for every Param and BatchStat of ``model`` (each shared Variable once).

    Raises:
      TypeError: ``model`` is not an NNX Module.
      ValueError: two Variables map to the same PyTorch key.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{name}: expected a flax.nnx.Module, got {type(model).__name__}")
    seen: dict[str, str] = {}
    for keys, variable in nnx.to_flat_state(nnx.state(model, _EXPORTED)):
        path = tuple(str(k) for k in keys)  # attribute names, and list indices as strings
        key = _torch_key(path)
        if key in seen:
            raise ValueError(f"{name}: two NNX Variables map to the PyTorch key {key!r}: {seen[key]} and "
                             f"{'/'.join(path)}")
        seen[key] = "/".join(path)
        yield path, key, variable


def nnx_to_torch_state_dict(model: nnx.Module) -> dict[str, NDArray[Any]]:
    """An NNX model's parameters and buffers as a flat PyTorch-style state dict of NumPy arrays.

    - ``nnx.Linear.kernel (in, out)`` -> ``weight (out, in)``;
    - ``nnx.Conv.kernel (*k, in, out)`` -> ``weight (out, in, *k)`` (1, 2 or 3 spatial dims, grouped too);
    - ``scale`` / ``embedding`` -> ``weight``; ``nnx.BatchNorm``'s ``mean`` / ``var`` -> ``running_mean`` /
      ``running_var``;
    - anything else (``bias``, the leaves of jaxnorm.nnx layers) keeps its name and array; ``num_batches_tracked``
      becomes a 0-d int64, as PyTorch stores it.

    E.g. a model with attributes ``conv1`` (``nnx.Conv``), ``bn1`` (``jaxnorm.nnx.BatchNorm2d``) and ``layers``
    (an ``nnx.List`` of ``nnx.Linear``) gives ``conv1.weight, conv1.bias, bn1.weight, ..., bn1.running_mean, ...,
    layers.0.weight, layers.0.bias, ...``. ``nnx.ConvTranspose`` kernels have another PyTorch layout and are not
    supported. Note that ``nnx.BatchNorm``'s ``var`` is an average of *biased* batch variances (PyTorch's, and
    jaxnorm's, are unbiased) and that it keeps no ``num_batches_tracked``.

    Args:
      model: an NNX Module.

    Returns:
      ``{key: array}``: writable NumPy copies, in the order of ``nnx.state`` (sorted by path); load them with
      ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

    Raises:
      TypeError: ``model`` is not an NNX Module.
      ValueError: two Variables map to the same PyTorch key (e.g. a module with both ``kernel`` and ``weight``), or
        a kernel of rank < 2.

    Example:
      >>> from flax import nnx
      >>> import jaxnorm as jn
      >>> model = nnx.Sequential(nnx.Conv(3, 8, (3, 3), rngs=nnx.Rngs(0)), nnx.BatchNorm(8, rngs=nnx.Rngs(0)))
      >>> {k: v.shape for k, v in jn.nnx_to_torch_state_dict(model).items() if k.startswith("layers.0")}
      {'layers.0.bias': (8,), 'layers.0.weight': (8, 3, 3, 3)}
      >>> sorted(k for k in jn.nnx_to_torch_state_dict(model) if k.startswith("layers.1"))
      ['layers.1.bias', 'layers.1.running_mean', 'layers.1.running_var', 'layers.1.weight']

    References:
      PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
    """
    out: dict[str, NDArray[Any]] = {}
    for path, key, variable in _variables(model, "nnx_to_torch_state_dict"):
        value = np.array(variable.get_value(), dtype=np.int64 if path[-1] == COUNTER else None)
        perm = _leaf_perm(path, value.ndim, "nnx_to_torch_state_dict")
        out[key] = np.ascontiguousarray(value.transpose(perm)) if perm else value
    return out


def _as_variable(name: str, path: tuple[str, ...], key: str, value: NDArray[Any], current: Any) -> jax.Array:
    """State-dict entry ``key`` (PyTorch's layout) as the array of the Variable at ``path`` whose value is ``current``
    (an array, or a ShapeDtypeStruct in an abstract model): shape checked, axes permuted, cast to its dtype."""
    shape = tuple(current.shape)
    perm = _leaf_perm(path, len(shape), name)
    expected = tuple(shape[i] for i in perm) if perm else shape
    if value.shape != expected:
        raise ValueError(f"{name}: state dict entry {key!r}: expected shape {expected} (NNX {'/'.join(path)} "
                         f"of shape {shape}), got {value.shape}")
    if perm:
        value = value.transpose(np.argsort(perm))
    return jnp.array(value, dtype=current.dtype)  # a copy: see interop._to_numpy


def torch_to_nnx(state_dict: Mapping[str, Any], model: nnx.Module, *, strict: bool = True) -> nnx.Module:
    """Load a PyTorch-style state dict into an NNX model **in place** (as ``torch_model.load_state_dict`` and
    ``nnx.update`` do); the inverse of :func:`nnx_to_torch_state_dict`.

    Every ``nnx.Param``/``nnx.BatchStat`` of ``model`` is read from ``state_dict[key]`` (key and transpose as in
    :func:`nnx_to_torch_state_dict`), checked against the Variable's shape and cast to its dtype
    (``num_batches_tracked`` int64 -> int32). All entries are checked before any Variable is written, so a failed
    load leaves the model unchanged. The arrays are copies (a later in-place update of the torch tensors does not
    reach the model). The model may be abstract, ``nnx.eval_shape(lambda: Model(rngs=nnx.Rngs(0)))``, so that no
    initializer runs; every Variable outside the state dict (RNG state, ...) then stays abstract.

    Args:
      state_dict: ``torch_model.state_dict()`` (tensors on any device) or a dict of NumPy/JAX arrays.
      model: the NNX model to load into (concrete or abstract); it fixes the keys, shapes and dtypes.
      strict: also fail on state-dict entries the model has no Variable for (PyTorch's ``strict=True``).
        ``num_batches_tracked`` entries are never required to be matched (``nnx.BatchNorm`` keeps no counter), and
        a counter missing from the state dict loads as 0, as PyTorch does for checkpoints older than 0.4.1.

    Returns:
      ``model`` itself (loaded in place), for chaining: ``model = torch_to_nnx(sd, Model(rngs=nnx.Rngs(0)))``.

    Raises:
      TypeError: ``state_dict`` is not a mapping, or ``model`` not an NNX Module.
      ValueError: missing (or, with ``strict``, unexpected) keys, or a shape that does not match (the message names
        both shapes).

    Example:
      >>> import numpy as np
      >>> from flax import nnx
      >>> import jaxnorm as jn
      >>> model = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0)))     # abstract: no initializer runs
      >>> sd = {"weight": np.arange(6.0).reshape(3, 2), "bias": np.zeros(3)}  # torch Linear (out, in)
      >>> jn.torch_to_nnx(sd, model).kernel[...].tolist()                      # nnx.Linear (in, out)
      [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
      >>> jn.torch_to_nnx({"weight": np.ones((3, 2))}, model)
      Traceback (most recent call last):
      ValueError: torch_to_nnx: state dict does not match the model: missing keys ['bias']

    References:
      PyTorch's ``state_dict``, https://pytorch.org/tutorials/beginner/saving_loading_models.html
    """
    name = "torch_to_nnx"
    _check_state_dict(name, state_dict)
    loads, used, missing = [], set[str](), list[str]()
    for path, key, variable in _variables(model, name):
        value = _lookup(state_dict, key, path[-1] == COUNTER, used, missing)
        if value is None:
            continue
        loads.append((variable, _as_variable(name, path, key, value, variable.get_value())))
    _check_keys(state_dict, used, missing, strict, "model", name=name)
    for variable, array in loads:
        variable.set_value(array)
    return model
