"""Timing on a shared machine: interleaved rounds and paired per-round ratios.

A small machine shared with other work drifts (another tenant's load comes and goes) and stalls single calls
several-fold (a worker thread of a parallel region waits for a descheduled core). Two defences:

* :func:`time_interleaved` runs every implementation in every round, in an order rotated by one each round, so a
  drift hits all of them alike;
* :func:`paired_ratios` compares two implementations round by round (a ratio of medians *within* a round, then the
  median and interquartile range over rounds) and by their fastest calls, the least disturbed reading.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence

import numpy as np


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int, inner: int = 5
                     ) -> dict[str, list[float]]:
    """Milliseconds per call of each fn: ``rounds`` interleaved rounds of ``inner`` timed calls each.

    In a round every fn gets one untimed *settling* call and then ``inner`` timed calls; the order of
    the fns rotates by one each round. Why: switching between frameworks is not free on a small
    machine (the other library's thread pool is still spinning, caches hold its data); a measured
    2x on single interleaved calls of torch GroupNorm. The settling call absorbs that switch, the
    rotation spreads what remains and slow drifts of the shared machine's load evenly. The garbage
    collector is off while timing: a collection inside one call would be charged to whoever ran then.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
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


def paired_ratios(a: Sequence[float], b: Sequence[float], rounds: int, inner: int) -> dict:
    """How ``a`` compares with ``b`` (both ``rounds * inner`` call times from one :func:`time_interleaved` run).

    Returns ``median``: the median over rounds of ``median(a's calls in the round) / median(b's calls in the
    round)`` — paired, so a change of the machine's load during the run moves both sides of each ratio; ``iqr``:
    the 25th and 75th percentiles of those per-round ratios (how far to trust the median); ``best``: the ratio of
    the two fastest calls, a floor that stalls cannot raise.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size != rounds * inner or b.size != rounds * inner:
        raise ValueError(f"expected {rounds} x {inner} call times on each side, got {a.size} and {b.size}")
    per_round = np.median(a.reshape(rounds, inner), axis=1) / np.median(b.reshape(rounds, inner), axis=1)
    return {"median": float(np.median(per_round)),
            "iqr": [float(q) for q in np.percentile(per_round, [25, 75])],
            "best": float(a.min() / b.min())}
