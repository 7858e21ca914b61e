"""Benchmark jaxnorm against flax.linen and PyTorch: training-mode forward and forward+backward.

Run ``python -m experiments.benchmark`` (``--help`` for flags). Cases (issue 4):

=============  ==================  ========  ====================================================
case           shape               layout    notes
=============  ==================  ========  ====================================================
``bn_nchw``    (64, 64, 32, 32)    NCHW      jaxnorm ``axis=1``; ``flax.linen.BatchNorm(axis=1)``
``bn_nhwc``    (64, 32, 32, 64)    NHWC      jaxnorm ``axis=-1``; torch gets a channels_last view
``ln``         (32, 512, 768)      (N,T,D)   normalized over the last axis (768)
``gn``         (64, 64, 32, 32)    NCHW      8 groups; flax GroupNorm is channels-last only, so it
                                             gets the NHWC transpose (made once, not timed)
=============  ==================  ========  ====================================================

Every implementation runs in training mode (batch statistics; BN also returns its updated running
statistics; flax BN uses ``use_running_average=False`` and its default *fast* variance
``E[x^2] - E[x]^2``). Two passes are timed:

* ``fwd``: ``y = norm(x)``. JAX: one ``jax.jit`` call. torch: the functional op under ``no_grad``.
* ``fwd+bwd``: ``y, vjp = jax.vjp(norm, x, params); dx, dparams = vjp(dy)`` with a *random*
  cotangent ``dy``, the whole thing under one ``jax.jit`` (a ``grad(sum(y))`` benchmark would be
  degenerate: XLA folds the constant cotangent). torch: ``y = op(x); y.backward(dy)``.

Method: inputs are made once; every function is called ``warmup`` times (compiling the JAX ones)
and then ``rounds`` rounds are timed. In each round every implementation makes one untimed settling
call and ``inner`` timed calls, in an order rotated by one each round (jaxnorm, flax, torch / flax,
torch, jaxnorm / ...), so slow drifts of the shared machine's load hit all of them alike and no one
pays for the switch from the other framework (see :func:`time_interleaved`). A call is timed with
``time.perf_counter`` around the call and ``block_until_ready`` (JAX dispatch is included, as a user
pays it). The reported time is the median over all timed calls. Ratios come from the same run and
are paired: the median over rounds of ``median(jaxnorm calls) / median(other calls)`` within the
round, so a change of the machine's load moves both sides of each ratio (< 1: jaxnorm is faster). The
*best-call* ratio (``jaxnorm_vs_*_best``, "b" in the table) divides the two fastest calls: on a shared machine,
where a single call can be stalled several-fold, it is the least disturbed reading. Before timing, y and dx of every implementation are compared with
jaxnorm's (``max_abs_diff_*``), so the table never compares different computations.

Byte model (what a training-mode normalization *must* move through memory, for ``N`` bytes of x;
small per-channel vectors are ignored):

* ``fwd``: the statistics read x once, normalizing reads x again and writes y:
  ``B_fwd = 3 N``.
* ``fwd+bwd``: the forward as above, then the backward reads x and dy twice each (once for the two
  reductions ``sum(dy)`` and ``sum(dy * x_hat)``, once for the final map
  ``dx = w/sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat))``) and writes dx:
  ``B_fwdbwd = 3 N + 5 N = 8 N``.

Achieved bandwidth is ``B / median time`` in GB/s (10^9 bytes/s). It can exceed the machine's DRAM
bandwidth when x fits in cache, so read it as "how close to the memory limit", not as a hardware
measurement.

Profile: for the JAX implementations each row also carries ``*_hlo_traffic``, the bytes read and
written by the kernels of the *compiled* program (:func:`hlo_traffic` over
``jax.jit(f).lower(...).compile().as_text()``) in units of N. Compared with the byte model (3 / 8) it
shows how many passes over x a program makes: an elementwise producer that XLA materializes instead
of fusing costs 2N, a reduction that cannot share a pass 1N. ``--hlo DIR`` writes those texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Passes, in the order they are run and printed.
PASSES = ("fwd", "fwd+bwd")
# Bytes moved per byte of x (see the module docstring).
BYTES_PER_X = {"fwd": 3, "fwd+bwd": 8}
IMPLS = ("jaxnorm", "flax", "torch")
EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: which norm, its layout, and the full and --quick shapes."""

    name: str
    op: str  # "batch_norm_2d" | "layer_norm" | "group_norm"
    layout: str  # layout of x as given to jaxnorm and torch
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    note: str = ""
    flax_layout: str = ""  # layout flax is given, when it differs from `layout`


