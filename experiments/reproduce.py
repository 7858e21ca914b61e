"""Reproduce every study of the lesson into one folder, with ``report.md`` embedding the figures and tables.

    python -m experiments.reproduce                      # results/: the embedded cat/dog photos
    python -m experiments.reproduce --data ../shared/data/cats_dogs --out results
    python -m experiments.reproduce --quick --out /tmp/repro   # smoke run: 2 LeNet epochs, tiny benchmark

Stages, each into its own sub-folder of ``--out`` (its printed output in ``logs/<stage>.log``):

1. ``bn_running_stats`` -- BatchNorm1d/2d/3d running statistics, momentum 0.3, two iterations;
2. ``mlp_study``        -- activation std per layer of the 100-layer MLP under five configs;
3. ``norm_compare``     -- BN / LN / IN / GN on one tensor, the four-cube figure and the identities;
4. ``lenet``            -- LeNet (plain, init) and LeNet_bn trained with optax (``experiments.lenet``);
5. ``small_batch``      -- accuracy against batch size (``experiments.small_batch``: BN against GN at batch 2 and 32
                           unless ``--small-batch full`` or ``quick``);
6. ``benchmark``        -- jaxnorm vs flax.linen (and torch) timings (``experiments.benchmark``).

Every number in ``report.md`` is computed in the run, or is a value the lesson printed, labelled as such; every
conclusion is derived from the numbers. A stage that fails does not stop the others: the report marks it FAILED
with the error, and the command exits with status 1 at the end.
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

import flax
import jax

from experiments import benchmark, bn_running_stats, lenet, mlp_study, norm_compare, small_batch
from experiments.common import report as md
from experiments.common import sections

STAGES = ("bn_running_stats", "mlp_study", "norm_compare", "lenet", "small_batch", "benchmark")
QUICK_LENET_EPOCHS, FULL_LENET_EPOCHS = 2, 10


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
def lenet_argv(d: Path, args) -> list[str]:
    """The ``experiments.lenet`` command line reproduce uses."""
    return ["--out", str(d), "--epochs", str(args.lenet_epochs)] + (["--data", str(args.data)] if args.data else [])


def _lenet(d: Path, args) -> dict:
    argv = lenet_argv(d, args)
    metrics = lenet.main(argv)
    extras = d / "bn_extras.json"
    return {"metrics": metrics, "argv": argv, "epochs": args.lenet_epochs, "figure": str(d / "curves.png"),
            "data_source": json.loads((d / "run.json").read_text())["data_source"],
            "timing": json.loads((d / "timing.json").read_text()),
            "extras": json.loads(extras.read_text()) if extras.exists() else None}


SMALL_BATCH_FORMS = {  # --small-batch: the small-batch study's arguments
    # BatchNorm against GroupNorm at batch 2 and 32, the study's seeds and epochs (about 2 minutes on 2 cores): the
    # runs that separate the two in the full study (benchmarks/small_batch/full.json), so the section is informative
    "focused": ["--norms", "bn", "gn", "--batch-sizes", "2", "32"],
    "full": [],  # every norm at every batch size (about 20 minutes)
    "quick": ["--quick"],  # one epoch on 192 images: a smoke test, every norm near chance (what --quick runs)
}


def small_batch_argv(d: Path, args) -> list[str]:
    argv = ["--out", str(d)] + (["--data", str(args.data)] if args.data else [])
    return argv + SMALL_BATCH_FORMS["quick" if args.quick else args.small_batch]


def _small_batch(d: Path, args) -> dict:
    return {**small_batch.main(small_batch_argv(d, args)), "figure": str(d / "small_batch.png")}


def benchmark_argv(d: Path, args) -> list[str]:
    """The ``experiments.benchmark`` command line reproduce uses (``--quick``: its tiny shapes)."""
    return ["--json", str(d / "benchmark.json"), "--out", str(d)] + (["--quick"] if args.quick else [])


def _benchmark(d: Path, args) -> dict:
    rows = benchmark.main(benchmark_argv(d, args))
    return {"rows": rows, "figure": str(md.plot_benchmark(rows, d / "benchmark.png")), "quick": args.quick}


STAGE_FUNCS: dict[str, Callable[[Path, argparse.Namespace], object]] = {
    "bn_running_stats": lambda d, args: bn_running_stats.run(d),
    "mlp_study": lambda d, args: mlp_study.run(d, spread_seeds=5 if args.quick else 20),
    "norm_compare": lambda d, args: norm_compare.run(d),
    "lenet": _lenet, "small_batch": _small_batch, "benchmark": _benchmark}

SECTIONS = {  # stage: (title, render(result, out))
    "bn_running_stats": ("BatchNorm1d/2d/3d running statistics", sections.bn_running_stats),
    "mlp_study": ("100-layer MLP: activation std per layer", sections.mlp),
    "norm_compare": ("BN vs LN vs IN vs GN", sections.norm_compare),
    "lenet": ("LeNet vs LeNet_bn (optax)", sections.lenet),
    "small_batch": ("Why LN, IN and GN exist: accuracy against batch size", sections.small_batch),
    "benchmark": ("Benchmark: jaxnorm vs flax.linen (and PyTorch)", sections.bench),
}


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
            f.write("\n" + traceback.format_exc())
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else f"exited with status {e.code}"
            return StageResult(name, False, time.perf_counter() - t0, error=msg, log=log)


# -------------------------------------------------------------------------------------------------- report
def _render(res: StageResult, out: Path) -> tuple[str, bool]:
    """A section's Markdown and whether it rendered."""
    if res.skipped:
        return "_Skipped (`--skip`)._\n", True
    if not res.ok:
        rel = res.log.relative_to(out).as_posix()
        return f"**FAILED** after {res.seconds:.1f} s: `{res.error}`. Full output and traceback: [{rel}]({rel}).\n", True
    try:
        return SECTIONS[res.name][1](res.result, out), True
    except Exception as e:  # noqa: BLE001 - one broken section must not lose the rest of the report
        return (f"**Could not render this section**: `{type(e).__name__}: {e}` (the stage itself succeeded; its "
                f"files are in `{res.name}/`).\n", False)


