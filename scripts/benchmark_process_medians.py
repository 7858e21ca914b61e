"""Median over separate processes of the benchmark's paired ratios: for rows whose timings are bimodal from process
to process (BatchNorm on the project's 2-core VM), one run's median is not a verdict.

    python scripts/benchmark_process_medians.py benchmarks/bn_processes/new_*.json -- benchmarks/bn_processes/old_*.json

Each argument group (separated by ``--``) is one side, e.g. the code now and the code of another commit, each file
one ``python -m experiments.benchmark --json`` run in its own process. Prints, per case, pass and other library, the
median of the runs' median ratios jaxnorm / other, then every run's value.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.benchmark.rows import load_results  # noqa: E402


def process_ratios(paths: list[str]) -> dict[tuple[str, str, str], list[float]]:
    """(case, pass, other) -> each file's median ratio jaxnorm / other, in the order of ``paths``."""
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for path in paths:
        _, rows = load_results(path)
        for row in rows:
            for other in ("flax", "torch"):
                try:
                    ratio = row.measured(other).vs
                except (KeyError, AttributeError):
                    continue
                if ratio is not None:
                    ratios.setdefault((row.case, row.pass_, other), []).append(ratio.median)
    return ratios


def main(argv: list[str]) -> None:
    groups, current = [], []
    for arg in argv:
        if arg == "--":
            groups.append(current)
            current = []
        else:
            current.append(arg)
    groups.append(current)
    for i, paths in enumerate(groups):
        print(f"side {i + 1}: {len(paths)} runs ({paths[0]} ...)")
        for (case, pass_, other), values in sorted(process_ratios(paths).items()):
            print(f"  {case:8s} {pass_:8s} / {other:6s} median {statistics.median(values):.2f}   runs "
                  + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main(sys.argv[1:])
