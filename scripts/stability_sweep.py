"""The raw results behind README's stability bound: every norm's error against a float64 reference, over offsets,
spreads, group sizes and seeds, on the installed jax (run it once per end of the supported versions).

    python scripts/stability_sweep.py --json benchmarks/stability/jax-$(python -c "import jax; print(jax.__version__)").json

The reference is computed in float64 from the *same* float32 input, so the error is what jaxnorm's float32 arithmetic
adds. Each case is one (shape, std, mean/std, seed): per-channel offsets ``ratio · std · (1, −0.5, 0.25, 1)`` on
Gaussian noise of the given std, offsets capped at 1e5 (the README's range). The shapes cover every level structure
of the statistics' sums (:func:`jaxnorm._stats.sum_levels`): groups of 64 to 65536 values, levels of up to 1024
values (the block), a single axis of 8192 (longer than the block). The masked rows use a per-example mask (the
last quarter of the batch invalid) and a per-position mask (a padded sequence), as a padded batch would.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm as jn

SHAPES = [(8, 4, 8, 8), (32, 4, 8, 8), (256, 4, 16, 16), (64, 4, 32, 32), (16, 4, 64, 64), (8192, 4, 1, 1), (2, 4, 1, 8192)]
STDS = (1.0, 1e-2)
RATIOS = (0.0, 0.5, 1.0, 1.5, 1.9, 2.1, 4.0, 30.0, 1e3, 1e5, 1e7)
MAX_OFFSET = 1e5
CHANNEL_SIGNS = np.array([1.0, -0.5, 0.25, 1.0])
AXES = {"batch_norm NCHW": (0, 2, 3), "batch_norm NHWC": (0, 2, 3), "group_norm": (2, 3), "instance_norm": (2, 3),
        "layer_norm": (2, 3), "batch_norm masked": (0, 2, 3), "layer_norm masked": (2, 3)}


def reference(x: np.ndarray, axes: tuple[int, ...], mask: np.ndarray | None = None, eps: float = 1e-5) -> np.ndarray:
    """The normalized output in float64 from the float32 input (over the valid values, 0 elsewhere)."""
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    n = valid.sum(axes, keepdims=True)
    mean = np.where(valid, x, 0.0).sum(axes, keepdims=True) / n
    var = np.where(valid, (x - mean) ** 2, 0.0).sum(axes, keepdims=True) / n
    return np.where(valid, (x - mean) / np.sqrt(var + eps), 0.0)


def masks(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A per-example mask (the last quarter of the batch invalid) and a per-position one (each row padded)."""
    n, length = shape[0], shape[-1]
    per_example = (np.arange(n) < n - n // 4).reshape(n, 1, 1, 1)
    per_position = np.arange(length) < np.linspace(length // 2, length, n).astype(int)[:, None]
    return per_example, per_position[:, None, None, :]


@jax.jit
def every_norm(x, per_example, per_position):
    if x.shape[2:] == (1, 1):  # (N, C, 1, 1): batch statistics only (the other norms see one value per group)
        return {"batch_norm NCHW": jn.batch_norm_2d(x, {}, {}, train=True)[0]}
    return {
        "batch_norm NCHW": jn.batch_norm_2d(x, {}, {}, train=True)[0],
        "batch_norm NHWC": jnp.moveaxis(jn.batch_norm(jnp.moveaxis(x, 1, -1), {}, {}, train=True, axis=-1)[0], -1, 1),
        "group_norm": jn.group_norm(x, {}, x.shape[1]),
        "instance_norm": jn.instance_norm_2d(x, {}, {}, train=True)[0],
        "layer_norm": jn.layer_norm(x, {}, x.shape[2:]),
        "batch_norm masked": jn.batch_norm_2d(x, {}, {}, train=True, mask=per_example)[0],
        "layer_norm masked": jn.layer_norm(x, {}, x.shape[2:], mask=per_position),
    }


def case_input(shape, std: float, ratio: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    offsets = ratio * std * CHANNEL_SIGNS
    return (rng.normal(size=shape) * std + offsets[:, None, None]).astype(np.float32)


def sweep(seeds: range) -> list[dict]:
    rows = []
    for shape in SHAPES:
        per_example, per_position = masks(shape)
        for std in STDS:
            for ratio in RATIOS:
                if ratio * std > MAX_OFFSET:
                    continue
                for seed in seeds:
                    x = case_input(shape, std, ratio, seed)
                    got = every_norm(jnp.asarray(x), jnp.asarray(per_example), jnp.asarray(per_position))
                    for name, y in got.items():
                        mask = per_example if name == "batch_norm masked" else (
                            per_position if name == "layer_norm masked" else None)
                        error = np.abs(np.asarray(y, np.float64) - reference(x, AXES[name], mask)).max()
                        rows.append({"norm": name, "shape": list(shape), "std": std, "mean_over_std": ratio,
                                     "seed": seed, "max_abs_error": float(error)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per case (default 4)")
    args = parser.parse_args(argv)
    rows = sweep(range(args.seeds))
    worst = max(rows, key=lambda r: r["max_abs_error"])
    per_norm = {name: max(r["max_abs_error"] for r in rows if r["norm"] == name) for name in AXES}
    result = {"meta": {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
                       "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                       "machine": platform.machine(), "processor": platform.processor() or None,
                       "backend": jax.default_backend(), "command": "python scripts/stability_sweep.py"},
              "worst": worst, "worst_per_norm": per_norm, "rows": rows}
    print(f"jax {jax.__version__}: {len(rows)} comparisons, worst {worst['max_abs_error']:.2e} "
          f"({worst['norm']}, shape {tuple(worst['shape'])}, std {worst['std']}, mean/std {worst['mean_over_std']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
