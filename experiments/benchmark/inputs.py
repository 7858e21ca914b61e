"""The inputs of one case: x, a random cotangent, random affine parameters and (masked cases) the mask.

Data (``--data``): ``normal`` (default), x ~ N(0.5, 2²): well conditioned, jaxnorm's CPU statistics take their
plain sums. ``offset``: x = o + N(0, 1) with offsets o uniform in ±1e3, one per statistics group — per channel
(BN), per group of channels (GN), per token (LN, RMS) — so every group's mean is ≫ its std: jaxnorm's CPU
statistics add the shifted sums, and the rows measure the price of stability. (Offsets per *feature* would leave a
LayerNorm token well conditioned: its mean is the average of 768 offsets, ≪ their spread.) On offset data Flax's
default fast variance ``E[x²] − E[x]²`` cancels catastrophically, so Flax is timed with ``use_fast_variance=False``
(its two-pass formula; ``--flax-variance`` overrides) and the error of its fast variance on the same data is
recorded (``flax_fast_variance_err``, not timed).

The affine parameters are random (not 1 and 0), so a library that dropped them would fail the cross-check. The
cotangent is random too: a ``grad(sum(y))`` benchmark would be degenerate, XLA folds the constant cotangent. Masked
cases mark the last quarter of the batch invalid and zero ``dy`` there, as a loss over the valid examples does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.benchmark.cases import DATA, GROUPS, OFFSET, Case


@dataclasses.dataclass
class Problem:
    """One case's inputs, float32, in the case's layout; ``bias`` None for RMSNorm, ``mask`` None unless masked."""

    x: np.ndarray
    dy: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    mask: np.ndarray | None

    def valid_examples(self) -> Problem:
        """The unmasked problem on the valid examples alone (the mask only ever masks whole examples here)."""
        n = int(self.mask.reshape(-1).sum())
        return Problem(self.x[:n], self.dy[:n], self.weight, self.bias, None)


def param_shape(case: Case, ndim: int, channels: int) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel vector against x of ``ndim`` dimensions."""
    shape = [1] * ndim
    shape[case.channel_axis] = channels
    return tuple(shape)


def _offsets(case: Case, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One offset per statistics group, broadcastable to x (see the module docstring)."""
    if case.op in ("layer_norm", "rms_norm"):
        return rng.uniform(-OFFSET, OFFSET, shape[:-1] + (1,))
    channels = shape[case.channel_axis]
    if case.op == "group_norm":  # the channels of one group share its offset
        per_channel = np.repeat(rng.uniform(-OFFSET, OFFSET, GROUPS), channels // GROUPS)
    else:
        per_channel = rng.uniform(-OFFSET, OFFSET, channels)
    return per_channel.reshape(param_shape(case, len(shape), channels))


def make_problem(case: Case, shape: tuple[int, ...], data: str, seed: int = 0) -> Problem:
    """Inputs of one case: x (``data``: normal or offset), a random cotangent, random affine parameters, the mask."""
    if data not in DATA:
        raise ValueError(f"data must be one of {sorted(DATA)}, got {data!r}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.float32)
    x = noise * 2.0 + 0.5 if data == "normal" else noise + _offsets(case, shape, rng)
    dy = rng.standard_normal(shape, dtype=np.float32)
    channels = shape[case.channel_axis]
    weight = (1.0 + 0.5 * rng.uniform(-1.0, 1.0, channels)).astype(np.float32)
    bias = None if case.op == "rms_norm" else (0.5 * rng.standard_normal(channels)).astype(np.float32)
    mask = None
    if case.masked:  # the last quarter of the batch is padding
        n = shape[0]
        mask = (np.arange(n) < n - n // 4).reshape((n,) + (1,) * (len(shape) - 1))
        dy = dy * mask  # a loss over the valid examples sends no cotangent to the padding
    return Problem(x.astype(np.float32), dy.astype(np.float32), weight, bias, mask)
