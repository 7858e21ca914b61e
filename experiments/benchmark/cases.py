"""The benchmark's cases, its passes and its byte model.

Every case runs in each layout that both JAX libraries support, so both sides do the same work; where one side needs
extra work (Flax's GroupNorm is channels-last only) that work is timed as part of *its* path and the row says so.

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

Every implementation runs in training mode (batch statistics; BN also returns its updated running statistics).
Two passes are timed (:mod:`experiments.benchmark.runners` says how each library runs them): ``fwd``, ``y =
norm(x)``, and ``fwd+bwd``, the forward and the vector-Jacobian product with a random cotangent ``dy``.

Byte model (what a training-mode normalization *must* move through memory, for ``N`` bytes of x; small
per-channel vectors are ignored):

* ``fwd``: the statistics read x once, normalizing reads x again and writes y: ``B_fwd = 3 N``.
* ``fwd+bwd``: the forward as above, then the backward reads x and dy twice each (once for the two reductions
  ``sum(dy)`` and ``sum(dy * x_hat)``, once for the final map ``dx = w/sigma * (dy - mean(dy) - x_hat *
  mean(dy * x_hat))``) and writes dx: ``B_fwdbwd = 3 N + 5 N = 8 N``.

With ``--copy-baseline`` each row also times a *copy* of the same data, the memory floor no normalization can beat:
``y = x · w`` (``fwd``: reads x, writes y, ``2 N``) and ``y, dx = x · w, dy · w`` (``fwd+bwd``: reads x and dy,
writes y and dx, ``4 N``), with ``w`` the case's per-channel weight, in one jitted JAX program each
(:func:`experiments.benchmark.runners.build_copy`). A one-pass normalization reaches it only if its statistics cost
nothing; the byte model's two-pass normalization moves 1.5 × (fwd) and 2 × (fwd+bwd) its bytes.

Achieved bandwidth is ``B / median time`` in GB/s (10^9 bytes/s). It can exceed the machine's DRAM bandwidth when
x fits in cache, so read it as "how close to the memory limit", not as a hardware measurement.
"""

from __future__ import annotations

import dataclasses
import math

# Passes, in the order they are run and printed.
PASSES = ("fwd", "fwd+bwd")
# Bytes moved per byte of x (see the byte model above).
BYTES_PER_X = {"fwd": 3, "fwd+bwd": 8}
# ... and by the copy baseline (x read, y written; and dy read, dx written).
COPY_BYTES_PER_X = {"fwd": 2, "fwd+bwd": 4}
# The libraries (report.plot_benchmark draws <impl>_ms for these), and every implementation a row may carry.
IMPLS = ("jaxnorm", "flax", "torch")
ALL_IMPLS = ("jaxnorm", "jaxnorm_nomask", "flax", "torch")
JAX_IMPLS = ("jaxnorm", "jaxnorm_nomask", "flax")
# Baselines run only when asked (--copy-baseline): a results file has their keys only where they ran.
OPTIONAL_IMPLS = ("copy",)
LABELS = {"jaxnorm": "jaxnorm", "jaxnorm_nomask": "jaxnorm unmasked", "flax": "Flax", "torch": "PyTorch",
          "copy": "copy (x·w)"}
EPS = 1e-5
GROUPS = 8
OFFSET = 1e3  # offset data: per-group offsets uniform in ±OFFSET, std 1
DATA = {
    "normal": "x ~ N(0.5, 2²): well conditioned",
    "offset": f"x = o + N(0, 1), o uniform in ±{OFFSET:g}, one o per channel (BN), per group of channels (GN), "
              "per token (LN, RMS): ill conditioned",
}
FLAX_VARIANCE = ("auto", "fast", "two-pass")


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


def bytes_moved(shape: tuple[int, ...], itemsize: int, pass_: str, *, copy: bool = False) -> int:
    """Bytes a training-mode norm must move for x of ``shape``: 3N (fwd) or 8N (fwd+bwd); ``copy=True``: the copy
    baseline's 2N or 4N."""
    if pass_ not in BYTES_PER_X:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    return (COPY_BYTES_PER_X if copy else BYTES_PER_X)[pass_] * math.prod(shape) * itemsize


def case_impls(case: Case, with_torch: bool) -> tuple[str, ...]:
    """Implementations a case runs, in the order of the first timing round."""
    if case.masked:
        return ("jaxnorm", "jaxnorm_nomask", "flax")
    return ("jaxnorm", "flax") + (("torch",) if with_torch and case.torch is not None else ())
