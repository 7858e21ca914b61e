"""GPU check: jaxnorm on every device against an independent float64 reference, GPU against CPU, copy bandwidth.

Run on a machine whose default JAX backend is a GPU::

    python scripts/gpu_check.py --out DIR

It writes ``DIR/gpu_check.json`` and prints a summary; the exit status is 1 when a bound below is broken.

* **Correctness.** Every norm family (BatchNorm 1d/2d/3d in both layouts, LayerNorm, InstanceNorm, GroupNorm in
  both layouts, RMSNorm; with and without affine parameters; train and eval) is run as one jitted
  ``y, vjp = jax.vjp(norm, x, params); vjp(dy)`` step on each device (the GPU and the host CPU) from the same
  float32 inputs, with random affine parameters and running statistics. Each device's y, updated running
  statistics, dx and parameter gradients are compared with a **float64 reference** computed independently of
  jaxnorm: the textbook two-pass formula (mean, then mean squared deviation) under ``jax.enable_x64``, its gradients
  by autodiff (jaxnorm's own backward is a hand-derived tangent), on the CPU. The error of an output is
  ``max|got − ref| / max|ref|``; the bound is ``BOUND`` (1e-5) for every output of every case — float32 rounding of
  a correct implementation stays near 1e-6 here, while a wrong eps, a biased running variance, a wrong axis or a
  dropped affine parameter is off by 1e-4 or (much) more. On a GPU the GPU-vs-CPU difference is reported too.
* **Stability.** Per-channel offsets 0…1e5 with std 1 and 1e-2, against a float64 NumPy reference from the same
  float32 input (bound 1e-4, as on the CPU).
* **Copy bandwidth.** A device-to-device copy of 1 GiB (``x + 1`` under ``jax.jit``, and PyTorch's ``copy_`` when
  torch sees a GPU), counting bytes read and written: the ceiling that the benchmark's achieved GB/s is read against
  (``python -m experiments.benchmark --scale 16`` at GPU-filling sizes).

``--allow-cpu`` runs it all with the CPU as the only device (a smoke test of the script and of the CPU results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

# experiments/ runs from the checkout (the wheel installs only jaxnorm). jax and jaxnorm are imported only after
# the command line is parsed, so that --help needs neither.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPS = 1e-5
MOMENTUM = 0.1
BOUND = 1e-5  # each device vs the float64 reference, relative to max|reference|, every output
STABILITY_BOUND = 1e-4


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a case computes, for jaxnorm and for the reference alike."""

    kind: str  # "bn" | "in" | "ln" | "gn" | "rms"
    axis: int = 1  # channel axis (bn, in, gn)
    ndims: int = 1  # normalized trailing dims (ln, rms)
    groups: int = 1  # gn
    affine: bool = True
    train: bool = True


CASES = [  # (name, shape, spec)
    ("bn1d (N,C)", (256, 32), Spec("bn")),
    ("bn1d (N,C,L)", (16, 32, 50), Spec("bn")),
    ("bn2d NCHW", (32, 64, 14, 14), Spec("bn")),
    ("bn2d NCHW no affine", (32, 64, 14, 14), Spec("bn", affine=False)),
    ("bn2d NHWC", (32, 14, 14, 64), Spec("bn", axis=-1)),
    ("bn2d NCHW eval", (32, 64, 14, 14), Spec("bn", train=False)),
    ("bn3d NCDHW", (4, 16, 6, 10, 10), Spec("bn")),
    ("ln (N,T,D) over D", (8, 128, 384), Spec("ln")),
    ("ln over (T,D)", (8, 128, 384), Spec("ln", ndims=2)),
    ("ln no affine", (8, 128, 384), Spec("ln", affine=False)),
    ("in2d affine", (16, 32, 28, 28), Spec("in")),
    ("in2d", (16, 32, 28, 28), Spec("in", affine=False)),
    ("gn NCHW 8 groups", (16, 64, 28, 28), Spec("gn", groups=8)),
    ("gn NHWC 8 groups", (16, 28, 28, 64), Spec("gn", axis=-1, groups=8)),
    ("rms over D", (8, 128, 384), Spec("rms")),
]


