"""Reproduce every study of the lesson into one folder, with ``report.md`` embedding the figures and tables.

    python -m experiments.reproduce                      # results/ ; LeNet on the synthetic set, 10 epochs
    python -m experiments.reproduce --data ../shared/data/cats_dogs --out results
    python -m experiments.reproduce --quick --out /tmp/repro   # smoke run: 2 LeNet epochs, tiny benchmark

Stages, each into its own sub-folder of ``--out`` (its printed output in ``logs/<stage>.log``):

1. ``bn_running_stats`` -- BatchNorm1d/2d/3d running statistics, momentum 0.3, two iterations;
2. ``mlp_study``        -- activation std per layer of the 100-layer MLP under five configs;
3. ``norm_compare``     -- BN / LN / IN / GN on one tensor, the four-cube figure and the identities;
4. ``lenet``            -- LeNet (plain, init) and LeNet_bn trained with optax (``experiments.lenet``);
5. ``benchmark``        -- jaxnorm vs flax.linen (and torch) timings (``experiments.benchmark``).

A stage that fails does not stop the others: the report marks it FAILED with the error, and the command exits
with status 1 at the end. ``report.md`` puts the lesson's printed numbers next to ours wherever the lesson
printed them (BN running statistics, MLP stds at the printed layers and the NaN layer, LeNet's final epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from experiments import report as md

STAGES = ("bn_running_stats", "mlp_study", "norm_compare", "lenet", "benchmark")
QUICK_LENET_EPOCHS = 2
FULL_LENET_EPOCHS = 10

# The lesson's final LeNet epoch (Training/Valid lines of epoch 009). Its "Valid" Acc repeats the training
# accuracy in every epoch (a printing slip in the lesson's script), so only its valid *loss* is informative.
# The lesson's data set is not ours (its own 2-class images; we use cat/dog photos or a synthetic set).
LESSON_LENET = {"plain": {"train_loss": 0.4774, "train_acc": 0.8750, "valid_loss": 0.4023},
                "init": {"train_loss": 0.0133, "train_acc": 0.9938, "valid_loss": 0.0000},
                "bn": {"train_loss": 0.0365, "train_acc": 0.9875, "valid_loss": 0.0015}}
# Final valid accuracy of a PyTorch port of the lesson's script on ../shared/data/cats_dogs (issue 3).
TORCH_CATS_DOGS = {"plain": "≈ 72%", "init": "diverges to NaN", "bn": "≈ 66% (lowest train loss)"}


@dataclasses.dataclass
class StageResult:
    """What one stage produced: its return value, or the error that stopped it."""

    name: str
    ok: bool
    seconds: float
    result: object = None
    error: str | None = None
    log: Path | None = None
    skipped: bool = False


class _Tee:
    """File-like that writes to several streams (``--verbose``: the stage log and the console)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


# ------------------------------------------------------------------------------------------------- stages
def _bn_running_stats(d: Path, args) -> dict:
    from experiments import bn_running_stats

    return bn_running_stats.run(d)


def _mlp_study(d: Path, args) -> dict:
    from experiments import mlp_study

    return mlp_study.run(d, spread_seeds=5 if args.quick else 20)


def _norm_compare(d: Path, args) -> dict:
    from experiments import norm_compare

    return norm_compare.run(d)


def lenet_argv(d: Path, args) -> list[str]:
    """The ``experiments.lenet`` command line reproduce uses."""
    argv = ["--out", str(d), "--epochs", str(args.lenet_epochs)]
    return argv + (["--data", str(args.data)] if args.data else [])


def _lenet(d: Path, args) -> dict:
    from experiments import lenet

    argv = lenet_argv(d, args)
    metrics = lenet.main(argv)
    extras = d / "bn_extras.json"
    return {"metrics": metrics, "argv": argv, "epochs": args.lenet_epochs, "data": args.data,
            "figure": str(d / "curves.png"),
            "extras": json.loads(extras.read_text()) if extras.exists() else None}


