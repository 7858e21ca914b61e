"""Generate the PyTorch golden files in ``tests/library/golden/`` used by ``tests/library/test_parity_golden.py``.

Usage::

    pip install torch==2.13.0      # the only extra dependency; the tests themselves do not need torch
    python scripts/make_golden.py  # rewrites tests/library/golden/*.npz (deterministic: same bytes every run)

What is recorded
----------------
One ``.npz`` per family -- ``batch_norm``, ``instance_norm``, ``layer_norm``, ``group_norm``, ``rms_norm`` --
holding many *cases*.  Every array of a case is stored under ``"<case>/<field>"``; ``"<case>/config"`` is a
JSON string with the module's constructor arguments (``module``, ``momentum`` (``null`` = cumulative
average), ``affine``, ``track_running_stats``, ``eps`` (``null`` = RMSNorm's default), ...) and the list of
``steps`` (``"train"`` / ``"eval"``).

For every step ``t`` of a case (PyTorch layout, channels first)::

    step{t}/x        the input (float32; per-channel means in [-3, 3] and scales in [0.2, 3] -- nonzero mean
                     so a missing centring shows up, unequal scales so a wrong reduction axis shows up)
    step{t}/y        module(x)                      (train or eval mode as the step says; see Precision)
    step{t}/gy       a random cotangent for y
    step{t}/dx       d<y, gy>/dx                    (autograd)
    step{t}/dweight  d<y, gy>/dweight               (only with learnable weight)
    step{t}/dbias    d<y, gy>/dbias                 (only with learnable bias)
    step{t}/running_mean, running_var, num_batches_tracked   buffers *after* the step (only when tracked)

and ``weight``/``bias`` (random, not the 1/0 defaults, so that a swapped or ignored parameter shows up).
The buffers start from PyTorch's defaults (running_mean 0, running_var 1, num_batches_tracked 0), which are
also ``jaxnorm``'s ``*_init`` defaults.  Parameters are not updated between steps: the goldens test the
normalization and the running-statistics bookkeeping, not an optimizer.

Channels-last (``axis=-1``) parity needs no separate golden: the test moves the channel axis of the same
inputs to the end and compares against the equally transposed outputs.

Determinism: inputs come from ``numpy.random.default_rng(SEED)``; PyTorch CPU float32 kernels used here are
deterministic, so rerunning the script reproduces the files bit for bit (``--check`` verifies that).

Precision: each case runs twice in PyTorch, in float32 and in float64 on the same float32 data; the stored
outputs/statistics/gradients are the float64 ones rounded once to float32. So the goldens are PyTorch's
semantics without PyTorch's float32 rounding noise, and an implementation is judged on its own rounding.
The script prints, per family, how far PyTorch's own float32 run is from the goldens under the tests'
metric (``rel_err``, see ``tests/library/test_parity_golden.py``): 8.8e-6 at worst (BatchNorm1d input gradient,
batch of 6), against the tests' tolerance of 3e-5.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SEED = 20240611
TORCH_VERSION = "2.13.0"
Case = tuple[str, dict, tuple[int, ...], list[str]]  # name, module config, input shape, modes
OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "library" / "golden"


# --------------------------------------------------------------------------------------------- inputs
def channel_input(rng: np.random.Generator, shape: tuple[int, ...], channel_axis: int = 1) -> np.ndarray:
    """Normal input with a random mean in [-3, 3] and scale in [0.2, 3] per index of ``channel_axis``."""
    c = shape[channel_axis]
    bshape = [1] * len(shape)
    bshape[channel_axis] = c
    mean = rng.uniform(-3.0, 3.0, c).reshape(bshape)
    scale = rng.uniform(0.2, 3.0, c).reshape(bshape)
    return (mean + scale * rng.standard_normal(shape)).astype(np.float32)


def row_input(rng: np.random.Generator, shape: tuple[int, ...], n_norm_dims: int) -> np.ndarray:
    """Input whose every normalized slice (the last ``n_norm_dims`` axes) has its own mean and scale."""
    lead = shape[: len(shape) - n_norm_dims]
    bshape = lead + (1,) * n_norm_dims
    mean = rng.uniform(-3.0, 3.0, bshape)
    scale = rng.uniform(0.2, 3.0, bshape)
    return (mean + scale * rng.standard_normal(shape)).astype(np.float32)


def random_params(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Non-trivial weight (mixed signs, |w| in [0.5, 2]) and bias (normal, scale 0.5)."""
    sign = rng.choice([-1.0, 1.0], size=shape)
    weight = (sign * rng.uniform(0.5, 2.0, shape)).astype(np.float32)
    bias = (0.5 * rng.standard_normal(shape)).astype(np.float32)
    return weight, bias


