"""experiments.common.devices: per-process data split, mesh and batch-sharding errors, multi-host flags.

Most tests run in this process (one CPU device). Two need more devices and run this file as a
script in subprocesses (``--shard-errors``: 4 forced host devices; ``--multiprocess``: one of two
real processes joined by ``jax.distributed.initialize`` on localhost, 2 CPU devices each), since
the device count is fixed once JAX has started.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # when run as a script for the subprocess checks
    sys.path.insert(0, str(ROOT))

from experiments.common import devices as dist  # noqa: E402


# ----------------------------------------------------------------------------- process_slice
@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 16, 101, 600])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 8])
def test_process_slice_covers_every_example_once(n, count):
    slices = [dist.process_slice(n, i, count) for i in range(count)]
    covered = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(covered, np.arange(n))  # in order, none twice, none missing
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1
    assert all(s.step is None for s in slices)
    assert [s.start for s in slices[1:]] == [s.stop for s in slices[:-1]]  # contiguous


@pytest.mark.parametrize("n,count", [(10, 3), (101, 4), (7, 8), (16, 4)])
def test_process_slice_drop_remainder_gives_equal_parts(n, count):
    slices = [dist.process_slice(n, i, count, drop_remainder=True) for i in range(count)]
    assert {s.stop - s.start for s in slices} == {n // count}
    covered = np.concatenate([np.arange(n)[s] for s in slices])
    np.testing.assert_array_equal(covered, np.arange(n // count * count))


@pytest.mark.parametrize(
    "args,match",
    [
        ((10, 0, 0), "process_count must be >= 1, got 0"),
        ((10, -1, 2), r"process_index must be in \[0, 2\), got -1"),
        ((10, 2, 2), r"process_index must be in \[0, 2\), got 2"),
        ((-1, 0, 1), "num_examples must be >= 0, got -1"),
    ],
)
def test_process_slice_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        dist.process_slice(*args)


def test_process_slice_rejects_non_integers():
    with pytest.raises(TypeError, match="num_examples must be an int, got float"):
        dist.process_slice(10.0, 0, 2)


# ----------------------------------------------------------------------------- mesh, sharding
def test_make_mesh_is_one_dimensional_named_data():
    mesh = dist.make_mesh(1)
    assert mesh.axis_names == ("data",)
    assert mesh.shape["data"] == 1
    assert dist.batch_sharding(mesh).spec == P("data")
    assert dist.replicated(mesh).spec == P()


def test_make_mesh_default_uses_every_device():
    assert dist.make_mesh().shape["data"] == jax.device_count()


def test_make_mesh_rejects_too_many_devices():
    n = jax.device_count() + 1
    with pytest.raises(ValueError, match=f"requested {n} devices but only {n - 1} available"):
        dist.make_mesh(n)


@pytest.mark.parametrize("n", [0, -2])
def test_make_mesh_rejects_non_positive(n):
    with pytest.raises(ValueError, match=f"n_devices must be >= 1, got {n}"):
        dist.make_mesh(n)


def test_shard_batch_places_a_pytree():
    mesh = dist.make_mesh(1)
    batch = {"x": np.ones((4, 3), np.float32), "y": np.arange(4)}
    placed = dist.shard_batch(mesh, batch)
    assert placed["x"].sharding.spec == P("data")
    np.testing.assert_array_equal(placed["y"], np.arange(4))


def test_shard_batch_rejects_scalars():
    with pytest.raises(ValueError, match="leading batch axis, got a scalar"):
        dist.shard_batch(dist.make_mesh(1), {"step": np.float32(1.0)})


def _run_self(flag: str, env_extra: dict, timeout: float = 180) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        [sys.executable, __file__, flag], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _shard_errors_main() -> None:
    """4 devices: divisibility errors of shard_batch and make_mesh, and a correct placement."""
    mesh = dist.make_mesh(4)
    out = {"devices": jax.device_count()}
    for name, batch in (("odd", np.zeros((6, 2))), ("tree", {"a": np.zeros((8,)), "b": np.zeros((5, 1))})):
        try:
            dist.shard_batch(mesh, batch)
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    placed = dist.shard_batch(mesh, np.arange(8.0))
    out["per_device"] = sorted(int(s.data.shape[0]) for s in placed.addressable_shards)
    try:
        dist.make_mesh(5)
    except ValueError as e:
        out["mesh5"] = str(e)
    print(json.dumps(out))


def test_shard_batch_divisibility_on_four_devices():
    proc = _run_self("--shard-errors", {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert out["odd"] == (
        "batch size 6 is not divisible by the number of devices 4; choose a batch size that is a multiple of 4"
    )
    assert "batch size 5 is not divisible" in out["tree"]
    assert out["per_device"] == [2, 2, 2, 2]
    assert out["mesh5"].startswith("requested 5 devices but only 4 available")


# ----------------------------------------------------------------------------- flags, initialize
def _parse(argv, monkeypatch, env=None):
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return dist.add_distributed_args(argparse.ArgumentParser()).parse_args(argv)


def test_flags_default_to_single_process(monkeypatch):
    args = _parse([], monkeypatch)
    assert (args.coordinator_address, args.num_processes, args.process_id) == (None, None, None)


def test_flags_read_environment_and_flags_override(monkeypatch):
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    args = _parse([], monkeypatch, env)
    assert (args.coordinator_address, args.num_processes, args.process_id) == ("10.0.0.1:1234", 4, 3)
    args = _parse(["--process-id", "1"], monkeypatch, env)
    assert args.process_id == 1


def test_bad_environment_value_is_named(monkeypatch):
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer, got 'two'"):
        _parse([], monkeypatch, {"JAX_NUM_PROCESSES": "two"})


@pytest.fixture
def init_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("argv", [[], ["--num-processes", "1"]])
def test_maybe_initialize_skips_single_process(argv, monkeypatch, init_calls):
    assert dist.maybe_initialize(_parse(argv, monkeypatch)) is False
    assert init_calls == []


def test_maybe_initialize_passes_flags(monkeypatch, init_calls):
    args = _parse(["--coordinator-address", "host0:9999", "--num-processes", "2", "--process-id", "1"], monkeypatch)
    assert dist.maybe_initialize(args) is True
    assert init_calls == [{"coordinator_address": "host0:9999", "num_processes": 2, "process_id": 1}]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--num-processes", "2", "--process-id", "0"], "needs --coordinator-address"),
        (["--num-processes", "2", "--coordinator-address", "h:1"], "needs --process-id"),
        (
            ["--num-processes", "2", "--coordinator-address", "h:1", "--process-id", "2"],
            r"--process-id must be in \[0, 2\), got 2",
        ),
        (["--num-processes", "0"], "--num-processes must be >= 1, got 0"),
    ],
)
def test_maybe_initialize_rejects_incomplete_settings(argv, match, monkeypatch, init_calls):
    with pytest.raises(ValueError, match=match):
        dist.maybe_initialize(_parse(argv, monkeypatch))
    assert init_calls == []


# ----------------------------------------------------------------------------- two real processes
N_EXAMPLES, FEATURES = 13, 3


def _dataset() -> np.ndarray:
    """Same on every process (as a shared dataset on disk would be); columns with distinct means."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(N_EXAMPLES, FEATURES)) * [1.0, 2.0, 0.5] + [5.0, -3.0, 0.0]).astype(np.float32)


