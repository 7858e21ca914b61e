r"""Frozen BatchNorm: every BN a fixed affine map (torchvision's ``FrozenBatchNorm2d``), for fine-tuning.

.. math::
    s = \gamma \cdot \frac{1}{\sqrt{v + \varepsilon}},\qquad t = \beta - \mu\,s,\qquad y = x\,s + t

with ``μ, v`` the running mean and variance. Unlike eval-mode BN, nothing of the layer is trained: the statistics
never update, and the scale and shift receive no gradient (they are held constant).

A frozen layer keeps ``weight``, ``bias``, ``running_mean``, ``running_var`` in its ``batch_stats`` collection (the
buffers of torchvision's ``FrozenBatchNorm2d``, so its state dict maps one-to-one), and none in ``params``: an
optimizer built on the params never sees them. :func:`freeze_linen_variables` makes those variables from a trained
model's; jaxnorm's linen modules recognize a frozen layer by them.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> params, stats = jn.batch_norm_init(1)
  >>> stats = {**stats, "running_mean": jnp.array([2.0]), "running_var": jnp.array([4.0])}
  >>> [round(float(v), 3) for v in jn.frozen_batch_norm(jnp.array([[2.0], [4.0]]), params, stats, eps=0.0)[:, 0]]
  [0.0, 1.0]

References:
  torchvision's ``FrozenBatchNorm2d``,
  https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html;
  Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021, https://arxiv.org/abs/2105.07576 (frozen BN in fine-tuning)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _checks
from jaxnorm._types import COUNTER, BatchStats, Params, channel_shape

__all__ = ["frozen_batch_norm", "freeze_linen_variables"]

FROZEN_KEYS = ("weight", "bias", "running_mean", "running_var")


def frozen_batch_norm(x: jax.Array, params: Params, batch_stats: BatchStats, *, eps: float = 1e-5,
                      axis: int = 1) -> jax.Array:
    """A BatchNorm frozen to the affine map above, with torchvision's ``FrozenBatchNorm2d`` arithmetic.

    Args:
      x: input ``(N, C, ...)`` (or channels-last with ``axis=-1``).
      params: ``{"weight", "bias"}`` (C,), or ``{}`` (weight 1, bias 0).
      batch_stats: must hold ``running_mean`` and ``running_var`` (C,); other keys are ignored.
      eps: added to the running variance.
      axis: the channel axis.

    Returns:
      ``y`` with ``x``'s shape and dtype; no gradient flows to any parameter or statistic.

    Raises:
      ValueError: no running statistics, channel mismatches; TypeError: non-floating ``x``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(2)
      >>> x = jnp.ones((3, 2, 4))
      >>> grads = jax.grad(lambda p: jn.frozen_batch_norm(x, p, stats).sum())(params)
      >>> [g.tolist() for g in grads.values()]              # the frozen layer is not trained
      [[0.0, 0.0], [0.0, 0.0]]

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html;
      Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021, https://arxiv.org/abs/2105.07576 (frozen BN in fine-tuning)
    """
    name = "frozen_batch_norm"
    _checks.check_floating(name, x)
    axis = _checks.channel_axis(name, x, axis)
    channels = x.shape[axis]
    _checks.check_params(name, params, (channels,))
    if "running_mean" not in batch_stats or "running_var" not in batch_stats:
        raise ValueError(f"{name}: expected batch_stats with 'running_mean' and 'running_var', got keys "
                         f"{sorted(batch_stats)}")
    _checks.check_batch_stats(name, {**{k: batch_stats[k] for k in ("running_mean", "running_var")},
                                     COUNTER: jnp.zeros((), jnp.int32)}, channels)
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    with jax.named_scope(name):  # the layer's operations carry its name in profiles and HLO dumps
        weight = params.get("weight", jnp.ones((channels,), dtype)).astype(dtype)
        bias = params.get("bias", jnp.zeros((channels,), dtype)).astype(dtype)
        scale = weight * lax.rsqrt(batch_stats["running_var"].astype(dtype) + eps)
        shift = bias - batch_stats["running_mean"].astype(dtype) * scale
        shape = channel_shape(x.ndim, axis, channels)
        scale, shift = (lax.stop_gradient(v).reshape(shape) for v in (scale, shift))
        return (x.astype(dtype) * scale + shift).astype(x.dtype)


def _freeze_layer(params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    mean = stats["running_mean"]
    return {"weight": params.get("weight", jnp.ones_like(mean)), "bias": params.get("bias", jnp.zeros_like(mean)),
            "running_mean": stats["running_mean"], "running_var": stats["running_var"]}


Path = tuple[str, ...]


def _unfrozen_layers(stats: Mapping[str, Any], path: Path = ()) -> list[Path]:
    """Paths of the layers with running statistics in a linen ``batch_stats`` tree that are not frozen yet (a frozen
    layer keeps its weight there, and is left as it is)."""
    if "running_mean" in stats and "running_var" in stats:
        return [] if is_frozen(stats) else [path]
    return [p for key, sub in stats.items() if isinstance(sub, Mapping) for p in _unfrozen_layers(sub, (*path, key))]


def _get(tree: Mapping[str, Any], path: Path) -> Any:
    for key in path:
        tree = tree.get(key, {}) if isinstance(tree, Mapping) else {}
    return tree


def _put(tree: Mapping[str, Any], path: Path, value: Any) -> Any:
    """A copy of ``tree`` with ``value`` at ``path`` (``None``: removed, with the dicts that leaves empty)."""
    if not path:
        return {} if value is None else value
    out = dict(tree)
    head, rest = path[0], path[1:]
    new = _put(out.get(head, {}), rest, value) if rest else value
    if new is None or (value is None and not new):
        out.pop(head, None)
    else:
        out[head] = new
    return out


def freeze_linen_variables(variables: Mapping[str, Any], *,
                           where: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Freeze the normalization layers with running statistics in a linen model's ``variables``: every such layer,
    or those whose dotted path ``where`` selects.

    Each frozen layer (jaxnorm's ``BatchNorm*d``/``BatchRenorm``, and ``InstanceNorm*d`` with
    ``track_running_stats=True``) loses its ``params`` entry and gets ``weight``, ``bias``, ``running_mean``,
    ``running_var`` in ``batch_stats`` (weight 1 and bias 0 when it had no affine parameters). Apply the *same* model
    to the result: its jaxnorm layers then compute :func:`frozen_batch_norm` whatever ``train`` says, and update
    nothing. Layers frozen before are left as they are.

    Args:
      variables: ``{"params": ..., "batch_stats": ..., ...}`` of a trained linen model.
      where: ``None`` (every layer), or ``where(path) -> bool`` of a layer's dotted path: its module names joined by
        dots (``block1.bn``, ``""`` for a model that is itself the layer), the prefix of its keys in
        :func:`jaxnorm.flax_to_torch_state_dict`.

    Returns:
      New variables (the input is not modified); other layers and collections are unchanged.

    Raises:
      TypeError: ``where`` is not callable.
      ValueError: no ``batch_stats`` collection, no (unfrozen) layer with running statistics in it, or ``where``
        selects none of them (the message lists their paths).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxnorm.linen as jnn
      >>> from jaxnorm.frozen import freeze_linen_variables
      >>> bn, x = jnn.BatchNorm1d(2), jnp.ones((4, 2))
      >>> frozen = freeze_linen_variables(bn.init(jax.random.key(0), x, train=False))
      >>> sorted(frozen["params"]), sorted(frozen["batch_stats"])
      ([], ['bias', 'running_mean', 'running_var', 'weight'])
      >>> y, updates = bn.apply(frozen, x, train=True, mutable=["batch_stats"])   # a fixed map, whatever train says
      >>> bool(jax.tree.all(jax.tree.map(jnp.array_equal, updates["batch_stats"], frozen["batch_stats"])))
      True

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html;
      Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021, https://arxiv.org/abs/2105.07576 (frozen BN in fine-tuning)
    """
    name = "freeze_batch_norm"
    if not isinstance(variables, Mapping) or not isinstance(variables.get("batch_stats"), Mapping):
        got = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"{name}: expected linen variables with a 'batch_stats' collection, an NNX model or an "
                         f"Equinox model, got {got}")
    layers = {".".join(path): path for path in _unfrozen_layers(variables["batch_stats"])}
    chosen = _checks.layers_to_freeze(name, where, list(layers), "batch_stats (running_mean, running_var)")
    params, stats = variables.get("params", {}), variables["batch_stats"]
    for path in (layers[p] for p in chosen):
        frozen = _freeze_layer(_get(params, path), _get(stats, path))
        params, stats = _put(params, path, None), _put(stats, path, frozen)
    return {**variables, "params": params, "batch_stats": stats}


def is_frozen(stats: Mapping[str, Any]) -> bool:
    """Whether a layer's ``batch_stats`` are those of a frozen layer (they hold its weight)."""
    return "weight" in stats
