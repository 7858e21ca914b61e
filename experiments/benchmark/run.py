"""One case from inputs to rows: build every implementation, cross-check, time both passes, count the traffic.

Timing: inputs are made once; every function is called ``warmup`` times (compiling the JAX ones) and then
``rounds`` rounds are timed (:func:`experiments.common.timing.time_interleaved`): in each round every
implementation makes one untimed settling call and ``inner`` timed calls, in an order rotated by one each round, so
slow drifts of the shared machine's load hit all of them alike and no one pays for the switch from the other
framework. A call is timed with ``time.perf_counter`` around the call and ``block_until_ready`` (JAX dispatch is
included, as a user pays it). ``<impl>_ms`` is the median over all timed calls.

Ratios are paired (:func:`experiments.common.timing.paired_ratios`): the median over rounds of ``median(jaxnorm
calls) / median(other calls)`` within the round, with its interquartile range, so a change of the machine's load
moves both sides of each ratio (< 1: jaxnorm is faster); the *best-call* ratio divides the two fastest calls: on a
shared machine, where a single call can be stalled several-fold, it is the least disturbed reading.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.benchmark import runners
from experiments.benchmark.cases import ALL_IMPLS, JAX_IMPLS, OPTIONAL_IMPLS, PASSES, Case, bytes_moved, case_impls
from experiments.benchmark.checks import check_copy, cross_check
from experiments.benchmark.inputs import make_problem
from experiments.benchmark.rows import Measured, Ratio, Row, Timing
from experiments.benchmark.runners import Impl, Options
from experiments.benchmark.traffic import count_traffic
from experiments.common.timing import paired_ratios, time_interleaved


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
    copy_baseline: bool = False  # also time the copy baseline (cases.py: the memory floor)


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
    if "copy" in impls:
        setup["copy"] = "y = x·w (fwd: 2N), y, dx = x·w, dy·w (fwd+bwd: 4N), w per channel: no statistics"
    return setup


def _measure(case: Case, built: dict[str, Impl], pass_: str, shape: tuple[int, ...], itemsize: int,
             cfg: RunConfig) -> Timing:
    """Time one pass of the built implementations, interleaved; their medians, GB/s, ratios and traffic."""
    fns = {name: (b.fwd if pass_ == "fwd" else b.fwdbwd) for name, b in built.items()}
    times = time_interleaved(fns, rounds=cfg.rounds, warmup=cfg.warmup, inner=cfg.inner)
    k = cfg.opts.calls_per_sync  # each timed call ran k steps (runners.repeated): the time of one step
    times = {name: [t / k for t in ts] for name, ts in times.items()}
    nbytes = bytes_moved(shape, itemsize, pass_)
    measured = {}
    for name in ALL_IMPLS + OPTIONAL_IMPLS:
        t = times.get(name)
        if t is None:
            if name in ALL_IMPLS:
                measured[name] = Measured()
            continue
        ms = float(np.median(t))
        moved = bytes_moved(shape, itemsize, pass_, copy=True) if name == "copy" else nbytes
        vs = None
        if name != "jaxnorm":
            r = paired_ratios(times["jaxnorm"], t, cfg.rounds, cfg.inner)
            vs = Ratio(median=r["median"], iqr=tuple(r["iqr"]), best=r["best"])
        traffic = None
        if name in JAX_IMPLS:
            traffic = count_traffic(case, built[name], pass_, math.prod(shape) * itemsize, cfg.hlo_dir, name)
        measured[name] = Measured(ms=ms, ms_min=float(np.min(t)), gbs=moved / (ms * 1e-3) / 1e9, vs=vs,
                                  traffic=traffic)
    return Timing(pass_=pass_, bytes=nbytes, rounds=cfg.rounds, inner=cfg.inner, warmup=cfg.warmup,
                  measured=measured)


def run_case(case: Case, shape: tuple[int, ...], cfg: RunConfig) -> list[Row]:
    """Cross-check one case, then time both passes; its rows (only the check when ``cfg.check_only``)."""
    p = make_problem(case, shape, cfg.data, cfg.seed)
    impls = case_impls(case, cfg.with_torch)
    builders = runners.builders()
    built = {name: builders[name](case, p, cfg.opts) for name in impls}
    checked = cross_check(case, p, built, cfg.data, cfg.opts)
    built = {name: b for name, b in built.items() if name not in checked.excluded}
    if cfg.copy_baseline and not cfg.check_only:
        built["copy"] = builders["copy"](case, p, cfg.opts)
        check_copy(case, p, built["copy"], cfg.data)
    row = Row(case=case.name, op=case.op, norm=case.title, layout=case.layout, shape=tuple(shape), data=cfg.data,
              masked=case.masked, dtype=str(p.x.dtype), impls=tuple(built),
              setup=_setup(case, impls + tuple(n for n in OPTIONAL_IMPLS if n in built), cfg.opts, checked.excluded),
              flax_variance=("n/a" if case.op == "rms_norm" else
                             "fast" if cfg.opts.flax_fast_variance else "two-pass"),
              torch_device=cfg.opts.torch_device if "torch" in impls else None, check=checked)
    if cfg.check_only:
        return [row]
    return [dataclasses.replace(row, timing=_measure(case, built, pass_, shape, p.x.itemsize, cfg))
            for pass_ in PASSES]