# --------------------------------------------------------------------------------------------- running
def run_case(
    make_module: Callable[[Any], Any],
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    steps: list[tuple[str, np.ndarray, np.ndarray]],
    dtype: Any,
) -> dict[str, np.ndarray]:
    """Run one module through ``steps`` = [(mode, x, gy)] in ``dtype``; return the recorded arrays."""
    import torch

    mod = make_module(dtype)
    with torch.no_grad():
        if weight is not None:
            mod.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            mod.bias.copy_(torch.from_numpy(bias))
    out: dict[str, np.ndarray] = {}
    for t, (mode, x_np, gy_np) in enumerate(steps):
        mod.train(mode == "train")
        x = torch.from_numpy(x_np).to(dtype).requires_grad_(True)
        mod.zero_grad(set_to_none=True)
        y = mod(x)
        y.backward(torch.from_numpy(gy_np).to(dtype))
        p = f"step{t}/"
        out[p + "x"] = x_np
        out[p + "gy"] = gy_np
        out[p + "y"] = y.detach().numpy()
        out[p + "dx"] = x.grad.numpy()
        if getattr(mod, "weight", None) is not None:
            out[p + "dweight"] = mod.weight.grad.numpy()
        if getattr(mod, "bias", None) is not None:
            out[p + "dbias"] = mod.bias.grad.numpy()
        if getattr(mod, "running_mean", None) is not None:
            out[p + "running_mean"] = mod.running_mean.detach().numpy().copy()
            out[p + "running_var"] = mod.running_var.detach().numpy().copy()
            out[p + "num_batches_tracked"] = np.asarray(mod.num_batches_tracked.item(), dtype=np.int32)
    if weight is not None:
        out["weight"] = weight
    if bias is not None:
        out["bias"] = bias
    return out


# --------------------------------------------------------------------------------------------- cases
def fmt(v: Any) -> str:
    return "None" if v is None else f"{v:g}"


def batch_norm_cases() -> Iterator[Case]:
    """BatchNorm1d (2-D and 3-D input), 2d, 3d x momentum x affine x track_running_stats (+ eps 1e-3)."""
    kinds = [
        ("bn1d_2d", "BatchNorm1d", (6, 4)),
        ("bn1d_3d", "BatchNorm1d", (4, 3, 5)),
        ("bn2d", "BatchNorm2d", (3, 4, 3, 5)),
        ("bn3d", "BatchNorm3d", (2, 3, 2, 3, 4)),
    ]
    options = [(m, a, True, 1e-5) for m in (0.1, 0.3, None) for a in (True, False)]
    options += [(0.1, a, False, 1e-5) for a in (True, False)]
    options += [(0.3, True, True, 1e-3), (0.1, True, False, 1e-3)]
    for tag, module, shape in kinds:
        for momentum, affine, track, eps in options:
            name = f"{tag}_m{fmt(momentum)}_affine{int(affine)}_track{int(track)}_eps{eps:g}"
            cfg = dict(module=module, num_features=shape[1], momentum=momentum, affine=affine,
                       track_running_stats=track, eps=eps)
            yield name, cfg, shape, ["train", "train", "train", "eval"]


def instance_norm_cases() -> Iterator[Case]:
    """InstanceNorm1d/2d/3d, batched and unbatched x affine x track_running_stats x momentum."""
    kinds = [
        ("in1d", "InstanceNorm1d", (3, 4, 6)),
        ("in1d_unbatched", "InstanceNorm1d", (4, 6)),
        ("in2d", "InstanceNorm2d", (2, 3, 4, 5)),
        ("in2d_unbatched", "InstanceNorm2d", (3, 4, 5)),
        ("in3d", "InstanceNorm3d", (2, 3, 2, 3, 4)),
        ("in3d_unbatched", "InstanceNorm3d", (3, 2, 3, 4)),
    ]
    options = [(0.1, a, t, 1e-5) for a in (True, False) for t in (True, False)]
    options += [(0.3, True, True, 1e-3)]
    # PyTorch quirk recorded on purpose: InstanceNorm passes `momentum or 0.0` to F.instance_norm, so
    # momentum=None freezes the running stats (no cumulative average) and num_batches_tracked stays 0.
    options += [(None, False, True, 1e-5)]
    for tag, module, shape in kinds:
        unbatched = tag.endswith("unbatched")
        for momentum, affine, track, eps in options:
            name = f"{tag}_m{fmt(momentum)}_affine{int(affine)}_track{int(track)}_eps{eps:g}"
            c = shape[0] if unbatched else shape[1]
            cfg = dict(module=module, num_features=c, momentum=momentum, affine=affine,
                       track_running_stats=track, eps=eps, unbatched=unbatched)
            yield name, cfg, shape, ["train", "train", "eval"]


