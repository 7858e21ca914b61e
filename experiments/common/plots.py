"""The studies' figures: LeNet's training curves and the deep MLP's std per layer (matplotlib's file backend, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the experiments run on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"plain": "tab:blue", "init": "tab:red", "bn": "tab:green"}


def nan_to_none(metrics: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The metrics with non-finite numbers as None (strict JSON has no NaN)."""
    return {c: [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                for r in hist] for c, hist in metrics.items()}


def _finite_epochs(hist) -> int:
    """Number of leading epochs whose training loss is finite."""
    finite = [r["train_loss"] is not None and math.isfinite(r["train_loss"]) for r in hist]
    return len(hist) if all(finite) else finite.index(False)


def plot_curves(metrics: dict[str, list[dict]], path: Path, title: str,
                nan_at: dict[str, tuple[int, int]] | None = None) -> Path:
    """Loss (log scale) and accuracy per epoch; train solid, valid dashed, one colour per config.

    A config whose training loss stopped being finite is drawn only up to its last finite epoch (an x marks the
    end) and named in a note; its accuracies after that are not drawn either (argmax of NaN logits is not a
    prediction), though metrics.json keeps every measured number.
    """
    nan_at = nan_at or {}
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    notes = []
    for config, hist in metrics.items():
        ep, upto, c = np.array([r["epoch"] for r in hist]), _finite_epochs(hist), COLORS.get(config)
        for key, ax, style in (("train_loss", ax_l, "-"), ("valid_loss", ax_l, "--"),
                               ("train_acc", ax_a, "-"), ("valid_acc", ax_a, "--")):
            v = np.array([np.nan if r[key] is None else r[key] for r in hist[:upto]], float)
            ax.plot(ep[:upto], v, style, color=c, marker=".", label=f"{config} {key.split('_')[0]}")
            if 0 < upto < len(hist):
                ax.plot(ep[upto - 1], v[-1], "x", color=c, markersize=10)
        if upto < len(hist):
            e, it = nan_at.get(config, (int(ep[upto]), None))
            notes.append(f"{config}: training loss NaN/Inf from epoch {e}" + (f" iteration {it}" if it else "")
                         + (" (no finite epoch to draw)" if upto == 0 else " (curve stops at x)"))
    ax_l.set(yscale="log", xlabel="epoch", ylabel="cross-entropy loss", title="loss (solid train, dashed valid)")
    ax_a.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy (solid train, dashed valid)")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def print_summary(metrics: dict[str, list[dict]], nan_at: dict, log) -> None:
    """The final epoch of every config, and where a diverged one became NaN."""
    log(f"{'config':<7} {'train_loss':>10} {'train_acc':>9} {'valid_loss':>10} {'valid_acc':>9}  diverged")
    for config, hist in metrics.items():
        if not hist:
            continue
        r, nan = hist[-1], nan_at.get(config)
        log(f"{config:<7} {r['train_loss']:>10.4f} {r['train_acc']:>9.2%} {r['valid_loss']:>10.4f} "
            f"{r['valid_acc']:>9.2%}  " + (f"yes (epoch {nan[0]}, iteration {nan[1]})" if nan else "no"))


NORM_STYLES = {"none": ("black", "plain LeNet"), "bn": ("tab:green", "BatchNorm"), "renorm": ("tab:olive", "BN + renorm"),
               "gn": ("tab:blue", "GroupNorm"), "ln": ("tab:purple", "LayerNorm"), "in": ("tab:orange", "InstanceNorm")}


