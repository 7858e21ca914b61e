"""Memory traffic of a compiled XLA program, counted from its optimized HLO text.

Normalization is memory-bound, so how many times a compiled program reads and writes full-size arrays decides its
speed. :func:`hlo_traffic` counts that from ``jax.jit(f).lower(...).compile().as_text()``: every kernel of the entry
computation (fusion, reduction, copy, ...) is charged the bytes of its operands plus its result. It is a static
count of passes over memory, not a cache simulation: an elementwise producer that XLA materializes instead of fusing
costs 2N (write and read back), a reduction that cannot share a pass costs 1N more.
"""

from __future__ import annotations

import math
import re

_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
             "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_ITEMSIZE) + r")\[([\d,]*)\]")
_INSTR = re.compile(r"\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)")
# Ops with no memory traffic of their own.
_FREE = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "opt-barrier"}
_BRANCH_CHOICE = {"cheapest": min, "dearest": max}


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


def hlo_traffic(text: str, *, conditional: str = "cheapest") -> int:
    """Bytes read and written by the top-level ops of a compiled XLA program (its ``as_text()``).

    Each kernel (fusion, reduction, copy, ...) of the entry computation is charged its operands (a fusion operand
    used only through slices: the slices' size) plus its result; parameters, constants, bitcasts and tuples are
    free. A ``conditional`` is charged the traffic of its *cheapest* branch, counted the same way (or its dearest,
    with ``conditional="dearest"``). Why the cheapest: which branch runs is decided by the data at run time, so a
    static count has to pick one, and jaxnorm's CPU statistics take the cheap plain-sum branch on well-conditioned
    data such as the benchmark's default data (the shifted-sum branch, taken on ill-conditioned data, costs 2N more;
    ``"dearest"`` counts that path). It counts the passes a program makes over full-size arrays, not cache effects:
    compare it with the byte model (3N fwd, 8N fwd+bwd).
    """
    if conditional not in _BRANCH_CHOICE:
        raise ValueError(f"conditional must be one of {sorted(_BRANCH_CHOICE)}, got {conditional!r}")
    comps, entry = _computations(text)
    return _computation_traffic(comps, entry, _BRANCH_CHOICE[conditional])


def _computation_traffic(comps: dict[str, list[str]], computation: str, choose=min) -> int:
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
            total += choose((_computation_traffic(comps, b, choose) for b in names), default=0)
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        called = re.search(r"calls=%([\w.\-]+)", rest)
        reads = _fusion_param_reads(comps.get(called.group(1), [])) if called and op == "fusion" else {}
        total += sum(reads.get(i, sizes.get(o, 0)) for i, o in enumerate(operands)) + sizes[name]
    return total
