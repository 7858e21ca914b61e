"""GPU check (issue 4): jaxnorm on an accelerator against the CPU reference, and a measured copy bandwidth.

Run on a machine whose default JAX backend is a GPU::

    python scripts/gpu_check.py --out DIR

It writes ``DIR/gpu_check.json`` and prints a summary:

* **Correctness.** Every norm family (BatchNorm 1d/2d/3d in both layouts, LayerNorm, InstanceNorm, GroupNorm in
  both layouts, RMSNorm; with and without affine parameters; train and eval) is run as one jitted
  ``y, vjp = jax.vjp(norm, x, params); vjp(dy)`` step on the GPU and on the host CPU from the same inputs. Reported:
  the largest difference of y, the updated running statistics, dx and the parameter gradients, relative to the
  largest magnitude of the CPU value. The CPU path itself is checked against PyTorch by the test suite.
* **Stability on the GPU.** Per-channel offsets 0…1e5 with std 1 and 1e-2, against a float64 NumPy reference from
  the same float32 input (the bound is 1e-4, as on the CPU).
* **Copy bandwidth.** A device-to-device copy of 1 GiB (``x + 1`` under ``jax.jit``, and PyTorch's ``copy_`` when
  torch sees a GPU), counting bytes read and written: the ceiling that the benchmark's achieved GB/s is read against
  (``python -m experiments.benchmark --scale 16`` at GPU-filling sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

EPS = 1e-5


def _cases():
    """(name, shape, build) where build() -> (apply(x, params, stats) -> (y, new_stats), params, stats)."""
    import jaxnorm as jn

    def bn(fn, c, axis=1, affine=True, train=True):
        def build():
            params, stats = jn.batch_norm_init(c, affine=affine)
            return (lambda x, p, s: fn(x, p, s, train=train, axis=axis)), params, stats
        return build

    def stateless(fn, params):
        def build():
            return (lambda x, p, s: (fn(x, p), s)), params, {}
        return build

    def inorm(c, affine):
        def build():
            params, stats = jn.instance_norm_init(c, affine=affine, track_running_stats=True)
            return (lambda x, p, s: jn.instance_norm_2d(x, p, s, train=True)), params, stats
        return build

    return [
        ("bn1d (N,C)", (256, 32), bn(jn.batch_norm_1d, 32)),
        ("bn1d (N,C,L)", (16, 32, 50), bn(jn.batch_norm_1d, 32)),
        ("bn2d NCHW", (32, 64, 14, 14), bn(jn.batch_norm_2d, 64)),
        ("bn2d NCHW no affine", (32, 64, 14, 14), bn(jn.batch_norm_2d, 64, affine=False)),
        ("bn2d NHWC", (32, 14, 14, 64), bn(jn.batch_norm_2d, 64, axis=-1)),
        ("bn2d NCHW eval", (32, 64, 14, 14), bn(jn.batch_norm_2d, 64, train=False)),
        ("bn3d NCDHW", (4, 16, 6, 10, 10), bn(jn.batch_norm_3d, 16)),
        ("ln (N,T,D) over D", (8, 128, 384), stateless(lambda x, p: jn.layer_norm(x, p, 384), jn.layer_norm_init(384))),
        ("ln over (T,D)", (8, 128, 384),
         stateless(lambda x, p: jn.layer_norm(x, p, (128, 384)), jn.layer_norm_init((128, 384)))),
        ("ln no affine", (8, 128, 384), stateless(lambda x, p: jn.layer_norm(x, p, 384), {})),
        ("in2d affine", (16, 32, 28, 28), inorm(32, True)),
        ("in2d", (16, 32, 28, 28), inorm(32, False)),
        ("gn NCHW 8 groups", (16, 64, 28, 28),
         stateless(lambda x, p: jn.group_norm(x, p, 8), jn.group_norm_init(8, 64))),
        ("gn NHWC 8 groups", (16, 28, 28, 64),
         stateless(lambda x, p: jn.group_norm(x, p, 8, axis=-1), jn.group_norm_init(8, 64))),
        ("rms over D", (8, 128, 384), stateless(lambda x, p: jn.rms_norm(x, p, 384), jn.rms_norm_init(384))),
    ]


def _step(apply):
    import jax

    @jax.jit
    def step(x, params, stats, dy):
        y, vjp, new_stats = jax.vjp(lambda x, p: apply(x, p, stats), x, params, has_aux=True)
        dx, dparams = vjp(dy)
        return {"y": y, "stats": new_stats, "dx": dx, "dparams": dparams}
    return step


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def correctness(gpu, cpu) -> list[dict]:
    """Each case's largest relative GPU-vs-CPU difference per output."""
    import jax

    rows = []
    for i, (name, shape, build) in enumerate(_cases()):
        rng = np.random.default_rng(i)
        x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        apply, params, stats = build()
        step = _step(apply)
        out = {}
        for dev in (gpu, cpu):
            args = jax.device_put((x, params, stats, dy), dev)
            out[dev.platform] = jax.tree.map(np.asarray, step(*args))
        diffs = jax.tree.map(_rel_diff, out[gpu.platform], out[cpu.platform])
        flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(diffs)}
        rows.append({"case": name, "shape": list(shape), "max_rel_diff": max(flat.values()), "diffs": flat})
    return rows