GROUPS = 8
CASES = {
    c.name: c
    for c in (
        Case("bn_nchw", "batch_norm_2d", "NCHW", (64, 64, 32, 32), (4, 16, 8, 8)),
        Case("bn_nhwc", "batch_norm_2d", "NHWC", (64, 32, 32, 64), (4, 8, 8, 16),
             note="torch: channels_last view of the same data"),
        Case("ln", "layer_norm", "(N,T,D)", (32, 512, 768), (4, 16, 64),
             note="normalized over D"),
        Case("gn", "group_norm", "NCHW", (64, 64, 32, 32), (4, 16, 8, 8),
             note=f"{GROUPS} groups; flax GroupNorm is channels-last only: it gets the NHWC "
                  "transpose (made once, not timed)", flax_layout="NHWC"),
    )
}


def bytes_moved(shape: tuple[int, ...], itemsize: int, pass_: str) -> int:
    """Bytes a training-mode norm must move for x of ``shape``: 3N (fwd) or 8N (fwd+bwd)."""
    if pass_ not in BYTES_PER_X:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    return BYTES_PER_X[pass_] * math.prod(shape) * itemsize


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


def _jax_impl(apply, x, dy, params, state, to_case_layout=lambda a: a) -> Impl:
    """Wrap ``apply(x, params, state) -> (y, new_state)`` into jitted fwd and fwd+vjp steps."""
    import jax

    fwd = jax.jit(apply)

    @jax.jit
    def fwdbwd(x, params, state, dy):
        # Differentiate w.r.t. x and the affine parameters, as a training step does; the updated
        # running statistics are an auxiliary output (not differentiated).
        y, vjp, new_state = jax.vjp(lambda x, p: apply(x, p, state), x, params, has_aux=True)
        dx, dparams = vjp(dy)
        return y, new_state, dx, dparams

    def result():
        y, _, dx, _ = fwdbwd(x, params, state, dy)
        return to_case_layout(np.asarray(y)), to_case_layout(np.asarray(dx))

    def hlo(pass_):
        lowered = fwd.lower(x, params, state) if pass_ == "fwd" else fwdbwd.lower(x, params, state, dy)
        return lowered.compile().as_text()

    return Impl(
        fwd=lambda: jax.block_until_ready(fwd(x, params, state)),
        fwdbwd=lambda: jax.block_until_ready(fwdbwd(x, params, state, dy)),
        result=result,
        hlo=hlo,
    )


def build_jaxnorm(case: Case, x: np.ndarray, dy: np.ndarray) -> Impl:
    """jaxnorm's functional API on x in the case's own layout."""
    import jax.numpy as jnp

    import jaxnorm as jn

    xj, dyj = jnp.asarray(x), jnp.asarray(dy)
    if case.op == "batch_norm_2d":
        axis = 1 if case.layout == "NCHW" else -1
        params, stats = jn.batch_norm_init(x.shape[axis])

        def apply(x, p, s):
            return jn.batch_norm_2d(x, p, s, train=True, momentum=0.1, eps=EPS, axis=axis)

    elif case.op == "layer_norm":
        params, stats = jn.layer_norm_init((x.shape[-1],)), {}

        def apply(x, p, s):
            return jn.layer_norm(x, p, (x.shape[-1],), eps=EPS), s

    else:
        params, stats = jn.group_norm_init(GROUPS, x.shape[1]), {}

        def apply(x, p, s):
            return jn.group_norm(x, p, GROUPS, eps=EPS, axis=1), s

    return _jax_impl(apply, xj, dyj, params, stats)


