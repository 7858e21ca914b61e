"""The memory traffic of the compiled JAX programs: how many passes over x each implementation makes.

Each row carries, per JAX implementation, the bytes read and written by the kernels of the *compiled* program
(:func:`experiments.common.hlo.hlo_traffic`) in units of N, the bytes of x, a conditional charged its cheapest
branch, and the same with its dearest branch (jaxnorm's CPU statistics take that one on offset data). Compared with
the byte model (3N fwd, 8N fwd+bwd) it shows how many passes over x a program makes. ``--hlo DIR`` writes the
compiled HLO texts.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.benchmark.cases import Case
from experiments.benchmark.rows import Traffic
from experiments.benchmark.runners import Impl
from experiments.common.hlo import hlo_traffic

__all__ = ["count_traffic", "hlo_traffic"]


def count_traffic(case: Case, impl: Impl, pass_: str, nbytes_x: int, hlo_dir: Path | None,
                  name: str) -> Traffic | None:
    """Compiled-HLO traffic of one JAX implementation in one pass, in units of N; None if it cannot be counted."""
    text = impl.hlo(pass_)
    if hlo_dir is not None:
        hlo_dir.mkdir(parents=True, exist_ok=True)
        (hlo_dir / f"{case.name}_{pass_.replace('+', '')}_{name}.hlo.txt").write_text(text)
    try:
        return Traffic(cheapest=hlo_traffic(text) / nbytes_x,
                       dearest=hlo_traffic(text, conditional="dearest") / nbytes_x)
    except (ValueError, KeyError, IndexError) as err:  # e.g. another backend's HLO dialect
        print(f"warning: {case.name}: HLO traffic not counted ({err})", file=sys.stderr)
        return None
