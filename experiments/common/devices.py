"""Data-parallel helpers: a 1-D device mesh named ``data``, batch sharding, multi-host set-up.

JAX is the distributed engine; nothing here communicates by itself. The pieces:

* :func:`make_mesh` — a 1-D :class:`jax.sharding.Mesh` over the first ``n`` devices, axis ``"data"``.
* :func:`batch_sharding` / :func:`replicated` — ``NamedSharding`` for "split the leading (batch) axis
  over ``data``" and "a full copy on every device" (parameters, optimizer state, BN running stats).
* :func:`shard_batch` — place a host batch (any pytree of arrays) on the mesh, batch-sharded;
  :func:`put_global_batch` — the same from the *global* batch every process holds; :func:`replicate` — a
  pytree copied to every device.
* :func:`process_slice` — which contiguous part of the dataset one process (host) reads.
* :func:`add_distributed_args` / :func:`maybe_initialize` — ``--coordinator-address``,
  ``--num-processes``, ``--process-id`` (or the ``JAX_*`` environment variables) and the
  :func:`jax.distributed.initialize` call, made only when more than one process is requested.

With the batch sharded and everything else replicated, a ``jax.jit``-compiled training step is
data-parallel: XLA partitions the computation and inserts the all-reduces itself, including the ones
that make BatchNorm statistics global (mean and variance over the *global* batch of ``B`` examples,
not over each device's ``B / N``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"


def make_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis name ``"data"`` over the first ``n_devices`` of ``jax.devices()``.

    ``n_devices=None`` uses every device (all hosts' devices under ``jax.distributed``). The axis type
    is ``Auto`` so that ``jax.jit`` with sharded inputs lets XLA propagate shardings and insert
    collectives (``jax.make_mesh`` defaults to ``Explicit`` axes in recent JAX, which changes the typing
    rules of sharded code; data parallelism does not need that).

    Raises:
        ValueError: ``n_devices < 1`` or more devices requested than ``jax.device_count()``.
    """
    available = jax.device_count()
    n = available if n_devices is None else n_devices
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n_devices must be an int, got {type(n_devices).__name__}")
    if n < 1:
        raise ValueError(f"n_devices must be >= 1, got {n}")
    if n > available:
        raise ValueError(
            f"requested {n} devices but only {available} available "
            f"(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={n} before importing jax)"
        )
    if jax.process_count() > 1 and n != available:
        # Every process must own devices of the mesh, or it would hold data no device can take.
        raise ValueError(
            f"with {jax.process_count()} processes the mesh must span all {available} devices, got n_devices={n}"
        )
    devices = jax.devices()[:n]
    return jax.make_mesh((int(n),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's leading (batch) axis over the mesh's ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh (params, opt state, BN stats)."""
    return NamedSharding(mesh, P())


def _mesh_size(mesh: Mesh) -> int:
    return int(mesh.shape[DATA_AXIS])


def shard_batch(mesh: Mesh, batch: Any) -> Any:
    """Place every leaf of ``batch`` on ``mesh``, leading axis split over ``data``.

    Single process: ``batch`` is the global batch. Several processes (``jax.distributed``): ``batch`` is
    this process's part (see :func:`process_slice`), and the result is the global array made of every
    process's part, in process order.

    Raises:
        ValueError: a leaf is a scalar, or its leading size is not divisible by the number of devices
        that must share it (mesh size; local devices of the mesh when multi-process).
    """
    sharding = batch_sharding(mesh)
    multi = jax.process_count() > 1
    n_share = len(mesh.local_devices) if multi else _mesh_size(mesh)

    def place(leaf):
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError("shard_batch needs arrays with a leading batch axis, got a scalar")
        if shape[0] % n_share:
            what = "this process's batch size" if multi else "batch size"
            where = f"its {n_share} local devices" if multi else f"the number of devices {n_share}"
            raise ValueError(
                f"{what} {shape[0]} is not divisible by {where}; choose a batch size that is a multiple of {n_share}"
            )
        if multi:
            return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
        return jax.device_put(leaf, sharding)

    return jax.tree.map(place, batch)


def put_global_batch(mesh: Mesh | None, batch: Any, axis: int = 0) -> Any:
    """Place a *global* batch (the same on every process) with axis ``axis`` split over ``data``.

    Without a mesh: plain device arrays. With several processes each one hands over only the rows its own devices
    hold (:func:`process_slice`), and ``jax.make_array_from_process_local_data`` assembles the global array.
    """
    if mesh is None:
        return jax.tree.map(jnp.asarray, batch)
    spec = P(*([None] * axis), DATA_AXIS)
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def local(leaf):
        leaf = np.asarray(leaf)
        part = process_slice(leaf.shape[axis], jax.process_index(), jax.process_count())
        return jax.make_array_from_process_local_data(sharding, leaf[(slice(None),) * axis + (part,)], leaf.shape)

    return jax.tree.map(local, batch)


def replicate(mesh: Mesh | None, tree: Any) -> Any:
    """A pytree (parameters, optimizer state, running statistics) as a full copy on every device of ``mesh``.

    Every process holds the same values (same seed, same data order); with several processes the global array is
    built from each one's local copy (``device_put`` would first cross-check every leaf between processes).
    """
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf):
        local = np.asarray(leaf)
        return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

    return jax.tree.map(put, tree)


def process_slice(num_examples: int, process_index: int, process_count: int, *, drop_remainder: bool = False) -> slice:
    """The contiguous part of ``range(num_examples)`` that process ``process_index`` reads.

    Split into ``process_count`` parts of ``q = num_examples // process_count`` examples, the first
    ``r = num_examples % process_count`` parts getting one more, so the parts tile the dataset exactly:
    part ``i`` is ``[i q + min(i, r), (i + 1) q + min(i + 1, r))``.

    ``drop_remainder=True`` gives every process exactly ``q`` examples (the last ``r`` are unused).
    Use it for training: each process must run the same number of steps, since every step is a
    collective over all processes.

    Raises:
        ValueError: negative ``num_examples``, ``process_count < 1`` or ``process_index`` outside
        ``[0, process_count)``.
    """
    for name, v in (("num_examples", num_examples), ("process_index", process_index), ("process_count", process_count)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    q, r = divmod(int(num_examples), int(process_count))
    i = int(process_index)
    if drop_remainder:
        return slice(i * q, (i + 1) * q)
    return slice(i * q + min(i, r), (i + 1) * q + min(i + 1, r))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--coordinator-address``, ``--num-processes``, ``--process-id`` to ``parser``.

    Defaults come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` so a
    launcher can set the environment and run the same command line on every host.
    """
    group = parser.add_argument_group("multi-host (jax.distributed)")
    group.add_argument(
        "--coordinator-address",
        default=os.environ.get(_ENV_COORDINATOR) or None,
        help=f"host:port of process 0's coordinator service (env {_ENV_COORDINATOR})",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        default=_env_int(_ENV_NUM_PROCESSES),
        help=f"total number of processes; > 1 turns on jax.distributed (env {_ENV_NUM_PROCESSES})",
    )
    group.add_argument(
        "--process-id",
        type=int,
        default=_env_int(_ENV_PROCESS_ID),
        help=f"this process's index in [0, num-processes) (env {_ENV_PROCESS_ID})",
    )
    return parser


def distributed_kwargs(args: argparse.Namespace) -> dict | None:
    """Keyword arguments for :func:`jax.distributed.initialize`, or ``None`` for a single process.

    Raises:
        ValueError: multi-process requested with a missing coordinator address or process id, or an
        id outside ``[0, num_processes)``.
    """
    n = getattr(args, "num_processes", None)
    if n is None or n == 1:
        return None
    if n < 1:
        raise ValueError(f"--num-processes must be >= 1, got {n}")
    address = getattr(args, "coordinator_address", None)
    pid = getattr(args, "process_id", None)
    if not address:
        raise ValueError(f"--num-processes {n} needs --coordinator-address host:port (or {_ENV_COORDINATOR})")
    if pid is None:
        raise ValueError(f"--num-processes {n} needs --process-id (or {_ENV_PROCESS_ID})")
    if not 0 <= pid < n:
        raise ValueError(f"--process-id must be in [0, {n}), got {pid}")
    return {"coordinator_address": address, "num_processes": n, "process_id": pid}


def maybe_initialize(args: argparse.Namespace) -> bool:
    """Call :func:`jax.distributed.initialize` when ``args`` ask for more than one process.

    Must run before any other JAX call (device queries included). Returns whether it initialized.
    """
    kwargs = distributed_kwargs(args)
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    return True
