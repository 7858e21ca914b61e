"""jaxnorm.equinox on 4 simulated devices: a per-example model vmapped on each device inside ``shard_map`` (and
``pmap``), ``axis_name=("data", "batch")``, equals the pure function on the whole batch on one device.

The checks run in ``tests/library/_equinox_worker.py``, a subprocess started as ``test_sync_bn.py`` starts its worker
(the 4-device flag must be set before JAX starts); the worker reuses that worker's inputs and metric (``max|a - b| /
max(1, max|b|)``) and the tolerances here are ``test_sync_bn.py``'s. Covered: BatchNorm2d training (two steps,
running statistics chained) and eval under shard_map and pmap, its gradients w.r.t. x, weight and bias and its
forward-mode derivative under shard_map; one example per device (the pure function synchronizes the mesh axis
itself); InstanceNorm2d's running statistics averaged over every device's examples; and a shard_map with
``check_vma=True``, where JAX 0.10 rejects collectives over a vmap axis: the layer says so and names the fix.
"""

from __future__ import annotations

import pytest

pytest.importorskip("equinox")
pytestmark = pytest.mark.slow  # a subprocess that compiles ~15 programs (~15 s here); CI runs the slow tests too

from test_sync_bn import ROOT, TOL, run_worker  # noqa: E402  (one machinery and one tolerance for the device tests)
from test_sync_bn import worker_case as _case  # noqa: E402

WORKER = ROOT / "tests" / "library" / "_equinox_worker.py"


@pytest.fixture(scope="module")
def report() -> dict:
    return run_worker(WORKER, timeout=600)


def _assert_steps(result: dict, steps, name: str, counted: bool = True) -> None:
    for step in steps:
        errors = {k: result[f"step{step}_{k}"] for k in ("y", "running_mean", "running_var")}
        assert all(e <= TOL for e in errors.values()), f"{name} step {step}: {errors}"  # `<=` also rejects NaN
        want = step if counted else 0  # InstanceNorm never counts (PyTorch's quirk)
        assert result[f"step{step}_nbt"] == result[f"step{step}_nbt_full"] == want, name


def test_worker_sees_four_devices(report):
    assert report["devices"] == 4


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_batch_norm_vmapped_on_each_device_equals_the_whole_batch(report, mode):
    r = _case(report, f"batch_norm/{mode}")
    _assert_steps(r, (1, 2), mode)
    assert r["eval_y"] <= TOL and r["eval_stats_changed"] == 0.0, r


def test_batch_norm_derivatives_under_shard_map(report):
    r = _case(report, "batch_norm/shard_map")
    errors = {k: r[k] for k in ("dx", "dweight", "dbias", "y_dot")}
    assert all(e <= TOL for e in errors.values()), errors


def test_one_example_per_device(report):
    _assert_steps(_case(report, "batch_norm/one_example_per_device"), (1,), "one example per device")


def test_instance_norm_running_statistics_average_every_device(report):
    _assert_steps(_case(report, "instance_norm/shard_map"), (1,), "instance norm", counted=False)


def test_checked_shard_map_names_the_fix_or_works(report):
    r = _case(report, "batch_norm/shard_map_checked")
    if "raised" in r:
        assert "pass check_vma=False to jax.shard_map" in r["raised"] and r["raised"].startswith("BatchNorm2d: ")
    else:
        _assert_steps(r, (1,), "checked shard_map")
