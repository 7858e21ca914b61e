"""Where and on what the numbers are taken (recorded in ``meta``), and whether the run was quiet enough to keep.

``meta`` says when, where and on what a run was made: date, machine, CPU model and count, JAX backend and devices,
the library versions, the measured git commit and whether the working tree differed from it (``git_dirty``), and
the one-minute load average at the start and at the end of the run.

A quiet run (:func:`noise` finds nothing) has a clean working tree, so that ``git_commit`` is the code that was
measured, and no other load on the machine: other processes on a small machine stall every parallel region (torch's
and XLA's thread pools wait for a descheduled worker), so a loaded run's times are the load's, not the code's.

* At the start (read before any case runs) the load average is the *others'* — plus at most about 0.2 from the
  benchmark's own imports, a few seconds of one core: it must stay at or under ``QUIET_LOAD_PER_CPU`` (a quarter)
  per CPU, i.e. on average at most one core in four busy with something else.
* At the end it includes the benchmark's own threads, which keep up to every core busy: it must stay at or under
  ``(1 + QUIET_LOAD_PER_CPU)`` per CPU — more runnable threads than the benchmark alone can account for means that
  something else ran during the run.

A run that is not quiet prints a warning; its results do not belong in ``benchmarks/`` unless they say why they are
kept (``--caveat TEXT``, stored as ``meta.caveat`` and shown under the file's heading in the tables).
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
QUIET_LOAD_PER_CPU = 0.25


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


def noise(meta: dict) -> list[str]:
    """Why a run's times may not be the code's (empty: a quiet run): uncommitted changes, or other load."""
    problems = []
    if meta.get("git_dirty") is not False:
        state = "differed from" if meta.get("git_dirty") else "may differ from (unknown)"
        problems.append(f"the working tree {state} the measured commit {meta.get('git_commit')}")
    cpus = meta.get("cpu_count") or 1
    start, end = meta.get("loadavg_1min_start"), meta.get("loadavg_1min_end")
    if start is None or start > QUIET_LOAD_PER_CPU * cpus:
        problems.append(f"load average {start} at the start > {QUIET_LOAD_PER_CPU * cpus:g} "
                        f"({QUIET_LOAD_PER_CPU:g} per CPU, {cpus} CPUs): something else was running")
    if end is None or end > (1 + QUIET_LOAD_PER_CPU) * cpus:
        problems.append(f"load average {end} at the end > {(1 + QUIET_LOAD_PER_CPU) * cpus:g} (one thread per CPU "
                        f"for the benchmark + {QUIET_LOAD_PER_CPU:g} per CPU): something else ran alongside")
    return problems


def resolve_torch_device(requested: str | None) -> str:
    """``requested`` as given, or the device matching JAX's backend: PyTorch on the GPU when JAX is on one."""
    if requested is not None:
        if requested not in ("cpu", "cuda"):
            raise ValueError(f"--torch-device: expected 'cpu' or 'cuda', got {requested!r}")
        return requested
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
