"""Benchmark jaxnorm against flax.linen and PyTorch: training-mode forward and forward+backward.

Run ``python -m experiments.benchmark`` (``--help`` for flags). Every case runs in each layout that both JAX
libraries support, so both sides do the same work; where one side needs extra work (Flax's GroupNorm is
channels-last only) that work is timed as part of *its* path and the row says so.

================  ==================  ========  ===========================================================
case              shape               layout    how each library runs it
================  ==================  ========  ===========================================================
``bn_nchw``       (64, 64, 32, 32)    NCHW      jaxnorm ``axis=1``; Flax ``BatchNorm(axis=1)``; torch NCHW
``bn_nhwc``       (64, 32, 32, 64)    NHWC      jaxnorm ``axis=-1``; Flax ``BatchNorm(axis=-1)``; torch on the
                                                channels_last view of the same memory
``gn_nhwc``       (64, 32, 32, 64)    NHWC      8 groups; jaxnorm ``axis=-1``; Flax ``GroupNorm`` (channels-last
                                                natively); torch ``F.group_norm`` on the channels_last view
``gn_nchw``       (64, 64, 32, 32)    NCHW      8 groups; jaxnorm ``axis=1``; torch NCHW; Flax ``GroupNorm`` on
                                                an NHWC transpose, both transposes inside Flax's jitted function
``ln``            (32, 512, 768)      (N,T,D)   LayerNorm over D
``rms``           (32, 512, 768)      (N,T,D)   RMSNorm over D (Flax ``RMSNorm``, torch ``F.rms_norm``)
``bn_nchw_mask``  (64, 64, 32, 32)    NCHW      BN with a mask ``(N, 1, 1, 1)`` that marks the last quarter of the
``bn_nhwc_mask``  (64, 32, 32, 64)    NHWC      batch invalid: jaxnorm masked vs jaxnorm unmasked vs Flax
                                                ``BatchNorm(...)(x, mask=m)``; PyTorch has no mask argument
================  ==================  ========  ===========================================================

Data (``--data``): ``normal`` (default), x ~ N(0.5, 2²): well conditioned, jaxnorm's CPU statistics take their
plain sums. ``offset``: x = o + N(0, 1) with offsets o uniform in ±1e3, one per statistics group — per channel
(BN), per group of channels (GN), per token (LN, RMS) — so every group's mean is ≫ its std: jaxnorm's CPU
statistics add the shifted sums, and the rows measure the price of stability. (Offsets per *feature* would leave a
LayerNorm token well conditioned: its mean is the average of 768 offsets, ≪ their spread.) On offset data Flax's
default fast variance ``E[x²] − E[x]²`` cancels catastrophically, so Flax is timed with ``use_fast_variance=False``
(its two-pass formula; ``--flax-variance`` overrides) and the error of its fast variance on the same data is
recorded in the JSON (``flax_fast_variance_err``, not timed). The affine parameters are random (not 1 and 0), so a
library that dropped them would fail the cross-check.

Every implementation runs in training mode (batch statistics; BN also returns its updated running statistics).
Two passes are timed:

* ``fwd``: ``y = norm(x)``. JAX: one ``jax.jit`` call. torch: the functional op under ``no_grad``.
* ``fwd+bwd``: ``y, vjp = jax.vjp(norm, x, params); dx, dparams = vjp(dy)`` with a *random* cotangent ``dy``, the
  whole thing under one ``jax.jit`` (a ``grad(sum(y))`` benchmark would be degenerate: XLA folds the constant
  cotangent). torch: ``y = op(x); y.backward(dy)``. Masked rows zero ``dy`` on the masked-out examples, as a loss
  over the valid examples does.

Cross-check before timing: y and dx of every implementation are compared with a float64 NumPy reference computed
from the same float32 inputs with the two-pass formula and the closed-form backward (:func:`reference`, itself
tested against PyTorch's float64 autograd). The error is ``max|got − ref| / max|ref|``; above the tolerance the run
stops with :class:`CrossCheckError` (exit status 1 from the command line, one line naming the case, the
implementation and the error): a table never compares different computations. The tolerance
(:func:`check_tolerance`) is 1e-4 on well-conditioned data: measured errors at the full shapes are ≤ 2.6e-6 for all
three libraries, while a wrong axis or layout, a dropped affine parameter or the fast variance on offset data is
off by ≥ 1e-2. On ill-conditioned data a float32 program that forms ``x − μ`` in float32 is uncertain by a few ulps
of ``|μ|`` in units of σ, so the tolerance of the other libraries grows to 16 such ulps (1.9e-3 on the offset data):
there Flax's two-pass variance measured ≤ 2.2e-4, PyTorch ≤ 7.2e-4 — except PyTorch's channels-last GroupNorm, off
by 0.73 — and Flax's fast variance is off by 0.05 to 300. jaxnorm, which carries the mean as ``hi + lo``, is held to
1e-4 on any data (measured ≤ 3.1e-6 on the offset data). An implementation declared in
``KNOWN_INACCURATE`` (only that PyTorch kernel) that misses the tolerance is not timed, and its row says so with
the error; any other miss stops the run. Flax's masked BN normalizes the masked-out examples with the valid
statistics instead of zeroing them, so its y is compared at valid positions only (its dx is 0 there too, as dy
is). jaxnorm's masked result is also checked against jaxnorm unmasked on the valid examples alone, and to be
exactly 0 off the mask (``check_mask_vs_valid_only``).

Method: inputs are made once; every function is called ``warmup`` times (compiling the JAX ones) and then
``rounds`` rounds are timed (:func:`experiments.common.timing.time_interleaved`): in each round every
implementation makes one untimed settling call and ``inner`` timed calls, in an order rotated by one each round, so
slow drifts of the shared machine's load hit all of them alike and no one pays for the switch from the other
framework. A call is timed with ``time.perf_counter`` around the call and ``block_until_ready`` (JAX dispatch is
included, as a user pays it). ``<impl>_ms`` is the median over all timed calls. Ratios are paired
(:func:`experiments.common.timing.paired_ratios`): the median over rounds of ``median(jaxnorm calls) /
median(other calls)`` within the round, with its interquartile range, so a change of the machine's load moves both
sides of each ratio (< 1: jaxnorm is faster); the *best-call* ratio divides the two fastest calls: on a shared
machine, where a single call can be stalled several-fold, it is the least disturbed reading.

Byte model (what a training-mode normalization *must* move through memory, for ``N`` bytes of x; small
per-channel vectors are ignored):

* ``fwd``: the statistics read x once, normalizing reads x again and writes y: ``B_fwd = 3 N``.
* ``fwd+bwd``: the forward as above, then the backward reads x and dy twice each (once for the two reductions
  ``sum(dy)`` and ``sum(dy * x_hat)``, once for the final map ``dx = w/sigma * (dy - mean(dy) - x_hat *
  mean(dy * x_hat))``) and writes dx: ``B_fwdbwd = 3 N + 5 N = 8 N``.

Achieved bandwidth is ``B / median time`` in GB/s (10^9 bytes/s). It can exceed the machine's DRAM bandwidth when
x fits in cache, so read it as "how close to the memory limit", not as a hardware measurement.

Profile: for the JAX implementations each row also carries ``<impl>_hlo_traffic``, the bytes read and written by
the kernels of the *compiled* program (:func:`experiments.common.hlo.hlo_traffic`) in units of N, a conditional
charged its cheapest branch; ``<impl>_hlo_traffic_dearest`` charges its dearest branch instead (jaxnorm's CPU
statistics take that one on offset data). Compared with the byte model (3 / 8) it shows how many passes over x a
program makes. ``--hlo DIR`` writes the compiled HLO texts.

Results: ``--json FILE`` writes ``{"meta": {...}, "rows": [...]}``; ``meta`` says when, where and on what the
numbers were taken (date, machine, CPU, library versions, git commit, data, rounds). ``--table FILE...`` turns such
files into the Markdown performance tables (:func:`render_tables`; a "faster?" column derived from the ratios by
:func:`verdict`, so that a row where jaxnorm is not faster reads as a miss), ``--write PATH`` saves them, and
:func:`stale_tables` tells whether a document's pasted tables still match their results files.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm as jn
from experiments.common.hlo import hlo_traffic
from experiments.common.lesson_weights import torch_available
from experiments.common.timing import paired_ratios, time_interleaved

__all__ = ["CASES", "CrossCheckError", "bytes_moved", "format_table", "hlo_traffic", "main", "reference",
           "render_tables", "stale_tables", "time_interleaved", "verdict"]

REPO = Path(__file__).resolve().parents[1]
# Passes, in the order they are run and printed.
PASSES = ("fwd", "fwd+bwd")
# Bytes moved per byte of x (see the module docstring).
BYTES_PER_X = {"fwd": 3, "fwd+bwd": 8}
# The libraries (report.plot_benchmark draws <impl>_ms for these), and every implementation a row may carry.
IMPLS = ("jaxnorm", "flax", "torch")
ALL_IMPLS = ("jaxnorm", "jaxnorm_nomask", "flax", "torch")
JAX_IMPLS = ("jaxnorm", "jaxnorm_nomask", "flax")
LABELS = {"jaxnorm": "jaxnorm", "jaxnorm_nomask": "jaxnorm unmasked", "flax": "Flax", "torch": "PyTorch"}
EPS = 1e-5
GROUPS = 8
OFFSET = 1e3  # offset data: per-group offsets uniform in ±OFFSET, std 1
CHECK_TOL = 1e-4  # cross-check: max|got - ref| / max|ref| on well-conditioned data (why: module docstring)
ROUNDING_ULPS = 16  # ... and on ill-conditioned data, this many float32 ulps of the mean (see check_tolerance)
# Implementations known to compute different numbers on some data: there they are not timed (the row says why),
# instead of stopping the run; anywhere else a mismatch stops it. Measured with torch 2.13 on the CPU, offset data.
KNOWN_INACCURATE = {("gn_nhwc", "torch"): "PyTorch's channels-last GroupNorm"}
GAIN = 0.05  # a speed-up smaller than 5 % is not claimed (see verdict)
DATA = {
    "normal": "x ~ N(0.5, 2²): well conditioned",
    "offset": f"x = o + N(0, 1), o uniform in ±{OFFSET:g}, one o per channel (BN), per group of channels (GN), "
              "per token (LN, RMS): ill conditioned",
}
FLAX_VARIANCE = ("auto", "fast", "two-pass")


class CrossCheckError(RuntimeError):
    """An implementation's y or dx is not the reference's: the run stops before timing."""


class ResultsFileError(ValueError):
    """A file given to --table is not a results file written by --json."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: which norm, its layout, the full and --quick shapes, and how each library runs it."""

    name: str
    op: str  # "batch_norm_2d" | "group_norm" | "layer_norm" | "rms_norm"
    title: str  # the norm, as the tables name it
    layout: str  # layout of x as given to every implementation (Flax's NCHW GroupNorm transposes inside)
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    flax: str  # how Flax runs it (the row's label)
    torch: str | None  # how PyTorch runs it; None: PyTorch is not run (``torch_absent`` says why)
    masked: bool = False
    torch_absent: str = ""

    @property
    def channel_axis(self) -> int:
        """Axis of the per-channel parameters (the feature axis for LN/RMS)."""
        return 1 if self.layout == "NCHW" else -1