def _param_shape(spec: Spec, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[len(shape) - spec.ndims:] if spec.kind in ("ln", "rms") else (shape[spec.axis],)


def make_inputs(spec: Spec, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, dict, dict, np.ndarray]:
    """float32 ``(x, params, batch_stats, dy)``: random affine parameters and running statistics, so that a
    dropped parameter or a wrong running update shows."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    pshape = _param_shape(spec, shape)
    params = {}
    if spec.affine:
        params["weight"] = (1 + 0.5 * rng.uniform(-1, 1, pshape)).astype(np.float32)
        if spec.kind != "rms":
            params["bias"] = (0.5 * rng.standard_normal(pshape)).astype(np.float32)
    stats = {}
    if spec.kind in ("bn", "in"):
        c = shape[spec.axis]
        stats = {"running_mean": (0.3 * rng.standard_normal(c)).astype(np.float32),
                 "running_var": rng.uniform(0.5, 2.0, c).astype(np.float32),
                 "num_batches_tracked": np.asarray(3, np.int32)}
    return x, params, stats, dy


def jaxnorm_apply(spec: Spec, shape: tuple[int, ...]) -> Callable:
    """``apply(x, params, stats) -> (y, new_stats)`` with jaxnorm's public functions (defaults: momentum 0.1)."""
    import jaxnorm as jn

    norm_shape = _param_shape(spec, shape)
    if spec.kind == "bn":
        fn = {2: jn.batch_norm_1d, 3: jn.batch_norm_1d, 4: jn.batch_norm_2d, 5: jn.batch_norm_3d}[len(shape)]
        return lambda x, p, s: fn(x, p, s, train=spec.train, axis=spec.axis, eps=EPS, momentum=MOMENTUM)
    if spec.kind == "in":
        return lambda x, p, s: jn.instance_norm_2d(x, p, s, train=True, eps=EPS, momentum=MOMENTUM)
    if spec.kind == "ln":
        return lambda x, p, s: (jn.layer_norm(x, p, norm_shape, eps=EPS), s)
    if spec.kind == "gn":
        return lambda x, p, s: (jn.group_norm(x, p, spec.groups, eps=EPS, axis=spec.axis), s)
    return lambda x, p, s: (jn.rms_norm(x, p, norm_shape), s)  # eps=None: float32's machine epsilon


def _grouped(spec: Spec, x):
    """x viewed so that every statistics group is a slice, the reduced axes, and how to undo the view."""
    nd = x.ndim
    axis = spec.axis % nd
    if spec.kind in ("ln", "rms"):
        return x, tuple(range(nd - spec.ndims, nd)), lambda v: v
    if spec.kind == "bn":
        return x, tuple(a for a in range(nd) if a != axis), lambda v: v
    if spec.kind == "in":
        return x, tuple(a for a in range(1, nd) if a != axis), lambda v: v
    c = x.shape[axis]
    view = x.shape[:axis] + (spec.groups, c // spec.groups) + x.shape[axis + 1:]
    axes = tuple(a for a in range(1, nd + 1) if a != axis)  # all but the batch and the group axis
    return x.reshape(view), axes, lambda v: v.reshape(x.shape)


def _reference_forward(spec: Spec, x, params, stats):
    """The textbook float64 normalization (two-pass variance) and PyTorch's running-statistics update."""
    import jax.numpy as jnp

    nd, axis = x.ndim, spec.axis % x.ndim
    # the parameters' shape at x's rank (explicit, no implicit rank promotion): (1, .., 1, *normalized) for LN/RMS
    pshape = (1,) * (nd - spec.ndims) + x.shape[nd - spec.ndims:] if spec.kind in ("ln", "rms") else tuple(
        x.shape[a] if a == axis else 1 for a in range(nd))
    w = params["weight"].reshape(pshape) if "weight" in params else 1.0
    b = params["bias"].reshape(pshape) if "bias" in params else 0.0
    g, axes, ungroup = _grouped(spec, x)
    if spec.kind == "rms":
        return ungroup(g / jnp.sqrt(jnp.mean(g * g, axes, keepdims=True) + np.finfo(np.float32).eps)) * w + b, stats
    if spec.kind == "bn" and not spec.train:
        rm, rv = (stats[k].reshape(pshape) for k in ("running_mean", "running_var"))
        return (x - rm) / jnp.sqrt(rv + EPS) * w + b, stats
    mean = jnp.mean(g, axes, keepdims=True)
    var = jnp.mean((g - mean) ** 2, axes, keepdims=True)  # two-pass
    y = ungroup((g - mean) / jnp.sqrt(var + EPS)) * w + b
    if not stats:
        return y, stats
    n = float(np.prod([g.shape[a] for a in axes]))  # the count as a float: Bessel's factor n / (n - 1), explicitly
    unbiased = var * n / (n - 1)
    if spec.kind == "in":  # PyTorch: the batch average of the per-instance statistics; the counter never moves
        mean, unbiased, counter = mean.mean(0), unbiased.mean(0), stats["num_batches_tracked"]
    else:
        counter = stats["num_batches_tracked"] + 1
    new = {"running_mean": (1 - MOMENTUM) * stats["running_mean"] + MOMENTUM * mean.reshape(-1),
           "running_var": (1 - MOMENTUM) * stats["running_var"] + MOMENTUM * unbiased.reshape(-1),
           "num_batches_tracked": counter}
    return y, new


def reference(spec: Spec, x, params, stats, dy) -> dict:
    """Float64 ``{"y", "stats", "dx", "dparams"}`` on the CPU: the two-pass forward, gradients by autodiff."""
    import jax
    import jax.numpy as jnp

    @jax.jit  # one compiled program instead of op-by-op dispatch of every small float64 op
    def run(x, params, stats, dy):
        y, vjp, new_stats = jax.vjp(lambda x, p: _reference_forward(spec, x, p, stats), x, params, has_aux=True)
        dx, dparams = vjp(dy)
        return {"y": y, "stats": new_stats, "dx": dx, "dparams": dparams}

    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        s64 = {k: (jnp.asarray(v) if k == "num_batches_tracked" else f64(v)) for k, v in stats.items()}
        out = run(f64(x), jax.tree.map(f64, params), s64, f64(dy))
        return jax.tree.map(lambda a: np.asarray(a, np.float64), out)


def _step(apply):
    import jax

    @jax.jit
    def step(x, params, stats, dy):
        y, vjp, new_stats = jax.vjp(lambda x, p: apply(x, p, stats), x, params, has_aux=True)
        dx, dparams = vjp(dy)
        return {"y": y, "stats": new_stats, "dx": dx, "dparams": dparams}
    return step


def rel_err(got, ref) -> float:
    """``max|got − ref| / max|ref|`` (0 for empty arrays; NaN in ``got`` gives NaN, which fails every bound)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _errors(got: dict, ref: dict) -> dict[str, float]:
    """Per output leaf (``['y']``, ``['stats']['running_var']``, ...), the relative error of ``got`` vs ``ref``."""
    import jax

    if jax.tree.structure(got) != jax.tree.structure(ref):
        raise ValueError(f"outputs have structure {jax.tree.structure(got)}, reference {jax.tree.structure(ref)}")
    errs = jax.tree.map(rel_err, got, ref)
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(errs)}


def check_case(name: str, shape: tuple[int, ...], spec: Spec, devices: list, seed: int = 0,
               build: Callable = jaxnorm_apply) -> dict:
    """One case on every device vs the float64 reference (and the first device vs the last, when they differ)."""
    import jax

    x, params, stats, dy = make_inputs(spec, shape, seed)
    ref = reference(spec, x, params, stats, dy)
    step = _step(build(spec, shape))
    outs, row = {}, {"case": name, "shape": list(shape), "devices": {}}
    for dev in devices:
        outs[dev.platform] = jax.tree.map(np.asarray, step(*jax.device_put((x, params, stats, dy), dev)))
        errs = _errors(outs[dev.platform], ref)
        row["devices"][dev.platform] = {"max_rel_err": max(errs.values()), "errors": errs}
    row["max_rel_err"] = max(d["max_rel_err"] for d in row["devices"].values())
    row["gpu_vs_cpu"] = None
    if len(outs) > 1:
        first, last = list(outs.values())[0], list(outs.values())[-1]
        row["gpu_vs_cpu"] = max(_errors(first, jax.tree.map(lambda a: np.asarray(a, np.float64), last)).values())
    row["ok"] = row["max_rel_err"] <= BOUND
    return row


def correctness(devices: list) -> list[dict]:
    """Every case of ``CASES`` on ``devices`` (seeded by its index)."""
    return [check_case(name, shape, spec, devices, seed=i) for i, (name, shape, spec) in enumerate(CASES)]


def stability(device) -> list[dict]:
    """Normalized outputs on ``device`` vs a float64 NumPy reference, for large per-channel offsets."""
    import jax
    import jax.numpy as jnp

    import jaxnorm as jn

    def ref(x, axes):
        x = x.astype(np.float64)
        return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + EPS)

    norms = jax.jit(lambda x: {"bn": jn.batch_norm_2d(x, {}, {}, train=True)[0], "ln": jn.layer_norm(x, {}, (16, 16)),
                               "gn": jn.group_norm(x, {}, 4)})
    axes = {"bn": (0, 2, 3), "ln": (2, 3), "gn": (2, 3)}
    rows = []
    for offset in (0.0, 1e2, 1e3, 1e4, 1e5):
        for std in (1.0, 1e-2):
            rng = np.random.default_rng(0)
            x = (rng.normal(size=(64, 4, 16, 16)) * std
                 + offset * np.array([1.0, -0.5, 0.25, 1.0])[:, None, None]).astype(np.float32)
            out = norms(jax.device_put(jnp.asarray(x), device))
            errs = {k: np.abs(np.asarray(out[k]) - ref(x, axes[k])).max() for k in axes}
            rows.append({"offset": offset, "std": std, **{k: float(v) for k, v in errs.items()}})
    return rows


def _median_ms(fn, calls: int = 20, warmup: int = 3) -> float:
    """Median milliseconds per call, timed as the benchmark times (one call per round here)."""
    from experiments.common.timing import time_interleaved

    return float(np.median(time_interleaved({"fn": fn}, rounds=calls, warmup=warmup, inner=1)["fn"]))


def copy_bandwidth(device, nbytes: int = 1 << 30) -> dict:
    """GB/s (read + write) of a device-to-device copy of ``nbytes``, in JAX and (if it sees a GPU) PyTorch."""
    import jax
    import jax.numpy as jnp

    n = nbytes // 4
    a = jax.device_put(jnp.ones((n,), jnp.float32), device)
    plus_one = jax.jit(lambda v: v + 1.0)  # a streaming kernel: reads n floats, writes n floats
    ms = _median_ms(lambda: plus_one(a).block_until_ready())
    out = {"bytes": nbytes, "jax_x_plus_1_ms": ms, "jax_x_plus_1_gbs": 2 * nbytes / (ms * 1e-3) / 1e9}
    a.delete()  # free the GPU memory before torch allocates its own
    try:
        import torch
    except ImportError:
        return out
    if device.platform != "cpu" and torch.cuda.is_available():
        src = torch.ones(n, device="cuda")
        dst = torch.empty_like(src)

        def copy():
            dst.copy_(src)
            torch.cuda.synchronize()

        ms = _median_ms(copy)
        out.update(torch_copy_ms=ms, torch_copy_gbs=2 * nbytes / (ms * 1e-3) / 1e9)
    return out


def _summary(result: dict) -> tuple[list[str], bool]:
    """Printed lines and whether every bound holds."""
    rows, stab = result["correctness"], result["stability"]
    lines = [f"{result['device']} ({result['platform']}), jax {result['jax']}; error vs float64 reference "
             f"(max over y, running stats, dx, dparams; bound {BOUND:g})"]
    for r in rows:
        per_dev = ", ".join(f"{dev} {d['max_rel_err']:.2e}" for dev, d in r["devices"].items())
        gpu = "" if r["gpu_vs_cpu"] is None else f"; GPU vs CPU {r['gpu_vs_cpu']:.2e}"
        lines.append(f"  {r['case']:<22} {per_dev}{gpu}{'' if r['ok'] else '  <-- FAILED'}")
    worst = max(rows, key=lambda r: r["max_rel_err"])
    worst_stab = max(max(r["bn"], r["ln"], r["gn"]) for r in stab)
    lines.append(f"worst vs float64: {worst['max_rel_err']:.2e} ({worst['case']}); worst stability error vs "
                 f"float64: {worst_stab:.2e} (bound {STABILITY_BOUND:g})")
    lines.append("copy: " + json.dumps(result["copy"]))
    return lines, all(r["ok"] for r in rows) and worst_stab <= STABILITY_BOUND


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run even when JAX's default device is the CPU (the CPU is then the only device checked)")
    args = p.parse_args(argv)

    import jax

    accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
    if accel.platform == "cpu" and not args.allow_cpu:
        p.error(f"expected a GPU as JAX's default device, got {accel} (use --allow-cpu for a smoke test)")
    devices = [cpu] if accel.platform == "cpu" else [accel, cpu]
    result = {"jax": jax.__version__, "device": str(accel.device_kind), "platform": accel.platform,
              "bound": BOUND, "stability_bound": STABILITY_BOUND}
    result["correctness"] = correctness(devices)
    result["stability"] = stability(accel)
    result["copy"] = copy_bandwidth(accel, nbytes=(1 << 30) if accel.platform != "cpu" else (1 << 24))
    lines, ok = _summary(result)
    result["ok"] = ok
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    if not ok:
        print("FAILED: a result is off (see the lines marked FAILED and the bounds above)", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
