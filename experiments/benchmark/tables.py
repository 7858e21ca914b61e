"""The Markdown tables of one run's rows, and the verdict that reads a ratio as a win, a loss or neither.

Each ratio cell is ``median (interquartile range) · best-call ratio`` of jaxnorm's time over the other's; the
"faster?" column is derived from those numbers by :func:`verdict`, so that a row where jaxnorm is not faster reads as
a miss. Traffic cells give the compiled program's bytes in units of N, the dearest conditional branch in brackets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experiments.benchmark.cases import LABELS
from experiments.benchmark.rows import Ratio, Row

GAIN = 0.05  # a speed-up smaller than 5 % is not claimed (see verdict)

LEGEND = (
    "Ratios are jaxnorm's time over the other's (< 1: jaxnorm is faster): the median of per-round paired ratios, "
    "its interquartile range in brackets, then the ratio of the fastest calls. \"faster?\" is derived from those "
    f"numbers: yes = median below {1 - GAIN:.2f} with the upper quartile and the best-call ratio below 1; "
    "no (slower) = the mirror image above 1; no gain = anything else. Traffic: bytes the compiled XLA program moves, "
    "in units of N (the bytes of x; the byte model says 3N fwd, 8N fwd+bwd); in brackets the dearest branch of a "
    "conditional, which jaxnorm's CPU statistics take on ill-conditioned data.")


FLOOR_LEGEND = (
    "Against the memory floor (`--copy-baseline`): a copy of the same data, y = x·w (fwd: reads x, writes y, 2N) and "
    "y, dx = x·w, dy·w (fwd+bwd: 4N), one jitted JAX program. jaxnorm / copy is the paired per-round ratio as above; "
    "Flax / copy and PyTorch / copy are ratios of medians. A norm that reads x twice (statistics, then normalize) "
    "is bound to 1.5× the copy in fwd and 2× in fwd+bwd (the byte model's 3N and 8N).")


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


def ratio_verdict(r: Ratio | None) -> str:
    """:func:`verdict` of a row's ratio record."""
    return "-" if r is None else verdict(r.median, r.iqr, r.best)


def _ratio_cell(r: Row, other: str) -> str:
    """'0.81 (0.78–0.85) · 0.79': median per-round ratio (interquartile range) · best-call ratio."""
    v = r.measured(other).vs
    if v is None:
        return "-"
    return f"{v.median:.2f} ({v.iqr[0]:.2f}–{v.iqr[1]:.2f}) · {v.best:.2f}"


def _verdict_cell(r: Row, other: str) -> str:
    return ratio_verdict(r.measured(other).vs)


def traffic_cell(r: Row, impl: str) -> str:
    """'4N', or '4N (6N)' when a conditional's dearest branch moves more (in brackets)."""
    t = r.measured(impl).traffic
    if t is None or t.cheapest is None:
        return "-"
    return f"{t.cheapest:.0f}N" + ("" if t.dearest is None or round(t.dearest) == round(t.cheapest)
                                   else f" ({t.dearest:.0f}N)")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table; a ``|`` inside a cell is escaped."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "---|" * len(head)] + [line(row) for row in body])


def _where(r: Row) -> str:
    return f"{r.layout} {'×'.join(map(str, r.shape))}"


def _others(r: Row) -> str:
    return f"Flax: {r.setup['flax']}; PyTorch: {r.setup['torch']}"


def _plain_table(rows: Sequence[Row]) -> str:
    head = ("norm", "layout, shape", "pass", "jaxnorm ms", "jaxnorm / Flax: median (IQR) · best",
            "faster than Flax?", "jaxnorm / PyTorch: median (IQR) · best", "faster than PyTorch?",
            "traffic jaxnorm · Flax", "how Flax and PyTorch run")
    return markdown(head, [
        (r.norm, _where(r), r.pass_, _ms(r.measured("jaxnorm").ms), _ratio_cell(r, "flax"), _verdict_cell(r, "flax"),
         _ratio_cell(r, "torch"), _verdict_cell(r, "torch"),
         f"{traffic_cell(r, 'jaxnorm')} · {traffic_cell(r, 'flax')}", _others(r)) for r in rows])


