"""``freeze_batch_norm`` for both Flax front-ends (see :mod:`jaxnorm.frozen` for the frozen layer itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from jaxnorm import nnx as jnnx
from jaxnorm.frozen import freeze_linen_variables


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
    """
    if isinstance(variables_or_model, nnx.Module):
        return jnnx.freeze_batch_norm(variables_or_model)
    return freeze_linen_variables(variables_or_model)
