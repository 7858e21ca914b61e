"""Benchmark jaxnorm against flax.linen and PyTorch: training-mode forward and forward+backward.

Run ``python -m experiments.benchmark`` (``--help`` for flags). One module per part of the method, each explaining
its part in its docstring:

* :mod:`~experiments.benchmark.cases`: the cases (norm, layout, shapes, how each library runs them), the two passes
  and the byte model (3N fwd, 8N fwd+bwd);
* :mod:`~experiments.benchmark.inputs`: the inputs, on well-conditioned (``normal``) or ``offset`` data;
* :mod:`~experiments.benchmark.float64_reference`: the float64 reference and the error measure;
* :mod:`~experiments.benchmark.runners`: one builder per implementation (jaxnorm, jaxnorm unmasked, Flax, PyTorch);
* :mod:`~experiments.benchmark.checks`: the cross-check that stops a run before timing different computations;
* :mod:`~experiments.benchmark.run`: one case from inputs to rows: interleaved timing and paired ratios;
* :mod:`~experiments.benchmark.traffic`: the compiled programs' memory traffic;
* :mod:`~experiments.benchmark.rows`: the typed rows and their JSON form in the results files;
* :mod:`~experiments.benchmark.tables`: the Markdown tables of rows and the "faster?" verdict;
* :mod:`~experiments.benchmark.report`: the tables of results files, and whether a document's copy is current;
* :mod:`~experiments.benchmark.environment`: what a run records about the machine, and whether it was quiet;
* :mod:`~experiments.benchmark.command_line`: the command line.

``__all__`` below is the public surface, importable from the package. Those names are bindings: a test that
replaces a builder or the timer patches the module that calls it (``runners``, ``run``), not the package. No
module is named like a function of the package (``reference``, ``cli``, ``main``): ``benchmark.reference`` is the
function, ``benchmark.environment`` the module.
"""

from experiments.benchmark.cases import (
    ALL_IMPLS,
    BYTES_PER_X,
    CASES,
    DATA,
    EPS,
    FLAX_VARIANCE,
    GROUPS,
    IMPLS,
    JAX_IMPLS,
    LABELS,
    OFFSET,
    PASSES,
    Case,
    bytes_moved,
    case_impls,
)
from experiments.benchmark.checks import (
    CHECK_TOL,
    KNOWN_INACCURATE,
    ROUNDING_ULPS,
    CrossCheckError,
    check_tolerance,
    cross_check,
)
from experiments.benchmark.command_line import cli, main, parse_args
from experiments.benchmark.environment import QUIET_LOAD_PER_CPU, noise, resolve_torch_device
from experiments.benchmark.float64_reference import reference, rel_err
from experiments.benchmark.inputs import Problem, make_problem
from experiments.benchmark.report import REPO, describe, render_tables, replace_tables, stale_tables
from experiments.benchmark.rows import (
    CheckResult,
    Errors,
    MaskCheck,
    Measured,
    Ratio,
    ResultsFileError,
    Row,
    Timing,
    Traffic,
    load_results,
)
from experiments.benchmark.run import RunConfig, run_case
from experiments.benchmark.runners import Impl, Options, build_flax, build_jaxnorm, build_jaxnorm_nomask, build_torch
from experiments.benchmark.tables import GAIN, LEGEND, format_table, verdict
from experiments.common.hlo import hlo_traffic
from experiments.common.lesson_weights import torch_available
from experiments.common.timing import paired_ratios, time_interleaved

__all__ = ["ALL_IMPLS", "BYTES_PER_X", "CASES", "CHECK_TOL", "DATA", "EPS", "FLAX_VARIANCE", "GAIN", "GROUPS", "IMPLS",
           "JAX_IMPLS", "KNOWN_INACCURATE", "LABELS", "LEGEND", "OFFSET", "PASSES", "QUIET_LOAD_PER_CPU", "REPO",
           "ROUNDING_ULPS", "Case", "CheckResult", "CrossCheckError", "Errors", "Impl", "MaskCheck", "Measured",
           "Options", "Problem", "Ratio", "ResultsFileError", "Row", "RunConfig", "Timing", "Traffic", "build_flax",
           "build_jaxnorm", "build_jaxnorm_nomask", "build_torch", "bytes_moved", "case_impls", "check_tolerance",
           "cli", "cross_check", "describe", "format_table", "hlo_traffic", "load_results", "main",
           "make_problem", "noise", "paired_ratios", "parse_args", "reference", "rel_err", "render_tables",
           "replace_tables", "resolve_torch_device", "run_case", "stale_tables", "time_interleaved",
           "torch_available", "verdict"]