def layer_norm_cases() -> Iterator[Case]:
    """LayerNorm over 1, 2 and 3 trailing dims x elementwise_affine x bias (+ eps 1e-3, a 2-D input)."""
    shape = (3, 4, 5, 6)
    for nshape in ((6,), (5, 6), (4, 5, 6)):
        for ea, b in ((True, True), (True, False), (False, False)):
            name = f"ln_ns{'x'.join(map(str, nshape))}_affine{int(ea)}_bias{int(b)}_eps1e-05"
            yield name, dict(module="LayerNorm", normalized_shape=list(nshape), elementwise_affine=ea,
                             bias=b, eps=1e-5), shape, ["train"]
    yield "ln_ns5x6_affine1_bias1_eps0.001", dict(module="LayerNorm", normalized_shape=[5, 6],
                                                  elementwise_affine=True, bias=True, eps=1e-3), shape, ["train"]
    yield "ln_2d_ns16_affine1_bias1_eps1e-05", dict(module="LayerNorm", normalized_shape=[16],
                                                    elementwise_affine=True, bias=True, eps=1e-5), (8, 16), ["train"]


def group_norm_cases() -> Iterator[Case]:
    """GroupNorm with 1, 2, 3 and 6 groups of 6 channels, rank 3/4/5 inputs, affine on/off (+ eps 1e-3)."""
    shapes = {"3d": (3, 6, 7), "4d": (2, 6, 4, 5), "5d": (2, 6, 3, 4, 2)}
    for tag, shape in shapes.items():
        for g in (1, 2, 3, 6):
            for affine in (True, False):
                name = f"gn_{tag}_g{g}_affine{int(affine)}_eps1e-05"
                yield name, dict(module="GroupNorm", num_groups=g, num_channels=6, affine=affine,
                                 eps=1e-5), shape, ["train"]
    yield "gn_4d_g3_affine1_eps0.001", dict(module="GroupNorm", num_groups=3, num_channels=6, affine=True,
                                            eps=1e-3), shapes["4d"], ["train"]


def rms_norm_cases() -> Iterator[Case]:
    """RMSNorm over 1 and 2 trailing dims x eps None/1e-3 x elementwise_affine."""
    shape = (3, 4, 5, 6)
    for nshape in ((6,), (5, 6)):
        for eps in (None, 1e-3):
            for ea in (True, False):
                name = f"rms_ns{'x'.join(map(str, nshape))}_affine{int(ea)}_eps{fmt(eps)}"
                yield name, dict(module="RMSNorm", normalized_shape=list(nshape), elementwise_affine=ea,
                                 eps=eps), shape, ["train"]


# --------------------------------------------------------------------------------------------- modules
def module_factory(cfg: dict) -> Callable[[Any], Any]:
    """A function dtype -> fresh torch module built from ``cfg``."""
    import torch.nn as nn

    kind = cfg["module"]

    def make(dtype: Any) -> Any:
        if kind.startswith(("BatchNorm", "InstanceNorm")):
            return getattr(nn, kind)(cfg["num_features"], eps=cfg["eps"], momentum=cfg["momentum"],
                                     affine=cfg["affine"], track_running_stats=cfg["track_running_stats"],
                                     dtype=dtype)
        if kind == "LayerNorm":
            return nn.LayerNorm(cfg["normalized_shape"], eps=cfg["eps"],
                                elementwise_affine=cfg["elementwise_affine"], bias=cfg["bias"], dtype=dtype)
        if kind == "GroupNorm":
            return nn.GroupNorm(cfg["num_groups"], cfg["num_channels"], eps=cfg["eps"], affine=cfg["affine"],
                                dtype=dtype)
        if kind == "RMSNorm":
            return nn.RMSNorm(cfg["normalized_shape"], eps=cfg["eps"],
                              elementwise_affine=cfg["elementwise_affine"], dtype=dtype)
        raise ValueError(f"unknown module {kind!r}")

    return make


def param_shape(cfg: dict) -> tuple[tuple[int, ...], bool, bool] | None:
    """(shape, has_weight, has_bias) of the learnable parameters, or None when there are none."""
    kind = cfg["module"]
    if kind.startswith(("BatchNorm", "InstanceNorm")):
        return ((cfg["num_features"],), True, True) if cfg["affine"] else None
    if kind == "GroupNorm":
        return ((cfg["num_channels"],), True, True) if cfg["affine"] else None
    if kind in ("LayerNorm", "RMSNorm"):
        if not cfg["elementwise_affine"]:
            return None
        return tuple(cfg["normalized_shape"]), True, bool(cfg.get("bias", False))
    raise ValueError(f"unknown module {kind!r}")


