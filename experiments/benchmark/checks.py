"""The cross-check before timing: every implementation computes the float64 reference's y and dx, or the run stops.

y and dx of every implementation are compared with the float64 reference
(:func:`experiments.benchmark.float64_reference.reference`); the error is ``max|got − ref| / max|ref|``. Above the
tolerance the run stops with :class:`CrossCheckError` (exit status 1 from the command line, one line naming the
case, the implementation and the error): a table never compares different computations.

The tolerance (:func:`check_tolerance`) is 1e-4 on well-conditioned data: measured errors at the full shapes are
≤ 2.6e-6 for all three libraries, while a wrong axis or layout, a dropped affine parameter or the fast variance on
offset data is off by ≥ 1e-2. On ill-conditioned data a float32 program that forms ``x − μ`` in float32 is
uncertain by a few ulps of ``|μ|`` in units of σ, so the tolerance of the other libraries grows to 16 such ulps
(1.9e-3 on the offset data): there Flax's two-pass variance measured ≤ 2.2e-4, PyTorch ≤ 7.2e-4 — except PyTorch's
channels-last GroupNorm, off by 0.73 — and Flax's fast variance is off by 0.05 to 300. jaxnorm, which carries the
mean as ``hi + lo``, is held to 1e-4 on any data (measured ≤ 3.1e-6 on the offset data).

An implementation declared in ``KNOWN_INACCURATE`` (only that PyTorch kernel) that misses the tolerance is not
timed, and its row says so with the error; any other miss stops the run. Flax's masked BN normalizes the masked-out
examples with the valid statistics instead of zeroing them, so its y is compared at valid positions only (its dx is
0 there too, as dy is). jaxnorm's masked result is also checked against jaxnorm unmasked on the valid examples
alone, and to be exactly 0 off the mask (``check_mask_vs_valid_only``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from experiments.benchmark import runners
from experiments.benchmark.cases import LABELS, Case
from experiments.benchmark.float64_reference import reference, rel_err
from experiments.benchmark.inputs import Problem
from experiments.benchmark.rows import CheckResult, Errors, MaskCheck
from experiments.benchmark.runners import Impl, Options

CHECK_TOL = 1e-4  # max|got - ref| / max|ref| on well-conditioned data (why: the module docstring)
ROUNDING_ULPS = 16  # ... and on ill-conditioned data, this many float32 ulps of the mean (see check_tolerance)
# Implementations known to compute different numbers on some data: there they are not timed (the row says why),
# instead of stopping the run; anywhere else a mismatch stops it. Measured with torch 2.13 on the CPU, offset data.
KNOWN_INACCURATE = {("gn_nhwc", "torch"): "PyTorch's channels-last GroupNorm"}


class CrossCheckError(RuntimeError):
    """An implementation's y or dx is not the reference's: the run stops before timing."""


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


def _errors(p: Problem, impl: Impl, ref: tuple[np.ndarray, np.ndarray]) -> Errors:
    """y's and dx's error vs ``ref`` (y at the valid positions only where the implementation defines only those)."""
    y, dx = impl.result()
    return Errors(y=rel_err(y, ref[0], p.mask if impl.y_valid_only else None), dx=rel_err(dx, ref[1]))


def cross_check(case: Case, p: Problem, built: dict[str, Impl], data: str, opts: Options) -> CheckResult:
    """Compare every implementation's y and dx with the float64 reference; raise CrossCheckError on a mismatch.

    ``excluded``: implementations listed in ``KNOWN_INACCURATE`` that missed the tolerance (they are not timed; the
    reason and error go into the row). For masked cases, jaxnorm masked vs jaxnorm unmasked on the valid examples
    alone; for Flax timed with its two-pass variance, the error its default fast variance makes on the same data
    (``flax_fast_variance_err``, information only).
    """
    y_ref, dx_ref, condition = reference(case, p)
    tol = check_tolerance(condition)
    # The unmasked jaxnorm normalizes the whole batch: its reference is the unmasked one.
    refs = {name: (y_ref, dx_ref) for name in built}
    if "jaxnorm_nomask" in built:
        refs["jaxnorm_nomask"] = reference(case, dataclasses.replace(p, mask=None))[:2]
    errors, excluded = {}, {}
    for name, impl in built.items():
        # jaxnorm carries the mean as hi + lo, so it is held to CHECK_TOL on any data (measured: <= 3.1e-6).
        limit = CHECK_TOL if name.startswith("jaxnorm") else tol
        errors[name] = errs = _errors(p, impl, refs[name])
        bad = [(what, err) for what, err in (("y", errs.y), ("dx", errs.dx)) if not err <= limit]
        if bad and (case.name, name) in KNOWN_INACCURATE:
            excluded[name] = (f"not timed: {KNOWN_INACCURATE[case.name, name]} is off by {bad[0][1]:.2g} x "
                              f"max|reference| on this data ({bad[0][0]})")
        elif bad:
            raise _fail(case, data, name, f"{bad[0][0]} vs the float64 reference", bad[0][1], limit)
    mask_check = fast_err = None
    if case.masked:
        mask_check = _check_mask(case, p, built["jaxnorm"], data, opts, CHECK_TOL)
    if "flax" in built and not opts.flax_fast_variance and case.op != "rms_norm":
        fast = runners.build_flax(case, p, dataclasses.replace(opts, flax_fast_variance=True))
        fast_err = _errors(p, fast, (y_ref, dx_ref))
    return CheckResult(errors=errors, tol=tol, tol_jaxnorm=CHECK_TOL, condition=condition, excluded=excluded,
                       mask_vs_valid_only=mask_check, flax_fast_variance_err=fast_err)


def check_copy(case: Case, p: Problem, copy: Impl, data: str) -> None:
    """The copy baseline wrote every element of ``x · w`` and ``dy · w``: equal to NumPy's float32 products bit for
    bit (one correctly rounded multiplication each), or the run stops."""
    view = tuple(-1 if a == case.channel_axis % p.x.ndim else 1 for a in range(p.x.ndim))
    w = p.weight.reshape(view)
    for what, got, want in zip(("y", "dx"), copy.result(), (p.x * w, p.dy * w), strict=True):
        if not np.array_equal(got, want):
            err = float(np.nanmax(np.abs(got - want)) / np.max(np.abs(want)))
            raise _fail(case, data, "copy", f"{what} vs x·w computed by NumPy", err, 0.0)


def _check_mask(case: Case, p: Problem, masked: Impl, data: str, opts: Options, tol: float) -> MaskCheck:
    """jaxnorm masked at the valid examples vs jaxnorm unmasked on those examples alone; exact zeros elsewhere."""
    sub = p.valid_examples()
    n = sub.x.shape[0]
    y_m, dx_m = masked.result()
    y_v, dx_v = runners.build_jaxnorm(case, sub, opts).result()
    errs = MaskCheck(y=rel_err(y_m[:n], y_v.astype(np.float64)), dx=rel_err(dx_m[:n], dx_v.astype(np.float64)),
                     off_mask_max_abs=float(max(np.max(np.abs(y_m[n:])), np.max(np.abs(dx_m[n:])))))
    for what, err in (("y", errs.y), ("dx", errs.dx)):
        if not err <= tol:
            raise _fail(case, data, "jaxnorm", f"masked {what} at the valid examples vs jaxnorm on them alone", err, tol)
    if errs.off_mask_max_abs != 0.0:
        raise _fail(case, data, "jaxnorm", "masked y or dx off the mask (expected 0)", errs.off_mask_max_abs, tol)
    return errs
