"""The command line ``python -m experiments.benchmark``: run the cases (or render tables) and write the results.

``--json FILE`` writes ``{"meta": {...}, "rows": [...]}`` (:mod:`experiments.benchmark.rows` documents a row,
:mod:`experiments.benchmark.environment` the meta); ``--table FILE...`` turns such files into the Markdown
performance tables (:mod:`experiments.benchmark.report`) and ``--write PATH`` saves them. A failed cross-check
ends the run with one line on stderr and exit status 1; a file that is not a results file, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.benchmark.cases import CASES, DATA, FLAX_VARIANCE
from experiments.benchmark.checks import CHECK_TOL, ROUNDING_ULPS, CrossCheckError
from experiments.benchmark.environment import capture, load_average, noise, resolve_torch_device
from experiments.benchmark.report import describe, render_tables, replace_tables
from experiments.benchmark.rows import ResultsFileError, Row, results_json
from experiments.benchmark.run import RunConfig, run_case
from experiments.benchmark.runners import Options
from experiments.benchmark.tables import check_table, fast_variance_note, format_table
from experiments.common.lesson_weights import torch_available


def _epilog() -> str:
    """--help's text after the flags: the cases (and how each library runs them), the data, the cross-check, the
    results files and the tables."""
    cases = "\n".join(f"  {n:<13} {c.title}, {c.layout} {'x'.join(map(str, c.shape))}: Flax {c.flax}; PyTorch "
                      f"{c.torch or 'not run (' + c.torch_absent + ')'}" for n, c in CASES.items())
    data = "\n".join(f"  {k:<7} {v}" for k, v in DATA.items())
    return f"""\