def stability(gpu) -> list[dict]:
    """Normalized outputs on the GPU vs a float64 NumPy reference, for large per-channel offsets."""
    import jax
    import jax.numpy as jnp

    import jaxnorm as jn

    def ref(x, axes):
        x = x.astype(np.float64)
        return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + EPS)

    rows = []
    for offset in (0.0, 1e2, 1e3, 1e4, 1e5):
        for std in (1.0, 1e-2):
            rng = np.random.default_rng(0)
            x = (rng.normal(size=(64, 4, 16, 16)) * std
                 + offset * np.array([1.0, -0.5, 0.25, 1.0])[:, None, None]).astype(np.float32)
            xg = jax.device_put(jnp.asarray(x), gpu)
            errs = {
                "bn": np.abs(np.asarray(jn.batch_norm_2d(xg, {}, {}, train=True)[0]) - ref(x, (0, 2, 3))).max(),
                "ln": np.abs(np.asarray(jn.layer_norm(xg, {}, (16, 16))) - ref(x, (2, 3))).max(),
                "gn": np.abs(np.asarray(jn.group_norm(xg, {}, 4)) - ref(x, (2, 3))).max(),
            }
            rows.append({"offset": offset, "std": std, **{k: float(v) for k, v in errs.items()}})
    return rows


def _median_ms(fn, calls: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per call, timed as the benchmark times (one call per round here)."""
    from experiments.benchmark import time_interleaved

    return float(np.median(time_interleaved({"fn": fn}, rounds=calls, warmup=warmup, inner=1)["fn"]))


def copy_bandwidth(gpu, nbytes: int = 1 << 30) -> dict:
    """GB/s (read + write) of a 1 GiB device-to-device copy, in JAX and (if it sees a GPU) PyTorch."""
    import jax
    import jax.numpy as jnp

    n = nbytes // 4
    a = jax.device_put(jnp.ones((n,), jnp.float32), gpu)
    plus_one = jax.jit(lambda v: v + 1.0)  # a streaming kernel: reads n floats, writes n floats
    ms = _median_ms(lambda: plus_one(a).block_until_ready())
    out = {"bytes": nbytes, "jax_x_plus_1_ms": ms, "jax_x_plus_1_gbs": 2 * nbytes / (ms * 1e-3) / 1e9}
    a.delete()  # free the GPU memory before torch allocates its own
    try:
        import torch
    except ImportError:
        return out
    if torch.cuda.is_available():
        src = torch.ones(n, device="cuda")
        dst = torch.empty_like(src)

        def copy():
            dst.copy_(src)
            torch.cuda.synchronize()

        ms = _median_ms(copy)
        out.update(torch_copy_ms=ms, torch_copy_gbs=2 * nbytes / (ms * 1e-3) / 1e9)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run even when JAX's default device is the CPU (compares CPU with CPU: a smoke test)")
    args = p.parse_args(argv)

    import jax

    gpu, cpu = jax.devices()[0], jax.devices("cpu")[0]
    if gpu.platform == "cpu" and not args.allow_cpu:
        p.error(f"expected a GPU as JAX's default device, got {gpu} (use --allow-cpu for a smoke test)")
    result = {"jax": jax.__version__, "device": str(gpu.device_kind), "platform": gpu.platform}
    result["correctness"] = correctness(gpu, cpu)
    result["stability"] = stability(gpu)
    result["copy"] = copy_bandwidth(gpu, nbytes=(1 << 30) if gpu.platform != "cpu" else (1 << 24))

    worst = max(result["correctness"], key=lambda r: r["max_rel_diff"])
    worst_stab = max(max(r["bn"], r["ln"], r["gn"]) for r in result["stability"])
    print(f"{result['device']} ({result['platform']}), jax {result['jax']}")
    for r in result["correctness"]:
        print(f"  {r['case']:<22} max rel diff GPU vs CPU {r['max_rel_diff']:.2e}")
    print(f"worst GPU vs CPU: {worst['max_rel_diff']:.2e} ({worst['case']}); "
          f"worst stability error vs float64: {worst_stab:.2e} (bound 1e-4)")
    print("copy:", json.dumps(result["copy"]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    ok = worst["max_rel_diff"] < 1e-4 and worst_stab <= 1e-4
    if not ok:
        print("FAILED: a GPU result is off", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