def make_input(rng: np.random.Generator, cfg: dict, shape: tuple[int, ...]) -> np.ndarray:
    kind = cfg["module"]
    if kind in ("LayerNorm", "RMSNorm"):
        return row_input(rng, shape, len(cfg["normalized_shape"]))
    return channel_input(rng, shape, 0 if cfg.get("unbatched") else 1)


FAMILIES = {
    "batch_norm": batch_norm_cases,
    "instance_norm": instance_norm_cases,
    "layer_norm": layer_norm_cases,
    "group_norm": group_norm_cases,
    "rms_norm": rms_norm_cases,
}


def rel_err(got: np.ndarray, exp: np.ndarray) -> float:
    """The parity metric of the tests: max_i |got_i - exp_i| / max(|exp_i|, 0.3 max_j |exp_j|).

    Elementwise relative error whose denominator is floored at 30% of the array's largest magnitude, so
    elements that are ~0 by cancellation are judged on the array's scale rather than on their own.
    """
    got, exp = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    if exp.size == 0:
        return 0.0
    floor = max(0.3 * float(np.max(np.abs(exp))), 1e-30)
    return float(np.max(np.abs(got - exp) / np.maximum(np.abs(exp), floor)))


def build_family(family: str) -> tuple[dict[str, np.ndarray], float, str]:
    """All arrays of one family's npz, plus how far PyTorch's own float32 run is from them (and where).

    The stored outputs come from the float64 run rounded once to float32 (inputs and parameters are float32
    values, so both runs see identical data): the golden is PyTorch's semantics without its float32 rounding
    noise, and an implementation is judged on its own rounding error only.
    """
    import torch

    rng = np.random.default_rng([SEED, list(FAMILIES).index(family)])
    arrays: dict[str, np.ndarray] = {}
    worst, worst_at = 0.0, ""
    for name, cfg, shape, modes in FAMILIES[family]():
        ps = param_shape(cfg)
        weight = bias = None
        if ps is not None:
            w, b = random_params(rng, ps[0])
            weight, bias = (w if ps[1] else None), (b if ps[2] else None)
        steps = [(m, make_input(rng, cfg, shape), rng.standard_normal(shape).astype(np.float32)) for m in modes]
        make = module_factory(cfg)
        rec32 = run_case(make, weight, bias, steps, torch.float32)
        rec64 = run_case(make, weight, bias, steps, torch.float64)
        for key, a64 in rec64.items():
            a = a64.astype(np.float32) if a64.dtype == np.float64 else a64
            arrays[f"{name}/{key}"] = a
            e = rel_err(rec32[key], a)
            if e > worst:
                worst, worst_at = e, f"{name}/{key}"
        arrays[f"{name}/config"] = np.array(json.dumps(dict(cfg, steps=modes, shape=list(shape)), sort_keys=True))
    return arrays, worst, worst_at


def save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed npz with a fixed member order so that the bytes are reproducible."""
    np.savez_compressed(path, **dict(sorted(arrays.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate in memory and compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print(f"error: torch is required: pip install torch=={TORCH_VERSION}", file=sys.stderr)
        return 2
    if not torch.__version__.startswith(TORCH_VERSION):
        print(f"warning: goldens are defined by torch=={TORCH_VERSION}, got {torch.__version__}", file=sys.stderr)
    torch.manual_seed(SEED)  # nothing here draws from torch's RNG; set anyway so a future edit stays seeded
    torch.set_num_threads(1)  # fixed reduction order -> reproducible float32 bits
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for family in FAMILIES:
        arrays, worst, worst_at = build_family(family)
        path = args.out / f"{family}.npz"
        n_cases = sum(k.endswith("/config") for k in arrays)
        if args.check:
            with np.load(path) as old:
                same = sorted(old.files) == sorted(arrays) and all(np.array_equal(old[k], arrays[k]) for k in arrays)
            status |= 0 if same else 1
            print(f"{path}: {'identical' if same else 'DIFFERENT'}")
        else:
            save_npz(path, arrays)
            print(f"{path}: {n_cases} cases, {path.stat().st_size / 1024:.0f} KiB; "
                  f"torch's own float32 run: worst rel_err {worst:.2e} ({worst_at})")
    return status


if __name__ == "__main__":
    sys.exit(main())
