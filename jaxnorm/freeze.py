"""``freeze_batch_norm`` for every front-end: linen variables, NNX models and Equinox models (see
:mod:`jaxnorm.frozen` for the frozen map itself).

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> import jaxnorm.linen as jnn
  >>> variables = jnn.BatchNorm2d(3).init(jax.random.key(0), jnp.ones((1, 3, 2, 2)), train=False)
  >>> sorted(jn.freeze_batch_norm(variables)["batch_stats"])
  ['bias', 'running_mean', 'running_var', 'weight']

References:
  torchvision's ``FrozenBatchNorm2d``,
  https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html; open_clip's
  ``freeze_batch_norm_2d(module, module_match)``, https://github.com/mlfoundations/open_clip
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from jaxnorm import nnx as jnnx
from jaxnorm.frozen import freeze_linen_variables

__all__ = ["freeze_batch_norm"]


def _is_equinox(model: Any, state: Any) -> bool:
    """Whether ``(model, state)`` is an Equinox model and its state (never imports Equinox: if it is not imported,
    neither can be one)."""
    eqx = sys.modules.get("equinox")
    return eqx is not None and (isinstance(model, eqx.Module) or isinstance(state, eqx.nn.State))


def freeze_batch_norm(variables_or_model: Mapping[str, Any] | nnx.Module | Any, state: Any = None, *,
                      where: Callable[[str], bool] | None = None) -> Any:
    """Turn the normalization layers with running statistics into torchvision's ``FrozenBatchNorm2d``: a fixed
    affine map (scale ``w · rsqrt(v + ε)``, shift ``b − μ · scale``) that is neither updated nor trained. Every such
    layer, or those whose dotted path ``where`` selects (open_clip's ``module_match``).

    Three forms, by the kind of model:

    - linen: ``variables = freeze_batch_norm(variables, where=None)``: new variables; each frozen layer's weight,
      bias and statistics move from ``params`` to ``batch_stats``, and the same model computes the frozen map from
      them (:func:`jaxnorm.frozen.freeze_linen_variables`).
    - NNX: ``model = freeze_batch_norm(model, where=None)``: the layers are replaced in place by
      :class:`jaxnorm.nnx.FrozenBatchNorm` (:func:`jaxnorm.nnx.freeze_batch_norm`).
    - Equinox: ``model, state = freeze_batch_norm(model, state, where=None)``: a new model with
      ``jaxnorm.equinox.FrozenBatchNorm`` layers, and its state, which loses the frozen layers' entries
      (``jaxnorm.equinox.freeze_batch_norm``).

    Args:
      variables_or_model: a linen model's variables, an NNX model or an Equinox model.
      state: the Equinox model's ``eqx.nn.State``; ``None`` for the others.
      where: ``None`` (every layer with running statistics), or ``where(path) -> bool`` of a layer's dotted path,
        the prefix of its keys in the torch state dict: linen module names (``block1.bn``), NNX and Equinox attribute
        paths with list items by index (``layers.0.bn``).

    Raises:
      TypeError: a ``state`` with linen variables or an NNX model, none with an Equinox model; ``where`` not callable.
      ValueError: not linen variables, nothing to freeze, or a ``where`` that selects no layer (the message lists
        the layers' paths).

    Example:
      >>> from flax import nnx
      >>> import jaxnorm as jn
      >>> import jaxnorm.nnx as jnnx
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnnx.BatchNorm1d(3), jnnx.BatchNorm1d(3))
      >>> [type(m).__name__ for m in jn.freeze_batch_norm(model, where=lambda path: path == "layers.2").layers]
      ['Linear', 'BatchNorm1d', 'FrozenBatchNorm']
      >>> jn.freeze_batch_norm({"params": {}})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: freeze_batch_norm: expected linen variables with a 'batch_stats' collection, ..., got ['params']

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html; open_clip's
      ``freeze_batch_norm_2d(module, module_match)``, https://github.com/mlfoundations/open_clip
    """
    name = "freeze_batch_norm"
    if _is_equinox(variables_or_model, state):
        if state is None:
            raise TypeError(f"{name}: expected the Equinox model's eqx.nn.State as second argument: model, state = "
                            "jn.freeze_batch_norm(model, state), got None")
        from jaxnorm import equinox as jeqx  # Equinox is imported already

        return jeqx.freeze_batch_norm(variables_or_model, state, where=where)
    if state is not None:
        raise TypeError(f"{name}: expected no state (only an Equinox model has one), got {type(state).__name__}")
    if isinstance(variables_or_model, nnx.Module):
        return jnnx.freeze_batch_norm(variables_or_model, where=where)
    return freeze_linen_variables(variables_or_model, where=where)
