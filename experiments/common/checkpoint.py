"""Atomic, checksummed training checkpoints (flax.serialization msgpack) with fallback on corruption.

File format (one file per epoch, ``<dir>/epoch_<NNNN>.ckpt``)::

    b"JNCKPT01" | payload length (8 bytes, little endian) | SHA-256 of payload (32 bytes) | payload

where the payload is ``flax.serialization.msgpack_serialize`` of a dict of arrays, ints and strings.

Atomicity: the bytes go to a temporary file in the same directory, are flushed and fsync'ed, then
``os.replace``'d onto the final name (atomic on POSIX), and the directory is fsync'ed. A process killed at any
instant therefore leaves either the previous set of complete checkpoints or that set plus one new complete
file -- never a half-written ``epoch_*.ckpt``. Leftover temporary files are ignored and removed on the next
save. Damage after the fact (a truncated copy, a flipped bit) fails the length or checksum test;
:func:`load_latest` then warns, naming the file, and falls back to the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from experiments.common.training import epoch_keys

MAGIC = b"JNCKPT01"
_HEADER = len(MAGIC) + 8 + 32
_NAME = re.compile(r"^epoch_(\d{4,})\.ckpt$")
KEEP = 3  # complete checkpoints kept per directory: the newest plus fallbacks


class CheckpointError(ValueError):
    """A checkpoint file is unusable (corrupt, partial, or from an incompatible run)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or partial); an older one is used instead."""


def checkpoint_path(directory: str | os.PathLike, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:04d}.ckpt"


def encode(payload: dict[str, Any]) -> bytes:
    """Header + checksum + msgpack of ``payload`` (a pytree of arrays / ints / strings / dicts)."""
    body = serialization.msgpack_serialize(serialization.to_state_dict(payload))
    return MAGIC + struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def decode(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Inverse of :func:`encode`; :class:`CheckpointError` naming ``source`` if anything does not match."""
    if len(data) < _HEADER or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{source} is not a jaxnorm checkpoint (bad header, {len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[len(MAGIC): len(MAGIC) + 8])
    digest, body = data[len(MAGIC) + 8: _HEADER], data[_HEADER:]
    if len(body) != length:
        raise CheckpointError(f"{source} is partial: {len(body)} of {length} payload bytes")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{source} is corrupt: checksum mismatch")
    try:
        return serialization.msgpack_restore(body)
    except Exception as e:  # noqa: BLE001 -- a valid checksum over bad msgpack is still a bad file; name it
        raise CheckpointError(f"{source} cannot be decoded: {type(e).__name__}: {e}") from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike, epoch: int, payload: dict[str, Any], keep: int = KEEP) -> Path:
    """Atomically write ``payload`` as the checkpoint of ``epoch``; keep only the newest ``keep`` files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, epoch)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    data = encode(payload)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep] if keep else []:
        old.unlink(missing_ok=True)
    for stale in directory.glob(".epoch_*.ckpt.tmp-*"):  # left by a process killed mid-write
        if stale != tmp:
            stale.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete-looking checkpoint files in ``directory``, oldest epoch first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(directory: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``directory`` that passes its checks, as ``(raw payload, path)``; None if none.

    Each newer file that fails (partial, corrupt) is reported with a :class:`CheckpointWarning` naming it,
    then the previous one is tried.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            return decode(path.read_bytes(), str(path)), path
        except (CheckpointError, OSError) as e:
            warnings.warn(f"skipping checkpoint {path}: {e}; falling back to the previous one",
                          CheckpointWarning, stacklevel=2)
    return None


def restore(template: Any, raw: Any) -> Any:
    """Put the raw (state-dict) contents of a checkpoint into the structure of ``template``."""
    try:
        restored = serialization.from_state_dict(template, raw)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint does not match this model/optimizer: {e}") from None

    def sig(a):  # arrays and jax.ShapeDtypeStruct templates alike
        return tuple(np.shape(a)), np.dtype(getattr(a, "dtype", None) or np.asarray(a).dtype)

    want = [sig(a) for a in jax.tree.leaves(template)]
    got = [sig(a) for a in jax.tree.leaves(restored)]
    if want != got:
        if len(want) != len(got):
            bad = (f"{len(want)} arrays", f"{len(got)}")
        else:
            bad = next((w, g) for w, g in zip(want, got, strict=True) if w != g)
        raise CheckpointError(f"checkpoint does not match this model/optimizer: expected {bad[0]}, got {bad[1]}")
    return restored


# ------------------------------------------------------------------------------------------- training runs
def save_epoch(directory: str | os.PathLike, epoch: int, state: Any, history: list, nan_at, meta: dict,
               seed: int) -> Path:
    """Checkpoint a training run after ``epoch``: state, history, the NaN report, the run's settings (``meta``,
    checked on resume) and the data PRNG state of the next epoch (so a resume with another seed is refused)."""
    data_key = jax.random.key_data(epoch_keys(seed, epoch + 1)[0])
    payload = {"state": jax.device_get(state), "epoch": epoch, "rng_next_epoch": np.asarray(data_key),
               "history": json.dumps(history), "nan_at": json.dumps(nan_at), "meta": json.dumps(meta)}
    return save_checkpoint(directory, epoch, payload)


def resume(directory: str | os.PathLike, template: Any, meta: dict, seed: int):
    """``(state, next epoch, history, nan_at, path)`` from the newest usable checkpoint, or None if there is none.

    Raises :class:`CheckpointError` when the checkpoint belongs to a run with other settings or another seed.
    """
    found = load_latest(directory)
    if found is None:
        return None
    raw, path = found
    try:
        got = json.loads(raw["meta"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} has no readable run settings") from None
    diff = {k: (got.get(k), v) for k, v in meta.items() if got.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{path} is from a different run ({what}); use another --checkpoint-dir")
    epoch = int(raw["epoch"])
    if not np.array_equal(np.asarray(raw["rng_next_epoch"]), jax.random.key_data(epoch_keys(seed, epoch + 1)[0])):
        raise CheckpointError(f"{path}: saved PRNG state does not match seed {seed}")
    nan_at = json.loads(raw["nan_at"])
    return (restore(template, raw["state"]), epoch + 1, json.loads(raw["history"]),
            tuple(nan_at) if nan_at else None, path)