cases (--ops; jaxnorm runs each in the layout shown):
{cases}
data (--data):
{data}
cross-check: before timing, every implementation's y and dx are compared with a float64 two-pass reference; an
  error above {CHECK_TOL:g} x max|reference| (for Flax and PyTorch on ill-conditioned data: {ROUNDING_ULPS} float32
  ulps of the mean in units of the std) stops the run with exit status 1 and one line naming the case, the
  implementation and the error. Implementations in KNOWN_INACCURATE (PyTorch's channels-last GroupNorm) are not timed instead, and the
  row says why.
results: --json FILE writes {{"meta": date, machine, CPU, versions, git commit, data, rounds, ...; "rows": ...}}.
  A run with uncommitted changes or another load on the machine prints a warning: such results belong in
  benchmarks/ only with --caveat TEXT, which the tables show.
tables: --table FILE... prints, per file, a Markdown table of jaxnorm ms, jaxnorm / Flax and jaxnorm / PyTorch
  (median of per-round paired ratios, interquartile range, best-call ratio), a "faster?" verdict derived from
  them (yes / no (slower) / no gain), and the compiled-HLO traffic in units of N; masked BN in a second table.
examples:
  python -m experiments.benchmark --quick                     # smoke run, tiny shapes: times are noise
  python -m experiments.benchmark --json benchmarks/cpu.json
  python -m experiments.benchmark --data offset --json benchmarks/cpu_offset.json
  python -m experiments.benchmark --scale 16 --copy-baseline --json benchmarks/gpu.json   # JAX on a GPU
  python -m experiments.benchmark --table benchmarks/cpu.json benchmarks/cpu_offset.json --write docs/performance.md
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmark", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(),
        description="jaxnorm vs flax.linen (and PyTorch when installed): training-mode forward and forward+backward "
                    "(jax.vjp with a random cotangent) of BatchNorm2d (NCHW, NHWC; with and without a mask), GroupNorm "
                    "(NHWC, NCHW), LayerNorm and RMSNorm; paired per-round ratios over interleaved rounds, achieved "
                    "GB/s (byte model: 3N fwd, 8N fwd+bwd for N bytes of x) and the compiled programs' memory traffic. "
                    "With --table, render results files as Markdown instead of running anything.")
    a = p.add_argument
    a("--ops", default=",".join(CASES), help=f"comma-separated cases to run, from {', '.join(CASES)} (default: all)")
    a("--data", choices=sorted(DATA), default="normal", help="input data: normal (default) or offset (see below)")
    a("--flax-variance", choices=FLAX_VARIANCE, default="auto",
      help="Flax's variance formula: fast (E[x²]−E[x]², Flax's default), two-pass (use_fast_variance=False), or auto "
           "(default: fast on normal data, two-pass on offset data, where fast is wrong)")
    a("--rounds", type=int, default=None, help="interleaved rounds per case and pass (default 20, or 2 with --quick)")
    a("--inner", type=int, default=None,
      help="timed calls per implementation and round, after one settling call (default 5, 1 with --quick)")
    a("--warmup", type=int, default=None, help="untimed calls before timing, compilation included (default 5, 1 quick)")
    a("--quick", action="store_true", help="tiny shapes and 2 rounds (CI / reproduce smoke run; times are noise)")
    a("--check-only", action="store_true",
      help="run the cross-checks only (errors vs the float64 reference), no timing")
    a("--no-torch", action="store_true", help="skip PyTorch even if installed")
    a("--torch-threads", type=int, default=None,
      help="torch.set_num_threads(N) first (default: leave torch's default, one per core)")
    a("--torch-device", default=None,
      help="device for PyTorch: cpu or cuda (default: cuda when JAX runs on a GPU and torch sees one, else cpu)")
    a("--scale", type=int, default=1,
      help="multiply every case's batch (first) dimension by K, e.g. 16 to fill a GPU (default 1)")
    a("--copy-baseline", action="store_true",
      help="also time a copy of the same data (y = x·w; and dx = dy·w): the memory floor, 2N fwd / 4N fwd+bwd; "
           "the tables then give every library's time over it")
    a("--calls-per-sync", type=int, default=1, metavar="K",
      help="dispatch K steps per timed call and wait for the last one only; times are per step (default 1: every "
           "step waits). On a GPU, K = 10 takes the dispatch-and-synchronize cost off each step")
    a("--seed", type=int, default=0, help="seed of the random inputs, cotangent and affine parameters")
    a("--json", type=Path, default=None, help="write {meta, rows} as JSON to FILE (the input of --table)")
    a("--out", type=Path, default=None, help="folder for benchmark.json and benchmark.md (created if missing)")
    a("--hlo", type=Path, default=None,
      help="folder to write the compiled (optimized) HLO of the JAX implementations to")
    a("--caveat", default=None, metavar="TEXT",
      help="record TEXT as meta.caveat: why results of a run that was not quiet are kept (the tables show it)")
    a("--table", type=Path, nargs="+", default=None, metavar="FILE",
      help="render the performance tables (Markdown) of results files written by --json, print them, run nothing")
    a("--write", type=Path, default=None, metavar="PATH",
      help="with --table: put the tables in PATH (replacing the block of the same files; the rest is kept)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    if args.write is not None and args.table is None:
        p.error("--write needs --table FILE...")
    if args.scale < 1:
        p.error(f"--scale must be >= 1, got {args.scale}")
    if args.calls_per_sync < 1:
        p.error(f"--calls-per-sync must be >= 1, got {args.calls_per_sync}")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in CASES]
    if bad or not ops:
        p.error(f"--ops: expected names from {', '.join(CASES)}, got {args.ops!r}")
    args.ops = ops
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 20)
    args.inner = args.inner if args.inner is not None else (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if args.rounds < 1 or args.inner < 1 or args.warmup < 0:
        p.error(f"--rounds and --inner must be >= 1 and --warmup >= 0, got {args.rounds}, {args.inner}, "
                f"{args.warmup}")
    if args.caveat is not None and not args.caveat.strip():
        p.error("--caveat: expected a text saying why the results are kept")
    return args


def _config(args: argparse.Namespace) -> RunConfig:
    with_torch = torch_available() and not args.no_torch
    device = resolve_torch_device(args.torch_device) if with_torch else "cpu"
    if args.torch_threads is not None and with_torch:
        import torch

        torch.set_num_threads(args.torch_threads)
    fast = args.flax_variance == "fast" or (args.flax_variance == "auto" and args.data == "normal")
    return RunConfig(data=args.data, rounds=args.rounds, inner=args.inner, warmup=args.warmup, seed=args.seed,
                     opts=Options(flax_fast_variance=fast, torch_device=device,
                                  calls_per_sync=args.calls_per_sync), with_torch=with_torch,
                     hlo_dir=args.hlo, check_only=args.check_only, copy_baseline=args.copy_baseline)


def _write_results(args: argparse.Namespace, meta: dict, rows: list[Row], text: str) -> None:
    doc = results_json(meta, rows)
    paths = [args.json] if args.json else []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        paths.append(args.json if args.json else args.out / "benchmark.json")
        (args.out / "benchmark.md").write_text(text + "\n")
    for path in dict.fromkeys(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc)


def _meta(args: argparse.Namespace, cfg: RunConfig, load_start: float, argv: list[str] | None) -> dict:
    meta = {**capture(), "loadavg_1min_start": load_start, "data": args.data, "rounds": args.rounds,
            "inner": args.inner, "warmup": args.warmup, "quick": args.quick, "scale": args.scale, "seed": args.seed,
            "calls_per_sync": args.calls_per_sync,
            "flax_variance": args.flax_variance, "check_only": args.check_only, "check_tol": CHECK_TOL,
            "torch_device": cfg.opts.torch_device if cfg.with_torch else None,
            "argv": list(sys.argv[1:] if argv is None else argv)}
    return meta | ({"caveat": args.caveat} if args.caveat is not None else {})


def _render(args: argparse.Namespace) -> list[dict]:
    """--table: print the tables of the results files, or write them to --write."""
    text = render_tables(args.table)
    if args.write is not None:  # the block of these files is replaced; the rest of the document is kept
        args.write.parent.mkdir(parents=True, exist_ok=True)
        old = args.write.read_text() if args.write.is_file() else ""
        args.write.write_text(replace_tables(old, text))
    else:
        print(text, end="")
    return []


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (or render tables with --table); print the table; write the results if asked.

    Returns the rows in their JSON form (``Row.to_json``), each with ``quick`` and ``env`` (the run's meta) added for
    reproduce's report; ``[]`` with --table. Raises CrossCheckError when an implementation's y or dx is off (see
    :func:`cli` for the exit status).
    """
    args = parse_args(argv)
    if args.table is not None:
        return _render(args)
    from tqdm import tqdm

    cfg = _config(args)
    load_start = load_average()
    rows: list[Row] = []
    for name in tqdm(args.ops, desc="benchmark", unit="case", file=sys.stderr, disable=len(args.ops) < 2):
        case = CASES[name]
        shape = case.quick_shape if args.quick else case.shape
        rows.extend(run_case(case, (shape[0] * args.scale,) + tuple(shape[1:]), cfg))
    meta = _meta(args, cfg, load_start, argv)
    text = describe(meta) + "\n\n" + (check_table(rows) if args.check_only else format_table(rows))
    note = fast_variance_note(rows)
    print(text + ("\n\n" + note if note else ""))
    _write_results(args, meta, rows, text)
    problems = [] if args.check_only else noise(meta)
    if problems:
        print(f"benchmark: warning: not a quiet run: {'; '.join(problems)}. These times are not the code's alone; "
              "results kept in benchmarks/ must say why with --caveat TEXT.", file=sys.stderr)
    return [r.to_json() | {"quick": args.quick, "env": meta} for r in rows]


def cli(argv: list[str] | None = None) -> int:
    """The command line: ``main``, with a failed cross-check turned into one line on stderr and exit status 1."""
    try:
        main(argv)
    except CrossCheckError as err:
        print(f"benchmark: error: {err}", file=sys.stderr)
        return 1
    except ResultsFileError as err:
        print(f"benchmark: error: {err}", file=sys.stderr)
        return 2
    return 0
