"""The benchmark and the GPU check: CLI, byte model, HLO traffic, inputs and float64 reference, the cross-check that
stops a run, a --quick run's self-describing JSON, the generated tables; scripts/gpu_check.py against float64.

Nothing here reads a time as a measurement: --quick runs tiny shapes, and only the bookkeeping around the times
(ratios, verdicts, tables) is checked.
"""

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import benchmark
from experiments.common import report, sections
from experiments.common.hlo import hlo_traffic
from experiments.common.timing import paired_ratios

REPO = Path(__file__).resolve().parents[2]
FAST = ["--quick", "--rounds", "1", "--inner", "1", "--warmup", "0"]


# ------------------------------------------------------------------------------------------- command line


def test_help_describes_flags_cases_and_data(capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("--json", "--out", "--rounds", "--quick", "--ops", "--data", "--flax-variance", "--check-only",
                 "--table", "--write", *benchmark.CASES, "offset", "float64"):
        assert word in out, f"--help does not mention {word}"


@pytest.mark.parametrize("argv, message", [
    (["--ops", "bn_nchw,nope"], "nope"),
    (["--write", "x.md"], "--write needs --table"),
    (["--data", "skewed"], "skewed"),
    (["--scale", "0"], "--scale"),
    (["--calls-per-sync", "0"], "--calls-per-sync must be >= 1, got 0"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_byte_model():
    # fwd: read x twice + write y; fwd+bwd adds read x, dy twice each + write dx.
    n = 2 * 3 * 4 * 5
    assert benchmark.bytes_moved((2, 3, 4, 5), 4, "fwd") == 3 * n * 4
    assert benchmark.bytes_moved((2, 3, 4, 5), 2, "fwd+bwd") == 8 * n * 2
    with pytest.raises(ValueError, match="fwd"):
        benchmark.bytes_moved((2,), 4, "bwd")


# ------------------------------------------------------------------------------------------- HLO traffic and timing


def test_hlo_traffic_counts_kernels_not_bitcasts():
    # Hand-written compiled-HLO shape: a fusion reading x (and only a slice of a second operand), a bitcast, a reduce.
    text = """HloModule m
%fused (p0: f32[8,4], p1: f32[8,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[8,4]{1,0} parameter(1)
  %s = f32[1,4]{1,0} slice(%p1), slice={[0:1], [0:4]}
  %b = f32[8,4]{1,0} broadcast(%s), dimensions={0,1}
  ROOT %d = f32[8,4]{1,0} subtract(%p0, %b)
}

ENTRY %main (x: f32[8,4]) -> f32[4] {
  %x = f32[8,4]{1,0} parameter(0)
  %c = f32[] constant(0)
  %f = f32[8,4]{1,0} fusion(%x, %x), kind=kLoop, calls=%fused
  %bc = f32[32]{0} bitcast(%f)
  ROOT %r = f32[4]{0} reduce(%f, %c), dimensions={0}, to_apply=%add
}
"""
    fusion = 32 * 4 + 4 * 4 + 32 * 4  # x, a 4-element slice of x, the result
    reduce = 32 * 4 + 4 + 4 * 4  # its input, the scalar init, the result
    assert hlo_traffic(text) == fusion + reduce
    assert benchmark.hlo_traffic is hlo_traffic  # the benchmark counts with the shared module


CONDITIONAL = """HloModule m
%cheap (p: (f32[8,4])) -> f32[4] {
  %p = (f32[8,4]{1,0}) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element(%p), index=0
  %c = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%x, %c), dimensions={0}, to_apply=%add
}

%dear (p: (f32[8,4])) -> f32[4] {
  %p = (f32[8,4]{1,0}) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element(%p), index=0
  %n = f32[8,4]{1,0} negate(%x)
  %c = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%n, %c), dimensions={0}, to_apply=%add
}

ENTRY %main (x: f32[8,4], i: s32[]) -> f32[4] {
  %x = f32[8,4]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %t = (f32[8,4]{1,0}) tuple(%x)
  ROOT %k = f32[4]{0} conditional(%i, %t, %t), branch_computations={%dear, %cheap}
}
"""


def test_hlo_traffic_charges_a_conditional_its_cheapest_branch_or_its_dearest():
    reduce = 32 * 4 + 4 + 4 * 4  # its input, the scalar init, the result
    negate = 32 * 4 + 32 * 4
    assert hlo_traffic(CONDITIONAL) == reduce
    assert hlo_traffic(CONDITIONAL, conditional="dearest") == reduce + negate
    with pytest.raises(ValueError, match="cheapest"):
        hlo_traffic(CONDITIONAL, conditional="random")


def test_paired_ratios_pair_rounds_and_divide_the_fastest_calls():
    # 2 rounds x 2 calls. Round medians: a 2, 2; b 2, 4 -> per-round ratios 1.0, 0.5.
    r = paired_ratios([1.0, 3.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0], rounds=2, inner=2)
    assert r["median"] == pytest.approx(0.75)
    assert r["iqr"] == pytest.approx([0.625, 0.875])
    assert r["best"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 x 2"):
        paired_ratios([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], rounds=2, inner=2)


@pytest.mark.parametrize("ratio, iqr, best, expected", [
    (0.80, (0.75, 0.85), 0.79, "yes"),
    (0.97, (0.95, 0.99), 0.96, "no gain"),  # under 5 %: not claimed
    (0.80, (0.70, 1.02), 0.79, "no gain"),  # a quarter of the rounds were slower
    (0.80, (0.75, 0.85), 1.01, "no gain"),  # the fastest calls disagree
    (1.20, (1.10, 1.30), 1.15, "no (slower)"),
    (None, None, None, "-"),
])
def test_verdict(ratio, iqr, best, expected):
    assert benchmark.verdict(ratio, iqr, best) == expected


# ------------------------------------------------------------------------------------------- inputs and reference


@pytest.mark.parametrize("name", benchmark.CASES)
def test_normal_data_is_well_conditioned_and_offset_data_is_not(name):
    case = benchmark.CASES[name]
    shape = case.quick_shape
    normal = benchmark.make_problem(case, shape, "normal")
    offset = benchmark.make_problem(case, shape, "offset")
    cond_normal, cond_offset = benchmark.reference(case, normal)[2], benchmark.reference(case, offset)[2]
    if case.op == "rms_norm":  # uncentred: no mean to be ill-conditioned by
        assert cond_normal == cond_offset == 0.0
    else:
        # jaxnorm's CPU statistics keep the plain sums up to mean² / var = 4 and switch to shifted sums above.
        assert cond_normal < 4 < 1e4 < cond_offset
    assert normal.x.dtype == offset.x.dtype == np.float32 and normal.x.shape == shape
    if case.masked:
        n = shape[0]
        assert normal.mask.reshape(-1).tolist() == [i < n - n // 4 for i in range(n)]
        assert not np.any(normal.dy[n - n // 4:])  # no cotangent on the padding
    else:
        assert normal.mask is None


@pytest.mark.parametrize("name", benchmark.CASES)
def test_reference_matches_torch_float64(name):
    """The float64 reference that every implementation is checked against, against PyTorch's autograd in float64."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    case = benchmark.CASES[name]
    p = benchmark.make_problem(case, case.quick_shape, "normal", seed=3)
    y_ref, dx_ref, _ = benchmark.reference(case, p)
    n = p.x.shape[0] if p.mask is None else int(p.mask.sum())  # masked: torch on the valid examples alone
    nchw = (lambda a: a.permute(0, 3, 1, 2)) if case.layout == "NHWC" else (lambda a: a)
    x = nchw(torch.from_numpy(p.x[:n]).double()).requires_grad_(True)
    w = torch.from_numpy(p.weight).double()
    b = None if p.bias is None else torch.from_numpy(p.bias).double()
    c = p.weight.shape[0]
    y = {"batch_norm_2d": lambda: F.batch_norm(x, None, None, w, b, training=True, eps=benchmark.EPS),
         "group_norm": lambda: F.group_norm(x, benchmark.GROUPS, w, b, eps=benchmark.EPS),
         "layer_norm": lambda: F.layer_norm(x, (c,), w, b, eps=benchmark.EPS),
         "rms_norm": lambda: F.rms_norm(x, (c,), w, eps=benchmark.EPS)}[case.op]()
    y.backward(nchw(torch.from_numpy(p.dy[:n]).double()))
    back = (lambda a: a.permute(0, 2, 3, 1)) if case.layout == "NHWC" else (lambda a: a)
    np.testing.assert_allclose(y_ref[:n], back(y.detach()).numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx_ref[:n], back(x.grad).numpy(), rtol=0, atol=1e-10)
    assert not np.any(y_ref[n:]) and not np.any(dx_ref[n:])


def test_check_tolerance_is_1e_4_on_normal_data_and_scales_with_the_conditioning():
    assert benchmark.check_tolerance(0.1) == benchmark.CHECK_TOL == 1e-4
    # Offset data: sqrt(mean² / var) ~ 1e3, 16 float32 ulps of the mean: ~1.9e-3, still far below the fast
    # variance's error there (>= 5e-2).
    assert 1.5e-3 < benchmark.check_tolerance(1e6) < 2.5e-3


# ------------------------------------------------------------------------------------------- the cross-check


def _perturbed(build, what: str, by: float = 1e-3):
    """A builder whose result's y (or dx) is off by ``by`` x its largest magnitude at one position."""
    def wrong(*args, **kwargs):
        impl = build(*args, **kwargs)
        right = impl.result

        def result():
            y, dx = (np.array(a, np.float64) for a in right())
            a = y if what == "y" else dx
            a.flat[0] += by * np.max(np.abs(a))
            return y, dx
        return dataclasses.replace(impl, result=result)
    return wrong


@pytest.mark.parametrize("what", ["y", "dx"])
def test_a_wrong_result_stops_the_run_before_timing(what, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(benchmark.runners, "build_flax", _perturbed(benchmark.build_flax, what))

    def no_timing(*args, **kwargs):
        raise AssertionError("timed although the cross-check failed")

    monkeypatch.setattr(benchmark.run, "time_interleaved", no_timing)
    out = tmp_path / "bench.json"
    status = benchmark.cli(FAST + ["--ops", "bn_nchw", "--no-torch", "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and "bn_nchw" in err[0] and "Flax" in err[0] and f"{what} vs the float64" in err[0]
    assert "off by 0.001" in err[0]
    assert not out.exists()  # no results from a failed run
    with pytest.raises(benchmark.CrossCheckError):
        benchmark.main(FAST + ["--ops", "bn_nchw", "--no-torch"])


def test_jaxnorm_is_held_to_1e_4_even_where_the_others_get_more(monkeypatch, capsys):
    # Offset data: Flax and PyTorch may be off by up to ~1.9e-3 there; jaxnorm, with its hi + lo mean, by 1e-4.
    monkeypatch.setattr(benchmark.runners, "build_jaxnorm", _perturbed(benchmark.build_jaxnorm, "y", by=5e-4))
    assert benchmark.cli(FAST + ["--ops", "bn_nchw", "--no-torch", "--data", "offset"]) == 1
    err = capsys.readouterr().err
    assert "jaxnorm: y vs the float64 reference is off by 0.0005" in err and "tolerance 0.0001" in err


def test_a_known_inaccurate_implementation_is_dropped_from_timing_and_labelled(monkeypatch):
    monkeypatch.setattr(benchmark.runners, "build_flax", _perturbed(benchmark.build_flax, "y", by=0.5))
    monkeypatch.setitem(benchmark.KNOWN_INACCURATE, ("bn_nchw", "flax"), "a test's broken Flax")
    rows = benchmark.main(FAST + ["--ops", "bn_nchw", "--no-torch"])
    assert [r["pass"] for r in rows] == list(benchmark.PASSES)
    for r in rows:
        assert r["impls"] == ["jaxnorm"] and r["flax_ms"] is None and r["jaxnorm_vs_flax"] is None
        assert "not timed: a test's broken Flax is off by 0.5" in r["setup"]["flax"]
        assert "not timed" in benchmark.format_table([r])


# ------------------------------------------------------------------------------------------- a --quick run


def _check_row_bookkeeping(r: dict, case: benchmark.Case) -> None:
    assert r["op"] == case.op and r["layout"] == case.layout and r["norm"] == case.title
    assert r["shape"] == list(case.quick_shape)
    assert r["bytes"] == benchmark.bytes_moved(case.quick_shape, 4, r["pass"])
    for impl in benchmark.ALL_IMPLS:
        ms = r[f"{impl}_ms"]
        if impl not in r["impls"]:
            assert ms is None and (impl == "jaxnorm" or r[f"jaxnorm_vs_{impl}"] is None)
            continue
        assert isinstance(ms, float) and ms > 0 and math.isfinite(ms)
        assert r[f"{impl}_gbs"] == pytest.approx(r["bytes"] / (ms * 1e-3) / 1e9)
        if impl != "jaxnorm":
            # One round of one call: the paired per-round ratio is the ratio of the two times.
            assert r[f"jaxnorm_vs_{impl}"] == pytest.approx(r["jaxnorm_ms"] / ms)
            assert r[f"jaxnorm_vs_{impl}_best"] == pytest.approx(r["jaxnorm_ms_min"] / r[f"{impl}_ms_min"])
    for impl in set(r["impls"]) & set(benchmark.JAX_IMPLS):
        # Any training-mode norm reads x and writes y (fwd), and also reads dy, writes dx (fwd+bwd).
        floor = 2 if r["pass"] == "fwd" else 4
        assert floor <= r[f"{impl}_hlo_traffic"] <= r[f"{impl}_hlo_traffic_dearest"] < 100
    # Every timed implementation computed the reference's y and dx (so the timings compare like with like).
    for impl in r["impls"]:
        limit = r["check_tol_jaxnorm"] if impl.startswith("jaxnorm") else r["check_tol"]
        assert max(r["check"][impl].values()) <= limit
    assert r["check_tol_jaxnorm"] == benchmark.CHECK_TOL <= r["check_tol"]


@pytest.mark.slow
def test_quick_run_writes_self_describing_json(tmp_path):
    path = tmp_path / "bench.json"
    rows = benchmark.main(FAST + ["--json", str(path)])
    doc = json.loads(path.read_text())
    meta = doc["meta"]
    assert doc["rows"] == json.loads(json.dumps([{k: v for k, v in r.items() if k not in ("env", "quick")}
                                                 for r in rows]))
    for key in ("date", "machine", "cpu_model", "cpu_count", "jax", "jaxlib", "flax", "git_commit", "git_dirty",
                "data", "rounds", "inner", "warmup", "quick", "jax_backend"):
        assert key in meta, key
    assert (meta["data"], meta["rounds"], meta["inner"], meta["quick"]) == ("normal", 1, 1, True)
    has_torch = benchmark.torch_available()
    assert ("torch" in meta) == has_torch
    assert all(r["env"] == meta for r in rows)  # reproduce's report reads the machine from the rows

    assert [(r["case"], r["pass"]) for r in rows] == [(c, p) for c in benchmark.CASES for p in benchmark.PASSES]
    for r in rows:
        case = benchmark.CASES[r["case"]]
        expected = (["jaxnorm", "jaxnorm_nomask", "flax"] if case.masked
                    else ["jaxnorm", "flax"] + (["torch"] if has_torch else []))
        assert r["impls"] == expected
        assert r["flax_variance"] == ("n/a" if case.op == "rms_norm" else "fast")
        assert r["flax_fast_variance_err"] is None  # Flax's timed path *is* the fast variance here
        _check_row_bookkeeping(r, case)
        if case.masked:
            assert r["check_mask_vs_valid_only"]["off_mask_max_abs"] == 0.0
            assert max(r["check_mask_vs_valid_only"]["y"], r["check_mask_vs_valid_only"]["dx"]) <= benchmark.CHECK_TOL
            assert "not run" in r["setup"]["torch"] and "mask=m" in r["setup"]["flax"]
    flax_gn = {r["case"]: r["setup"]["flax"] for r in rows if r["op"] == "group_norm"}
    assert "transpose" in flax_gn["gn_nchw"] and "timed" in flax_gn["gn_nchw"]
    assert "channels-last natively" in flax_gn["gn_nhwc"]
    tables = benchmark.render_tables([path])
    assert tables.count("| GroupNorm, 8 groups |") == 4 and tables.count("| BatchNorm2d, masked |") == 4
    # reproduce's report section of these rows: the machine, the table and the --quick warning from the run itself
    section = sections.bench({"rows": rows, "figure": str(report.plot_benchmark(rows, tmp_path / "b.png")),
                              "quick": True}, tmp_path)
    assert "tiny shapes and 1 rounds" in section and benchmark.format_table(rows) in section
    assert f"jax {meta['jax']}" in section


@pytest.mark.slow
def test_quick_run_on_offset_data_gives_flax_the_two_pass_variance_and_records_the_fast_one():
    rows = benchmark.main(FAST + ["--data", "offset", "--ops", "gn_nhwc,bn_nchw_mask"])
    assert [r["case"] for r in rows] == ["gn_nhwc"] * 2 + ["bn_nchw_mask"] * 2
    for r in rows:
        case = benchmark.CASES[r["case"]]
        _check_row_bookkeeping(r, case)
        assert r["data"] == "offset" and r["flax_variance"] == "two-pass"
        assert "use_fast_variance=False" in r["setup"]["flax"]
        assert r["condition"] > 1e4 and r["check_tol"] > benchmark.CHECK_TOL
        # Information, not timed: the fast variance is far off on this data (measured 0.06-0.1 here).
        assert r["flax_fast_variance_err"]["y"] > 10 * r["check_tol"]
        torch_err = r["check"].get("torch")
        if torch_err is not None and max(torch_err.values()) > r["check_tol"]:
            # Only a declared implementation may miss the tolerance, and then it is not timed.
            assert (r["case"], "torch") in benchmark.KNOWN_INACCURATE
            assert "torch" not in r["impls"] and "not timed" in r["setup"]["torch"]


# ------------------------------------------------------------------------------------------- generated tables


def _row(case: str, pass_: str, **fields) -> dict:
    """A results file's row, every field null or neutral but those given."""
    c = benchmark.CASES[case]
    row = {"case": case, "op": c.op, "norm": c.title, "layout": c.layout, "shape": list(c.shape), "pass": pass_,
           "masked": c.masked, "data": "normal", "dtype": "float32", "impls": ["jaxnorm", "flax"],
           "setup": {"jaxnorm": "axis=1", "flax": "F", "torch": "T"}, "flax_variance": "fast", "torch_device": None,
           "check": {}, "check_tol": 1e-4, "check_tol_jaxnorm": 1e-4, "condition": 0.1, "excluded": {},
           "check_mask_vs_valid_only": None, "flax_fast_variance_err": None, "bytes": 0, "rounds": 20, "inner": 5,
           "warmup": 5}
    for impl in benchmark.ALL_IMPLS:
        row |= {f"{impl}_ms": None, f"{impl}_ms_min": None, f"{impl}_gbs": None}
    for impl in benchmark.ALL_IMPLS[1:]:
        row |= {f"jaxnorm_vs_{impl}": None, f"jaxnorm_vs_{impl}_iqr": None, f"jaxnorm_vs_{impl}_best": None}
    for impl in benchmark.JAX_IMPLS:
        row |= {f"{impl}_hlo_traffic": None, f"{impl}_hlo_traffic_dearest": None}
    return row | fields


def _ratio(impl: str, median: float, lo: float, hi: float, best: float) -> dict:
    return {f"jaxnorm_vs_{impl}": median, f"jaxnorm_vs_{impl}_iqr": [lo, hi], f"jaxnorm_vs_{impl}_best": best}


META = {"date": "2026-01-02T03:04:05+00:00", "machine": "x86_64", "cpu_model": "Test CPU", "cpu_count": 2,
        "jax_backend": "cpu", "jax": "0.10.2", "jaxlib": "0.10.2", "flax": "0.12.8", "torch": "2.13.0+cpu",
        "torch_threads": 2, "torch_device": "cpu", "git_commit": "0123456789abcdef", "git_dirty": False,
        "rounds": 20, "inner": 5, "quick": False}


def _results(tmp_path: Path) -> list[Path]:
    normal = [
        _row("bn_nchw", "fwd", jaxnorm_ms=1.25, jaxnorm_hlo_traffic=4.003, jaxnorm_hlo_traffic_dearest=6.01,
             flax_hlo_traffic=4.0, flax_hlo_traffic_dearest=4.0, **_ratio("flax", 0.80, 0.75, 0.85, 0.79),
             **_ratio("torch", 1.10, 1.06, 1.14, 1.08)),
        _row("ln", "fwd+bwd", jaxnorm_ms=12.5, jaxnorm_hlo_traffic=10.0, flax_hlo_traffic=19.02,
             **_ratio("flax", 0.98, 0.90, 1.05, 0.95)),
        _row("bn_nhwc_mask", "fwd", jaxnorm_ms=2.0, jaxnorm_hlo_traffic=5.0, jaxnorm_nomask_hlo_traffic=4.0,
             flax_hlo_traffic=6.0, **_ratio("jaxnorm_nomask", 1.30, 1.20, 1.40, 1.25),
             **_ratio("flax", 0.90, 0.85, 0.97, 0.92)),
    ]
    offset = [_row("gn_nchw", "fwd", data="offset", jaxnorm_ms=3.0, flax_fast_variance_err={"y": 0.061, "dx": 0.07},
                   **_ratio("flax", 1.50, 1.40, 1.60, 1.45))]
    paths = []
    for name, data, rows in (("cpu.json", "normal", normal), ("cpu_offset.json", "offset", offset)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps({"meta": META | {"data": data}, "rows": rows}))
    return paths


def test_render_tables_from_hand_made_results(tmp_path):
    paths = _results(tmp_path)
    text = benchmark.render_tables(paths)
    lines = text.splitlines()
    assert lines[0] == f"<!-- generated by: python -m experiments.benchmark --table {paths[0]} {paths[1]} -->"
    assert "| BatchNorm2d | NCHW 64×64×32×32 | fwd | 1.250 | 0.80 (0.75–0.85) · 0.79 | yes | 1.10 (1.06–1.14) · 1.08 " \
           "| no (slower) | 4N (6N) · 4N | Flax: F; PyTorch: T |" in lines
    assert "| LayerNorm over D | (N,T,D) 32×512×768 | fwd+bwd | 12.500 | 0.98 (0.90–1.05) · 0.95 | no gain | - | - " \
           "| 10N · 19N | Flax: F; PyTorch: T |" in lines
    assert "| BatchNorm2d, masked | NHWC 64×32×32×64 | fwd | 2.000 | 1.30 (1.20–1.40) · 1.25 " \
           "| 0.90 (0.85–0.97) · 0.92 | yes | 5N · 4N · 6N | Flax: F; PyTorch: T |" in lines
    assert "| GroupNorm, 8 groups | NCHW 64×64×32×32 | fwd | 3.000 | 1.50 (1.40–1.60) · 1.45 | no (slower) | - | - " \
           "| - · - | Flax: F; PyTorch: T |" in lines
    # One section per file, in order, each saying where and on what its numbers were taken.
    heads = [i for i, line in enumerate(lines) if line.startswith("#### ")]
    assert [lines[i] for i in heads] == [f"#### CPU, normal data (`{paths[0]}`)",
                                         f"#### CPU, offset data (`{paths[1]}`)"]
    for i in heads:
        assert all(s in lines[i + 2] for s in ("Test CPU", "jax 0.10.2", "jaxlib 0.10.2", "flax 0.12.8",
                                               "torch 2.13.0+cpu", "git 0123456789ab", "20 interleaved rounds"))
    assert "Flax's default fast variance on this data" in text and "NCHW: y 0.061, dx 0.07" in text
    assert "**" not in text  # no bold: the verdict columns say what is a win
    assert benchmark.render_tables(paths) == text  # deterministic, so committed docs can be checked


def test_table_command_prints_or_writes_and_rejects_other_files(tmp_path, capsys):
    paths = _results(tmp_path)
    assert benchmark.main(["--table", *map(str, paths)]) == []
    assert capsys.readouterr().out == benchmark.render_tables(paths)
    doc = tmp_path / "docs" / "performance.md"
    benchmark.main(["--table", *map(str, paths), "--write", str(doc)])
    assert doc.read_text() == benchmark.render_tables(paths)
    rows_only = tmp_path / "old.json"
    rows_only.write_text("[]")
    assert benchmark.cli(["--table", str(rows_only)]) == 2
    err = capsys.readouterr().err.strip()
    assert "old.json" in err and "'meta' and 'rows'" in err


def test_writing_tables_replaces_their_block_and_keeps_the_prose(tmp_path):
    paths = _results(tmp_path)
    doc = tmp_path / "performance.md"
    old = benchmark.render_tables(paths).replace("0.80 (0.75–0.85)", "0.70 (0.75–0.85)")
    doc.write_text("# Performance\n\nBefore.\n\n" + old + "\n## LeNet\n\nAfter.\n")
    benchmark.main(["--table", *map(str, paths), "--write", str(doc)])
    text = doc.read_text()
    assert text == "# Performance\n\nBefore.\n\n" + benchmark.render_tables(paths) + "\n## LeNet\n\nAfter.\n"
    assert benchmark.stale_tables(text) == []
    prose_only = tmp_path / "prose.md"
    prose_only.write_text("Only prose.\n")
    benchmark.main(["--table", *map(str, paths), "--write", str(prose_only)])
    assert prose_only.read_text() == "Only prose.\n\n" + benchmark.render_tables(paths)


def test_stale_tables_finds_edited_or_outdated_blocks(tmp_path):
    paths = _results(tmp_path)
    doc = "# Performance\n\nSome prose.\n\n" + benchmark.render_tables(paths) + "\nMore prose.\n"
    assert benchmark.stale_tables(doc) == []
    edited = doc.replace("0.80 (0.75–0.85)", "0.70 (0.75–0.85)")
    assert len(benchmark.stale_tables(edited)) == 1 and "regenerate" in benchmark.stale_tables(edited)[0]
    paths[1].unlink()
    assert "missing results file" in benchmark.stale_tables(doc)[0]


def test_committed_generated_tables_are_current():
    """Every Markdown file of the repository that embeds generated tables matches its committed results."""
    docs = [p for p in [REPO / "README.md", *REPO.glob("docs/**/*.md"), *REPO.glob("benchmarks/**/*.md")]
            if p.is_file()]
    problems = [f"{p.relative_to(REPO)}: {msg}" for p in docs for msg in benchmark.stale_tables(p.read_text())]
    assert problems == []


# ------------------------------------------------------------------------------------------- scripts/gpu_check.py


@pytest.fixture
def gpu_check(monkeypatch):
    """scripts/gpu_check.py as a module (registered while the test runs: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_refuses_a_cpu_and_checks_the_cpu_against_float64_with_allow_cpu(tmp_path):
    script = REPO / "scripts" / "gpu_check.py"
    refused = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode == 2 and "expected a GPU" in refused.stderr
    out = subprocess.run([sys.executable, str(script), "--allow-cpu", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["bound"] == 1e-5 and result["ok"] is True
    assert len(result["correctness"]) == 15
    for r in result["correctness"]:
        errors = r["devices"]["cpu"]["errors"]
        # y, dx and (where there are any) running statistics and parameter gradients were all compared.
        assert {"['y']", "['dx']"} <= set(errors)
        assert max(errors.values()) <= 1e-5, (r["case"], errors)
        assert r["gpu_vs_cpu"] is None  # one device: nothing to compare with
    assert {"['stats']['running_var']", "['dparams']['weight']"} <= set(result["correctness"][2]["devices"]["cpu"]
                                                                        ["errors"])
    assert max(max(r["bn"], r["ln"], r["gn"]) for r in result["stability"]) <= 1e-4
    assert result["copy"]["jax_x_plus_1_gbs"] > 0


def _wrong_eps(gc):
    def build(spec, shape):
        import jaxnorm as jn
        return lambda x, p, s: jn.batch_norm_2d(x, p, s, train=True, eps=1e-3, momentum=gc.MOMENTUM)
    return build


def _wrong_momentum(gc):
    def build(spec, shape):
        import jaxnorm as jn
        return lambda x, p, s: jn.batch_norm_1d(x, p, s, train=True, eps=gc.EPS, momentum=0.11)
    return build


def _no_bias(gc):
    def build(spec, shape):
        import jaxnorm as jn
        return lambda x, p, s: (jn.layer_norm(x, {"weight": p["weight"]} | {"bias": 0 * p["bias"]}, shape[-1:]), s)
    return build


@pytest.mark.parametrize("index, wrong, output", [
    (2, _wrong_eps, "['y']"),  # bn2d NCHW with eps 1e-3 instead of 1e-5
    (0, _wrong_momentum, "['stats']['running_mean']"),  # bn1d with momentum 0.11 instead of 0.1
    (7, _no_bias, "['y']"),  # LayerNorm that drops its bias
])
def test_gpu_check_catches_a_wrong_implementation(index, wrong, output, gpu_check):
    import jax

    gc = gpu_check
    name, shape, spec = gc.CASES[index]
    right = gc.check_case(name, shape, spec, [jax.devices("cpu")[0]], seed=index)
    assert right["ok"] and right["max_rel_err"] <= gc.BOUND
    bad = gc.check_case(name, shape, spec, [jax.devices("cpu")[0]], seed=index, build=wrong(gc))
    assert not bad["ok"] and bad["devices"]["cpu"]["errors"][output] > 10 * gc.BOUND


# ------------------------------------------------------------------------------------------- the copy baseline


def test_the_copy_baseline_is_timed_beside_the_libraries_and_tabulated_against_them(tmp_path):
    path = tmp_path / "bench.json"
    rows = benchmark.main(FAST + ["--ops", "bn_nhwc,ln", "--no-torch", "--copy-baseline", "--json", str(path)])
    for r in rows:
        assert r["impls"][-1] == "copy" and "no statistics" in r["setup"]["copy"]
        copy_bytes = {"fwd": 2, "fwd+bwd": 4}[r["pass"]] * math.prod(r["shape"]) * 4
        assert copy_bytes == benchmark.bytes_moved(tuple(r["shape"]), 4, r["pass"], copy=True)
        assert r["copy_gbs"] == pytest.approx(copy_bytes / (r["copy_ms"] * 1e-3) / 1e9)
        assert r["jaxnorm_vs_copy"] == pytest.approx(r["jaxnorm_ms"] / r["copy_ms"])
        assert "copy" not in r["check"]  # it computes no normalization: checked bit for bit instead
    _, typed = benchmark.load_results(path)
    assert [t.to_json() for t in typed] == json.loads(path.read_text())["rows"]  # round trip, copy keys included
    table = benchmark.format_table(typed)
    assert table.count("| copy ms |") == 1 and benchmark.tables.FLOOR_LEGEND in table
    ln_fwd = next(line for line in table.split(benchmark.tables.FLOOR_LEGEND)[1].splitlines()
                  if line.startswith("| LayerNorm") and "| fwd |" in line)
    r = rows[2]
    assert f"| {r['flax_ms'] / r['copy_ms']:.2f} | - |" in ln_fwd  # Flax / copy, and no PyTorch
    assert benchmark.format_table([rows[0] | {"copy_ms": None}]).count("| copy ms |") == 0


def test_rows_without_the_copy_baseline_keep_their_keys():
    rows = benchmark.main(FAST + ["--ops", "rms", "--no-torch"])
    assert all(not any(k.startswith("copy") or k.startswith("jaxnorm_vs_copy") for k in r) for r in rows)


def test_a_copy_that_misses_an_element_stops_the_run(monkeypatch, capsys):
    monkeypatch.setattr(benchmark.runners, "build_copy", _perturbed(benchmark.runners.build_copy, "dx", by=1e-7))
    assert benchmark.cli(FAST + ["--ops", "gn_nchw", "--no-torch", "--copy-baseline"]) == 1
    err = capsys.readouterr().err
    assert "case gn_nchw (normal data), copy (x·w): dx vs x·w computed by NumPy" in err


# ------------------------------------------------------------------------------------------- several steps per wait


def test_a_repeated_call_runs_k_steps_and_waits_for_the_last_only():
    steps, waited = [], []
    call = benchmark.runners.repeated(lambda: steps.append(len(steps)) or len(steps), waited.append, 4)
    call()
    assert steps == [0, 1, 2, 3] and waited == [4]


def test_times_are_per_step_when_a_call_runs_several(monkeypatch):
    calls = []

    def fixed_times(fns, rounds, warmup, inner):
        for fn in fns.values():  # each call really runs (and waits) once per timed call
            fn()
        calls.append(len(fns))
        return {name: [6.0] * (rounds * inner) for name in fns}

    monkeypatch.setattr(benchmark.run, "time_interleaved", fixed_times)
    rows = benchmark.main(FAST + ["--ops", "bn_nchw", "--no-torch", "--copy-baseline", "--calls-per-sync", "3"])
    assert calls == [3, 3]  # jaxnorm, Flax and the copy, both passes
    for r in rows:
        assert r["jaxnorm_ms"] == r["flax_ms"] == r["copy_ms"] == 2.0
        assert r["env"]["calls_per_sync"] == 3
    assert "2 calls of 3 steps each (times per step)" in benchmark.describe(rows[0]["env"] | {"inner": 2})
