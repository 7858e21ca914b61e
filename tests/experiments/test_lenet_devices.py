"""``python -m experiments.lenet --devices N``: what data-parallel LeNet_bn has in common with one device.

The only difference between N devices and one is the order of float32 reductions (the gradient's and BatchNorm's
statistics across devices). So one training step from the same state gives the same parameters and statistics to
float32 rounding, the optimizer turns the same gradients into bit-identical updates on any placement, and the first
epoch's metrics agree to float32 rounding. Later epochs are not promised equal (SGD can amplify any rounding
difference over many updates), so they are printed, not compared.

The training set has 166 images, so each epoch ends with a batch of 6: padded to the full 16 and masked, it puts
4, 2, 0 and 0 real images on 4 devices (6 and 0 on 2) — BatchNorm's statistics must then weigh the devices by their
counts, and a device without data must not disturb them. All runs share one process with 4 forced host devices;
same global batch (16) and seed. Flags that cannot work end with exit status 2 and one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
N_FORCED = 4
TOL = 1e-4
METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc")
STEP_TOL = 2e-6  # one step: largest parameter difference / largest parameter (measured 7.4e-7; float32 ulp 6e-8)
FIRST_EPOCH_TOL = 1e-6  # the first epoch's metrics, 11 steps later (measured 9.1e-8)

WORKER = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from experiments import lenet
from experiments.common import devices, images, training

def relative(a, b):  # the largest difference of any floating leaf, relative to that leaf's largest value
    return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.asarray(x).dtype.kind == "f")

cfg = lenet.RunConfig(configs=("bn",), data=sys.argv[1])
data = images.load_dataset(cfg.data, cfg.seed)
task = lenet.make_task("bn", cfg, data)
start = task.init(cfg.seed)
order, offsets = training.epoch_order(cfg.seed, 0, len(data.train_y))
batch = training.train_batch(data, *training.padded_batches(order, 16)[0], offsets[:16])
tx = training.make_optimizer(cfg.lr, training.steps_per_epoch(len(data.train_y), 16))
grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) * jnp.sign(p + 1e-3), start["params"])
steps, updates = {}, {}
for n in (1, 2, 4):
    mesh = None if n == 1 else devices.make_mesh(n)
    compiled = training.Compiled.build(task, data, 16, mesh)
    state = devices.replicate(mesh, jax.tree.map(jnp.copy, start))
    steps[n] = jax.device_get(compiled.step(state, *devices.put_global_batch(mesh, batch))[0])
    update = jax.jit(lambda g, s: tx.update(g, s["opt_state"], s["params"])[0])
    updates[n] = jax.device_get(update(devices.replicate(mesh, grads), devices.replicate(mesh, start)))
out = {"step": {n: {k: relative(steps[1][k], steps[n][k]) for k in ("params", "batch_stats")} for n in (2, 4)},
       "same_update": {n: all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(updates[1]),
                                                                   jax.tree.leaves(updates[n]))) for n in (2, 4)},
       "runs": {n: lenet.main(["--devices", str(n), "--data", sys.argv[1], "--epochs", "2", "--config", "bn",
                               "--out", sys.argv[2] + f"/d{n}"])["bn"] for n in (1, 2, 4)}}
print(json.dumps(out))
"""


def _env() -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_FORCED}", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _lenet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.lenet", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _photos(path: Path, n_train=166, n_valid=21) -> Path:
    """Two classes of 32x32 uint8 images (bright vs dark noise) as a photo-array file."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % 2
        x = rng.integers(0, 150, (n, 32, 32, 3)) + 100 * y[:, None, None, None]
        return x.astype(np.uint8), y.astype(np.int32)

    (tx, ty), (vx, vy) = split(n_train), split(n_valid)
    np.savez_compressed(path, train_x=tx, train_y=ty, valid_x=vx, valid_y=vy, classes=np.asarray(["dark", "bright"]))
    return path


@pytest.mark.slow
def test_two_and_four_devices_equal_one_device_to_float32_rounding(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WORKER, str(_photos(tmp_path / "photos.npz")), str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = {int(k): v for k, v in out["runs"].items()}
    for n in ("2", "4"):
        assert out["same_update"][n], f"{n} devices: the same gradients gave a different optimizer update"
        assert max(out["step"][n].values()) <= STEP_TOL, out["step"][n]
        first = {k: abs(runs[1][0][k] - runs[int(n)][0][k]) for k in METRICS}
        second = max(abs(runs[1][1][k] - runs[int(n)][1][k]) for k in METRICS)  # not compared: SGD amplifies rounding
        print(f"{n} devices: one step {out['step'][n]}, first epoch {first}, second epoch up to {second:.3g}")
        assert max(first.values()) <= FIRST_EPOCH_TOL, first
    assert runs[1][1]["train_loss"] < runs[1][0]["train_loss"]  # training did something


SMALL_WORKER = """
import json, sys
from experiments import lenet
out = {}
for n_train, data in zip((1, 7, 8), sys.argv[1:4]):
    for n in (1, 2):
        out[f"{n_train} {n}"] = lenet.main(["--devices", str(n), "--data", data, "--epochs", "2", "--config", "bn",
                                            "--out", sys.argv[4] + f"/n{n_train}d{n}"])["bn"]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_training_sets_smaller_than_one_batch_train_on_two_devices_as_on_one(tmp_path):
    """1, 7 or 8 training images and batch 16: one padded batch per epoch, split 8 + 8 rows over 2 devices, so one
    device holds only padding (and with 1 image, BatchNorm1d has a single real value per channel)."""
    sets = [str(_photos(tmp_path / f"photos{n}.npz", n_train=n, n_valid=5)) for n in (1, 7, 8)]
    proc = subprocess.run([sys.executable, "-c", SMALL_WORKER, *sets, str(tmp_path)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    for n_train in (1, 7, 8):
        one, two = runs[f"{n_train} 1"], runs[f"{n_train} 2"]
        assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == [0, 1]
        diffs = {(a["epoch"], k): abs(a[k] - b[k]) for a, b in zip(one, two, strict=True) for k in METRICS}
        assert all(np.isfinite(list(diffs.values()))), (n_train, one, two)
        assert max(diffs.values()) <= TOL, (n_train, {k: v for k, v in diffs.items() if v > TOL})
        for record in one:  # accuracies over the real images only
            assert abs(record["train_acc"] * n_train - round(record["train_acc"] * n_train)) < 1e-9, record


def _assert_one_line_error(proc: subprocess.CompletedProcess, *must_contain: str) -> None:
    assert proc.returncode == 2
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
    proc = _lenet("--devices", "8", "--epochs", "1", "--config", "bn", "--data", "synthetic", "--out", str(tmp_path))
    _assert_one_line_error(proc, "8", f"only {N_FORCED} available")
    assert not (tmp_path / "metrics.json").exists()
