"""Two real processes joined by jax.distributed on localhost train LeNet_bn data-parallel: same metrics as one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["-m", "experiments.lenet", "--config", "bn", "--epochs", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    port = _free_port()
    workers = [
        subprocess.Popen([sys.executable, *ARGS, "--devices", "2", "--out", str(tmp_path / f"p{i}"),
                          "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                          str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    single = subprocess.run([sys.executable, *ARGS, "--out", str(tmp_path / "single")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0, out
        assert "jax.distributed: process" in out
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("single", "p0", "p1")]
    assert metrics[1] == metrics[2]  # every process reports the same global metrics
    worst = max(abs(a[k] - b[k]) for a, b in zip(metrics[0]["bn"], metrics[1]["bn"], strict=True) for k in a)
    assert worst <= 1e-4, worst
