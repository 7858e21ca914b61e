"""Small Markdown helpers for ``experiments.reproduce``'s ``report.md`` (tables, numbers, images)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def fmt(v, spec: str = ".4g", *, none: str = "–") -> str:
    """``v`` formatted with ``spec``; ``None`` as ``none`` and NaN/inf spelled out (JSON writes NaN as null)."""
    if v is None:
        return none
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def pct(v, *, none: str = "–") -> str:
    """A fraction as a percentage with two decimals (``0.875`` -> ``87.50%``)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none if v is None else "NaN"
    return f"{100 * v:.2f}%"


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence], align: Sequence[str] | None = None) -> str:
    """A GitHub-Markdown table; ``align`` per column ``"l"``/``"r"``/``"c"`` (default: left)."""
    if align is not None and len(align) != len(headers):
        raise ValueError(f"table: expected {len(headers)} alignments, got {len(align)}")
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"table: expected rows of {len(headers)} cells, got {len(r)}: {r!r}")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    sep = [marks[a] for a in align] if align else ["---"] * len(headers)
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def image(path: str | Path, root: str | Path, alt: str) -> str:
    """Markdown image link to ``path`` relative to the report's folder ``root`` (forward slashes)."""
    rel = Path(path).resolve().relative_to(Path(root).resolve())
    return f"![{alt}]({rel.as_posix()})"


def plot_benchmark(rows: Sequence[dict], path: str | Path, impls: Sequence[str] = ("jaxnorm", "flax", "torch")) -> Path:
    """Grouped bars of the median time (ms, log scale) per benchmark case and pass, one bar per implementation.

    Reads the rows ``experiments.benchmark.main`` returns (``case``, ``pass``, ``<impl>_ms``); an implementation
    that did not run (``None``) gets no bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        raise ValueError("plot_benchmark: expected at least one benchmark row, got none")
    present = [i for i in impls if any(r.get(f"{i}_ms") is not None for r in rows)]
    labels = [f"{r.get('case', r.get('op', '?'))}\n{r.get('pass', '')}" for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / max(len(present), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    for k, impl in enumerate(present):
        ms = np.array([np.nan if r.get(f"{impl}_ms") is None else r[f"{impl}_ms"] for r in rows], float)
        ax.bar(x + (k - (len(present) - 1) / 2) * width, ms, width, label=impl)
    ax.set_yscale("log")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("median time per call (ms, log scale)")
    quick = any(r.get("quick") for r in rows)
    ax.set_title("Training-mode normalization, forward and forward+backward"
                 + (" (--quick: tiny shapes, times are noise)" if quick else ""), fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
