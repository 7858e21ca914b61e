"""experiments.common.checkpoint: atomic writes, checksums, and falling back past corrupt or partial files."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.common import checkpoint as ck
from experiments.common.checkpoint import CheckpointError, CheckpointWarning


def _state(scale=1.0):
    params = {"conv1": {"kernel": jnp.full((5, 5, 3, 6), scale), "bias": jnp.arange(6.0)}}
    tx = optax.sgd(optax.exponential_decay(0.01, 10, 0.1, staircase=True), momentum=0.9)
    opt_state = tx.init(params)
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)  # count = 1, momentum = 1
    return {"params": params, "batch_stats": {"bn1": {"running_mean": jnp.zeros(6),
                                                       "num_batches_tracked": jnp.array(3, jnp.int32)}},
            "opt_state": opt_state}


def _payload(epoch, scale=1.0):
    return {"state": jax.device_get(_state(scale)), "epoch": epoch, "history": '[{"epoch": 0, "x": NaN}]'}


def _assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_optax_state_bit_for_bit(tmp_path):
    path = ck.save_checkpoint(tmp_path, 4, _payload(4, 0.5))
    assert path.name == "epoch_0004.ckpt"
    raw, found = ck.load_latest(tmp_path)
    assert found == path and raw["epoch"] == 4 and raw["history"] == '[{"epoch": 0, "x": NaN}]'
    template = jax.device_get(_state(0.0))
    restored = ck.restore(template, raw["state"])
    _assert_tree_equal(restored, _state(0.5))
    assert type(restored["opt_state"]) is type(template["opt_state"])  # namedtuples, not dicts


def test_only_the_newest_checkpoints_are_kept_and_no_temp_files_remain(tmp_path):
    for e in range(6):
        ck.save_checkpoint(tmp_path, e, _payload(e), keep=3)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0003.ckpt", "epoch_0004.ckpt",
                                                               "epoch_0005.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0003.ckpt", "epoch_0004.ckpt", "epoch_0005.ckpt"]


def test_stale_temporary_file_is_ignored_and_cleaned(tmp_path):
    ck.save_checkpoint(tmp_path, 0, _payload(0))
    stale = tmp_path / ".epoch_0001.ckpt.tmp-99999"
    stale.write_bytes(b"half a checkpoint")  # what a kill during a write leaves behind
    assert ck.load_latest(tmp_path)[1].name == "epoch_0000.ckpt"
    ck.save_checkpoint(tmp_path, 1, _payload(1))
    assert not stale.exists()


def test_failed_write_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, 0, _payload(0))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 1, _payload(1))
    monkeypatch.undo()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0000.ckpt"]
    assert ck.load_latest(tmp_path)[0]["epoch"] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "empty", "append"])
def test_corrupt_newest_falls_back_to_previous_with_a_warning_naming_it(tmp_path, damage):
    for e in range(3):
        ck.save_checkpoint(tmp_path, e, _payload(e, float(e)))
    newest = tmp_path / "epoch_0002.ckpt"
    data = newest.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        i = len(data) - 100
        data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    elif damage == "header":
        data = b"XXXXXXXX" + data[8:]
    elif damage == "empty":
        data = b""
    else:
        data = data + b"\0"
    newest.write_bytes(data)
    with pytest.warns(CheckpointWarning, match="epoch_0002.ckpt"):
        raw, path = ck.load_latest(tmp_path)
    assert path.name == "epoch_0001.ckpt" and raw["epoch"] == 1
    _assert_tree_equal(ck.restore(jax.device_get(_state(0.0)), raw["state"]), _state(1.0))


def test_all_corrupt_returns_none_after_warning_about_each(tmp_path):
    for e in range(2):
        ck.save_checkpoint(tmp_path, e, _payload(e))
        (tmp_path / f"epoch_{e:04d}.ckpt").write_bytes(b"junk")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ck.load_latest(tmp_path) is None
    named = " ".join(str(w.message) for w in caught)
    assert "epoch_0000.ckpt" in named and "epoch_0001.ckpt" in named


def test_no_directory_or_no_checkpoints_is_none(tmp_path):
    assert ck.load_latest(tmp_path / "absent") is None
    assert ck.load_latest(tmp_path) is None


def test_decode_errors_say_what_is_wrong():
    good = ck.encode({"a": np.arange(3)})
    with pytest.raises(CheckpointError, match="partial"):
        ck.decode(good[:-1], "f")
    with pytest.raises(CheckpointError, match="checksum"):
        ck.decode(good[:-1] + bytes([good[-1] ^ 1]), "f")
    with pytest.raises(CheckpointError, match="not a jaxnorm checkpoint"):
        ck.decode(b"hello", "f")
    np.testing.assert_array_equal(ck.decode(good)["a"], np.arange(3))


def test_restore_rejects_a_different_model(tmp_path):
    raw = ck.decode(ck.encode(_payload(0)))
    other = jax.device_get(_state(0.0))
    other["params"]["conv1"]["kernel"] = np.zeros((5, 5, 3, 8), np.float32)  # 8 output channels, not 6
    with pytest.raises(CheckpointError, match=r"\(5, 5, 3, 8\)"):
        ck.restore(other, raw["state"])
