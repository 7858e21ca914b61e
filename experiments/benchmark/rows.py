"""Typed result rows, and their JSON form in the results files.

A :class:`Row` is one case in one pass (``fwd`` or ``fwd+bwd``) or, from ``--check-only``, one case's cross-check
alone (``timing`` None). It holds its cross-check (:class:`CheckResult`) and, per implementation, a
:class:`Measured` record: times, jaxnorm's paired ratio against it and the compiled program's traffic.

The results files keep one flat JSON object per row (benchmarks/README.md documents the keys). This module is the
only one that spells those keys: ``<impl>_ms``, ``<impl>_ms_min``, ``<impl>_gbs`` for every implementation;
``jaxnorm_vs_<impl>`` with ``_iqr`` and ``_best`` for every other one; ``<impl>_hlo_traffic`` and
``<impl>_hlo_traffic_dearest`` for the JAX ones; ``copy_ms``, ``copy_ms_min``, ``copy_gbs`` and ``jaxnorm_vs_copy``
(``_iqr``, ``_best``) only in rows where the copy baseline ran. ``Row.from_json`` then ``Row.to_json`` gives a file's row back,
same keys in the same order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.benchmark.cases import ALL_IMPLS, JAX_IMPLS, OPTIONAL_IMPLS


def _opt(cls, value):
    return None if value is None else cls.from_json(value)


def _json(record):
    return None if record is None else record.to_json()


@dataclasses.dataclass(frozen=True)
class Errors:
    """An implementation's y and dx error against the float64 reference, in units of max|reference|."""

    y: float
    dx: float

    def to_json(self) -> dict[str, float]:
        return {"y": self.y, "dx": self.dx}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Errors:
        return cls(y=d["y"], dx=d["dx"])