def _multiprocess_main() -> None:
    """One process of a 2-process job: split, shard, global sum and BatchNorm statistics."""
    args = dist.add_distributed_args(argparse.ArgumentParser()).parse_args([])
    initialized = dist.maybe_initialize(args)  # from JAX_* environment variables
    import jaxnorm as jn

    mesh = dist.make_mesh()
    part = dist.process_slice(N_EXAMPLES, jax.process_index(), jax.process_count(), drop_remainder=True)
    batch = dist.shard_batch(mesh, _dataset()[part])
    params, stats = jn.batch_norm_init(FEATURES)

    @jax.jit
    def step(x, params, stats):
        y, stats = jn.batch_norm(x, params, stats, train=True)
        return x.sum(axis=0), jax.numpy.mean(y * y, axis=0), stats

    rep = dist.replicated(mesh)
    total, y_sq, stats = step(batch, jax.device_put(params, rep), jax.device_put(stats, rep))
    local = lambda a: np.asarray(a.addressable_shards[0].data).tolist()  # noqa: E731 - replicated
    print(
        json.dumps(
            {
                "initialized": initialized,
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "devices": jax.device_count(),
                "local_devices": jax.local_device_count(),
                "slice": [part.start, part.stop],
                "global_shape": list(batch.shape),
                "sum": local(total),
                "y_sq": local(y_sq),
                "running_mean": local(stats["running_mean"]),
                "running_var": local(stats["running_var"]),
            }
        )
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_split_data_and_share_batch_norm_statistics():
    """Two real processes on localhost (2 CPU devices each) joined by jax.distributed: each reads
    its own slice, the global batch has every used example once, and BatchNorm statistics are
    those of the global batch."""
    port = _free_port()
    procs = [
        _run_self(
            "--multiprocess",
            {
                "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },
        )
        for i in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    used = N_EXAMPLES // 2 * 2  # drop_remainder: 6 each, example 12 unused
    data = _dataset()[:used].astype(np.float64)
    mean, var = data.mean(0), data.var(0)
    for i, out in enumerate(outs):
        assert out["initialized"] is True
        assert (out["process_index"], out["process_count"]) == (i, 2)
        assert (out["devices"], out["local_devices"]) == (4, 2)
        assert out["slice"] == [i * 6, (i + 1) * 6]
        assert out["global_shape"] == [used, FEATURES]
        np.testing.assert_allclose(out["sum"], data.sum(0), rtol=1e-5)
        np.testing.assert_allclose(out["running_mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["running_var"], 0.9 + 0.1 * var * used / (used - 1), rtol=1e-5)
        # Normalized with the global statistics: mean of y^2 is var / (var + eps) per feature.
        np.testing.assert_allclose(out["y_sq"], var / (var + 1e-5), rtol=1e-5)


if __name__ == "__main__":
    {"--shard-errors": _shard_errors_main, "--multiprocess": _multiprocess_main}[sys.argv[1]]()