_NCHW, _NHWC, _NTD = (64, 64, 32, 32), (64, 32, 32, 64), (32, 512, 768)
_Q_NCHW, _Q_NHWC, _Q_NTD = (4, 16, 8, 8), (4, 8, 8, 16), (4, 16, 64)
_NO_MASK = "PyTorch's batch norm takes no mask"
CASES = {c.name: c for c in (
    Case("bn_nchw", "batch_norm_2d", "BatchNorm2d", "NCHW", _NCHW, _Q_NCHW, "BatchNorm(axis=1)",
         "F.batch_norm, NCHW"),
    Case("bn_nhwc", "batch_norm_2d", "BatchNorm2d", "NHWC", _NHWC, _Q_NHWC, "BatchNorm(axis=-1)",
         "F.batch_norm on the channels_last view"),
    Case("gn_nhwc", "group_norm", f"GroupNorm, {GROUPS} groups", "NHWC", _NHWC, _Q_NHWC,
         "GroupNorm (channels-last natively)", "F.group_norm on the channels_last view"),
    Case("gn_nchw", "group_norm", f"GroupNorm, {GROUPS} groups", "NCHW", _NCHW, _Q_NCHW,
         "GroupNorm on an NHWC transpose, both transposes timed in Flax's jit", "F.group_norm, NCHW"),
    Case("ln", "layer_norm", "LayerNorm over D", "(N,T,D)", _NTD, _Q_NTD, "LayerNorm", "F.layer_norm"),
    Case("rms", "rms_norm", "RMSNorm over D", "(N,T,D)", _NTD, _Q_NTD, "RMSNorm", "F.rms_norm"),
    Case("bn_nchw_mask", "batch_norm_2d", "BatchNorm2d, masked", "NCHW", _NCHW, _Q_NCHW,
         "BatchNorm(axis=1)(x, mask=m), which normalizes the masked-out examples too (compared at valid positions)",
         None, masked=True, torch_absent=_NO_MASK),
    Case("bn_nhwc_mask", "batch_norm_2d", "BatchNorm2d, masked", "NHWC", _NHWC, _Q_NHWC,
         "BatchNorm(axis=-1)(x, mask=m), which normalizes the masked-out examples too (compared at valid positions)",
         None, masked=True, torch_absent=_NO_MASK),
)}


