"""The sections of ``report.md``: each renders one study's returned results (numbers computed in the run), the
lesson's printed values only where labelled as the lesson's, and conclusions derived from the numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from experiments import benchmark, mlp_study
from experiments.common import lesson
from experiments.common import report as md


def _vec(v) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _within(claim: str, value: float, bound: float) -> str:
    """A derived conclusion with its number: ``"<claim> within <bound>: yes (<value>)"``."""
    return f"{claim} within {f'{bound:.0e}'.replace('e-0', 'e-')}: {_yes(value <= bound)} ({value:.1e})"


def bn_running_stats(r: dict, out: Path) -> str:
    rows, printed = [], lesson.BN_RUNNING_STATS["bn1d"]
    for it in r["bn1d"]["iterations"]:
        i = it["iteration"]
        for key in ("running_mean", "running_var"):
            rows.append([i, key, _vec(it[key]), _vec(it[f"hand_{key}"]), _vec(printed[key][i])])
    diff_lesson = max(float(np.max(np.abs(np.subtract(it[k], printed[k][it["iteration"]]))))
                      for it in r["bn1d"]["iterations"] for k in ("running_mean", "running_var"))
    shapes = [[name, str(tuple(r[name]["input_shape"])),
               *(str(tuple(r[name]["iterations"][-1]["shapes"][k])) for k in ("running_mean", "running_var",
                                                                             "weight", "bias")),
               md.fmt(r[name]["max_abs_diff_vs_hand"], ".1e")] for name in ("bn1d", "bn2d", "bn3d")]
    worst = max(r[n]["max_abs_diff_vs_hand"] for n in ("bn1d", "bn2d", "bn3d"))
    return "\n\n".join([
        "BatchNorm1d on the lesson's input (3 samples, channel c = constant c, momentum 0.3), jaxnorm's pure "
        "`batch_norm_1d`, against the hand computation `(1-m)·running + m·batch` in float64 and the values the "
        "lesson printed:",
        md.table(["iteration", "statistic", "jaxnorm", "by hand (float64)", "lesson printed"], rows,
                 ["r", "l", "l", "l", "l"]),
        "Shapes after two iterations (the lesson prints `torch.Size([C])` for all four in 1d, 2d and 3d) and the "
        "largest difference from the hand computation over both iterations and statistics:",
        md.table(["demo", "input", "running_mean", "running_var", "weight", "bias", "max |jaxnorm − hand|"], shapes),
        _within("Equal to the hand computation in every demo", worst, 1e-6) + "; "
        + _within("equal to the lesson's printed BatchNorm1d values", diff_lesson, 1e-6) + ".",
        md.image(r["files"]["figure"], out, "BN running statistics"),
    ]) + "\n"


def _mlp_summary_rows(r: dict) -> list[list]:
    exact = r.get("lesson_weights")
    rows = []
    for c in mlp_study.CONFIGS:
        s = r["summary"][c]
        rows.append([c, md.fmt(lesson.MLP_FIRST_NAN.get(c)),
                     md.fmt(mlp_study.first_nan_layer(exact[c]) if exact else None), md.fmt(s["first_nan"]),
                     f"{md.fmt(s['min'], '.3g')} … {md.fmt(s['max'], '.3g')}", md.fmt(s["last"], ".4g", none="NaN"),
                     md.fmt(s["first_zero"])])
    return rows


def _mlp_conclusions(r: dict) -> list[str]:
    s = r["summary"]
    stds = {c: np.asarray([np.nan if v is None else v for v in r["stds"][c]]) for c in mlp_study.CONFIGS}
    bn = np.concatenate([stds["bn_kaiming"], stds["bn_default"]])
    lines = [f"`default` vanishes (layer-99 std below 1e-30, where PyTorch's float32 reaches the denormals): "
             f"{_yes((s['default']['last'] or 0.0) < 1e-30)} (layer 0: {stds['default'][0]:.3g}, layer 99: "
             f"{md.fmt(s['default']['last'], '.3g')})",
             f"`normal` explodes to NaN: {_yes(s['normal']['first_nan'] is not None)}, from layer "
             f"{md.fmt(s['normal']['first_nan'])} (the lesson printed NaN from layer {lesson.MLP_FIRST_NAN['normal']})",
             f"BatchNorm holds every layer's std within 0.55-0.62 (std of relu(N(0, 1)) = 0.584) in both BN configs: "
             f"{_yes(bool(np.all((bn > 0.55) & (bn < 0.62))))} (range {bn.min():.3f} … {bn.max():.3f})"]
    spread = r.get("kaiming_seed_spread")
    if spread:
        v = sorted(a for a in spread if a is not None)
        lines.append(f"`kaiming` neither vanishes nor explodes over JAX seeds 1..{len(spread)}: layer-99 std from "
                     f"{v[0]:.3g} to {v[-1]:.3g} (median {v[len(v) // 2]:.3g})")
    return lines


def _mlp_lesson_rows(r: dict, c: str) -> list[list]:
    exact = r.get("lesson_weights")
    compared = mlp_study.compare_to_lesson(c, exact[c]) if exact else None
    rows = []
    for k, (layer, v) in enumerate(lesson.MLP_STDS[c].items()):
        ours = compared[k]["ours"] if compared else None
        rows.append([layer, repr(v), "0 (flushed)" if ours == 0 else md.fmt(ours, ".7g"),
                     md.fmt(compared[k]["rel_diff"] if compared and ours else None, ".1e"),
                     md.fmt(r["stds"][c][layer], ".7g", none="NaN")])
    return rows


def mlp(r: dict, out: Path) -> str:
    exact = r.get("lesson_weights")
    parts = [md.image(r["files"]["figure"], out, "MLP activation std per layer"),
             "Left: weights and input from JAX's PRNG (seed 1; the lesson's distributions, not its values). "
             + ("Right: the lesson's *exact* weights and input, drawn with PyTorch's RNG after `torch.manual_seed(1)` "
                "in the lesson's order and fed to the same jitted `layer_stds`. " if exact else
                "(PyTorch is not installed, so the lesson's exact weights were not drawn.) ")
             + "Black-edged dots: the stds the lesson printed.",
             md.table(["config", "first NaN layer: lesson printed", "ours, lesson's weights", "ours, JAX RNG",
                       "std range (JAX RNG)", "layer 99 std (JAX RNG)", "first layer with std 0"],
                      _mlp_summary_rows(r)),
             "\n".join(f"- {line}" for line in _mlp_conclusions(r))]
    if r.get("backend") == "cpu":
        parts.append("XLA on CPU flushes denormal floats (|x| < 1.2e-38) to zero, so `default` reaches std exactly 0 "
                     "in its last layers where PyTorch (which keeps denormals) prints ~1e-40.")
    for c in mlp_study.CONFIGS:
        parts += [f"**`{c}`**: the layers the lesson printed:",
                  md.table(["layer", "lesson printed", "ours, lesson's weights", "rel. diff", "ours, JAX RNG"],
                           _mlp_lesson_rows(r, c), ["r", "r", "r", "r", "r"])]
    parts.append("Data: [stds.json](mlp_study/stds.json) (NaN written as `null`).")
    return "\n\n".join(parts) + "\n"


def norm_compare(r: dict, out: Path) -> str:
    methods = list(r["own"])
    own = [[m, r["own"][m]["statistics_over"], r["own"][m]["groups"], md.fmt(r["own"][m]["max_abs_mean"], ".1e"),
            f"{r['own'][m]['std_min']:.6f} … {r['own'][m]['std_max']:.6f}", md.fmt(r["vs_numpy"][m], ".1e")]
           for m in methods]
    diagonal = max(r["own"][m]["max_abs_mean"] for m in methods)
    worst_numpy = max(r["vs_numpy"].values())
    worst_identity = max(r["identities"].values())
    return "\n\n".join([
        md.image(r["files"]["axes_figure"], out, "which axes each normalization reduces"),
        f"One float32 tensor of shape {tuple(r['shape'])} (N, C, H, W), sample- and channel-dependent mean and "
        f"scale; GN with {r['num_groups']} groups; identity affine. Each norm on its own groups, and its largest "
        "difference from a float64 NumPy implementation:",
        md.table(["norm", "statistics over", "groups", "max |group mean|", "std min … max", "vs NumPy float64"], own),
        "; ".join([_within("Each norm zeroes the mean of its own groups (max |group mean|)", diagonal, 1e-6),
                   _within("agrees with float64 NumPy", worst_numpy, 1e-5),
                   _within("GN(1 group) ≡ LN and GN(C groups) ≡ IN", worst_identity, 1e-5)]) + ".",
        md.image(r["files"]["stats_figure"], out, "grouping statistics"),
    ]) + "\n"


def _lenet_rows(metrics: dict) -> list[list]:
    rows = []
    for c, hist in metrics.items():
        last = hist[-1]
        nan_epoch = next((h["epoch"] for h in hist if _nan(h["train_loss"])), None)
        printed = lesson.LENET_FINAL_EPOCH.get(c, {})
        rows.append([c, md.fmt(last["train_loss"], ".4f"), md.pct(last["train_acc"]), md.fmt(last["valid_loss"], ".4f"),
                     md.pct(last["valid_acc"]), "no" if nan_epoch is None else f"yes, epoch {nan_epoch}",
                     f"{md.fmt(printed.get('train_loss'), '.4f')} / {md.fmt(printed.get('valid_loss'), '.4f')}"])
    return rows


def _lenet_conclusions(metrics: dict, extras: dict | None) -> list[str]:
    finite = {c: h[-1]["train_loss"] for c, h in metrics.items() if not _nan(h[-1]["train_loss"])}
    valid = {c: h[-1]["valid_acc"] for c, h in metrics.items() if not _nan(h[-1]["train_loss"])}
    lines = []
    if finite:
        low = min(finite, key=finite.get)
        lines.append(f"LeNet_bn (`bn`) has the lowest final training loss: {_yes(low == 'bn')} (lowest: `{low}`, "
                     f"{finite[low]:.4f})")
        best = max(valid.values())
        lines.append(f"`bn` has the best final validation accuracy: {_yes(valid.get('bn') == best)} (`bn`: "
                     f"{md.pct(valid.get('bn'))}; best: {', '.join(f'`{c}`' for c, v in valid.items() if v == best)}, "
                     f"{best:.2%})")
    diverged = [c for c, h in metrics.items() if any(_nan(e["train_loss"]) for e in h)]
    lines.append(f"diverged to NaN: {', '.join(f'`{c}`' for c in diverged) or 'none'}")
    if extras and extras.get("precise_bn"):
        pb = extras["precise_bn"]
        lines.append(f"precise BN (running statistics recomputed over {pb['batches']} training batches) changes "
                     f"`bn`'s validation accuracy from {pb['valid_acc_before']:.2%} to {pb['valid_acc_after']:.2%}")
    return lines


def lenet(r: dict, out: Path) -> str:
    t = r["timing"]
    split = md.table(["wall", "data", "compile", "train", "eval", "training images/s"],
                     [[f"{t['wall']:.1f} s", f"{t.get('data', 0):.2f} s", f"{t.get('compile', 0):.1f} s",
                       f"{t.get('train', 0):.1f} s", f"{t.get('eval', 0):.2f} s", f"{t['train_images_per_s']:.0f}"]])
    return "\n\n".join([
        md.image(r["figure"], out, "LeNet training curves"),
        f"Data: {r['data_source']}; {r['epochs']} epochs; command `python -m experiments.lenet "
        f"{' '.join(r['argv'])}`. Final epoch (computed in this run; the last column is what the lesson printed for "
        "its own 2-class images, whose numbers show the pattern, not values to match):",
        md.table(["config", "train loss", "train acc", "valid loss", "valid acc", "diverged (NaN)",
                  "lesson printed: train / valid loss"], _lenet_rows(r["metrics"])),
        "\n".join(f"- {line}" for line in _lenet_conclusions(r["metrics"], r.get("extras"))),
        "Where the time went (`timing.json`):", split,
        "Data: [metrics.json](lenet/metrics.json).",
    ]) + "\n"


def small_batch(r: dict, out: Path) -> str:
    summary = r["summary"]
    sizes = sorted({int(b) for s in summary.values() for b in s["rows"]})
    rows = [[norm] + [f"{100 * s['rows'][str(b)]['valid_acc'][0]:.1f} ± {100 * s['rows'][str(b)]['valid_acc'][1]:.1f}"
                      for b in sizes] for norm, s in summary.items()]
    settings = r["settings"]
    return "\n\n".join([
        md.image(r["figure"], out, "accuracy against batch size"),
        f"Data: {settings['data_source']}{' (a subset: --quick)' if settings.get('train_images') else ''}; "
        f"{settings['epochs']} epochs at every batch size, learning rate 0.01 × batch / 16, {settings['seeds']} "
        "seeds. Final validation accuracy (%), mean ± std over seeds:",
        md.table(["norm", *(f"batch {b}" for b in sizes)], rows),
        "\n".join(f"- {line}" for line in r["conclusions"]),
        "Data: [small_batch.json](small_batch/small_batch.json).",
    ]) + "\n"


def bench(r: dict, out: Path) -> str:
    rows = r["rows"]
    env = rows[0].get("env", {}) if rows else {}
    parts = ([f"**`--quick`: tiny shapes and {env.get('rounds')} rounds — these times are noise, not a "
              "measurement.**"] if r["quick"] and rows else [])
    parts += [f"Machine: {env.get('cpu_count', '?')}-core {env.get('machine', '?')} ({env.get('jax_backend', '?')}); "
              f"jax {env.get('jax', '?')}, flax {env.get('flax', '?')}, torch {env.get('torch', 'not installed')}.",
              benchmark.format_table(rows), benchmark.LEGEND, md.image(r["figure"], out, "benchmark medians"),
              "Data: [benchmark.json](benchmark/benchmark.json)."]
    return "\n\n".join(parts) + "\n"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
