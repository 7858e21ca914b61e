"""The benchmark CLI: --help, the byte model, and a tiny --quick run's JSON rows (never timed)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import benchmark

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_flags():
    out = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--json", "--out", "--rounds", "--quick", "--ops"):
        assert flag in out.stdout


def test_bad_ops_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(["--ops", "bn_nchw,nope"])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_byte_model():
    # fwd: read x twice + write y; fwd+bwd adds read x, dy twice each + write dx.
    n = 2 * 3 * 4 * 5
    assert benchmark.bytes_moved((2, 3, 4, 5), 4, "fwd") == 3 * n * 4
    assert benchmark.bytes_moved((2, 3, 4, 5), 2, "fwd+bwd") == 8 * n * 2
    with pytest.raises(ValueError, match="fwd"):
        benchmark.bytes_moved((2,), 4, "bwd")


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
    assert benchmark.hlo_traffic(text) == fusion + reduce


def test_quick_run_writes_well_formed_rows(tmp_path):
    path = tmp_path / "bench.json"
    rows = benchmark.main(["--quick", "--rounds", "1", "--inner", "1", "--warmup", "0", "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(rows))

    cases = benchmark.CASES
    assert [(r["case"], r["pass"]) for r in rows] == [
        (c, p) for c in cases for p in benchmark.PASSES]
    has_torch = benchmark.torch_available()
    for r in rows:
        case = cases[r["case"]]
        assert r["op"] == case.op and r["layout"] == case.layout
        assert r["shape"] == list(case.quick_shape)
        assert r["bytes"] == benchmark.bytes_moved(case.quick_shape, 4, r["pass"])
        for impl in ("jaxnorm", "flax") + (("torch",) if has_torch else ()):
            ms, gbs = r[f"{impl}_ms"], r[f"{impl}_gbs"]
            assert isinstance(ms, float) and ms > 0 and math.isfinite(ms)
            assert gbs == pytest.approx(r["bytes"] / (ms * 1e-3) / 1e9)
        for impl in ("jaxnorm", "flax"):
            # Any training-mode norm reads x and writes y (fwd), and also reads dy, writes dx (fwd+bwd).
            floor = 2 if r["pass"] == "fwd" else 4
            assert floor <= r[f"{impl}_hlo_traffic"] < 100
        others = ("flax", "torch") if has_torch else ("flax",)
        for other in others:
            # One round of one call: the paired per-round ratio is the ratio of the two times.
            assert r[f"jaxnorm_vs_{other}"] == pytest.approx(r["jaxnorm_ms"] / r[f"{other}_ms"])
            assert r[f"jaxnorm_vs_{other}_best"] == pytest.approx(r["jaxnorm_ms_min"] / r[f"{other}_ms_min"])
            # The implementations computed the same y and dx (so the timings compare like with like).
            assert r[f"max_abs_diff_{other}"] < 1e-4
        if not has_torch:
            assert r["torch_ms"] is None and r["jaxnorm_vs_torch"] is None


def test_hlo_traffic_charges_a_conditional_its_cheapest_branch():
    text = """HloModule m
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
    reduce = 32 * 4 + 4 + 4 * 4  # its input, the scalar init, the result
    assert benchmark.hlo_traffic(text) == reduce


def test_gpu_check_refuses_a_cpu_and_smoke_runs_with_allow_cpu(tmp_path):
    """scripts/gpu_check.py (run on a lent GPU) compares GPU with CPU; on the CPU it must say it has no GPU."""
    script = REPO / "scripts" / "gpu_check.py"
    refused = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode == 2 and "expected a GPU" in refused.stderr
    out = subprocess.run([sys.executable, str(script), "--allow-cpu", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(result["correctness"]) == 15 and all(r["max_rel_diff"] == 0.0 for r in result["correctness"])
    assert max(max(r["bn"], r["ln"], r["gn"]) for r in result["stability"]) <= 1e-4
    assert result["copy"]["jax_x_plus_1_gbs"] > 0