def _masked_table(rows: Sequence[Row]) -> str:
    head = ("norm", "layout, shape", "pass", "masked jaxnorm ms", "masked / unmasked jaxnorm: median (IQR) · best",
            "masked jaxnorm / masked Flax: median (IQR) · best", "faster than Flax?",
            "traffic masked · unmasked · Flax", "how Flax and PyTorch run")
    return markdown(head, [
        (r.norm, _where(r), r.pass_, _ms(r.measured("jaxnorm").ms), _ratio_cell(r, "jaxnorm_nomask"),
         _ratio_cell(r, "flax"), _verdict_cell(r, "flax"),
         f"{traffic_cell(r, 'jaxnorm')} · {traffic_cell(r, 'jaxnorm_nomask')} · {traffic_cell(r, 'flax')}",
         _others(r)) for r in rows])


def _over_copy(r: Row, impl: str) -> str:
    """``impl``'s median time over the copy baseline's (a ratio of medians; ``-`` where either did not run)."""
    ms, copy = r.measured(impl).ms, r.measured("copy").ms
    return "-" if ms is None or copy is None else f"{ms / copy:.2f}"


def _floor_table(rows: Sequence[Row]) -> str:
    head = ("norm", "layout, shape", "pass", "copy ms", "copy GB/s", "jaxnorm / copy: median (IQR) · best",
            "Flax / copy", "PyTorch / copy", "jaxnorm GB/s (byte model)")
    return markdown(head, [
        (r.norm, _where(r), r.pass_, _ms(r.measured("copy").ms), f"{r.measured('copy').gbs:.0f}",
         _ratio_cell(r, "copy"), _over_copy(r, "flax"), _over_copy(r, "torch"), f"{r.measured('jaxnorm').gbs:.0f}")
        for r in rows])


def as_rows(rows: Sequence[Row | Mapping[str, Any]]) -> list[Row]:
    """Typed rows, from rows or from their JSON form (what ``main`` returns)."""
    return [r if isinstance(r, Row) else Row.from_json(r) for r in rows]


def format_table(rows: Sequence[Row | Mapping[str, Any]]) -> str:
    """The Markdown tables of one run: unmasked cases (jaxnorm vs Flax and PyTorch), then masked BN (the price of a
    mask: masked vs unmasked jaxnorm, and masked jaxnorm vs masked Flax), then, where the copy baseline ran, every
    library's time over that memory floor (> 1: slower than copying the data). Ratios < 1: jaxnorm is faster."""
    rows = as_rows(rows)
    plain = [r for r in rows if not r.masked]
    masked = [r for r in rows if r.masked]
    floor = [r for r in rows if r.measured("copy").ms is not None]
    return "\n\n".join(([_plain_table(plain)] if plain else []) + ([_masked_table(masked)] if masked else [])
                        + ([FLOOR_LEGEND + "\n\n" + _floor_table(floor)] if floor else []))


def fast_variance_note(rows: Sequence[Row]) -> str:
    """Flax's default fast variance on this data, where it was not the timed path (information, not timed)."""
    seen = {}
    for r in rows:
        err = r.check.flax_fast_variance_err
        if err is not None and r.case not in seen:
            seen[r.case] = f"{r.norm} {r.layout}: y {err.y:.2g}, dx {err.dx:.2g}"
    if not seen:
        return ""
    return ("Flax's default fast variance on this data (not timed; error relative to max|reference|): "
            + "; ".join(seen.values()) + ".")


def check_table(rows: Sequence[Row]) -> str:
    """``--check-only``'s table: each case's conditioning and every implementation's error."""
    body = [(r.case, r.data, f"{r.check.condition:.3g}",
             ", ".join(f"{LABELS[k]} y {v.y:.1e} dx {v.dx:.1e}" for k, v in r.check.errors.items())) for r in rows]
    return markdown(("case", "data", "max mean²/var", "error vs float64 reference (x max|ref|)"), body)
