r"""BatchNorm vs LayerNorm vs InstanceNorm vs GroupNorm on one (N, C, H, W) tensor: which axes each normalizes.

Run ``python -m experiments.norm_compare`` (``--help`` for flags). All four compute

.. math::
    y = \frac{x - \mu_S}{\sqrt{\sigma^2_S + \varepsilon}}\,\gamma + \beta

and differ only in the set ``S`` the mean and (biased) variance are taken over:

========  =========================================  ==================  ==============
norm      statistics over                            one statistic per   # groups
========  =========================================  ==================  ==============
BN        (N, H, W)                                  channel c           C
LN        (C, H, W)                                  sample n            N
IN        (H, W)                                     (n, c)              N * C
GN        (C/G channels of a group, H, W)            (n, group g)        N * G
========  =========================================  ==================  ==============

so GN with 1 group is LN over (C, H, W) and GN with C groups is IN (at initialization, where LN's
elementwise and GN's per-channel affine parameters are both identity).

The study applies jaxnorm's BN (training mode), LN, IN and GN to one tensor whose mean and scale depend on both
the sample and the channel, then measures, for *every* grouping, the largest ``|group mean|`` and
``|group std - 1|`` of each output: a norm zeroes its own grouping (diagonal) and not the others. It also checks
each output against a float64 NumPy implementation and prints the two identities' max abs differences.

Writes ``norm_compare.json``, ``norm_axes.png`` (the classic four-cube picture) and ``norm_stats.png`` (the
grouping matrix as heatmaps) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import jaxnorm as jn

METHODS = ("BN", "LN", "IN", "GN")
# Reduction axes of each grouping for an (N, C, H, W) tensor; GN's are on the (N, G, C/G, H, W) view.
GROUPINGS = {"BN": "per channel, over (N, H, W)", "LN": "per sample, over (C, H, W)",
             "IN": "per (sample, channel), over (H, W)", "GN": "per (sample, group), over (C/G, H, W)"}
EPS = 1e-5


def make_input(shape: Sequence[int] = (6, 6, 8, 8), seed: int = 0) -> np.ndarray:
    """float32 ``(N, C, H, W)`` tensor ``a_c + b_n + s_c * t_n * z`` with sample- and channel-dependent mean and
    scale, so that every grouping sees different statistics before normalization."""
    n, c, _, _ = shape
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-3, 3, size=(1, c, 1, 1)) + rng.uniform(-2, 2, size=(n, 1, 1, 1))
    scale = rng.uniform(0.5, 3, size=(1, c, 1, 1)) * rng.uniform(0.5, 2, size=(n, 1, 1, 1))
    return (shift + scale * rng.standard_normal(shape)).astype(np.float32)


def group_stats(y: np.ndarray, grouping: str, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-group mean and biased std of ``y`` (N, C, H, W) for one of the four groupings."""
    y = np.asarray(y, dtype=np.float64)
    n, c = y.shape[:2]
    if grouping == "BN":
        axes, view = (0, 2, 3), y
    elif grouping == "LN":
        axes, view = (1, 2, 3), y
    elif grouping == "IN":
        axes, view = (2, 3), y
    elif grouping == "GN":
        axes, view = (2, 3, 4), y.reshape(n, num_groups, c // num_groups, *y.shape[2:])
    else:
        raise ValueError(f"group_stats: expected grouping in {METHODS}, got {grouping!r}")
    return view.mean(axis=axes).ravel(), view.std(axis=axes).ravel()


def numpy_reference(x: np.ndarray, method: str, num_groups: int, eps: float = EPS) -> np.ndarray:
    """float64 NumPy normalization over ``method``'s grouping, identity affine: the independent check."""
    x64 = np.asarray(x, dtype=np.float64)
    n, c = x64.shape[:2]
    view = x64.reshape(n, num_groups, c // num_groups, *x64.shape[2:]) if method == "GN" else x64
    axes = {"BN": (0, 2, 3), "LN": (1, 2, 3), "IN": (2, 3), "GN": (2, 3, 4)}[method]
    mean = view.mean(axis=axes, keepdims=True)
    var = view.var(axis=axes, keepdims=True)
    return ((view - mean) / np.sqrt(var + eps)).reshape(x64.shape)


def apply_all(x: np.ndarray, num_groups: int, eps: float = EPS) -> dict[str, np.ndarray]:
    """jaxnorm's BN (training mode, batch statistics), LN over (C, H, W), IN and GN(num_groups) of ``x``."""
    x = jnp.asarray(x)
    c = x.shape[1]
    bn_params, bn_stats = jn.batch_norm_init(c)
    in_params, in_stats = jn.instance_norm_init(c)
    return {
        "BN": np.asarray(jn.batch_norm_2d(x, bn_params, bn_stats, train=True, eps=eps)[0]),
        "LN": np.asarray(jn.layer_norm(x, jn.layer_norm_init(x.shape[1:]), x.shape[1:], eps=eps)),
        "IN": np.asarray(jn.instance_norm_2d(x, in_params, in_stats, train=True, eps=eps)[0]),
        "GN": np.asarray(jn.group_norm(x, jn.group_norm_init(num_groups, c), num_groups, eps=eps)),
    }


def identities(x: np.ndarray, eps: float = EPS) -> dict[str, float]:
    """Max abs differences: GN(1 group) vs LN over (C, H, W); GN(C groups) vs IN (affine and not)."""
    x = jnp.asarray(x)
    c = x.shape[1]
    gn1 = jn.group_norm(x, jn.group_norm_init(1, c), 1, eps=eps)
    ln = jn.layer_norm(x, jn.layer_norm_init(x.shape[1:]), x.shape[1:], eps=eps)
    gnc = jn.group_norm(x, jn.group_norm_init(c, c, affine=False), c, eps=eps)
    inorm, _ = jn.instance_norm_2d(x, *jn.instance_norm_init(c), train=True, eps=eps)
    # with the same per-channel affine (random weight/bias) on both sides the identity must still hold
    rng = np.random.default_rng(1)
    affine = {"weight": jnp.asarray(rng.normal(size=c), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}
    gnc_aff = jn.group_norm(x, affine, c, eps=eps)
    in_aff, _ = jn.instance_norm_2d(x, affine, {}, train=True, eps=eps)
    return {"GN(1 group) vs LN(C,H,W)": float(jnp.max(jnp.abs(gn1 - ln))),
            "GN(C groups) vs IN": float(jnp.max(jnp.abs(gnc - inorm))),
            "GN(C groups) vs IN, same random per-channel affine": float(jnp.max(jnp.abs(gnc_aff - in_aff)))}


def grouping_matrix(outputs: dict[str, np.ndarray], num_groups: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {grouping: {"max_abs_mean", "max_abs_std_minus_1", "groups"}}}`` for every output."""
    matrix = {}
    for method, y in outputs.items():
        matrix[method] = {}
        for grouping in METHODS:
            mean, std = group_stats(y, grouping, num_groups)
            matrix[method][grouping] = {"max_abs_mean": float(np.max(np.abs(mean))),
                                        "max_abs_std_minus_1": float(np.max(np.abs(std - 1))),
                                        "std_min": float(std.min()), "std_max": float(std.max()),
                                        "groups": int(mean.size)}
    return matrix


# ------------------------------------------------------------------------------------------------- figures
def plot_axes(path: Path, num_groups_drawn: int = 3) -> Path:
    """The four-cube picture: axes N, C and (H, W) flattened; the voxels of one normalization group in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, c, hw = 6, 6, 5  # schematic sizes
    per_group = c // num_groups_drawn
    sel = {"BN": (slice(None), slice(0, 1)), "LN": (slice(0, 1), slice(None)),
           "IN": (slice(0, 1), slice(0, 1)), "GN": (slice(0, 1), slice(0, per_group))}
    titles = {"BN": "Batch Norm", "LN": "Layer Norm", "IN": "Instance Norm",
              "GN": f"Group Norm ({num_groups_drawn} groups)"}
    fig = plt.figure(figsize=(13, 3.9))
    for k, method in enumerate(METHODS):
        ax = fig.add_subplot(1, 4, k + 1, projection="3d")
        filled = np.ones((n, c, hw), bool)
        colors = np.empty(filled.shape, dtype=object)
        colors[...] = "#d9d9d933"
        hi = np.zeros(filled.shape, bool)
        hi[sel[method]] = True
        colors[hi] = "#2b6cb0dd"
        ax.voxels(filled, facecolors=colors, edgecolors="#55555555", linewidth=0.3)
        ax.set_box_aspect((n, c, hw), zoom=0.85)
        ax.view_init(elev=18, azim=-58)
        ax.set_xlabel("N", labelpad=-10)
        ax.set_ylabel("C", labelpad=-10)
        ax.set_zlabel("H, W", labelpad=-12)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_title(f"{titles[method]}\n{GROUPINGS[method]}", fontsize=10)
    fig.suptitle("Blue: the values one mean/variance is computed over (one normalization group)", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.80, bottom=0.02, wspace=0.05)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_stats(matrix: dict, path: Path) -> Path:
    """Two heatmaps: max |group mean| and max |group std - 1| of each output (rows) under each grouping
    (columns), log color scale; the diagonal is ~0 (each norm normalizes its own grouping only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, key, title in zip(axes, ("max_abs_mean", "max_abs_std_minus_1"),
                              ("max |group mean|", "max |group std - 1|"), strict=True):
        vals = np.array([[matrix[m][g][key] for g in METHODS] for m in METHODS])
        im = ax.imshow(np.maximum(vals, 1e-8), norm=LogNorm(vmin=1e-8, vmax=10), cmap="viridis")
        for i in range(len(METHODS)):
            for j in range(len(METHODS)):
                ax.text(j, i, f"{vals[i, j]:.1e}", ha="center", va="center", fontsize=8,
                        color="white" if vals[i, j] < 1e-3 else "black")
        ax.set_xticks(range(len(METHODS)), [f"{g}\ngroups" for g in METHODS])
        ax.set_yticks(range(len(METHODS)), [f"after {m}" for m in METHODS])
        ax.set_title(title, fontsize=11)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Statistics of each output over each grouping (float64). Each norm normalizes its own grouping "
                 "(diagonal);\nIN's groups are the finest, so every coarser grouping of its output is normalized "
                 "too, and GN's groups tile LN's.", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------------------- run
def run(out_dir, *, shape: Sequence[int] = (6, 6, 8, 8), num_groups: int = 3, seed: int = 0,
        verbose: bool = True) -> dict:
    """Run the comparison; write ``norm_compare.json``, ``norm_axes.png``, ``norm_stats.png`` into ``out_dir``.

    Returns ``{"shape", "num_groups", "matrix", "own" (each norm on its own grouping), "vs_numpy",
    "identities", "input_stats", "files"}``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"norm_compare: expected a 4-D (N, C, H, W) shape, got {shape}")
    if shape[1] % num_groups:
        raise ValueError(f"norm_compare: expected C divisible by num_groups, got C={shape[1]}, "
                         f"num_groups={num_groups}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = make_input(shape, seed)
    outputs = apply_all(x, num_groups)
    matrix = grouping_matrix({"input": x, **outputs}, num_groups)
    input_stats = matrix.pop("input")
    vs_numpy = {m: float(np.max(np.abs(outputs[m] - numpy_reference(x, m, num_groups)))) for m in METHODS}
    ident = identities(x)
    own = {m: {"statistics_over": GROUPINGS[m], **matrix[m][m]} for m in METHODS}

    if verbose:
        _print_tables(shape, num_groups, own, matrix, input_stats, vs_numpy, ident)
    files = {"json": out / "norm_compare.json", "axes_figure": out / "norm_axes.png",
             "stats_figure": out / "norm_stats.png"}
    result = {"shape": list(shape), "num_groups": num_groups, "matrix": matrix, "own": own, "vs_numpy": vs_numpy,
              "identities": ident, "input_stats": input_stats}
    files["json"].write_text(json.dumps(result, indent=1) + "\n")
    plot_axes(files["axes_figure"], num_groups)
    plot_stats(matrix, files["stats_figure"])
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return {**result, "files": {k: str(v) for k, v in files.items()}}


def _print_tables(shape, num_groups, own, matrix, input_stats, vs_numpy, ident) -> None:
    print(f"x: shape {shape} (N, C, H, W), GN with {num_groups} groups, eps {EPS}")
    print("\nEach norm on its own groups (biased std; eps makes it slightly < 1):")
    print(f"{'norm':<5} {'statistics over':<40} {'groups':>6} {'max|mean|':>10} {'std min':>9} {'std max':>9} "
          f"{'vs NumPy f64':>13}")
    for m in METHODS:
        r = own[m]
        print(f"{m:<5} {r['statistics_over']:<40} {r['groups']:>6} {r['max_abs_mean']:>10.2e} "
              f"{r['std_min']:>9.6f} {r['std_max']:>9.6f} {vs_numpy[m]:>13.2e}")
    print("\nmax|group mean| / max|group std - 1| of each output (rows) over each grouping (columns):")
    print(f"{'':<9}" + "".join(f"{g + ' groups':>22}" for g in METHODS))
    for name, row in [("input", input_stats)] + [(f"after {m}", matrix[m]) for m in METHODS]:
        print(f"{name:<9}" + "".join(f"{row[g]['max_abs_mean']:>11.1e} /{row[g]['max_abs_std_minus_1']:>8.1e}"
                                     for g in METHODS))
    print("\nidentities (max abs difference, float32):")
    for k, v in ident.items():
        print(f"  {k:<52} {v:.2e}")


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.norm_compare", description=__doc__.split("\n\n")[0],
                                epilog="Writes norm_compare.json, norm_axes.png and norm_stats.png into --out.")
    p.add_argument("--out", type=Path, default=Path("results/norm_compare"), help="output folder (default %(default)s)")
    p.add_argument("--shape", type=int, nargs=4, default=[6, 6, 8, 8], metavar=("N", "C", "H", "W"),
                   help="input shape (default %(default)s)")
    p.add_argument("--groups", type=int, default=3, help="GroupNorm groups, must divide C (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input tensor (default %(default)s)")
    args = p.parse_args(argv)
    if min(args.shape) < 1 or args.groups < 1 or args.shape[1] % args.groups:
        p.error(f"expected positive sizes and --groups dividing C, got shape {args.shape}, groups {args.groups}")
    return run(args.out, shape=args.shape, num_groups=args.groups, seed=args.seed)


if __name__ == "__main__":
    main()
