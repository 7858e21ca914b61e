"""The float64 reference every implementation is cross-checked against, and the error measure.

:func:`reference` computes y and dx in float64 from the same float32 inputs with the two-pass formula (the mean
first, then the squares of the deviations) and the closed-form backward; it is itself tested against PyTorch's
float64 autograd. The error of an implementation is ``max|got − ref| / max|ref|`` (:func:`rel_err`).
"""

from __future__ import annotations

import math

import numpy as np

from experiments.benchmark.cases import EPS, GROUPS, Case
from experiments.benchmark.inputs import Problem, param_shape


def _stat_view(case: Case, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(shape of x viewed so that each statistics group is a slice, the reduced axes, the parameters' view shape)."""
    if case.op == "batch_norm_2d":
        axes = (0, 2, 3) if case.layout == "NCHW" else (0, 1, 2)
        return shape, axes, param_shape(case, 4, shape[case.channel_axis])
    if case.op == "group_norm":
        if case.layout == "NCHW":
            n, c, h, w = shape
            return (n, GROUPS, c // GROUPS, h, w), (2, 3, 4), (1, GROUPS, c // GROUPS, 1, 1)
        n, h, w, c = shape
        return (n, h, w, GROUPS, c // GROUPS), (1, 2, 4), (1, 1, 1, GROUPS, c // GROUPS)
    return shape, (len(shape) - 1,), (1,) * (len(shape) - 1) + (shape[-1],)


def reference(case: Case, p: Problem) -> tuple[np.ndarray, np.ndarray, float]:
    """Float64 ``(y, dx, condition)`` from the float32 inputs: two-pass statistics, closed-form backward.

    ``condition`` is the largest ``mean² / variance`` over the statistics groups (how ill-conditioned the data is;
    jaxnorm's CPU statistics switch to shifted sums above 4). With a mask, statistics over the valid values and y,
    dx zero elsewhere (jaxnorm's semantics).
    """
    view, axes, pview = _stat_view(case, p.x.shape)
    x, dy = p.x.astype(np.float64).reshape(view), p.dy.astype(np.float64).reshape(view)
    w = p.weight.astype(np.float64).reshape(pview)
    b = 0.0 if p.bias is None else p.bias.astype(np.float64).reshape(pview)
    valid = None if p.mask is None else np.broadcast_to(p.mask, p.x.shape).reshape(view)
    count = math.prod(view[a] for a in axes) if valid is None else np.sum(valid, axes, keepdims=True)

    def mean(v):
        return np.sum(v if valid is None else np.where(valid, v, 0.0), axes, keepdims=True) / count

    centered = case.op != "rms_norm"
    mu = mean(x) if centered else 0.0
    xc = x - mu
    var = mean(xc * xc)  # two-pass: the mean first, then the squares of the deviations
    condition = float(np.max(mu * mu / np.maximum(var, 1e-300))) if centered else 0.0
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = xc * inv
    y, g = xhat * w + b, dy * w
    dx = (g - (mean(g) if centered else 0.0) - xhat * mean(g * xhat)) * inv
    if valid is not None:
        y, dx = np.where(valid, y, 0.0), np.where(valid, dx, 0.0)
    return y.reshape(p.x.shape), dx.reshape(p.x.shape), condition


def rel_err(got: np.ndarray, ref: np.ndarray, where: np.ndarray | None = None) -> float:
    """``max|got − ref| / max|ref|`` (over ``where`` only, if given); NaN anywhere in ``got`` gives NaN."""
    diff = np.abs(np.asarray(got, np.float64) - ref)
    if where is not None:
        diff = np.where(np.broadcast_to(where, diff.shape), diff, 0.0)
    return float(np.max(diff) / max(float(np.max(np.abs(ref))), 1e-30))