def environment_line() -> str:
    dev = jax.devices()[0]
    return (f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
            f"backend {jax.default_backend()} ({dev.device_kind}), {platform.machine()}")


def write_report(out: Path, results: dict[str, StageResult], args, argv: Sequence[str], wall: float) -> list[str]:
    """Write ``out/report.md``; returns the names of sections that could not be rendered."""
    body, render_errors, status_rows = [], [], []
    for i, name in enumerate(STAGES, 1):
        res = results[name]
        status = "skipped" if res.skipped else ("ok" if res.ok else "**FAILED**")
        log = f"[log]({res.log.relative_to(out).as_posix()})" if res.log else ""
        status_rows.append([i, f"`{name}`", status, "" if res.skipped else f"{res.seconds:.1f}", log])
        text, rendered = _render(res, out)
        body.append(f"## {i}. {SECTIONS[name][0]}\n\n{text}")
        if not rendered:
            render_errors.append(name)
    failed = [n for n in STAGES if not results[n].ok and not results[n].skipped] + render_errors
    head = [
        "# jaxnorm: the Batch Normalization lesson, reproduced",
        f"Command: `python -m experiments.reproduce {' '.join(argv)}`  \n"
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; total wall time {wall:.1f} s  \n"
        f"Environment: {environment_line()}"
        + ("  \n**`--quick`**: short LeNet and small-batch runs, tiny benchmark (a smoke test, not the study's "
           "numbers)." if args.quick else ""),
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
                    "LeNet vs LeNet_bn, accuracy against batch size, benchmark) into one folder with report.md. "
                    "Exit status 1 if a stage fails.")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default %(default)s)")
    p.add_argument("--data", type=Path, default=None,
                   help="LeNet image folder (DIR/train/<class>/*, DIR/valid/<class>/*, or Kaggle flat cat.N.jpg), a "
                        ".npz photo file, or 'synthetic'; default: the embedded cat/dog photos")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_LENET_EPOCHS} LeNet epochs and the benchmark's --quick shapes")
    p.add_argument("--lenet-epochs", type=int, default=None,
                   help=f"LeNet epochs (default {FULL_LENET_EPOCHS}, or {QUICK_LENET_EPOCHS} with --quick)")
    p.add_argument("--small-batch", choices=tuple(SMALL_BATCH_FORMS), default="focused",
                   help="the small-batch study: focused (default; BN against GN at batch 2 and 32, 5 seeds, about "
                        "2 minutes), full (every norm and batch size, about 20 minutes) or quick (a smoke test; "
                        "--quick implies it)")
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
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, StageResult] = {}
    todo = [s for s in STAGES if s not in args.skip]
    for name in STAGES:
        if name in args.skip:
            results[name] = StageResult(name, False, 0.0, skipped=True)
            continue
        k = todo.index(name) + 1
        print(f"[{k}/{len(todo)}] {name} ...", flush=True)
        results[name] = res = run_stage(name, args.out, args, verbose=args.verbose)
        print(f"[{k}/{len(todo)}] {name}: {'ok' if res.ok else f'FAILED: {res.error}'} ({res.seconds:.1f} s; log "
              f"{res.log})", flush=True)
    wall = time.perf_counter() - t0
    render_errors = write_report(args.out, results, args, argv, wall)
    failed = [n for n in STAGES if not results[n].ok and not results[n].skipped] + render_errors
    print(f"wrote {args.out / 'report.md'} in {wall:.1f} s" +
          (f"; FAILED: {', '.join(failed)}" if failed else "; all stages ok"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
