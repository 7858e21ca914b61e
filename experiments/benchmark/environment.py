"""Where and on what the numbers are taken, recorded in ``meta`` next to them.

``meta`` says when, where and on what a run was made: date, machine, CPU model and count, JAX backend and devices,
the library versions, the measured git commit and whether the working tree differed from it (``git_dirty``), and
the one-minute load average at the start and at the end of the run: other processes on a small machine stall every
parallel region (torch's and XLA's thread pools wait for a descheduled worker), so the load tells a noisy table.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import flax
import jax

from experiments.common.lesson_weights import torch_available

REPO = Path(__file__).resolve().parents[2]


def load_average() -> float:
    """The one-minute load average, rounded as recorded."""
    return round(os.getloadavg()[0], 2)


def _git() -> dict:
    """The measured commit, and whether the working tree differed from it (read-only: no index refresh)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, env=env,
                                timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=REPO, env=env, timeout=30)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def capture() -> dict:
    """Versions, machine, date, commit and the load at the end of the run, recorded next to the numbers."""
    env = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "python": platform.python_version(), "machine": platform.machine(), "cpu_model": _cpu_model(),
           "cpu_count": os.cpu_count(), "jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
           "flax": flax.__version__, "jax_backend": jax.default_backend(),
           "jax_devices": sorted({str(d.device_kind) for d in jax.devices()}),
           "loadavg_1min_end": load_average(), **_git()}
    if torch_available():
        import torch

        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   torch_cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return env


def resolve_torch_device(requested: str | None) -> str:
    """``requested`` as given, or the device matching JAX's backend: PyTorch on the GPU when JAX is on one."""
    if requested is not None:
        if requested not in ("cpu", "cuda"):
            raise ValueError(f"--torch-device: expected 'cpu' or 'cuda', got {requested!r}")
        return requested
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