def plot_small_batch(table: dict[str, dict], path: Path, title: str) -> Path:
    """Validation accuracy and final training loss against batch size, one line per norm, mean ± std over seeds
    (the GN paper's Figure 1 in miniature)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for norm, summary in table.items():
        color, label = NORM_STYLES.get(norm, (None, norm))
        sizes = sorted(summary["rows"], key=int)
        for ax, key in zip(axes, ("valid_acc", "train_loss"), strict=True):
            mean = [summary["rows"][b][key][0] for b in sizes]
            std = [summary["rows"][b][key][1] for b in sizes]
            ax.errorbar([int(b) for b in sizes], mean, yerr=std, color=color, marker="o", capsize=3, label=label)
    for ax, ylabel in zip(axes, ("validation accuracy", "training loss, last epoch"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size (images)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_mlp_stds(results: dict[str, list], path: Path, *, lesson_stds: dict[str, dict[int, float]],
                  lesson_weight_results: dict[str, list] | None = None) -> Path:
    """Std per layer for every config: log scale (top row) and a linear zoom on the stable configs (bottom row).

    The lesson's printed stds are black-edged markers. Zeros (flushed denormals) cannot sit on a log axis: they
    are triangles on the bottom edge. NaN ends a line; a cross marks the last finite layer before it.
    """
    panels = [("JAX RNG weights (seed 1)", results)]
    if lesson_weight_results:
        panels.append(("lesson's exact weights (PyTorch RNG, seed 1)", lesson_weight_results))
    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 8.2), squeeze=False, sharey="row",
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    floor = 1e-45
    for col, (title, res) in enumerate(panels):
        log_ax, lin_ax = axes[0][col], axes[1][col]
        for config, stds in res.items():
            s = np.asarray([np.nan if v is None else v for v in stds], dtype=np.float64)
            layers = np.arange(s.size)
            c = colors.get(config)
            lesson = lesson_stds.get(config, {})
            log_ax.semilogy(layers, np.where(s > 0, s, np.nan), color=c, lw=1.6, label=config)
            log_ax.plot(list(lesson), list(lesson.values()), "o", mfc=c, mec="black", ms=4.5, lw=0)
            zeros = layers[s == 0]
            if zeros.size:
                log_ax.plot(zeros, np.full(zeros.size, floor * 3), "v", color=c, ms=5,
                            label=f"{config}: std = 0 from layer {zeros[0]} (flushed denormals)")
            nans = np.flatnonzero(np.isnan(s))
            nan_at = int(nans[0]) if nans.size else None
            if nan_at is not None and nan_at > 0:
                log_ax.plot([nan_at - 1], [s[nan_at - 1]], "x", color=c, ms=10, mew=2.5)
                log_ax.annotate(f"NaN from layer {nan_at}", (nan_at - 1, s[nan_at - 1]), textcoords="offset points",
                                xytext=(8, -3), color=c, fontsize=9)
            if config in ("kaiming", "bn_kaiming", "bn_default"):
                lin_ax.plot(layers, s, color=c, lw=1.4, label=config)
                lin_ax.plot(list(lesson), list(lesson.values()), "o", mfc=c, mec="black", ms=4.5, lw=0)
        log_ax.plot([], [], "o", mfc="white", mec="black", ms=5, lw=0, label="lesson's printed std")
        log_ax.set_title(title, fontsize=11)
        log_ax.set_ylim(floor, 1e45)
        log_ax.set_yticks([10.0 ** k for k in range(-40, 41, 10)])
        log_ax.grid(True, which="major", alpha=0.3)
        log_ax.legend(fontsize=8, loc="lower left")
        lin_ax.axhline(np.sqrt(0.5 - 0.5 / np.pi), color="gray", ls=":", lw=1,
                       label="std of relu(N(0,1)) = 0.584")
        lin_ax.set_ylim(0, 1.2)
        lin_ax.set_xlabel("layer")
        lin_ax.grid(True, alpha=0.3)
        lin_ax.legend(fontsize=8, loc="lower left", ncol=2)
    axes[0][0].set_ylabel("std of activations (log scale)")
    axes[1][0].set_ylabel("std (linear, stable configs)")
    fig.suptitle("100-layer MLP, width 256, batch 16: activation std after each layer", fontsize=12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
