"""Would a plain two-pass LayerNorm forward let XLA:CPU fuse it into 2N? The measurement behind docs/performance.md.

    python scripts/layer_norm_fusion_probe.py --json benchmarks/probes/layer_norm_two_pass-jax-$(python -c "import jax; print(jax.__version__)").json

For (rows, D) inputs it compiles, for ``jax.jit`` on the installed XLA, two LayerNorm forwards over the last axis and
counts the bytes their compiled programs move (:func:`experiments.common.hlo.hlo_traffic`) in units of N, the bytes
of x:

* ``two_pass``: ``mean = Σx/D; var = Σ(x − mean)²/D; (x − mean)·rsqrt(var + ε)`` with no conditional, the form in
  which XLA can put a row's statistics and its output in one kernel (2N: read x, write y);
* ``jaxnorm``: :func:`jaxnorm.layer_norm` (bounded-level sums, a plain-or-shifted conditional on CPU; counted along
  its cheapest branch, as the benchmark's tables do).

No timing: traffic is a property of the compiled program, so the probe needs no quiet machine. Whether XLA fuses the
two-pass form depends on the row count and the XLA version, which is why jaxnorm does not use it (the document says
how the numbers decide that).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxnorm as jn
from experiments.common.hlo import hlo_traffic

ROWS = (256, 1024, 4095, 4096, 16384)
WIDTHS = (64, 768, 1024)


def two_pass_layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis, statistics in two passes, no conditional and no barrier."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    return centered * jax.lax.rsqrt(var + eps)


def jaxnorm_layer_norm(x: jax.Array) -> jax.Array:
    """jaxnorm's LayerNorm over the last axis, without affine parameters (as the two-pass form)."""
    return jn.layer_norm(x, {}, normalized_shape=x.shape[-1:])


def traffic_in_n(fn, shape: tuple[int, int]) -> float:
    """Bytes moved by the compiled ``jax.jit(fn)`` on a float32 input of ``shape``, over the bytes of that input."""
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    text = jax.jit(fn).lower(spec).compile().as_text()
    return hlo_traffic(text) / (shape[0] * shape[1] * 4)


def probe(rows: tuple[int, ...] = ROWS, widths: tuple[int, ...] = WIDTHS) -> list[dict]:
    """One record per (rows, D): the traffic of each form, in units of N."""
    return [{"rows": r, "width": d, "two_pass": round(traffic_in_n(two_pass_layer_norm, (r, d)), 2),
             "jaxnorm": round(traffic_in_n(jaxnorm_layer_norm, (r, d)), 2)} for r in rows for d in widths]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write {meta, rows} to this file")
    args = p.parse_args(argv)
    records = probe()
    for rec in records:
        print(f"rows {rec['rows']:>6}  D {rec['width']:>5}  two-pass {rec['two_pass']:5.2f}N  "
              f"jaxnorm {rec['jaxnorm']:5.2f}N")
    if args.json is not None:
        meta = {"jax": jax.__version__, "backend": jax.default_backend(), "machine": platform.processor() or
                platform.machine(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": records}, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