def build_flax(case: Case, x: np.ndarray, dy: np.ndarray) -> Impl:
    """flax.linen's BatchNorm / LayerNorm / GroupNorm with their defaults (fast variance)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    to_case_layout = lambda a: a  # noqa: E731
    if case.op == "group_norm":
        # flax GroupNorm takes channels last: feed it the NHWC transpose, made once up front.
        x, dy = x.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1)
        to_case_layout = lambda a: a.transpose(0, 3, 1, 2)  # noqa: E731
    xj, dyj = jnp.asarray(x), jnp.asarray(dy)
    if case.op == "batch_norm_2d":
        # flax momentum is the weight of the *old* running value: 0.9 == PyTorch's 0.1.
        mod = nn.BatchNorm(use_running_average=False, axis=1 if case.layout == "NCHW" else -1,
                           momentum=0.9, epsilon=EPS)
    elif case.op == "layer_norm":
        mod = nn.LayerNorm(epsilon=EPS)
    else:
        mod = nn.GroupNorm(num_groups=GROUPS, epsilon=EPS)
    variables = jax.jit(mod.init)(jax.random.key(0), xj)
    params, state = variables["params"], variables.get("batch_stats", {})

    if case.op == "batch_norm_2d":
        def apply(x, p, s):
            y, updates = mod.apply({"params": p, "batch_stats": s}, x, mutable=["batch_stats"])
            return y, updates["batch_stats"]
    else:
        def apply(x, p, s):
            return mod.apply({"params": p}, x), s

    return _jax_impl(apply, xj, dyj, params, state, to_case_layout)


def build_torch(case: Case, x: np.ndarray, dy: np.ndarray, device: str = "cpu") -> Impl:
    """torch.nn.functional ops on ``device``; BN updates running buffers in place, as nn.BatchNorm2d does."""
    import torch
    import torch.nn.functional as F

    xt, dyt = torch.from_numpy(x.copy()).to(device), torch.from_numpy(dy.copy()).to(device)
    # CUDA kernels run asynchronously: a timed call must wait for them, as block_until_ready does for JAX.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    to_case_layout = lambda a: a  # noqa: E731
    if case.layout == "NHWC":
        # A permuted view of NHWC memory *is* torch's channels_last NCHW tensor: no copy.
        xt, dyt = xt.permute(0, 3, 1, 2), dyt.permute(0, 3, 1, 2)
        assert xt.is_contiguous(memory_format=torch.channels_last)
        to_case_layout = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    c = xt.shape[1] if case.op != "layer_norm" else xt.shape[-1]
    weight = torch.ones(c, requires_grad=True, device=device)
    bias = torch.zeros(c, requires_grad=True, device=device)
    running_mean, running_var = torch.zeros(c, device=device), torch.ones(c, device=device)

    def op(inp):
        if case.op == "batch_norm_2d":
            return F.batch_norm(inp, running_mean, running_var, weight, bias, training=True,
                                momentum=0.1, eps=EPS)
        if case.op == "layer_norm":
            return F.layer_norm(inp, (c,), weight, bias, eps=EPS)
        return F.group_norm(inp, GROUPS, weight, bias, eps=EPS)

    def fwd():
        with torch.no_grad():
            y = op(xt)
        sync()
        return y

    xg = xt.detach().requires_grad_(True)

    def fwdbwd():
        # Drop old grads so backward writes them fresh instead of accumulating (an extra pass).
        xg.grad = weight.grad = bias.grad = None
        y = op(xg)
        y.backward(dyt)
        sync()
        return y

    def result():
        y = fwdbwd()
        return to_case_layout(y.detach().cpu().numpy()), to_case_layout(xg.grad.cpu().numpy())

    return Impl(fwd=fwd, fwdbwd=fwdbwd, result=result)


def torch_available() -> bool:
    """True when PyTorch imports (it is optional)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Profile: memory traffic of the compiled program
