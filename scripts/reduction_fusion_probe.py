"""Probe: can XLA:CPU take a normalization's two sums (Σx and Σx²) in one pass over x?

jaxnorm's statistics take Σx and Σx² (forward) and Σdy and Σdy·x̂ (backward) as two reductions each, and XLA:CPU
compiles each reduction to its own kernel, one read of x apiece: BatchNorm's forward + backward moves 10N where the
byte model's floor is 8N (docs/performance.md). This compiles the two one-pass alternatives for BatchNorm NHWC and
NCHW and LayerNorm shapes and times them against the two plain sums, interleaved:

* ``two``: ``jnp.sum(x, axes), jnp.sum(x * x, axes)`` (what jaxnorm does);
* ``stacked``: ``jnp.sum(jnp.stack([x, x * x], -1), axes)``, one reduction whose input pairs both terms;
* ``variadic``: ``lax.reduce((x, x * x), ...)``, one variadic reduction with both outputs.

    python scripts/reduction_fusion_probe.py --json benchmarks/probes/reduction_fusion-jax-VERSION.json

Prints and writes each variant's compiled-program traffic (units of N) and median time per call (ms).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.common.hlo import hlo_traffic  # noqa: E402
from experiments.common.timing import time_interleaved  # noqa: E402

SHAPES = {"bn_nhwc": ((64, 32, 32, 64), (0, 1, 2)), "bn_nchw": ((64, 64, 32, 32), (0, 2, 3)),
          "ln": ((32, 512, 768), (2,))}


def variants(axes: tuple[int, ...]) -> dict:
    zero = np.float32(0)
    return {
        "two": jax.jit(lambda x: (jnp.sum(x, axes), jnp.sum(x * x, axes))),
        "stacked": jax.jit(lambda x: jnp.sum(jnp.stack([x, x * x], -1), axes)),
        "variadic": jax.jit(lambda x: lax.reduce((x, x * x), (zero, zero),
                                                 lambda a, b: (a[0] + b[0], a[1] + b[1]), axes)),
    }


def probe(shape: tuple[int, ...], axes: tuple[int, ...], rounds: int) -> dict:
    x = jnp.asarray(np.random.default_rng(0).normal(0.5, 2.0, shape).astype(np.float32))
    fns = variants(axes)
    sums = {name: np.stack([np.asarray(a) for a in jax.tree.leaves(f(x))], -1).reshape(-1, 2) for name, f in fns.items()}
    for got in sums.values():  # the same two sums, to float32 rounding of the order
        np.testing.assert_allclose(got, sums["two"], rtol=1e-4)
    traffic = {name: hlo_traffic(f.lower(x).compile().as_text()) / (x.size * 4) for name, f in fns.items()}
    times = time_interleaved({n: (lambda f=f: jax.block_until_ready(f(x))) for n, f in fns.items()}, rounds=rounds,
                             warmup=3, inner=5)
    return {name: {"traffic_N": round(traffic[name], 3), "median_ms": float(np.median(times[name]))} for name in fns}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/reduction_fusion_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None, help="write the results to FILE")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    args = p.parse_args(argv)
    result = {"jax": jax.__version__, "backend": jax.default_backend(),
              "cases": {name: {"shape": list(shape), "axes": list(axes), **probe(shape, axes, args.rounds)}
                        for name, (shape, axes) in SHAPES.items()}}
    for name, case in result["cases"].items():
        print(name, ", ".join(f"{v}: {case[v]['traffic_N']:.0f}N {case[v]['median_ms']:.3f} ms"
                              for v in ("two", "stacked", "variadic")))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