def bytes_moved(shape: tuple[int, ...], itemsize: int, pass_: str) -> int:
    """Bytes a training-mode norm must move for x of ``shape``: 3N (fwd) or 8N (fwd+bwd)."""
    if pass_ not in BYTES_PER_X:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    return BYTES_PER_X[pass_] * math.prod(shape) * itemsize


# --------------------------------------------------------------------------------------------
# Inputs and the float64 reference
# --------------------------------------------------------------------------------------------


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


def _param_shape(case: Case, ndim: int, channels: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[case.channel_axis] = channels
    return tuple(shape)


def _offsets(case: Case, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One offset per statistics group, broadcastable to x (see the module docstring's data section)."""
    if case.op in ("layer_norm", "rms_norm"):
        return rng.uniform(-OFFSET, OFFSET, shape[:-1] + (1,))
    channels = shape[case.channel_axis]
    if case.op == "group_norm":  # the channels of one group share its offset
        per_channel = np.repeat(rng.uniform(-OFFSET, OFFSET, GROUPS), channels // GROUPS)
    else:
        per_channel = rng.uniform(-OFFSET, OFFSET, channels)
    return per_channel.reshape(_param_shape(case, len(shape), channels))


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


def _stat_view(case: Case, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(shape of x viewed so that each statistics group is a slice, the reduced axes, the parameters' view shape)."""
    if case.op == "batch_norm_2d":
        axes = (0, 2, 3) if case.layout == "NCHW" else (0, 1, 2)
        return shape, axes, _param_shape(case, 4, shape[case.channel_axis])
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


# --------------------------------------------------------------------------------------------
# Implementations. Each builder returns an Impl: two zero-argument callables that run one
# training-mode step (fwd, fwd+bwd) and block, a `result` callable giving (y, dx) as NumPy in the
# case's layout for the cross-check, and (JAX only) the compiled HLO text of either step.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Impl:
    fwd: Callable[[], object]
    fwdbwd: Callable[[], object]
    result: Callable[[], tuple[np.ndarray, np.ndarray]]
    hlo: Callable[[str], str] | None = None  # pass -> optimized (compiled) HLO text; JAX only
    y_valid_only: bool = False  # y is defined at the mask's valid positions only (Flax's masked BN)


@dataclasses.dataclass(frozen=True)
class Options:
    """What the builders need besides the case: Flax's variance formula and PyTorch's device."""

    flax_fast_variance: bool = True
    torch_device: str = "cpu"


def _jax_impl(apply, p: Problem, params, state, mask) -> Impl:
    """Wrap ``apply(x, params, state, mask) -> (y, new_state)`` into jitted fwd and fwd+vjp steps.

    The mask is an argument of the jitted functions, not a closure constant, so XLA cannot specialize on its value.
    """
    x, dy = jnp.asarray(p.x), jnp.asarray(p.dy)
    mask = None if mask is None else jnp.asarray(mask)
    fwd = jax.jit(apply)

    @jax.jit
    def fwdbwd(x, params, state, mask, dy):
        # Differentiate w.r.t. x and the affine parameters, as a training step does; the updated
        # running statistics are an auxiliary output (not differentiated).
        y, vjp, new_state = jax.vjp(lambda x, q: apply(x, q, state, mask), x, params, has_aux=True)
        dx, dparams = vjp(dy)
        return y, new_state, dx, dparams

    def result():
        y, _, dx, _ = fwdbwd(x, params, state, mask, dy)
        return np.asarray(y), np.asarray(dx)

    def hlo(pass_):
        lowered = fwd.lower(x, params, state, mask) if pass_ == "fwd" else fwdbwd.lower(x, params, state, mask, dy)
        return lowered.compile().as_text()

    return Impl(fwd=lambda: jax.block_until_ready(fwd(x, params, state, mask)),
                fwdbwd=lambda: jax.block_until_ready(fwdbwd(x, params, state, mask, dy)),
                result=result, hlo=hlo)


def build_jaxnorm(case: Case, p: Problem, opts: Options, *, use_mask: bool = True) -> Impl:
    """jaxnorm's functional API on x in the case's own layout (``use_mask=False``: ignore the case's mask)."""
    axis = case.channel_axis
    params = {"weight": jnp.asarray(p.weight)} | ({} if p.bias is None else {"bias": jnp.asarray(p.bias)})
    stats = jn.batch_norm_init(p.x.shape[axis])[1] if case.op == "batch_norm_2d" else {}
    shape = (p.x.shape[-1],)
    if case.op == "batch_norm_2d":
        def apply(x, q, s, m):
            return jn.batch_norm_2d(x, q, s, train=True, momentum=0.1, eps=EPS, axis=axis, mask=m)
    elif case.op == "group_norm":
        def apply(x, q, s, m):
            return jn.group_norm(x, q, GROUPS, eps=EPS, axis=axis, mask=m), s
    elif case.op == "layer_norm":
        def apply(x, q, s, m):
            return jn.layer_norm(x, q, shape, eps=EPS, mask=m), s
    else:
        def apply(x, q, s, m):
            return jn.rms_norm(x, q, shape, eps=EPS, mask=m), s
    return _jax_impl(apply, p, params, stats, p.mask if use_mask else None)


def build_jaxnorm_nomask(case: Case, p: Problem, opts: Options) -> Impl:
    """jaxnorm without the mask, on the same (full) batch: what the masked rows compare the mask's price with."""
    return build_jaxnorm(case, p, opts, use_mask=False)


def _flax_module(case: Case, fast_variance: bool):
    if case.op == "batch_norm_2d":
        # flax momentum is the weight of the *old* running value: 0.9 == PyTorch's 0.1.
        return nn.BatchNorm(use_running_average=False, axis=case.channel_axis, momentum=0.9, epsilon=EPS,
                            use_fast_variance=fast_variance)
    if case.op == "group_norm":
        return nn.GroupNorm(num_groups=GROUPS, epsilon=EPS, use_fast_variance=fast_variance)
    if case.op == "layer_norm":
        return nn.LayerNorm(epsilon=EPS, use_fast_variance=fast_variance)
    return nn.RMSNorm(epsilon=EPS)  # uncentred: E[x²] has no fast/two-pass choice


def build_flax(case: Case, p: Problem, opts: Options) -> Impl:
    """flax.linen's BatchNorm / GroupNorm / LayerNorm / RMSNorm with ``opts``' variance formula."""
    mod = _flax_module(case, opts.flax_fast_variance)
    params = {"scale": jnp.asarray(p.weight)} | ({} if p.bias is None else {"bias": jnp.asarray(p.bias)})
    if case.op == "batch_norm_2d":
        c = p.x.shape[case.channel_axis]
        state = {"mean": jnp.zeros(c), "var": jnp.ones(c)}

        def apply(x, q, s, m):
            y, updates = mod.apply({"params": q, "batch_stats": s}, x, mask=m, mutable=["batch_stats"])
            return y, updates["batch_stats"]
    elif case.op == "group_norm" and case.layout == "NCHW":
        state = {}

        def apply(x, q, s, m):
            # Flax's GroupNorm is channels-last only: the transposes in and out are part of Flax's NCHW path.
            y = mod.apply({"params": q}, jnp.transpose(x, (0, 2, 3, 1)))
            return jnp.transpose(y, (0, 3, 1, 2)), s
    else:
        state = {}

        def apply(x, q, s, m):
            return mod.apply({"params": q}, x), s
    impl = _jax_impl(apply, p, params, state, p.mask)
    impl.y_valid_only = p.mask is not None
    return impl


def build_torch(case: Case, p: Problem, opts: Options) -> Impl:
    """torch.nn.functional ops on ``opts.torch_device``; BN updates running buffers in place, as nn.BatchNorm2d."""
    import torch
    import torch.nn.functional as F

    device = opts.torch_device
    xt, dyt = torch.from_numpy(p.x.copy()).to(device), torch.from_numpy(p.dy.copy()).to(device)
    # CUDA kernels run asynchronously: a timed call must wait for them, as block_until_ready does for JAX.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    to_case_layout = lambda a: a  # noqa: E731
    if case.layout == "NHWC":
        # A permuted view of NHWC memory *is* torch's channels_last NCHW tensor: no copy.
        xt, dyt = xt.permute(0, 3, 1, 2), dyt.permute(0, 3, 1, 2)
        assert xt.is_contiguous(memory_format=torch.channels_last)
        to_case_layout = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    c = p.weight.shape[0]
    weight = torch.from_numpy(p.weight.copy()).to(device).requires_grad_(True)
    bias = None if p.bias is None else torch.from_numpy(p.bias.copy()).to(device).requires_grad_(True)
    running_mean, running_var = torch.zeros(c, device=device), torch.ones(c, device=device)

    def op(inp):
        if case.op == "batch_norm_2d":
            return F.batch_norm(inp, running_mean, running_var, weight, bias, training=True, momentum=0.1, eps=EPS)
        if case.op == "group_norm":
            return F.group_norm(inp, GROUPS, weight, bias, eps=EPS)
        if case.op == "layer_norm":
            return F.layer_norm(inp, (c,), weight, bias, eps=EPS)
        return F.rms_norm(inp, (c,), weight, eps=EPS)

    def fwd():
        with torch.no_grad():
            y = op(xt)
        sync()
        return y

    xg = xt.detach().requires_grad_(True)

    def fwdbwd():
        # Drop old grads so backward writes them fresh instead of accumulating (an extra pass).
        xg.grad = weight.grad = None
        if bias is not None:
            bias.grad = None
        y = op(xg)
        y.backward(dyt)
        sync()
        return y

    def result():
        y = fwdbwd()
        return to_case_layout(y.detach().cpu().numpy()), to_case_layout(xg.grad.cpu().numpy())

    return Impl(fwd=fwd, fwdbwd=fwdbwd, result=result)


def _builders() -> dict[str, Callable[[Case, Problem, Options], Impl]]:
    """Looked up at run time, so that a test can replace one builder with a wrong one."""
    return {"jaxnorm": build_jaxnorm, "jaxnorm_nomask": build_jaxnorm_nomask, "flax": build_flax,
            "torch": build_torch}


def case_impls(case: Case, with_torch: bool) -> tuple[str, ...]:
    """Implementations a case runs, in the order of the first timing round."""
    if case.masked:
        return ("jaxnorm", "jaxnorm_nomask", "flax")
    return ("jaxnorm", "flax") + (("torch",) if with_torch and case.torch is not None else ())


# --------------------------------------------------------------------------------------------
# Cross-check and timing
# --------------------------------------------------------------------------------------------


def check_tolerance(condition: float) -> float:
    """Largest accepted ``max|got − ref| / max|ref|`` for data whose groups have ``mean² / var`` up to ``condition``.

    ``CHECK_TOL`` (1e-4), or ``ROUNDING_ULPS`` float32 ulps of the mean in units of the std if that is larger: any
    float32 program that forms ``x − μ`` in float32 (Flax's two-pass variance, PyTorch) is uncertain by a few ulps of
    ``|μ|``, i.e. ``eps32 · sqrt(condition)`` relative to σ, and pairwise sums of ~10⁴–10⁶ terms add up to ~16 of
    them. On the offset data (``sqrt(condition) ≈ 1e3``) that is 1.9e-3: the float32 two-pass programs measured
    ≤ 7.2e-4 there, while Flax's fast variance is off by ≥ 5e-2.
    """
    return max(CHECK_TOL, ROUNDING_ULPS * float(np.finfo(np.float32).eps) * math.sqrt(condition))


def _fail(case: Case, data: str, impl: str, what: str, err: float, tol: float) -> CrossCheckError:
    return CrossCheckError(f"cross-check failed: case {case.name} ({data} data), {LABELS.get(impl, impl)}: {what} "
                           f"is off by {err:.3g} x max|reference| (tolerance {tol:.2g})")


def _errors(p: Problem, impl: Impl, ref: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """y's and dx's error vs ``ref`` (y at the valid positions only where the implementation defines only those)."""
    y, dx = impl.result()
    return {"y": rel_err(y, ref[0], p.mask if impl.y_valid_only else None), "dx": rel_err(dx, ref[1])}


def cross_check(case: Case, p: Problem, built: dict[str, Impl], data: str, opts: Options) -> dict:
    """Compare every implementation's y and dx with the float64 reference; raise CrossCheckError on a mismatch.

    Returns the errors (``check``), the tolerance, the data's ``condition``; ``excluded``: implementations listed in
    ``KNOWN_INACCURATE`` that missed the tolerance (they are not timed; the reason and error go into the row);
    for masked cases jaxnorm masked vs jaxnorm unmasked on the valid examples alone; for Flax timed with its
    two-pass variance, the error its default fast variance makes on the same data (``flax_fast_variance_err``,
    information only).
    """
    y_ref, dx_ref, condition = reference(case, p)
    tol = check_tolerance(condition)
    # The unmasked jaxnorm normalizes the whole batch: its reference is the unmasked one.
    refs = {name: (y_ref, dx_ref) for name in built}
    if "jaxnorm_nomask" in built:
        refs["jaxnorm_nomask"] = reference(case, dataclasses.replace(p, mask=None))[:2]
    check, excluded = {}, {}
    for name, impl in built.items():
        # jaxnorm carries the mean as hi + lo, so it is held to CHECK_TOL on any data (measured: <= 3.1e-6).
        limit = CHECK_TOL if name.startswith("jaxnorm") else tol
        check[name] = errs = _errors(p, impl, refs[name])
        bad = [(what, err) for what, err in errs.items() if not err <= limit]
        if bad and (case.name, name) in KNOWN_INACCURATE:
            excluded[name] = (f"not timed: {KNOWN_INACCURATE[case.name, name]} is off by {bad[0][1]:.2g} x "
                              f"max|reference| on this data ({bad[0][0]})")
        elif bad:
            raise _fail(case, data, name, f"{bad[0][0]} vs the float64 reference", bad[0][1], limit)
    out = {"check": check, "check_tol": tol, "check_tol_jaxnorm": CHECK_TOL, "condition": condition,
           "excluded": excluded,
           "check_mask_vs_valid_only": None, "flax_fast_variance_err": None}
    if case.masked:
        out["check_mask_vs_valid_only"] = _check_mask(case, p, built["jaxnorm"], data, opts, CHECK_TOL)
    if "flax" in built and not opts.flax_fast_variance and case.op != "rms_norm":
        fast = build_flax(case, p, dataclasses.replace(opts, flax_fast_variance=True))
        out["flax_fast_variance_err"] = _errors(p, fast, (y_ref, dx_ref))
    return out


def _check_mask(case: Case, p: Problem, masked: Impl, data: str, opts: Options, tol: float) -> dict:
    """jaxnorm masked at the valid examples vs jaxnorm unmasked on those examples alone; exact zeros elsewhere."""
    sub = p.valid_examples()
    n = sub.x.shape[0]
    y_m, dx_m = masked.result()
    y_v, dx_v = build_jaxnorm(case, sub, opts).result()
    errs = {"y": rel_err(y_m[:n], y_v.astype(np.float64)), "dx": rel_err(dx_m[:n], dx_v.astype(np.float64)),
            "off_mask_max_abs": float(max(np.max(np.abs(y_m[n:])), np.max(np.abs(dx_m[n:]))))}
    for what in ("y", "dx"):
        if not errs[what] <= tol:
            raise _fail(case, data, "jaxnorm", f"masked {what} at the valid examples vs jaxnorm on them alone",
                        errs[what], tol)
    if errs["off_mask_max_abs"] != 0.0:
        raise _fail(case, data, "jaxnorm", "masked y or dx off the mask (expected 0)", errs["off_mask_max_abs"], tol)
    return errs


def _traffic(case: Case, impl: Impl, pass_: str, nbytes_x: int, hlo_dir: Path | None, name: str) -> dict:
    """Compiled-HLO traffic of one JAX implementation in units of N (cheapest and dearest conditional branch)."""
    text = impl.hlo(pass_)
    if hlo_dir is not None:
        hlo_dir.mkdir(parents=True, exist_ok=True)
        (hlo_dir / f"{case.name}_{pass_.replace('+', '')}_{name}.hlo.txt").write_text(text)
    try:
        return {f"{name}_hlo_traffic": hlo_traffic(text) / nbytes_x,
                f"{name}_hlo_traffic_dearest": hlo_traffic(text, conditional="dearest") / nbytes_x}
    except (ValueError, KeyError, IndexError) as err:  # e.g. another backend's HLO dialect
        print(f"warning: {case.name}: HLO traffic not counted ({err})", file=sys.stderr)
        return {f"{name}_hlo_traffic": None, f"{name}_hlo_traffic_dearest": None}


def _timing_fields(times: dict[str, list[float]], nbytes: int, rounds: int, inner: int) -> dict:
    """Per implementation: median and fastest ms, GB/s; per other implementation: jaxnorm's paired ratios."""
    row = {}
    for name in ALL_IMPLS:
        t = times.get(name)
        row[f"{name}_ms"] = None if t is None else float(np.median(t))
        row[f"{name}_ms_min"] = None if t is None else float(np.min(t))
        row[f"{name}_gbs"] = None if t is None else nbytes / (row[f"{name}_ms"] * 1e-3) / 1e9
    for name in ALL_IMPLS[1:]:
        r = None if name not in times else paired_ratios(times["jaxnorm"], times[name], rounds, inner)
        row[f"jaxnorm_vs_{name}"] = None if r is None else r["median"]
        row[f"jaxnorm_vs_{name}_iqr"] = None if r is None else r["iqr"]
        row[f"jaxnorm_vs_{name}_best"] = None if r is None else r["best"]
    return row


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How to run the cases (from the command line)."""

    data: str = "normal"
    rounds: int = 20
    inner: int = 5
    warmup: int = 5
    seed: int = 0
    opts: Options = Options()
    with_torch: bool = True
    hlo_dir: Path | None = None
    check_only: bool = False


def _setup(case: Case, impls: Sequence[str], opts: Options, excluded: dict[str, str]) -> dict[str, str]:
    """How each implementation runs the case (or why it is not timed): the row's labels."""
    variance = ("fast variance E[x²]−E[x]² (default)" if opts.flax_fast_variance
                else "use_fast_variance=False (two-pass)")
    setup = {"jaxnorm": f"axis={case.channel_axis}" if case.op in ("batch_norm_2d", "group_norm") else "last axis",
             "flax": case.flax + ("" if case.op == "rms_norm" else f"; {variance}")}
    if case.masked:
        setup["jaxnorm"] += ", mask=m"
        setup["jaxnorm_nomask"] = f"axis={case.channel_axis}, no mask, full batch"
    setup["torch"] = (f"{case.torch} on {opts.torch_device}" if "torch" in impls
                      else f"not run: {case.torch_absent or 'not installed or --no-torch'}")
    for name, why in excluded.items():
        setup[name] = f"{setup[name]}, {why}"
    return setup


def run_case(case: Case, shape: tuple[int, ...], cfg: RunConfig) -> list[dict]:
    """Cross-check one case, then time both passes; its rows (only the check when ``cfg.check_only``)."""
    p = make_problem(case, shape, cfg.data, cfg.seed)
    impls = case_impls(case, cfg.with_torch)
    builders = _builders()
    built = {name: builders[name](case, p, cfg.opts) for name in impls}
    checked = cross_check(case, p, built, cfg.data, cfg.opts)
    built = {name: b for name, b in built.items() if name not in checked["excluded"]}
    base = {"case": case.name, "op": case.op, "norm": case.title, "layout": case.layout, "shape": list(shape),
            "data": cfg.data, "masked": case.masked, "dtype": str(p.x.dtype), "impls": list(built),
            "setup": _setup(case, impls, cfg.opts, checked["excluded"]),
            "flax_variance": ("n/a" if case.op == "rms_norm" else
                              "fast" if cfg.opts.flax_fast_variance else "two-pass"),
            "torch_device": cfg.opts.torch_device if "torch" in impls else None, **checked}
    if cfg.check_only:
        return [base]
    rows = []
    nbytes_x = math.prod(shape) * p.x.itemsize
    for pass_ in PASSES:
        fns = {name: (b.fwd if pass_ == "fwd" else b.fwdbwd) for name, b in built.items()}
        times = time_interleaved(fns, rounds=cfg.rounds, warmup=cfg.warmup, inner=cfg.inner)
        nbytes = bytes_moved(shape, p.x.itemsize, pass_)
        row = {**base, "pass": pass_, "bytes": nbytes, "rounds": cfg.rounds, "inner": cfg.inner,
               "warmup": cfg.warmup, **_timing_fields(times, nbytes, cfg.rounds, cfg.inner)}
        for name in JAX_IMPLS:
            row.update({f"{name}_hlo_traffic": None, f"{name}_hlo_traffic_dearest": None})
            if name in built:
                row.update(_traffic(case, built[name], pass_, nbytes_x, cfg.hlo_dir, name))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def verdict(ratio: float | None, iqr: Sequence[float] | None, best: float | None) -> str:
    """Is jaxnorm faster? ``yes``: the median per-round ratio is under 1 − GAIN and both the upper quartile and the
    best-call ratio are under 1; ``no (slower)``: the mirror image above 1; ``no gain`` otherwise — a difference
    under 5 % or readings that disagree is not claimed as a win. ``-`` when the other side did not run."""
    if ratio is None:
        return "-"
    if ratio < 1 - GAIN and iqr[1] < 1 and best < 1:
        return "yes"
    if ratio > 1 + GAIN and iqr[0] > 1 and best > 1:
        return "no (slower)"
    return "no gain"


def _ratio_cell(r: dict, other: str) -> str:
    """'0.81 (0.78–0.85) · 0.79': median per-round ratio (interquartile range) · best-call ratio."""
    v = r.get(f"jaxnorm_vs_{other}")
    if v is None:
        return "-"
    lo, hi = r[f"jaxnorm_vs_{other}_iqr"]
    return f"{v:.2f} ({lo:.2f}–{hi:.2f}) · {r[f'jaxnorm_vs_{other}_best']:.2f}"


def _verdict_cell(r: dict, other: str) -> str:
    return verdict(r.get(f"jaxnorm_vs_{other}"), r.get(f"jaxnorm_vs_{other}_iqr"), r.get(f"jaxnorm_vs_{other}_best"))


def _traffic_cell(r: dict, impl: str) -> str:
    """'4N', or '4N (6N)' when a conditional's dearest branch moves more (in brackets)."""
    cheap, dear = r.get(f"{impl}_hlo_traffic"), r.get(f"{impl}_hlo_traffic_dearest")
    if cheap is None:
        return "-"
    return f"{cheap:.0f}N" + ("" if dear is None or round(dear) == round(cheap) else f" ({dear:.0f}N)")


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "---|" * len(head)] + [line(row) for row in body])


def _where(r: dict) -> str:
    return f"{r['layout']} {'×'.join(map(str, r['shape']))}"


def _others(r: dict) -> str:
    s = r["setup"]
    return f"Flax: {s['flax']}; PyTorch: {s['torch']}"


def format_table(rows: Sequence[dict]) -> str:
    """The Markdown tables of one run: unmasked cases (jaxnorm vs Flax and PyTorch), then masked BN (the price of a
    mask: masked vs unmasked jaxnorm, and masked jaxnorm vs masked Flax). Ratios < 1: jaxnorm is faster."""
    plain = [r for r in rows if not r["masked"]]
    masked = [r for r in rows if r["masked"]]
    parts = []
    if plain:
        head = ("norm", "layout, shape", "pass", "jaxnorm ms", "jaxnorm / Flax: median (IQR) · best",
                "faster than Flax?", "jaxnorm / PyTorch: median (IQR) · best", "faster than PyTorch?",
                "traffic jaxnorm · Flax", "how Flax and PyTorch run")
        parts.append(_markdown(head, [
            (r["norm"], _where(r), r["pass"], _ms(r["jaxnorm_ms"]), _ratio_cell(r, "flax"), _verdict_cell(r, "flax"),
             _ratio_cell(r, "torch"), _verdict_cell(r, "torch"),
             f"{_traffic_cell(r, 'jaxnorm')} · {_traffic_cell(r, 'flax')}", _others(r)) for r in plain]))
    if masked:
        head = ("norm", "layout, shape", "pass", "masked jaxnorm ms", "masked / unmasked jaxnorm: median (IQR) · best",
                "masked jaxnorm / masked Flax: median (IQR) · best", "faster than Flax?",
                "traffic masked · unmasked · Flax", "how Flax and PyTorch run")
        parts.append(_markdown(head, [
            (r["norm"], _where(r), r["pass"], _ms(r["jaxnorm_ms"]), _ratio_cell(r, "jaxnorm_nomask"),
             _ratio_cell(r, "flax"), _verdict_cell(r, "flax"),
             f"{_traffic_cell(r, 'jaxnorm')} · {_traffic_cell(r, 'jaxnorm_nomask')} · {_traffic_cell(r, 'flax')}",
             _others(r)) for r in masked]))
    return "\n\n".join(parts)


LEGEND = (
    "Ratios are jaxnorm's time over the other's (< 1: jaxnorm is faster): the median of per-round paired ratios, "
    "its interquartile range in brackets, then the ratio of the fastest calls. \"faster?\" is derived from those "
    f"numbers: yes = median below {1 - GAIN:.2f} with the upper quartile and the best-call ratio below 1; "
    "no (slower) = the mirror image above 1; no gain = anything else. Traffic: bytes the compiled XLA program moves, "
    "in units of N (the bytes of x; the byte model says 3N fwd, 8N fwd+bwd); in brackets the dearest branch of a "
    "conditional, which jaxnorm's CPU statistics take on ill-conditioned data.")


def _describe(meta: dict) -> str:
    """One line: where, on what and how the numbers of one results file were taken."""
    torch = (f"torch {meta['torch']} ({meta.get('torch_threads')} threads, on {meta.get('torch_device')})"
             if meta.get("torch") else "torch not run")
    git = (meta.get("git_commit") or "unknown")[:12] + (" (with uncommitted changes)" if meta.get("git_dirty") else "")
    return (f"{meta.get('cpu_model') or meta.get('machine')}, {meta.get('cpu_count')} CPUs, JAX backend "
            f"{meta.get('jax_backend')}; jax {meta.get('jax')}, jaxlib {meta.get('jaxlib')}, flax {meta.get('flax')}, "
            f"{torch}; float32; data {meta.get('data')} ({DATA.get(meta.get('data'), '?')}); "
            f"{meta.get('rounds')} interleaved rounds × {meta.get('inner')} calls; git {git}; {meta.get('date')}"
            + ("; --quick (tiny shapes: noise)" if meta.get("quick") else ""))


def _fast_variance_note(rows: Sequence[dict]) -> str:
    """Flax's default fast variance on this data, where it was not the timed path (information, not timed)."""
    seen = {}
    for r in rows:
        err = r.get("flax_fast_variance_err")
        if err is not None and r["case"] not in seen:
            seen[r["case"]] = f"{r['norm']} {r['layout']}: y {err['y']:.2g}, dx {err['dx']:.2g}"
    if not seen:
        return ""
    return ("Flax's default fast variance on this data (not timed; error relative to max|reference|): "
            + "; ".join(seen.values()) + ".")


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it, so that the rendered text does not depend on the cwd."""
    resolved = Path(path).resolve()
    return resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else Path(path).as_posix()


def load_results(path: str | Path) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of a results file written by ``--json``; a clear error for anything else."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsFileError(f"{path}: cannot read benchmark results ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or not isinstance(doc.get("rows"), list):
        raise ResultsFileError(f"{path}: expected a JSON object with 'meta' and 'rows' (written by --json), got "
                         f"{type(doc).__name__}")
    if doc["meta"].get("check_only"):
        raise ResultsFileError(f"{path}: holds cross-checks only (--check-only), no timings to tabulate")
    return doc["meta"], doc["rows"]


def render_tables(paths: Sequence[str | Path]) -> str:
    """The Markdown performance tables of one or more results files (``--json``), one section per file.

    Deterministic (the same files give the same text), so a test can check that a committed document equals
    ``render_tables`` of the committed results.
    """
    if not paths:
        raise ValueError("render_tables: expected at least one results file")
    shown = " ".join(_display_path(Path(p)) for p in paths)
    parts = [f"<!-- generated by: python -m experiments.benchmark --table {shown} -->", LEGEND]
    for path in paths:
        meta, rows = load_results(path)
        parts.append(f"#### {str(meta.get('jax_backend', '?')).upper()}, {meta.get('data', '?')} data "
                     f"(`{_display_path(Path(path))}`)")
        parts.append(_describe(meta))
        parts.append(format_table(rows))
        note = _fast_variance_note(rows)
        if note:
            parts.append(note)
    return "\n\n".join(parts) + "\n"


_MARKER = re.compile(r"<!-- generated by: python -m experiments\.benchmark --table (.+?) -->")


def stale_tables(text: str, root: Path = REPO) -> list[str]:
    """What is out of date among the generated tables embedded in a document (empty: every block is current).

    A block is :func:`render_tables`' output pasted verbatim; its first line names the results files (relative to
    ``root``), and the block must still equal ``render_tables`` of those files. For a test that the committed
    performance document matches the committed results: ``assert stale_tables(doc.read_text()) == []``.
    """
    problems = []
    for m in _MARKER.finditer(text):
        paths = [root / p for p in m.group(1).split()]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            problems.append(f"tables from {m.group(1)}: missing results file(s) {', '.join(missing)}")
        elif render_tables(paths) not in text:
            problems.append(f"tables from {m.group(1)} differ from what those files give now; regenerate with "
                            f"python -m experiments.benchmark --table {m.group(1)} --write FILE")
    return problems


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _git() -> dict:
    """The measured commit, and whether the working tree differed from it (read-only: no index refresh)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, env=env,
                                timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=REPO, env=env, timeout=30)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict:
    """Versions, machine, date and commit, recorded next to the numbers."""
    env = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "python": platform.python_version(), "machine": platform.machine(), "cpu_model": _cpu_model(),
           "cpu_count": os.cpu_count(), "jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
           "flax": flax.__version__, "jax_backend": jax.default_backend(),
           "jax_devices": sorted({str(d.device_kind) for d in jax.devices()}),
           # Other processes on a small machine stall every parallel region (torch's and XLA's thread
           # pools wait for a descheduled worker): record the load so a noisy table can be recognized.
           "loadavg_1min_end": round(os.getloadavg()[0], 2), **_git()}
    if torch_available():
        import torch

        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   torch_cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return env


def resolve_torch_device(requested: str | None) -> str:
    """``requested`` as given, or the device matching JAX's backend: PyTorch on the GPU when JAX is on one."""
    if requested is not None:
        if requested not in ("cpu", "cuda"):
            raise ValueError(f"--torch-device: expected 'cpu' or 'cuda', got {requested!r}")
        return requested
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _epilog() -> str:
    """--help's text after the flags: the cases (and how each library runs them), the data, the cross-check, the
    results files and the tables."""
    cases = "\n".join(f"  {n:<13} {c.title}, {c.layout} {'x'.join(map(str, c.shape))}: Flax {c.flax}; PyTorch "
                      f"{c.torch or 'not run (' + c.torch_absent + ')'}" for n, c in CASES.items())
    data = "\n".join(f"  {k:<7} {v}" for k, v in DATA.items())
    return f"""\
cases (--ops; jaxnorm runs each in the layout shown):
{cases}
data (--data):
{data}
cross-check: before timing, every implementation's y and dx are compared with a float64 two-pass reference; an
  error above {CHECK_TOL:g} x max|reference| (for Flax and PyTorch on ill-conditioned data: {ROUNDING_ULPS} float32
  ulps of the mean in units of the std) stops the run with exit status 1 and one line naming the case, the
  implementation and the error. Implementations in KNOWN_INACCURATE (PyTorch's channels-last GroupNorm) are not timed instead, and the
  row says why.
results: --json FILE writes {{"meta": date, machine, CPU, versions, git commit, data, rounds, ...; "rows": ...}}.
tables: --table FILE... prints, per file, a Markdown table of jaxnorm ms, jaxnorm / Flax and jaxnorm / PyTorch
  (median of per-round paired ratios, interquartile range, best-call ratio), a "faster?" verdict derived from
  them (yes / no (slower) / no gain), and the compiled-HLO traffic in units of N; masked BN in a second table.
examples:
  python -m experiments.benchmark --quick                     # smoke run, tiny shapes: times are noise
  python -m experiments.benchmark --json benchmarks/cpu.json
  python -m experiments.benchmark --data offset --json benchmarks/cpu_offset.json
  python -m experiments.benchmark --table benchmarks/cpu.json benchmarks/cpu_offset.json --write docs/performance.md
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmark", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(),
        description="jaxnorm vs flax.linen (and PyTorch when installed): training-mode forward and forward+backward "
                    "(jax.vjp with a random cotangent) of BatchNorm2d (NCHW, NHWC; with and without a mask), GroupNorm "
                    "(NHWC, NCHW), LayerNorm and RMSNorm; paired per-round ratios over interleaved rounds, achieved "
                    "GB/s (byte model: 3N fwd, 8N fwd+bwd for N bytes of x) and the compiled programs' memory traffic. "
                    "With --table, render results files as Markdown instead of running anything.")
    a = p.add_argument
    a("--ops", default=",".join(CASES), help=f"comma-separated cases to run, from {', '.join(CASES)} (default: all)")
    a("--data", choices=sorted(DATA), default="normal", help="input data: normal (default) or offset (see below)")
    a("--flax-variance", choices=FLAX_VARIANCE, default="auto",
      help="Flax's variance formula: fast (E[x²]−E[x]², Flax's default), two-pass (use_fast_variance=False), or auto "
           "(default: fast on normal data, two-pass on offset data, where fast is wrong)")
    a("--rounds", type=int, default=None, help="interleaved rounds per case and pass (default 20, or 2 with --quick)")
    a("--inner", type=int, default=None,
      help="timed calls per implementation and round, after one settling call (default 5, 1 with --quick)")
    a("--warmup", type=int, default=None, help="untimed calls before timing, compilation included (default 5, 1 quick)")
    a("--quick", action="store_true", help="tiny shapes and 2 rounds (CI / reproduce smoke run; times are noise)")
    a("--check-only", action="store_true",
      help="run the cross-checks only (errors vs the float64 reference), no timing")
    a("--no-torch", action="store_true", help="skip PyTorch even if installed")
    a("--torch-threads", type=int, default=None,
      help="torch.set_num_threads(N) first (default: leave torch's default, one per core)")
    a("--torch-device", default=None,
      help="device for PyTorch: cpu or cuda (default: cuda when JAX runs on a GPU and torch sees one, else cpu)")
    a("--scale", type=int, default=1,
      help="multiply every case's batch (first) dimension by K, e.g. 16 to fill a GPU (default 1)")
    a("--seed", type=int, default=0, help="seed of the random inputs, cotangent and affine parameters")
    a("--json", type=Path, default=None, help="write {meta, rows} as JSON to FILE (the input of --table)")
    a("--out", type=Path, default=None, help="folder for benchmark.json and benchmark.md (created if missing)")
    a("--hlo", type=Path, default=None,
      help="folder to write the compiled (optimized) HLO of the JAX implementations to")
    a("--table", type=Path, nargs="+", default=None, metavar="FILE",
      help="render the performance tables (Markdown) of results files written by --json, print them, run nothing")
    a("--write", type=Path, default=None, metavar="PATH", help="with --table: write the tables to PATH instead")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    if args.write is not None and args.table is None:
        p.error("--write needs --table FILE...")
    if args.scale < 1:
        p.error(f"--scale must be >= 1, got {args.scale}")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in CASES]
    if bad or not ops:
        p.error(f"--ops: expected names from {', '.join(CASES)}, got {args.ops!r}")
    args.ops = ops
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 20)
    args.inner = args.inner if args.inner is not None else (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if args.rounds < 1 or args.inner < 1 or args.warmup < 0:
        p.error(f"--rounds and --inner must be >= 1 and --warmup >= 0, got {args.rounds}, {args.inner}, "
                f"{args.warmup}")
    return args


def _config(args: argparse.Namespace) -> RunConfig:
    with_torch = torch_available() and not args.no_torch
    device = resolve_torch_device(args.torch_device) if with_torch else "cpu"
    if args.torch_threads is not None and with_torch:
        import torch

        torch.set_num_threads(args.torch_threads)
    fast = args.flax_variance == "fast" or (args.flax_variance == "auto" and args.data == "normal")
    return RunConfig(data=args.data, rounds=args.rounds, inner=args.inner, warmup=args.warmup, seed=args.seed,
                     opts=Options(flax_fast_variance=fast, torch_device=device), with_torch=with_torch,
                     hlo_dir=args.hlo, check_only=args.check_only)


def _write_results(args: argparse.Namespace, meta: dict, rows: list[dict], text: str) -> None:
    doc = json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    paths = [args.json] if args.json else []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        paths.append(args.json if args.json else args.out / "benchmark.json")
        (args.out / "benchmark.md").write_text(text + "\n")
    for path in dict.fromkeys(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc)


def _print_checks(rows: list[dict]) -> str:
    body = [(r["case"], r["data"], f"{r['condition']:.3g}",
             ", ".join(f"{LABELS[k]} y {v['y']:.1e} dx {v['dx']:.1e}" for k, v in r["check"].items()))
            for r in rows]
    return _markdown(("case", "data", "max mean²/var", "error vs float64 reference (x max|ref|)"), body)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (or render tables with --table); print the table; return the rows (and write them if asked).

    Raises CrossCheckError when an implementation's y or dx is off (see ``cli`` for the exit status).
    """
    args = parse_args(argv)
    if args.table is not None:
        text = render_tables(args.table)
        if args.write is not None:
            args.write.parent.mkdir(parents=True, exist_ok=True)
            args.write.write_text(text)
        else:
            print(text, end="")
        return []
    from tqdm import tqdm

    cfg = _config(args)
    load_start = round(os.getloadavg()[0], 2)
    rows: list[dict] = []
    for name in tqdm(args.ops, desc="benchmark", unit="case", file=sys.stderr, disable=len(args.ops) < 2):
        case = CASES[name]
        shape = case.quick_shape if args.quick else case.shape
        rows.extend(run_case(case, (shape[0] * args.scale,) + tuple(shape[1:]), cfg))
    meta = {**environment(), "loadavg_1min_start": load_start, "data": args.data, "rounds": args.rounds,
            "inner": args.inner, "warmup": args.warmup, "quick": args.quick, "scale": args.scale, "seed": args.seed,
            "flax_variance": args.flax_variance, "check_only": args.check_only, "check_tol": CHECK_TOL,
            "torch_device": cfg.opts.torch_device if cfg.with_torch else None,
            "argv": list(sys.argv[1:] if argv is None else argv)}
    text = _describe(meta) + "\n\n" + (_print_checks(rows) if args.check_only else format_table(rows))
    note = _fast_variance_note(rows)
    print(text + ("\n\n" + note if note else ""))
    _write_results(args, meta, rows, text)
    for row in rows:  # reproduce's report reads the machine from the rows it gets back
        row["quick"], row["env"] = args.quick, meta
    return rows


def cli(argv: list[str] | None = None) -> int:
    """The command line: ``main``, with a failed cross-check turned into one line on stderr and exit status 1."""
    try:
        main(argv)
    except CrossCheckError as err:
        print(f"benchmark: error: {err}", file=sys.stderr)
        return 1
    except ResultsFileError as err:
        print(f"benchmark: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