@dataclasses.dataclass(frozen=True)
class MaskCheck:
    """Masked jaxnorm at the valid examples vs jaxnorm on those examples alone; its largest value off the mask."""

    y: float
    dx: float
    off_mask_max_abs: float

    def to_json(self) -> dict[str, float]:
        return {"y": self.y, "dx": self.dx, "off_mask_max_abs": self.off_mask_max_abs}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MaskCheck:
        return cls(y=d["y"], dx=d["dx"], off_mask_max_abs=d["off_mask_max_abs"])


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One case's cross-check (``checks.cross_check``)."""

    errors: dict[str, Errors]  # per implementation that ran, timed or not
    tol: float  # Flax's and PyTorch's tolerance on this data
    tol_jaxnorm: float
    condition: float  # largest mean² / variance of a statistics group
    excluded: dict[str, str]  # implementations not timed, and why
    mask_vs_valid_only: MaskCheck | None = None  # masked cases
    flax_fast_variance_err: Errors | None = None  # where Flax was timed with its two-pass variance

    def to_json(self) -> dict[str, Any]:
        return {"check": {name: e.to_json() for name, e in self.errors.items()}, "check_tol": self.tol,
                "check_tol_jaxnorm": self.tol_jaxnorm, "condition": self.condition, "excluded": dict(self.excluded),
                "check_mask_vs_valid_only": _json(self.mask_vs_valid_only),
                "flax_fast_variance_err": _json(self.flax_fast_variance_err)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckResult:
        return cls(errors={name: Errors.from_json(e) for name, e in d["check"].items()}, tol=d["check_tol"],
                   tol_jaxnorm=d["check_tol_jaxnorm"], condition=d["condition"], excluded=dict(d["excluded"]),
                   mask_vs_valid_only=_opt(MaskCheck, d["check_mask_vs_valid_only"]),
                   flax_fast_variance_err=_opt(Errors, d["flax_fast_variance_err"]))


@dataclasses.dataclass(frozen=True)
class Ratio:
    """jaxnorm's time over another implementation's: median of the per-round paired ratios, their interquartile
    range, the ratio of the two fastest calls (< 1: jaxnorm is faster)."""

    median: float
    iqr: tuple[float, float]
    best: float


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Bytes the compiled program moves in units of N, a conditional charged its cheapest or dearest branch."""

    cheapest: float | None
    dearest: float | None


@dataclasses.dataclass(frozen=True)
class Measured:
    """One implementation in one pass; every field None where it did not run (or, traffic, was not counted)."""

    ms: float | None = None  # median over all timed calls
    ms_min: float | None = None
    gbs: float | None = None  # byte model / median time
    vs: Ratio | None = None  # jaxnorm's time over this one's; None for jaxnorm itself
    traffic: Traffic | None = None  # JAX implementations only


def _measured_to_json(measured: Mapping[str, Measured]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ALL_IMPLS:
        m = measured.get(name, Measured())
        out |= {f"{name}_ms": m.ms, f"{name}_ms_min": m.ms_min, f"{name}_gbs": m.gbs}
    for name in ALL_IMPLS[1:]:
        r = measured.get(name, Measured()).vs
        out |= {f"jaxnorm_vs_{name}": None if r is None else r.median,
                f"jaxnorm_vs_{name}_iqr": None if r is None else list(r.iqr),
                f"jaxnorm_vs_{name}_best": None if r is None else r.best}
    for name in JAX_IMPLS:
        t = measured.get(name, Measured()).traffic
        out |= {f"{name}_hlo_traffic": None if t is None else t.cheapest,
                f"{name}_hlo_traffic_dearest": None if t is None else t.dearest}
    for name in OPTIONAL_IMPLS:  # only where it ran: files without the baseline keep their keys
        m = measured.get(name, Measured())
        if m.ms is not None and m.vs is not None:
            out |= {f"{name}_ms": m.ms, f"{name}_ms_min": m.ms_min, f"{name}_gbs": m.gbs,
                    f"jaxnorm_vs_{name}": m.vs.median, f"jaxnorm_vs_{name}_iqr": list(m.vs.iqr),
                    f"jaxnorm_vs_{name}_best": m.vs.best}
    return out


def _measured_from_json(d: Mapping[str, Any]) -> dict[str, Measured]:
    measured = {}
    for name in ALL_IMPLS:
        vs = traffic = None
        if name != "jaxnorm" and d[f"jaxnorm_vs_{name}"] is not None:
            vs = Ratio(d[f"jaxnorm_vs_{name}"], tuple(d[f"jaxnorm_vs_{name}_iqr"]), d[f"jaxnorm_vs_{name}_best"])
        if name in JAX_IMPLS and (d[f"{name}_hlo_traffic"], d[f"{name}_hlo_traffic_dearest"]) != (None, None):
            traffic = Traffic(d[f"{name}_hlo_traffic"], d[f"{name}_hlo_traffic_dearest"])
        measured[name] = Measured(d[f"{name}_ms"], d[f"{name}_ms_min"], d[f"{name}_gbs"], vs, traffic)
    for name in OPTIONAL_IMPLS:
        if d.get(f"{name}_ms") is not None:
            vs = Ratio(d[f"jaxnorm_vs_{name}"], tuple(d[f"jaxnorm_vs_{name}_iqr"]), d[f"jaxnorm_vs_{name}_best"])
            measured[name] = Measured(d[f"{name}_ms"], d[f"{name}_ms_min"], d[f"{name}_gbs"], vs)
    return measured


@dataclasses.dataclass(frozen=True)
class Timing:
    """One pass of one case: what was timed and how, and every implementation's measurements."""

    pass_: str  # "fwd" or "fwd+bwd"
    bytes: int  # the byte model's bytes for this pass
    rounds: int
    inner: int
    warmup: int
    measured: dict[str, Measured]  # every name of ALL_IMPLS, and the OPTIONAL_IMPLS that ran

    def to_json(self) -> dict[str, Any]:
        return {"pass": self.pass_, "bytes": self.bytes, "rounds": self.rounds, "inner": self.inner,
                "warmup": self.warmup, **_measured_to_json(self.measured)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Timing:
        return cls(pass_=d["pass"], bytes=d["bytes"], rounds=d["rounds"], inner=d["inner"], warmup=d["warmup"],
                   measured=_measured_from_json(d))


@dataclasses.dataclass(frozen=True)
class Row:
    """One case in one pass (or, ``timing`` None, its cross-check alone)."""

    case: str
    op: str
    norm: str  # the norm, as the tables name it
    layout: str
    shape: tuple[int, ...]
    data: str
    masked: bool
    dtype: str
    impls: tuple[str, ...]  # the implementations timed, in the order of the first round
    setup: dict[str, str]  # how each library ran the case, or why it did not
    flax_variance: str  # "fast", "two-pass" or "n/a"
    torch_device: str | None
    check: CheckResult
    timing: Timing | None = None

    @property
    def pass_(self) -> str | None:
        return None if self.timing is None else self.timing.pass_

    def measured(self, impl: str) -> Measured:
        """``impl``'s measurements in this pass (all None where it did not run)."""
        return Measured() if self.timing is None else self.timing.measured.get(impl, Measured())

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "op": self.op, "norm": self.norm, "layout": self.layout, "shape": list(self.shape),
                "data": self.data, "masked": self.masked, "dtype": self.dtype, "impls": list(self.impls),
                "setup": dict(self.setup), "flax_variance": self.flax_variance, "torch_device": self.torch_device,
                **self.check.to_json(), **({} if self.timing is None else self.timing.to_json())}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Row:
        """The row of a results file (keys this module does not know, such as main's ``env``, are ignored)."""
        return cls(case=d["case"], op=d["op"], norm=d["norm"], layout=d["layout"], shape=tuple(d["shape"]),
                   data=d["data"], masked=d["masked"], dtype=d["dtype"], impls=tuple(d["impls"]),
                   setup=dict(d["setup"]), flax_variance=d["flax_variance"], torch_device=d["torch_device"],
                   check=CheckResult.from_json(d), timing=Timing.from_json(d) if "pass" in d else None)


class ResultsFileError(ValueError):
    """A file given to --table is not a results file written by --json."""


def load_results(path: str | Path) -> tuple[dict, list[Row]]:
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
    rows = []
    for i, row in enumerate(doc["rows"]):
        try:
            rows.append(Row.from_json(row))
        except (KeyError, TypeError, AttributeError) as err:
            raise ResultsFileError(f"{path}: row {i} is not a benchmark row (missing or malformed {err})") from err
    return doc["meta"], rows


def results_json(meta: Mapping[str, Any], rows: Sequence[Row]) -> str:
    """The text of a results file: ``{"meta": ..., "rows": [...]}``, indented."""
    return json.dumps({"meta": meta, "rows": [r.to_json() for r in rows]}, indent=2) + "\n"
