"""``python -m experiments.lenet --devices N``: data-parallel LeNet_bn equals the one-device run.

Both runs use the same global batch (16) and seed on the synthetic set, in subprocesses with 4 forced
host devices (the flag must be set before JAX starts). With the batch sharded over a 1-D ``data`` mesh
and BatchNorm statistics global, every metric of 2 epochs must agree to 1e-4 (float32 reductions in a
different order are the only difference). Flags that cannot work end with exit status 2 and a single
``lenet: error: ...`` line, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N_FORCED = 4
TOL = 1e-4
METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc")


def _lenet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_FORCED}", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "experiments.lenet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train(out: Path, devices: int) -> list[dict]:
    proc = _lenet("--devices", str(devices), "--epochs", "2", "--config", "bn", "--batch-size", "16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["bn"]


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
    one = _train(tmp_path / "d1", 1)
    four = _train(tmp_path / "d4", 4)
    assert [r["epoch"] for r in one] == [r["epoch"] for r in four] == [0, 1]
    diffs = {(r1["epoch"], k): abs(r1[k] - r4[k]) for r1, r4 in zip(one, four, strict=True) for k in METRICS}
    worst = max(diffs.values())
    print(f"largest |4 devices - 1 device| over 2 epochs of LeNet_bn metrics: {worst:.3g}")
    assert worst <= TOL, {k: v for k, v in diffs.items() if v > TOL}
    # Training did something (a run that silently skipped the updates would "match" trivially).
    assert one[1]["train_loss"] < one[0]["train_loss"]


def _assert_one_line_error(proc: subprocess.CompletedProcess, *must_contain: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("lenet: error: "), errors[0]
    for text in must_contain:
        assert text in errors[0], errors[0]


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    proc = _lenet("--devices", "4", "--batch-size", "6", "--epochs", "1", "--config", "bn", "--out", str(tmp_path))
    _assert_one_line_error(proc, "--batch-size (6)", "--devices (4)")
    assert not (tmp_path / "metrics.json").exists()


def test_more_devices_than_available_is_a_clear_error(tmp_path):
    proc = _lenet("--devices", "8", "--epochs", "1", "--config", "bn", "--out", str(tmp_path))
    _assert_one_line_error(proc, "8", f"only {N_FORCED} available")
    assert not (tmp_path / "metrics.json").exists()
