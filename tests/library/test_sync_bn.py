"""Synchronized BatchNorm on 4 simulated devices equals BatchNorm on the full batch on one device.

The checks run in a subprocess (``tests/library/_sync_bn_worker.py``) because
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` only takes effect before JAX creates its CPU
backend, and this test process has already imported JAX with one device. The worker runs every case
once and reports relative errors ``max|a - b| / max(1, max|b|)`` as JSON; the tests below judge them.

Covered: ``jaxnorm.batch_norm(..., axis_name="data")`` under ``jax.shard_map`` (checked, and with
``check_vma=False`` for the backward), ``jax.pmap`` and ``jax.vmap(axis_name=...)`` (forward and running
statistics; its derivatives are in test_transforms.py), and plain ``jax.jit`` on a
batch-sharded input without ``axis_name``; channels-first and channels-last; output, running mean,
*unbiased* running variance with the global count, ``num_batches_tracked``, an eval step with the
synchronized running stats, and the VJP w.r.t. x, weight and bias with a random cotangent (taken
outside the map, and inside it as a data-parallel training step does). InstanceNorm's ``axis_name``
(running-stat average) and GroupNorm (per-sample, no ``axis_name``) on sharded batches. A negative
control shows that BN *without* ``axis_name`` under shard_map is caught by the same metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sync_bn_cases import case_names  # jax-free: this process must not import JAX with 4 devices

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "library" / "_sync_bn_worker.py"

# Float32 results computed with a different reduction order (per device, then combined) agree with
# the single-device ones to a few ulps; measured max ~1e-6 relative. 1e-5 leaves margin while an
# unsynchronized BN is off by O(0.1-1) (see the control).
TOL = 1e-5
# The single-device result against an independent float64 NumPy reference.
TOL_F64 = 1e-4
# Replicas (pmap / vmap outputs) must hold the same running stats; absolute, values are O(1-10).
TOL_SPREAD = 1e-5

CASES = case_names()


def run_worker(worker: Path, timeout: int) -> dict:
    """Run a device-test worker script (it forces its host devices before importing jax) and return its JSON report;
    the other device tests use it too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def worker_case(report: dict, name: str) -> dict:
    """One case of a worker's report; a case the worker saw raise fails the test with its traceback."""
    result = report["cases"][name]
    if "error" in result:
        pytest.fail(f"{name} raised {result['error']}\n{result.get('traceback', '')}")
    return result



@pytest.fixture(scope="module")
def report() -> dict:
    return run_worker(WORKER, timeout=900)


def _assert_small(result: dict, keys, tol: float, name: str) -> None:
    bad = {k: result[k] for k in keys if not result[k] <= tol}  # `not <=` also catches NaN
    assert not bad, f"{name}: relative errors above {tol}: {bad}"


def test_worker_sees_four_devices(report):
    assert report["devices"] == 4


def test_case_list_matches_worker(report):
    assert list(report["cases"]) == CASES


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("bn_train/")])
def test_bn_train_matches_full_batch(report, name):
    r = worker_case(report, name)
    for step in (1, 2):
        _assert_small(r, [f"step{step}_{k}" for k in ("y", "running_mean", "running_var")], TOL, name)
        _assert_small(r, [f"step{step}_full_vs_f64_{k}" for k in ("y", "running_mean", "running_var")], TOL_F64, name)
        assert r[f"step{step}_replica_spread"] <= TOL_SPREAD, name
        assert r[f"step{step}_nbt"] == r[f"step{step}_nbt_full"] == step, name
        assert r[f"step{step}_nbt_dtype"] == "int32", name
    assert r["f64_nbt"] == 2
    assert r["eval_y"] <= TOL, name
    assert r["eval_stats_changed"] == 0.0, name


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("bn_grad")])
def test_bn_gradients_match_full_batch(report, name):
    r = worker_case(report, name)
    _assert_small(r, ["y", "dx", "dweight", "dbias"], TOL, name)
    _assert_small(r, ["full_vs_f64_dx", "full_vs_f64_dweight", "full_vs_f64_dbias"], TOL_F64, name)
    assert r["replica_spread"] <= TOL_SPREAD, name


def test_control_unsynchronized_bn_is_detected(report):
    """Without axis_name each device normalizes with its own statistics: the metrics must see it."""
    r = worker_case(report, "control/shard_map_no_axis_name")
    assert r["step1_y"] > 0.1
    assert r["step1_running_mean"] > 0.01 and r["step1_running_var"] > 0.01


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("instance_train/")])
def test_instance_norm_running_stats_match_full_batch(report, name):
    r = worker_case(report, name)
    for step in (1, 2):
        _assert_small(r, [f"step{step}_{k}" for k in ("y", "running_mean", "running_var")], TOL, name)
        assert r[f"step{step}_replica_spread"] <= TOL_SPREAD, name
        # PyTorch's InstanceNorm never increments num_batches_tracked.
        assert r[f"step{step}_nbt"] == r[f"step{step}_nbt_full"] == 0, name


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("group/")])
def test_group_norm_on_sharded_batch(report, name):
    _assert_small(worker_case(report, name), ["y", "dx", "dweight", "dbias"], TOL, name)


def test_group_norm_documents_no_axis_name(report):
    """GroupNorm statistics are per sample: the library exposes no axis_name (and needs none)."""
    assert "axis_name" not in report["signatures"]["group_norm"]
    assert "axis_name" in report["signatures"]["batch_norm"]
    assert "axis_name" in report["signatures"]["instance_norm"]


def test_forward_mode_through_the_collective(report):
    _assert_small(worker_case(report, "bn_jvp/shard_map/nchw"), ["y", "y_dot"], TOL, "bn_jvp")


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("masked_counts/")])
def test_devices_with_unequal_valid_counts_equal_bn_on_the_valid_examples(report, name):
    r = worker_case(report, name)
    _assert_small(r, ["y", "running_mean", "running_var"], TOL, name)
    assert r["padding_finite"] and r["nbt"] == 1, r


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("groups/")])
def test_device_groups_have_their_own_statistics(report, name):
    r = worker_case(report, name)
    _assert_small(r, list(r), TOL, name)
    assert len(r) == 2 + 2 * 4  # two groups' outputs, and both statistics on each of the 4 devices


def _total(counts: dict) -> int:
    return sum(counts.values())


def test_one_collective_per_statistics_pass(report):
    """Forward: one collective for mean and variance together; backward (w.r.t. x): one more."""
    r = worker_case(report, "collectives")
    assert _total(r["forward_jaxpr"]) == 1, r["forward_jaxpr"]
    assert _total(r["forward_hlo"]) == 1, r["forward_hlo"]
    assert _total(r["fwd_and_bwd_x_jaxpr"]) == 2, r["fwd_and_bwd_x_jaxpr"]
    assert _total(r["fwd_and_bwd_x_hlo"]) == 2, r["fwd_and_bwd_x_hlo"]


def test_sharded_jit_inserts_collectives(report):
    """Plain jit on a batch-sharded input: XLA itself adds the cross-device reductions."""
    r = worker_case(report, "collectives")
    assert r["jit_sharded_forward_hlo"].get("all-reduce", 0) >= 1, r["jit_sharded_forward_hlo"]
