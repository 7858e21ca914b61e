"""``activation_stats`` for Flax NNX models: :func:`jaxnorm.activations.activation_stats` (documented there) dispatches
here. It imports ``flax.nnx``, so inspecting a linen model does not.

Every module call of an NNX model is observed as it returns (:mod:`jaxnorm._observe`: NNX has no method interceptor,
and nothing is patched instead), on a copy of the model.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from jaxnorm._observe import observe_returns
from jaxnorm.activations import ROOT, ActivationStats, _stats

__all__ = ["nnx_activation_stats"]


def nnx_activation_stats(model: nnx.Module, *args: Any, **call_kwargs: Any) -> ActivationStats:
    """The rows of every module call of ``model(*args, **call_kwargs)``, run on a copy (``nnx.clone``)."""
    copy = nnx.clone(model)  # a training-mode call updates BatchStats and RNG state in place: not the caller's
    modules = {id(m): m for _, m in nnx.iter_modules(copy)}
    names = {id(m): ".".join(map(str, path)) or ROOT for path, m in nnx.iter_modules(copy)}
    outputs: dict[str, list[Any]] = {}

    def record(module: nnx.Module, out: Any) -> None:
        outputs.setdefault(names[id(module)], []).append(out)  # dict order = first completion: inner modules first

    with observe_returns("activation_stats", modules, record):
        copy(*args, **call_kwargs)
    return _stats(list(outputs), outputs)