# --------------------------------------------------------------------------------------------

_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
             "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_ITEMSIZE) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)")
_FREE = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "opt-barrier"}  # no memory traffic of their own


def _type_bytes(hlo_type: str) -> int:
    return sum(_ITEMSIZE[dt] * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _ARRAY.findall(hlo_type))


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
    """Instruction lines of every computation in HLO text, and the entry computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%(\S+) \(", line)
        if head:
            current = head.group(2)
            comps[current] = []
            entry = current if head.group(1) else entry
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def _fusion_param_reads(body: list[str]) -> dict[int, int]:
    """Bytes a fusion reads of each parameter: the whole array, or only the slices taken of it.

    Bitcasts and reshapes of a parameter are followed (``slice(bitcast(p))`` reads only the slice).
    """
    sizes: dict[str, int] = {}
    params: dict[str, int] = {}
    root: dict[str, str] = {}  # value -> the parameter it is a bitcast/reshape of
    uses: dict[str, list[tuple[str, int]]] = {}
    for line in body:
        m = _INSTR.match(line)
        if not m:
            continue
        name, typ, op, rest = m.groups()
        sizes[name] = _type_bytes(typ)
        if op == "parameter":
            params[name] = int(rest.split(")")[0])
            root[name] = name
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        if op in ("bitcast", "reshape") and len(operands) == 1 and operands[0] in root:
            root[name] = root[operands[0]]
            continue
        for operand in operands:
            if operand in root:
                uses.setdefault(root[operand], []).append((op, sizes[name]))
    reads = {}
    for name, index in params.items():
        u = uses.get(name, [])
        sliced = u and all(op in ("slice", "dynamic-slice") for op, _ in u)
        reads[index] = sum(size for _, size in u) if sliced else sizes[name]
    return reads


def hlo_traffic(text: str) -> int:
    """Bytes read and written by the top-level ops of a compiled XLA program (its ``as_text()``).

    Each kernel (fusion, reduction, copy, ...) of the entry computation is charged its operands (a fusion operand
    used only through slices: the slices' size) plus its result; parameters, constants, bitcasts and tuples are
    free. A ``conditional`` is charged the traffic of its *cheapest* branch, counted the same way: jaxnorm's
    statistics take the cheap plain-sum branch on well-conditioned data such as the benchmark's (the other branch
    costs 2N more). It counts the passes a program makes over full-size arrays, not cache effects: compare it with
    the byte model (3N fwd, 8N fwd+bwd).
    """
    comps, entry = _computations(text)
    return _computation_traffic(comps, entry)


def _computation_traffic(comps: dict[str, list[str]], computation: str) -> int:
    sizes: dict[str, int] = {}
    total = 0
    for line in comps.get(computation, []):
        m = _INSTR.match(line)
        if not m:
            continue
        name, typ, op, rest = m.groups()
        sizes[name] = _type_bytes(typ)
        if op in _FREE:
            continue
        if op == "conditional":
            branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
            names = re.findall(r"%([\w.\-]+)", branches.group(1)) if branches else []
            names = names or re.findall(r"(?:true|false)_computation=%([\w.\-]+)", rest)
            total += min((_computation_traffic(comps, b) for b in names), default=0)
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        called = re.search(r"calls=%([\w.\-]+)", rest)
        reads = _fusion_param_reads(comps.get(called.group(1), [])) if called and op == "fusion" else {}
        total += sum(reads.get(i, sizes.get(o, 0)) for i, o in enumerate(operands)) + sizes[name]
    return total


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int, inner: int = 5
                     ) -> dict[str, list[float]]:
    """Milliseconds per call of each fn: ``rounds`` interleaved rounds of ``inner`` timed calls each.

    In a round every fn gets one untimed *settling* call and then ``inner`` timed calls; the order of
    the fns rotates by one each round. Why: switching between frameworks is not free on a small
    machine (the other library's thread pool is still spinning, caches hold its data); a measured
    2x on single interleaved calls of torch GroupNorm. The settling call absorbs that switch, the
    rotation spreads what remains and slow drifts of the shared machine's load evenly.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed call would be charged to whoever ran then
    try:
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn = fns[name]
                fn()  # settle: see the docstring
                for _ in range(inner):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def _max_abs_diff(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest |difference| over y and dx."""
    return float(max(np.max(np.abs(u.astype(np.float64) - v)) for u, v in zip(a, b, strict=True)))


def run_case(case: Case, shape: tuple[int, ...], impls: tuple[str, ...], rounds: int,
             warmup: int, seed: int = 0, hlo_dir: Path | None = None, inner: int = 5,
             torch_device: str = "cpu") -> list[dict]:
    """Time one case (both passes) and return its table rows (``hlo_dir``: dump compiled HLO there)."""
    rng = np.random.default_rng(seed)
    # Non-zero mean and non-unit scale, so a normalization that skipped a step would show up.
    x = (rng.standard_normal(shape, dtype=np.float32) * 2.0 + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    builders = {"jaxnorm": build_jaxnorm, "flax": build_flax,
                "torch": lambda *a: build_torch(*a, device=torch_device)}
    built = {name: builders[name](case, x, dy) for name in impls}

    ref = built["jaxnorm"].result()
    diffs = {name: _max_abs_diff(ref, built[name].result()) for name in impls if name != "jaxnorm"}
    for name, d in diffs.items():
        if not d < 1e-3:
            print(f"warning: {case.name}: jaxnorm and {name} differ by {d:.3g} (y or dx)",
                  file=sys.stderr)

    rows = []
    for pass_ in PASSES:
        fns = {name: (b.fwd if pass_ == "fwd" else b.fwdbwd) for name, b in built.items()}
        times = time_interleaved(fns, rounds=rounds, warmup=warmup, inner=inner)
        med = {name: float(np.median(t)) for name, t in times.items()}
        # Paired per-round ratios: a load change on the shared machine moves both sides of a round.
        per_round = {name: np.median(np.reshape(t, (rounds, inner)), axis=1) for name, t in times.items()}
        nbytes = bytes_moved(shape, x.itemsize, pass_)
        row = {"op": case.op, "case": case.name, "shape": list(shape), "layout": case.layout,
               "flax_layout": case.flax_layout or case.layout,
               "pass": pass_, "dtype": str(x.dtype), "bytes": nbytes, "rounds": rounds, "inner": inner,
               "torch_device": torch_device if "torch" in built else None,
               "note": case.note}
        for name in IMPLS:
            ms = med.get(name)
            row[f"{name}_ms"] = ms
            # The fastest call: a floor that stalls (a worker thread waiting for a busy core) cannot raise.
            row[f"{name}_ms_min"] = None if ms is None else float(np.min(times[name]))
            row[f"{name}_gbs"] = None if ms is None else nbytes / (ms * 1e-3) / 1e9
        for name in ("flax", "torch"):
            ms = med.get(name)
            ratios = None if ms is None else per_round["jaxnorm"] / per_round[name]
            row[f"jaxnorm_vs_{name}"] = None if ms is None else float(np.median(ratios))
            # Spread of the per-round ratios (25th, 75th percentile): how far to trust the median.
            row[f"jaxnorm_vs_{name}_iqr"] = (None if ms is None else
                                             [float(q) for q in np.percentile(ratios, [25, 75])])
            # Ratio of the fastest calls: the least disturbed reading on a shared machine, where another tenant or
            # the other framework's spinning thread pool can stall any single call several-fold.
            row[f"jaxnorm_vs_{name}_best"] = (None if ms is None else
                                              row["jaxnorm_ms_min"] / row[f"{name}_ms_min"])
            row[f"max_abs_diff_{name}"] = diffs.get(name)
        for name in ("jaxnorm", "flax"):
            text = built[name].hlo(pass_)
            # Traffic of the compiled program in units of x's bytes (the byte model says 3 / 8).
            try:
                row[f"{name}_hlo_traffic"] = hlo_traffic(text) / (math.prod(shape) * x.itemsize)
            except (ValueError, KeyError, IndexError) as err:  # e.g. another backend's HLO dialect
                print(f"warning: {case.name}: HLO traffic not counted ({err})", file=sys.stderr)
                row[f"{name}_hlo_traffic"] = None
            if hlo_dir is not None:
                hlo_dir.mkdir(parents=True, exist_ok=True)
                (hlo_dir / f"{case.name}_{pass_.replace('+', '')}_{name}.hlo.txt").write_text(text)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _fmt_ratio(r: dict, other: str) -> str:
    """'0.81 (0.78-0.85) b0.79': the median per-round ratio, its interquartile range, the best-call ratio."""
    v, iqr = r[f"jaxnorm_vs_{other}"], r[f"jaxnorm_vs_{other}_iqr"]
    return "-" if v is None else f"{v:.2f} ({iqr[0]:.2f}-{iqr[1]:.2f}) b{r[f'jaxnorm_vs_{other}_best']:.2f}"


def format_table(rows: list[dict]) -> str:
    """A Markdown table: medians (ms), paired same-run ratios (jaxnorm / other, with their
    interquartile range over rounds, and "b": the ratio of the fastest calls), achieved GB/s and the compiled
    programs' traffic."""
    head = ("| op | layout | shape | pass | jaxnorm ms | flax ms | torch ms | jaxnorm/flax "
            "| jaxnorm/torch | GB/s jaxnorm | GB/s flax | GB/s torch | HLO traffic jaxnorm / flax (x N) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        layout = r["layout"]
        if r["flax_layout"] != layout:
            layout += f" (flax: {r['flax_layout']})"
        lines.append(
            f"| {r['op']} | {layout} | {'x'.join(map(str, r['shape']))} | {r['pass']} "
            f"| {_fmt(r['jaxnorm_ms'], '.3f')} | {_fmt(r['flax_ms'], '.3f')} "
            f"| {_fmt(r['torch_ms'], '.3f')} | {_fmt_ratio(r, 'flax')} "
            f"| {_fmt_ratio(r, 'torch')} | {_fmt(r['jaxnorm_gbs'], '.1f')} "
            f"| {_fmt(r['flax_gbs'], '.1f')} | {_fmt(r['torch_gbs'], '.1f')} "
            f"| {_fmt(r['jaxnorm_hlo_traffic'], '.0f')} / {_fmt(r['flax_hlo_traffic'], '.0f')} |")
    notes = sorted({f"{r['op']} {r['layout']}: {r['note']}" for r in rows if r["note"]})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def environment() -> dict:
    """Versions and machine, recorded next to the numbers."""
    import flax
    import jax

    env = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "jax": jax.__version__, "flax": flax.__version__,
           "jax_backend": jax.default_backend(),
           # Other processes on a small machine stall every parallel region (torch's and XLA's thread
           # pools wait for a descheduled worker): record the load so a noisy table can be recognized.
           "loadavg_1min_end": round(os.getloadavg()[0], 2)}
    try:  # which code was measured (the library changes while it is being tuned)
        env["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                    cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    if torch_available():
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["torch_cuda_device"] = torch.cuda.get_device_name(0)
    import jax as _jax

    env["jax_devices"] = [str(d.device_kind) for d in _jax.devices()]
    return env


def resolve_torch_device(requested: str | None) -> str:
    """``requested`` as given, or the device matching JAX's backend: PyTorch on the GPU when JAX is on one."""
    if requested is not None:
        if requested not in ("cpu", "cuda"):
            raise ValueError(f"--torch-device: expected 'cpu' or 'cuda', got {requested!r}")
        return requested
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description="jaxnorm vs flax.linen (and PyTorch when installed): training-mode forward "
                    "and forward+backward (jax.vjp with a random cotangent); medians over "
                    "interleaved rounds, same-run ratios, achieved GB/s (byte model: 3N fwd, "
                    "8N fwd+bwd for N bytes of x).")
    p.add_argument("--ops", default=",".join(CASES),
                   help=f"comma-separated cases to run, from {', '.join(CASES)} (default: all)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per case and pass (default 20, or 2 with --quick)")
    p.add_argument("--inner", type=int, default=None,
                   help="timed calls per implementation and round, after one settling call (default 5, 1 quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before timing, compilation included (default 5, 1 quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and few rounds (CI / reproduce smoke run; times are noise)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads(N) first (default: leave torch's default, one per core)")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON to FILE")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for benchmark.json and benchmark.md (created if missing)")
    p.add_argument("--hlo", type=Path, default=None,
                   help="folder to write the compiled (optimized) HLO of the JAX implementations to")
    p.add_argument("--seed", type=int, default=0, help="seed of the random x and cotangent")
    p.add_argument("--scale", type=int, default=1,
                   help="multiply every case's batch (first) dimension by K, e.g. 16 to fill a GPU (default 1)")
    p.add_argument("--torch-device", default=None,
                   help="device for PyTorch: cpu or cuda (default: cuda when JAX runs on a GPU and torch sees "
                        "one, else cpu)")
    args = p.parse_args(argv)
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


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; print the table; return the rows (and write them if asked)."""
    args = parse_args(argv)
    from tqdm import tqdm

    impls = ("jaxnorm", "flax") + (("torch",) if torch_available() and not args.no_torch else ())
    load_start = round(os.getloadavg()[0], 2)
    torch_device = resolve_torch_device(args.torch_device) if "torch" in impls else "cpu"
    if args.torch_threads is not None and "torch" in impls:
        import torch

        torch.set_num_threads(args.torch_threads)
    rows: list[dict] = []
    for name in tqdm(args.ops, desc="benchmark", unit="case", file=sys.stderr,
                     disable=len(args.ops) < 2):
        case = CASES[name]
        shape = case.quick_shape if args.quick else case.shape
        shape = (shape[0] * args.scale,) + tuple(shape[1:])
        rows.extend(run_case(case, shape, impls, args.rounds, args.warmup, args.seed, args.hlo, args.inner,
                             torch_device))

    env = environment()
    env["loadavg_1min_start"] = load_start
    table = format_table(rows)
    header = (f"{env['cpu_count']}-core {env['machine']} ({env['jax_backend']}: "
              f"{', '.join(sorted(set(env['jax_devices'])))}; torch on {torch_device}); jax {env['jax']}, "
              f"flax {env['flax']}, torch {env.get('torch', 'not installed')}; 1-min load "
              f"{env['loadavg_1min_start']} -> {env['loadavg_1min_end']}; "
              f"{args.rounds} interleaved rounds x {args.inner} calls, medians; ratio < 1: jaxnorm faster")
    print(header)
    print(table)
    for row in rows:  # each row self-describing: reproduce may collect rows from several runs
        row["quick"], row["env"] = args.quick, env
    paths = [args.json] if args.json else []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        paths.append(args.json if args.json else args.out / "benchmark.json")
        (args.out / "benchmark.md").write_text(header + "\n\n" + table + "\n")
    for path in dict.fromkeys(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
