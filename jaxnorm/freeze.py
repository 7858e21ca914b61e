"""``freeze_batch_norm`` for both Flax front-ends (see :mod:`jaxnorm.frozen` for the frozen layer itself).

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> import jaxnorm.linen as jnn
  >>> variables = jnn.BatchNorm2d(3).init(jax.random.key(0), jnp.ones((1, 3, 2, 2)), train=False)
  >>> sorted(jn.freeze_batch_norm(variables)["batch_stats"])
  ['bias', 'running_mean', 'running_var', 'weight']

References:
  torchvision's ``FrozenBatchNorm2d``,
  https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from jaxnorm import nnx as jnnx
from jaxnorm.frozen import freeze_linen_variables

__all__ = ["freeze_batch_norm"]


def freeze_batch_norm(variables_or_model: Mapping[str, Any] | nnx.Module) -> Any:
    """Turn every normalization layer with running statistics into torchvision's ``FrozenBatchNorm2d``: a fixed
    affine map (scale ``w · rsqrt(v + ε)``, shift ``b − μ · scale``) that is neither updated nor trained.

    Args:
      variables_or_model: a linen model's variables (the same model then computes the frozen layers from the new
        variables, see :func:`jaxnorm.frozen.freeze_linen_variables`), or an NNX model (its layers are replaced in
        place by :class:`jaxnorm.nnx.FrozenBatchNorm`, see :func:`jaxnorm.nnx.freeze_batch_norm`).

    Returns:
      New linen variables, or the NNX model (changed in place).

    Raises:
      ValueError: nothing to freeze, or not linen variables.

    Example:
      >>> from flax import nnx
      >>> import jaxnorm as jn
      >>> import jaxnorm.nnx as jnnx
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnnx.BatchNorm1d(3))
      >>> jn.freeze_batch_norm(model).layers[1].__class__.__name__        # NNX: in place
      'FrozenBatchNorm'
      >>> jn.freeze_batch_norm({"params": {}})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: freeze_batch_norm: expected linen variables with a 'batch_stats' collection ..., got ['params']

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html
    """
    if isinstance(variables_or_model, nnx.Module):
        return jnnx.freeze_batch_norm(variables_or_model)
    return freeze_linen_variables(variables_or_model)
