r"""Batch Renormalization (Ioffe, 2017) as a pure function, and the clip schedule its training needs.

Training-mode BN normalizes by the batch statistics, so a model's output for one example depends on the rest of
its batch, and training (batch statistics) and inference (running statistics) differ — most when batches are small
or not i.i.d. Batch Renormalization corrects the batch-normalized value towards what the running statistics give:

.. math::
    \hat x = \frac{x - \mu_B}{\sigma_B}\,r + d,\qquad
    r = \mathrm{clip}\Big(\frac{\sigma_B}{\sigma},\ \tfrac{1}{r_{max}},\ r_{max}\Big),\quad
    d = \mathrm{clip}\Big(\frac{\mu_B - \mu}{\sigma},\ -d_{max},\ d_{max}\Big),\qquad
    y = \hat x\,\gamma + \beta

with ``r`` and ``d`` held constant in backpropagation (``stop_gradient``), ``σ_B = √(σ²_B + ε)`` and ``μ, σ = √(v +
ε)`` the running mean and variance *before* this batch's update. With ``r_max = 1, d_max = 0`` it is BatchNorm.

Differences from the paper and from Keras 3's ``BatchNormalization(renorm=True)``, all deliberate:

* the running statistics are PyTorch's (``running_mean``, ``running_var`` with the *unbiased* batch variance,
  ``momentum`` weighing the new batch, ``num_batches_tracked``), the same collection as :func:`jaxnorm.batch_norm`;
  the paper updates a moving ``σ`` and Keras keeps separate moving averages for the correction
  (``renorm_momentum``) and uses ``momentum`` as the weight of the *old* value (Keras 0.99 = PyTorch 0.01);
* ``σ = √(running_var + ε)``, as the normalization itself uses, where Keras' correction uses its own moving std.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> params, stats = jn.batch_norm_init(1)
  >>> x = jnp.array([[9.0], [11.0]])                 # batch mean 10, std 1; running mean 0, std 1
  >>> y, stats = jn.batch_renorm(x, params, stats, train=True, r_max=1.0, d_max=2.0)
  >>> [round(float(v), 3) for v in y[:, 0]]           # x̂ + d with d = clip((10 - 0) / 1, -2, 2)
  [1.0, 3.0]

References:
  Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models, NeurIPS 2017,
  https://arxiv.org/abs/1702.03275
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._types import BatchStats, Params
from jaxnorm.batch_norm import _batch_norm

__all__ = ["batch_renorm", "renorm_clip_schedule"]


def _check_clip(name: str, value: float | jax.Array, minimum: float, what: str) -> jax.Array:
    if isinstance(value, (int, float, np.integer, np.floating)) and not value >= minimum:
        raise ValueError(f"batch_renorm: expected {what} >= {minimum}, got {name}={value!r}")
    return jnp.asarray(value, jnp.float32)


def batch_renorm(
    x: jax.Array, params: Params, batch_stats: BatchStats, *, train: bool, momentum: float | None = 0.1,
    eps: float = 1e-5, r_max: float | jax.Array = 3.0, d_max: float | jax.Array = 5.0, axis: int = 1,
    axis_name: Hashable | None = None, axis_index_groups: Sequence[Sequence[int]] | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, BatchStats]:
    """Batch Renormalization; returns ``(y, new_batch_stats)`` with :func:`jaxnorm.batch_norm`'s keys and update.

    Args:
      x, params, momentum, eps, axis, axis_name, axis_index_groups, mask: as :func:`jaxnorm.batch_norm`.
      batch_stats: the running statistics; required (the correction is relative to them).
      train: ``True``: the renormalized output above, and the running statistics updated as BatchNorm does.
        ``False``: BatchNorm's eval mode (the running statistics).
      r_max, d_max: the clips of ``r`` (``>= 1``) and ``d`` (``>= 0``); Python numbers or traced scalars, so a
        schedule (:func:`renorm_clip_schedule`) does not recompile the step.

    Raises:
      ValueError: empty ``batch_stats``, ``r_max < 1`` or ``d_max < 0`` (checked when they are Python numbers), and
        everything :func:`jaxnorm.batch_norm` checks.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxnorm as jn
      >>> params, stats = jn.batch_norm_init(2)
      >>> x = jnp.arange(8.0).reshape(4, 2)
      >>> y, new = jn.batch_renorm(x, params, stats, train=True, r_max=1.0, d_max=0.0)   # no correction: BN
      >>> bool(jnp.allclose(y, jn.batch_norm(x, params, stats, train=True)[0]))
      True

    References:
      Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models, NeurIPS 2017,
      https://arxiv.org/abs/1702.03275
    """
    if not batch_stats:
        raise ValueError("batch_renorm: expected running statistics in batch_stats (the correction is relative to "
                         "them), got an empty collection")
    clips = (_check_clip("r_max", r_max, 1.0, "r_max"), _check_clip("d_max", d_max, 0.0, "d_max"))
    return _batch_norm("batch_renorm", x, params, batch_stats, train=train, momentum=momentum, eps=eps, axis=axis,
                       axis_name=axis_name, axis_index_groups=axis_index_groups, mask=mask, renorm=clips)


def renorm_clip_schedule(step: int | jax.Array, *, r_max: float = 3.0, d_max: float = 5.0, warmup_steps: int = 5000,
                         r_max_steps: int = 40000, d_max_steps: int = 25000) -> tuple[jax.Array, jax.Array]:
    """``(r_max, d_max)`` at training ``step``: the paper's relaxation from plain BN to full renormalization.

    BatchNorm (``r_max = 1``, ``d_max = 0``) for the first ``warmup_steps`` updates, while the running statistics
    settle; then ``r_max`` rises linearly to its final value at ``r_max_steps`` and ``d_max`` at ``d_max_steps``
    (Ioffe 2017, §4: 5k, 40k and 25k steps for r_max = 3, d_max = 5). Jit-compatible: ``step`` may be traced.

    Example:
      >>> import jaxnorm as jn
      >>> [tuple(round(float(v), 2) for v in jn.renorm_clip_schedule(s)) for s in (0, 5000, 22500, 40000)]
      [(1.0, 0.0), (1.0, 0.0), (2.0, 4.38), (3.0, 5.0)]

    References:
      Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models, NeurIPS 2017,
      https://arxiv.org/abs/1702.03275 (section 4)
    """
    t = jnp.asarray(step, jnp.float32)

    def ramp(start: int | jax.Array, end: int | jax.Array, final: float) -> jax.Array:  # the counts may be traced
        start_f, end_f = jnp.asarray(start, jnp.float32), jnp.asarray(end, jnp.float32)
        return jnp.clip((t - start_f) / jnp.maximum(end_f - start_f, 1.0), 0.0, 1.0) * final

    return 1.0 + ramp(warmup_steps, r_max_steps, r_max - 1.0), ramp(warmup_steps, d_max_steps, d_max)