def benchmark_argv(d: Path, args) -> list[str]:
    """The ``experiments.benchmark`` command line reproduce uses (``--quick``: its tiny shapes)."""
    return ["--json", str(d / "benchmark.json"), "--out", str(d)] + (["--quick"] if args.quick else [])


def _benchmark(d: Path, args) -> dict:
    from experiments import benchmark

    argv = benchmark_argv(d, args)
    rows = benchmark.main(argv)
    table = None
    with contextlib.suppress(Exception):  # the benchmark's own Markdown table when it offers one
        table = benchmark.format_table(rows)
    figure = md.plot_benchmark(rows, d / "benchmark.png")
    return {"rows": rows, "argv": argv, "table": table, "figure": str(figure), "quick": args.quick}


STAGE_FUNCS: dict[str, Callable[[Path, argparse.Namespace], object]] = {
    "bn_running_stats": _bn_running_stats, "mlp_study": _mlp_study, "norm_compare": _norm_compare,
    "lenet": _lenet, "benchmark": _benchmark}


def run_stage(name: str, out: Path, args, *, verbose: bool = False) -> StageResult:
    """Run one stage with its stdout in ``out/logs/<name>.log``; any exception (or SystemExit) is caught."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        stream = _Tee(f, sys.stdout) if verbose else f
        try:
            with contextlib.redirect_stdout(stream):
                result = STAGE_FUNCS[name](out / name, args)
            return StageResult(name, True, time.perf_counter() - t0, result=result, log=log)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit from a sub-CLI is a stage failure, not ours
            tb = traceback.format_exc()
            f.write("\n" + tb)
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else f"exited with status {e.code}"
            return StageResult(name, False, time.perf_counter() - t0, error=msg, log=log)


# -------------------------------------------------------------------------------------------------- report
def _failed(res: StageResult, out: Path) -> str:
    if res.skipped:
        return "_Skipped (`--skip`)._\n"
    return (f"**FAILED** after {res.seconds:.1f} s: `{res.error}`. Full output and traceback: "
            f"[{res.log.relative_to(out).as_posix()}]({res.log.relative_to(out).as_posix()}).\n")


def section_bn(res: StageResult, out: Path) -> str:
    from experiments.bn_running_stats import LESSON

    r = res.result
    one = r["bn1d"]
    rows = []
    for it in one["iterations"]:
        i = it["iteration"]
        rows.append([i, "running_mean", _vec(it["running_mean"]), _vec(it["hand_running_mean"]),
                     _vec(LESSON["bn1d"]["running_mean"][i])])
        rows.append([i, "running_var", _vec(it["running_var"]), _vec(it["hand_running_var"]),
                     _vec(LESSON["bn1d"]["running_var"][i])])
    shapes = []
    for name in ("bn1d", "bn2d", "bn3d"):
        demo = r[name]
        sh = demo["iterations"][-1]["shapes"]
        c = demo["num_features"]
        shapes.append([name, str(tuple(demo["input_shape"])), *(str(tuple(sh[k])) for k in
                                                                ("running_mean", "running_var", "weight", "bias")),
                       f"({c},) each", md.fmt(demo["max_abs_diff_vs_hand"], ".1e")])
    return "\n\n".join([
        "BatchNorm1d on the lesson's input (3 samples, channel c = constant c, momentum 0.3), jaxnorm's pure "
        "`batch_norm_1d`, vs the hand computation `(1-m)·running + m·batch` (batch mean c, unbiased batch "
        "variance 0) and the lesson's printed tensors:",
        md.table(["iteration", "statistic", "jaxnorm", "by hand (float64)", "lesson printed"], rows,
                 ["r", "l", "l", "l", "l"]),
        "Shapes after two iterations (the lesson prints `torch.Size([C])` for all four in 1d, 2d and 3d); the "
        "2d/3d running statistics are also checked against the hand computation (last column, max abs diff "
        "over both iterations and statistics):",
        md.table(["demo", "input", "running_mean", "running_var", "weight", "bias", "lesson", "vs hand"], shapes),
        md.image(r["files"]["figure"], out, "BN running statistics"),
    ]) + "\n"


def _vec(v) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"


def section_mlp(res: StageResult, out: Path) -> str:
    from experiments.mlp_study import CONFIGS, LESSON_FIRST_NAN, LESSON_STDS, compare_to_lesson, first_nan_layer

    r = res.result
    exact = r.get("lesson_weights")
    parts = [md.image(r["files"]["figure"], out, "MLP activation std per layer"),
             "Left: weights and input from JAX's PRNG (`jax.random.PRNGKey(1)`; same draws as the lesson "
             "in distribution, not in value). "
             + ("Right: the lesson's *exact* weights and input, drawn with PyTorch's RNG after "
                "`torch.manual_seed(1)` in the lesson's order and fed to the same jitted `layer_stds`. "
                if exact else "(PyTorch is not installed, so the lesson's exact weights were not drawn.) ")
             + "Black-edged dots: the stds the lesson printed."]
    summary_rows = []
    for c in CONFIGS:
        s = r["summary"][c]
        ex = (first_nan_layer(exact[c]) if exact else "–")
        summary_rows.append([c, md.fmt(LESSON_FIRST_NAN.get(c)), md.fmt(ex), md.fmt(s["first_nan"]),
                             f"{md.fmt(s['min'], '.3g')} … {md.fmt(s['max'], '.3g')}", md.fmt(s["last"], ".4g", none="NaN"),
                             md.fmt(s["first_zero"])])
    parts += ["**Summary** (std range over the finite, nonzero layers of the JAX-RNG run):",
              md.table(["config", "first NaN layer: lesson", "lesson's weights", "JAX RNG",
                        "std range (JAX RNG)", "layer 99 std (JAX RNG)", "first layer with std 0"], summary_rows)]
    spread = r.get("kaiming_seed_spread")
    if spread:
        v = sorted(a for a in spread if a is not None)
        parts.append(f"Kaiming keeps the *expected* activation variance constant, but each layer multiplies it by "
                     f"a random factor, so the std random-walks in log space: over JAX seeds 1..{len(spread)} "
                     f"the layer-99 std of `kaiming` ranges from {v[0]:.3g} to {v[-1]:.3g} (median "
                     f"{v[len(v) // 2]:.3g}). It neither vanishes nor explodes; the lesson's draw (0.6–0.9) is "
                     "one such walk. With BN every layer is pinned at std(relu(N(0, 1))) = 0.584.")
    if r.get("backend") == "cpu":
        parts.append("XLA on CPU flushes denormal floats (|x| < 1.2e-38) to zero, so `default` reaches std "
                     "exactly 0 in its last layers, where PyTorch (which keeps denormals) prints ~1e-40; the "
                     "std itself is computed as `max|y| · std(y / max|y|)`, so it does not underflow or "
                     "overflow while the activations are representable (a float32 sum of squares would give "
                     "inf beyond ~1.8e19 and 0 below ~1e-19).")
    for c in CONFIGS:
        lesson = LESSON_STDS[c]
        ex_rows = compare_to_lesson(c, exact[c]) if exact else None
        rows = []
        for k, (layer, v) in enumerate(lesson.items()):
            ours_ex = ex_rows[k]["ours"] if ex_rows else None
            rel = ex_rows[k]["rel_diff"] if ex_rows and ours_ex else None
            rows.append([layer, repr(v), md.fmt(ours_ex, ".7g", none="–" if not exact else "0 (flushed)")
                         if ours_ex != 0 else "0 (flushed)", md.fmt(rel, ".1e"),
                         md.fmt(r["stds"][c][layer], ".7g", none="NaN")])
        if c in LESSON_FIRST_NAN:
            n = LESSON_FIRST_NAN[c]
            rows.append([n, "output is nan", "NaN" if exact and exact[c][n] is None else
                         md.fmt(exact[c][n] if exact else None, ".7g"), "",
                         md.fmt(r["stds"][c][n], ".7g", none="NaN")])
        parts += [f"**`{c}`** — the layers the lesson printed:",
                  md.table(["layer", "lesson printed", "ours, lesson's weights", "rel. diff", "ours, JAX RNG"],
                           rows, ["r", "r", "r", "r", "r"])]
    if exact:
        parts.append("With the lesson's weights the first printed layers agree to float32 rounding. Later "
                     "layers of the BN configs drift by ~1%: a 100-layer BN network amplifies float32 rounding "
                     "differences (PyTorch 2.13 on the same weights also drifts from the lesson's numbers by "
                     "similar amounts); `default`'s last layers are the flushed denormals above.")
    parts.append("Data: [stds.json](mlp_study/stds.json) (`{config: [std per layer]}`, NaN written as `null`)"
                 + (", [stds_lesson_weights.json](mlp_study/stds_lesson_weights.json)." if exact else "."))
    return "\n\n".join(parts) + "\n"


def section_norm(res: StageResult, out: Path) -> str:
    from experiments.norm_compare import METHODS

    r = res.result
    own = [[m, r["own"][m]["statistics_over"], r["own"][m]["groups"], md.fmt(r["own"][m]["max_abs_mean"], ".1e"),
            f"{r['own'][m]['std_min']:.6f} … {r['own'][m]['std_max']:.6f}", md.fmt(r["vs_numpy"][m], ".1e")]
           for m in METHODS]
    matrix = [[f"after {m}"] + [f"{r['matrix'][m][g]['max_abs_mean']:.1e} / "
                                f"{r['matrix'][m][g]['max_abs_std_minus_1']:.1e}" for g in METHODS]
              for m in METHODS]
    matrix.insert(0, ["input"] + [f"{r['input_stats'][g]['max_abs_mean']:.1e} / "
                                  f"{r['input_stats'][g]['max_abs_std_minus_1']:.1e}" for g in METHODS])
    ident = [[k, md.fmt(v, ".2e")] for k, v in r["identities"].items()]
    return "\n\n".join([
        md.image(r["files"]["axes_figure"], out, "which axes each normalization reduces"),
        f"One float32 tensor of shape {tuple(r['shape'])} (N, C, H, W) with sample- and channel-dependent mean "
        f"and scale; GN with {r['num_groups']} groups; identity affine. Each norm on its own groups (biased std, "
        "so eps = 1e-5 makes it a hair below 1), and the max abs difference from a float64 NumPy "
        "implementation:",
        md.table(["norm", "statistics over", "groups", "max abs mean", "std min … max", "vs NumPy float64"], own),
        "Every output under every grouping, `max|group mean| / max|group std − 1|` (float64). Each norm "
        "normalizes its own grouping; IN's groups are the finest, so IN's output is normalized under every "
        "coarser grouping too, and GN's groups tile LN's:",
        md.table(["", *(f"{g} groups" for g in METHODS)], matrix),
        md.image(r["files"]["stats_figure"], out, "grouping statistics"),
        "Identities (max abs difference, float32):",
        md.table(["identity", "max abs diff"], ident, ["l", "r"]),
    ]) + "\n"


def section_lenet(res: StageResult, out: Path, args) -> str:
    r = res.result
    metrics = r["metrics"]
    rows = []
    for c, hist in metrics.items():
        if not hist:
            rows.append([c, "no epochs"] + [""] * 6)
            continue
        last = hist[-1]
        nan_epoch = next((h["epoch"] for h in hist if _nan(h["train_loss"])), None)
        lesson = LESSON_LENET.get(c, {})
        rows.append([c, md.fmt(last["train_loss"], ".4f"), md.pct(last["train_acc"]),
                     md.fmt(last["valid_loss"], ".4f"), md.pct(last["valid_acc"]),
                     "no" if nan_epoch is None else f"yes, epoch {nan_epoch}",
                     f"{md.fmt(lesson.get('train_loss'), '.4f')} / {md.pct(lesson.get('train_acc'))} / "
                     f"{md.fmt(lesson.get('valid_loss'), '.4f')}",
                     TORCH_CATS_DOGS.get(c, "–") if r["data"] else "n/a (synthetic data)"])
    src = f"`{r['data']}`" if r["data"] else "the SYNTHETIC two-class set generated in code (no `--data`)"
    parts = [md.image(r["figure"], out, "LeNet training curves"),
             f"Data: {src}; {r['epochs']} epochs; command `python -m experiments.lenet {' '.join(r['argv'])}`. "
             "Final epoch:",
             md.table(["config", "train loss", "train acc", "valid loss", "valid acc", "diverged (NaN)",
                       "lesson: train loss / acc / valid loss", "PyTorch port on cats_dogs: valid acc"], rows),
             "The lesson trained on its own 2-class images (10 iterations of 16 per epoch), so its numbers show "
             "the *pattern* (init unstable, BN fastest and steadiest), not values to match; its printed valid "
             "accuracy repeats the training accuracy every epoch, so only its valid loss is shown. The last "
             "column is a PyTorch version of the lesson's script on the same cat/dog photos (issue 3)."]
    if r.get("extras") and r["extras"].get("precise_bn"):
        pb = r["extras"]["precise_bn"]
        parts.append("Precise BN (`bn` config; running statistics recomputed as the exact average over the "
                     "training batches): "
                     f"valid acc {md.pct(pb.get('valid_acc_before'))} → {md.pct(pb.get('valid_acc_after'))}.")
    parts.append("Data: [metrics.json](lenet/metrics.json).")
    return "\n\n".join(parts) + "\n"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def section_benchmark(res: StageResult, out: Path) -> str:
    r = res.result
    rows = r["rows"]
    env = rows[0].get("env", {}) if rows else {}
    parts = []
    if r["quick"]:
        parts.append("**`--quick`: tiny shapes and 3 rounds — these times are noise, not a measurement.**")
    parts.append(f"Machine: {env.get('cpu_count', '?')}-core {env.get('machine', '?')} "
                 f"({env.get('jax_backend', '?')}); jax {env.get('jax', '?')}, flax {env.get('flax', '?')}, "
                 f"torch {env.get('torch', 'not installed')}. Medians; ratio < 1 means jaxnorm is faster.")
    if r.get("table"):
        parts.append(r["table"])
    else:
        keys = [k for k in rows[0] if k != "env"] if rows else []
        parts.append(md.table(keys, [[md.fmt(row.get(k)) for k in keys] for row in rows]))
    parts.append(md.image(r["figure"], out, "benchmark medians"))
    parts.append("Data: [benchmark.json](benchmark/benchmark.json).")
    return "\n\n".join(parts) + "\n"


SECTIONS = {
    "bn_running_stats": ("BatchNorm1d/2d/3d running statistics", lambda res, out, args: section_bn(res, out)),
    "mlp_study": ("100-layer MLP: activation std per layer", lambda res, out, args: section_mlp(res, out)),
    "norm_compare": ("BN vs LN vs IN vs GN", lambda res, out, args: section_norm(res, out)),
    "lenet": ("LeNet vs LeNet_bn (optax)", section_lenet),
    "benchmark": ("Benchmark: jaxnorm vs flax.linen (and PyTorch)", lambda res, out, args: section_benchmark(res, out)),
}


def environment_line() -> str:
    import flax
    import jax

    dev = jax.devices()[0]
    return (f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
            f"backend {jax.default_backend()} ({dev.device_kind}), {platform.machine()}")


def write_report(out: Path, results: dict[str, StageResult], args, argv: Sequence[str], wall: float) -> list[str]:
    """Write ``out/report.md``; returns the names of sections that could not be rendered."""
    render_errors = []
    status_rows = []
    for i, name in enumerate(STAGES, 1):
        res = results[name]
        status = "skipped" if res.skipped else ("ok" if res.ok else "**FAILED**")
        log = f"[log]({res.log.relative_to(out).as_posix()})" if res.log else ""
        status_rows.append([i, f"`{name}`", status, "" if res.skipped else f"{res.seconds:.1f}", log])
    body = []
    for i, name in enumerate(STAGES, 1):
        title, render = SECTIONS[name]
        res = results[name]
        body.append(f"## {i}. {title}\n")
        if not res.ok:
            body.append(_failed(res, out))
            continue
        try:
            body.append(render(res, out, args))
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the rest of the report
            render_errors.append(name)
            body.append(f"**Could not render this section**: `{type(e).__name__}: {e}` (the stage itself "
                        f"succeeded; its files are in `{name}/`).\n")
    failed = [n for n in STAGES if not results[n].ok and not results[n].skipped] + render_errors
    head = [
        "# jaxnorm: the Batch Normalization lesson, reproduced",
        f"Command: `python -m experiments.reproduce {' '.join(argv)}`  \n"
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; total wall time {wall:.1f} s  \n"
        f"Environment: {environment_line()}"
        + ("  \n**`--quick`**: short LeNet run and tiny benchmark (smoke test; not the study's numbers)."
           if args.quick else ""),
        md.table(["#", "stage", "status", "seconds", "output"], status_rows, ["r", "l", "l", "r", "l"]),
        (f"**{len(failed)} stage(s) failed: {', '.join(failed)}.** See their sections below."
         if failed else "All stages succeeded."),
    ]
    (out / "report.md").write_text("\n\n".join(head) + "\n\n" + "\n".join(body), encoding="utf-8")
    return render_errors


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.reproduce",
        description="Run every study of the lesson (BN running stats, 100-layer MLP, BN/LN/IN/GN comparison, "
                    "LeNet vs LeNet_bn, benchmark) into one folder with report.md. Exit status 1 if a stage fails.")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default %(default)s)")
    p.add_argument("--data", type=Path, default=None,
                   help="LeNet image folder (DIR/train/<class>/*, DIR/valid/<class>/*, or Kaggle flat "
                        "cat.N.jpg/dog.N.jpg); default: a synthetic two-class set generated in code")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_LENET_EPOCHS} LeNet epochs and the benchmark's --quick shapes")
    p.add_argument("--lenet-epochs", type=int, default=None,
                   help=f"LeNet epochs (default {FULL_LENET_EPOCHS}, or {QUICK_LENET_EPOCHS} with --quick)")
    p.add_argument("--skip", action="append", default=[], choices=STAGES, metavar="STAGE",
                   help=f"skip a stage (repeatable), one of {', '.join(STAGES)}")
    p.add_argument("--verbose", action="store_true", help="also echo each stage's output (always in logs/)")
    args = p.parse_args(argv)
    if args.lenet_epochs is None:
        args.lenet_epochs = QUICK_LENET_EPOCHS if args.quick else FULL_LENET_EPOCHS
    if args.lenet_epochs < 1:
        p.error(f"--lenet-epochs must be >= 1, got {args.lenet_epochs}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stages, write ``report.md``; return the exit status (0 all ok, 1 a stage failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, StageResult] = {}
    todo = [s for s in STAGES if s not in args.skip]
    for name in STAGES:
        if name in args.skip:
            results[name] = StageResult(name, False, 0.0, skipped=True)
            continue
        k = todo.index(name) + 1
        print(f"[{k}/{len(todo)}] {name} ...", flush=True)
        res = run_stage(name, out, args, verbose=args.verbose)
        results[name] = res
        state = "ok" if res.ok else f"FAILED: {res.error}"
        print(f"[{k}/{len(todo)}] {name}: {state} ({res.seconds:.1f} s; log {res.log})", flush=True)
    wall = time.perf_counter() - t0
    render_errors = write_report(out, results, args, argv, wall)
    failed = [n for n in STAGES if not results[n].ok and not results[n].skipped] + render_errors
    print(f"wrote {out / 'report.md'} in {wall:.1f} s" +
          (f"; FAILED: {', '.join(failed)}" if failed else "; all stages ok"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
