"""experiments.models / train / lenet: PyTorch parity of the pieces, one train step, the CLI end to end,
divergence handling, and kill-and-resume.

Independent oracles: the lesson's PyTorch LeNet (weights copied in), torch.optim.SGD + StepLR for the
optimizer and schedule, the fan-in formulas of PyTorch's default init, and an uninterrupted run for resume.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxnorm as jn
from experiments import lenet
from experiments.common import compile, images, models, steps, training

ROOT = Path(__file__).resolve().parents[2]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def _cli(*args, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.lenet", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600, **kw)


def _tiny_folder(root: Path, n_train=10, n_valid=3, seed=0) -> Path:
    """Two classes of 12x12 PNGs (bright vs dark noise), n_train + n_valid per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for label, (lo, hi) in enumerate(((0, 120), (130, 256))):
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(lo, hi, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _photo_arrays(path: Path, n_train: int, n_valid=4, seed=0) -> Path:
    """Two classes of 32x32 images (dark vs bright noise) as a photo-array file (``images.save_arrays``)."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = (np.arange(n) % 2).astype(np.int32)
        return (rng.integers(0, 150, (n, 32, 32, 3)) + 100 * y[:, None, None, None]).astype(np.uint8), y

    (tx, ty), (vx, vy) = split(n_train), split(n_valid)
    return images.save_arrays(images.Photos(tx, ty, vx, vy, ["dark", "bright"]), path)


# ------------------------------------------------------------------------------------------------ models
def _torch_lenet(torch):
    nn, F = torch.nn, torch.nn.functional

    class LeNet(nn.Module):  # the lesson's LeNet (seed.md / "3.1 model creation")
        def __init__(self, classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, classes)

        def forward(self, x):
            out = F.max_pool2d(F.relu(self.conv1(x)), 2)
            out = F.max_pool2d(F.relu(self.conv2(out)), 2)
            out = out.view(out.size(0), -1)
            out = F.relu(self.fc1(out))
            out = F.relu(self.fc2(out))
            return self.fc3(out)

    return LeNet


@pytest.mark.parametrize("blocked", [False, True])
def test_lenet_matches_the_lessons_pytorch_lenet_with_copied_weights(blocked):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tnet = _torch_lenet(torch)(classes=2).eval()
    sd = {k: v.detach().numpy() for k, v in tnet.state_dict().items()}
    params = {}
    for name in ("conv1", "conv2"):  # PyTorch (out, in, kh, kw) -> Flax (kh, kw, in, out)
        params[name] = {"kernel": sd[f"{name}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"{name}.bias"]}
    for name in ("fc1", "fc2", "fc3"):  # (out, in) -> (in, out); fc1 works because of the NCHW flatten
        params[name] = {"kernel": sd[f"{name}.weight"].T, "bias": sd[f"{name}.bias"]}
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    want = tnet(torch.from_numpy(x)).detach().numpy()
    got = models.LeNet(blocked=blocked).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_a_blocked_kernel_is_the_direct_kernel_at_every_tap():
    """blocked_kernel's tap (ky, kx, (dy, dx, c)) of output channel (py, px, o) is kernel[2ky+dy-py, 2kx+dx-px, c, o],
    zero outside the 5x5 kernel: checked entry by entry against that formula."""
    kernel = np.random.default_rng(0).normal(size=(5, 5, 2, 3)).astype(np.float32)
    got = np.asarray(models.blocked_kernel(jnp.asarray(kernel))).reshape(3, 3, 2, 2, 2, 2, 2, 3)
    for ky, kx, dy, dx, c, py, px, o in np.ndindex(3, 3, 2, 2, 2, 2, 2, 3):
        i, j = 2 * ky + dy - py, 2 * kx + dx - px
        want = kernel[i, j, c, o] if 0 <= i < 5 and 0 <= j < 5 else 0.0
        assert got[ky, kx, dy, dx, c, py, px, o] == want


@pytest.mark.parametrize("config", ["plain", "bn"])
def test_blocked_convolutions_compute_the_direct_models_values_to_float32_rounding(config):
    """make_model's LeNet and LeNet_bn (blocked_conv, the experiments' models) against the same models with
    nn.Conv and a reshape pool: the same initial parameters bit for bit; the same logits, batch statistics and
    gradients to float32 rounding (the convolutions sum in another order); a padded, masked batch included."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 32, 32, 3)), jnp.float32)
    y, mask = jnp.array([0, 1, 1, 0, 1]), jnp.array([True, True, True, True, False])
    direct, blocked = models.make_model(config, blocked=False), models.make_model(config)
    variables = direct.init(jax.random.key(3), x)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(blocked.init(jax.random.key(3), x)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def loss(model, params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True, mask=mask,
                                      mutable=["batch_stats"])
        return training.cross_entropy(logits, y, mask)[0], (logits, updates)

    @jax.jit
    def both(params):
        return [jax.value_and_grad(functools.partial(loss, m), has_aux=True)(params) for m in (direct, blocked)]

    (want, grads_want), (got, grads_got) = both(variables["params"])
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):  # loss, logits, batch statistics
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    # Gradients to 1e-5 of the largest one: a conv bias before BN has a gradient of 0 plus rounding (measured
    # 5e-8 against 0.53 for conv1's kernel), and BN's weights carry a few ulp of the conv's reordered sums.
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_want))
    for a, b in zip(jax.tree.leaves(grads_want), jax.tree.leaves(grads_got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * scale)
    evals = [m.apply(variables, x, train=False) for m in (direct, blocked)]
    np.testing.assert_allclose(np.asarray(evals[1]), np.asarray(evals[0]), rtol=1e-5, atol=1e-6)


def test_nnx_lenet_computes_blocked_as_linen_does():
    """NnxLeNet(blocked=True), the --api nnx model, against the linen blocked model with the same weights."""
    from flax import nnx

    from experiments.common.models_nnx import NnxLeNet

    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 32, 32, 3)), jnp.float32)
    variables = models.LeNetBN().init(jax.random.key(0), x)
    nnx_model = nnx.eval_shape(lambda: NnxLeNet(2, bn=True, rngs=nnx.Rngs(0)))
    jn.torch_to_nnx(jn.flax_to_torch_state_dict(variables), nnx_model)
    nnx_model.eval()
    np.testing.assert_allclose(np.asarray(nnx_model(x)), np.asarray(models.LeNetBN().apply(variables, x)),
                               rtol=1e-6, atol=1e-6)


def test_equinox_lenet_computes_as_linen_does_in_training_and_eval_mode():
    """EqxLeNet, the --api equinox model, vmapped over the batch with a linen LeNet_bn's weights loaded: the linen
    model's logits and running statistics (train mode, a padded batch) and eval logits."""
    eqx = pytest.importorskip("equinox")
    import jaxnorm.equinox as jeqx
    from experiments.common import steps_equinox

    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 32, 32, 3)), jnp.float32)
    mask = jnp.array([True, True, True, False])
    variables = compile.jit_quick_compile(models.LeNetBN().init)(jax.random.key(0), x)
    parts = steps_equinox.Parts.of("bn", 2)
    model, state = jeqx.torch_to_equinox(jn.flax_to_torch_state_dict(variables), parts.abstract, parts.state)

    @eqx.filter_jit
    def equinox(model, state, x, mask):
        train = jax.vmap(lambda image, valid: model(image, state, mask=valid), axis_name="batch",
                         out_axes=(0, None))(x, mask)
        return train, jax.vmap(lambda image: eqx.nn.inference_mode(model)(image, train[1])[0])(x)

    @jax.jit
    def linen(variables, x, mask):
        train = models.LeNetBN().apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
        return train, models.LeNetBN().apply({**variables, **train[1]}, x)

    ((got, new_state), got_eval), ((want, updates), want_eval) = equinox(model, state, x, mask), linen(variables, x,
                                                                                                         mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    for bn, stats in parts.batch_stats(new_state).items():
        for key, value in stats.items():
            np.testing.assert_allclose(np.asarray(value), np.asarray(updates["batch_stats"][bn][key]), rtol=1e-6,
                                       atol=1e-7, err_msg=f"{bn}.{key}")
    np.testing.assert_allclose(np.asarray(got_eval), np.asarray(want_eval), rtol=1e-6, atol=1e-6)


def test_equinox_lenet_refuses_a_batch():
    eqx = pytest.importorskip("equinox")
    from experiments.common import steps_equinox

    parts = steps_equinox.Parts.of("plain", 2)
    with pytest.raises(ValueError, match=r"one image of shape \(32, 32, 3\) \(vmap it over the batch\), got \(2, 32"):
        eqx.filter_eval_shape(lambda model, x: model(x, parts.state), parts.abstract, jnp.zeros((2, 32, 32, 3)))


def test_a_blocked_lenet_refuses_layer_norm():
    with pytest.raises(ValueError, match="not 'ln'"):
        models.LeNet(norm="ln", blocked=True).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_parameter_names_and_shapes_are_pytorchs():
    x = jnp.zeros((1, 32, 32, 3))
    shapes = jax.tree.map(jnp.shape, jax.eval_shape(models.LeNetBN().init, jax.random.key(0), x))
    assert shapes["params"]["conv1"] == {"kernel": (5, 5, 3, 6), "bias": (6,)}
    assert shapes["params"]["fc1"] == {"kernel": (400, 120), "bias": (120,)}
    assert shapes["params"]["bn3"] == {"weight": (120,), "bias": (120,)}
    assert set(shapes["batch_stats"]) == {"bn1", "bn2", "bn3"}
    assert set(jax.eval_shape(models.LeNet().init, jax.random.key(0), x)["params"]) == {"conv1", "conv2", "fc1", "fc2",
                                                                                         "fc3"}


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\), got \(2, 3, 32, 32\)"):
        models.LeNet().init(jax.random.key(0), jnp.zeros((2, 3, 32, 32)))


def test_plain_init_is_pytorchs_default_and_init_is_the_lessons():
    x = jnp.zeros((1, 32, 32, 3))
    # Compiled as the runs compile it (equal to the default compilation to one ulp: tested below)
    plain = compile.jit_quick_compile(models.make_model("plain").init)(jax.random.key(0), x)["params"]
    lesson = compile.jit_quick_compile(models.make_model("init").init)(jax.random.key(0), x)["params"]
    for name, fan_in in (("conv1", 75), ("conv2", 150), ("fc1", 400), ("fc2", 120), ("fc3", 84)):
        bound = 1 / math.sqrt(fan_in)
        k, b = np.asarray(plain[name]["kernel"]), np.asarray(plain[name]["bias"])
        assert np.abs(k).max() <= bound and np.abs(b).max() <= bound
        assert abs(k.std() - bound / math.sqrt(3)) < 0.25 * bound / math.sqrt(3)  # U(-a, a) has std a/sqrt 3
        np.testing.assert_array_equal(np.asarray(lesson[name]["bias"]), 0.0)
    fc1 = np.asarray(lesson["fc1"]["kernel"])
    assert abs(fc1.std() - 1.0) < 0.02 and abs(fc1.mean()) < 0.02  # N(0, 1), 48000 draws
    conv2 = np.asarray(lesson["conv2"]["kernel"])
    xavier = math.sqrt(2 / (6 * 25 + 16 * 25))
    assert abs(conv2.std() - xavier) < 0.1 * xavier


# ------------------------------------------------------------------------------------------------ optimizer
def test_optax_sgd_with_step_lr_matches_torch_per_epoch():
    torch = pytest.importorskip("torch")
    steps_per_epoch, epochs = 3, 23
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    target = np.array([0.3, 0.1, -0.2], np.float32)

    tw = torch.tensor(w0.copy(), requires_grad=True)
    opt = torch.optim.SGD([tw], lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
    tx = training.make_optimizer(0.05, steps_per_epoch)
    w = jnp.asarray(w0)
    state = tx.init(w)
    grad = jax.grad(lambda p, t: jnp.sum((p - t) ** 2 * jnp.arange(1.0, 4.0)))
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            t = target * (1 + 0.1 * i)
            opt.zero_grad()
            (((tw - torch.from_numpy(t)) ** 2) * torch.arange(1.0, 4.0)).sum().backward()
            opt.step()
            updates, state = tx.update(grad(w, jnp.asarray(t)), state, w)
            w = w + updates
        sched.step()
        np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"epoch {epoch}")


def test_step_lr_schedule_values():
    s = training.step_lr(0.01, 38)
    assert float(s(0)) == pytest.approx(0.01) and float(s(379)) == pytest.approx(0.01)
    assert float(s(380)) == pytest.approx(0.001) and float(s(760)) == pytest.approx(1e-4)


def test_every_example_is_used_once_per_epoch_and_the_last_batch_is_padded_and_masked():
    order = np.random.default_rng(0).permutation(38)
    batches = training.padded_batches(order, 16)
    assert [len(idx) for idx, _ in batches] == [16, 16, 16] and [int(m.sum()) for _, m in batches] == [16, 16, 6]
    np.testing.assert_array_equal(np.concatenate([idx[m] for idx, m in batches]), order)
    assert training.steps_per_epoch(600, 16) == 38 and training.steps_per_epoch(160, 16) == 10


# ------------------------------------------------------------------------------------------------ steps
@pytest.mark.parametrize("config", ["plain", "bn"])
def test_one_jitted_train_step_decreases_the_loss(config):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(np.arange(8) % 2, dtype=jnp.int32)
    task = steps.linen_task(models.make_model(config), training.make_optimizer(0.05, 10), x[:1])
    state = task.init(0)
    step = jax.jit(task.train_step, compiler_options=compile.compile_options("step"))  # as the runs compile it
    mask = jnp.ones(8, bool)
    losses = []
    for _ in range(5):
        state, (loss, correct) = step(state, x, y, mask)
        losses.append(float(loss))
        assert 0 <= int(correct) <= 8
    assert losses[-1] < losses[0] - 1e-3, losses
    if config == "bn":
        assert int(state["batch_stats"]["bn1"]["num_batches_tracked"]) == 5


def test_a_padded_masked_batch_computes_what_the_short_batch_computes():
    """The last batch is padded to the full size with a mask: loss, gradients and BN statistics are those of its
    real examples (the padding holds garbage here: another batch's images and labels)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(16, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 2, 16), jnp.int32)
    task = steps.linen_task(models.make_model("bn"), training.make_optimizer(0.05, 10), x[:1])
    state = task.init(0)
    step = jax.jit(task.train_step, compiler_options=compile.compile_options("step"))  # as the runs compile it
    short, (loss_s, correct_s) = step(state, x[:6], y[:6], jnp.ones(6, bool))
    padded, (loss_p, correct_p) = step(state, x, y, jnp.arange(16) < 6)
    np.testing.assert_allclose(float(loss_p), float(loss_s), rtol=1e-6)
    assert int(correct_p) == int(correct_s)
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(short), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def test_an_epoch_is_a_function_of_seed_and_epoch():
    ds = images.synthetic_dataset(0, n_train=20, n_valid=5)
    task = steps.linen_task(models.make_model("bn"), training.make_optimizer(0.01, 2), ds.train_x[:1])
    s0 = task.init(0)
    timer = training.Timer()
    compiled = training.Compiled.build(task, ds, 16, None)

    def run(epoch):
        state = jax.tree.map(jnp.copy, s0)
        return training.train_epoch(compiled, state, ds, seed=7, epoch=epoch, batch_size=16, timer=timer)

    a, b, c = run(3), run(3), run(4)
    assert len(a[1].losses) == 2 and a[1].seen == 20  # one batch of 16, one of 4 (padded to 16, masked)
    np.testing.assert_array_equal(a[1].losses, b[1].losses)
    jax.tree.map(np.testing.assert_array_equal, a[0], b[0])
    assert not np.array_equal(a[1].losses, c[1].losses)
    assert set(timer.seconds) == {"train"} and timer.images == 60


def test_runs_trained_side_by_side_on_threads_equal_runs_trained_in_turn_bit_for_bit():
    """training.fit with a thread per run (what LeNet's three configs do on one device) against workers=1: the same
    states, histories, non-finite reports and counts, bit for bit; a run that starts later (resumed) joins at its
    epoch, and --on-nan stop ends the diverging run while the others go on."""
    ds = images.synthetic_dataset(0, n_train=100, n_valid=5)  # 7 steps an epoch: init diverges in the first
    cfg = lenet.RunConfig(epochs=3, on_nan="stop")
    tasks = {c: lenet.make_task(c, cfg, ds) for c in ("plain", "init", "bn")}
    programs = {a: training.Compiled.build(tasks[c], ds, 16, None) for a, c in (("lenet", "plain"), ("bn", "bn"))}
    initial = training.initial_states(tasks, 1)

    def fit(workers):
        timer = training.Timer()
        runs = {c: training.Run(programs[lenet.arch_of(c)], jax.tree.map(jnp.copy, initial[c]),
                                start_epoch=1 if c == "bn" else 0, desc=c, log=lambda line: None) for c in tasks}
        return training.fit(runs, ds, epochs=3, seed=7, batch_size=16, timer=timer, on_nan="stop",
                            workers=workers), timer

    (together, timer3), (in_turn, timer1) = fit(3), fit(1)
    assert [len(in_turn[c].history) for c in tasks] == [3, 1, 2] and in_turn["init"].nan_at[0] == 0
    assert timer3.images == timer1.images == 100 * 6 and set(timer3.seconds) == {"train", "eval"}
    for c in tasks:
        assert json.dumps(together[c].history) == json.dumps(in_turn[c].history) and together[c].nan_at == \
            in_turn[c].nan_at
        for a, b in zip(jax.tree.leaves(together[c].state), jax.tree.leaves(in_turn[c].state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------------ CLI
# In process: the command line itself (python -m, exit status) is run by the slow tests and test_readme.py.
def test_help_lists_the_designed_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        lenet.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--out", "--config", "--epochs", "--batch-size", "--lr", "--seed", "--checkpoint-dir",
                 "--resume", "--devices", "--on-nan", "--export-folded", "--inspect", "--api", "--compile-cache"):
        assert flag in out, flag


def test_a_run_fills_the_compilation_cache_it_is_given_and_the_next_run_loads_every_program_from_it(tmp_path):
    """--compile-cache DIR: the first run writes its compiled programs there; the second compiles nothing new (no
    new entry) and trains to the same metrics. The suite's own cache (tests/conftest.py) is set again afterwards."""
    suite_cache = jax.config.jax_compilation_cache_dir
    cache = tmp_path / "xla"
    args = ["--data", "synthetic", "--epochs", "1", "--config", "plain", "--compile-cache", str(cache)]
    first = lenet.main([*args, "--out", str(tmp_path / "first")])
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) >= 3  # at least the initialization, the step and the evaluation
    second = lenet.main([*args, "--out", str(tmp_path / "second")])
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert second == first
    assert jax.config.jax_compilation_cache_dir == suite_cache


def test_the_compilation_cache_is_the_callers_unless_a_folder_or_off_is_given(tmp_path):
    configured = jax.config.jax_compilation_cache_dir  # the suite's (tests/conftest.py), or the caller's
    with compile.persistent_cache(None) as folder:
        assert folder == (configured or str(compile.default_cache_dir()))
    with compile.persistent_cache(str(tmp_path)) as folder:
        assert folder == str(tmp_path) and jax.config.jax_persistent_cache_min_compile_time_secs == 0
    with compile.persistent_cache("off") as folder:
        assert folder is None and not jax.config.jax_enable_compilation_cache
        with compile.persistent_cache(None) as inner:  # JAX_ENABLE_COMPILATION_CACHE=false: the caller's "off"
            assert inner is None and not jax.config.jax_enable_compilation_cache
    assert jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir == configured


def test_resume_without_checkpoint_dir_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        lenet.main(["--resume", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "lenet: error: --resume needs --checkpoint-dir"


@pytest.mark.slow
def test_synthetic_run_writes_metrics_curves_timing_and_precise_bn(tmp_path, capsys):
    metrics = lenet.main(["--data", "synthetic", "--out", str(tmp_path), "--epochs", "2"])
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    assert "Training:Epoch[000/002] Iteration[010/010] Loss:" in out and "Valid:   Epoch[001/002]" in out
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved) == ["plain", "init", "bn"] and [r["epoch"] for r in saved["bn"]] == [0, 1]
    assert set(saved["bn"][0]) == {"epoch", "train_loss", "train_acc", "valid_loss", "valid_acc"}
    assert saved["bn"] == metrics["bn"]
    assert saved["bn"][1]["train_loss"] < saved["bn"][0]["train_loss"]  # the striped set is easy for LeNet_bn
    # the lesson's initialize_weights (N(0, 1) linear layers) diverges; --on-nan continue trains every epoch
    assert all(math.isnan(r["train_loss"]) for r in metrics["init"]) and saved["init"][0]["train_loss"] is None
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert set(timing) >= {"wall", "data", "compile", "train", "eval", "train_images", "train_images_per_s"}
    assert timing["train_images"] == 3 * 2 * 160
    assert sum(timing[k] for k in ("data", "compile", "train", "eval")) <= timing["wall"]
    precise = json.loads((tmp_path / "bn_extras.json").read_text())["precise_bn"]
    assert precise["batches"] == 10 and 0 <= precise["valid_acc_after"] <= 1


def _check_trains_like_linen(api: str, tmp_path) -> None:
    """One synthetic epoch with ``--api api`` gives linen's metrics for every config, to float32 rounding."""
    runs = {a: lenet.main(["--data", "synthetic", "--out", str(tmp_path / a), "--epochs", "1", "--api", a])
            for a in ("linen", api)}
    assert list(runs[api]) == list(runs["linen"]) == ["plain", "init", "bn"]
    for config, linen_history in runs["linen"].items():
        for got, want in zip(runs[api][config], linen_history, strict=True):
            assert set(got) == set(want)
            for key, value in want.items():
                np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7, err_msg=f"{config} {key}")


@pytest.mark.slow
def test_nnx_models_train_to_the_linen_models_metrics(tmp_path):
    """``--api nnx``: the same three configs as NNX modules with ``nnx.Optimizer``, from the same initial weights."""
    _check_trains_like_linen("nnx", tmp_path)


@pytest.mark.slow
def test_equinox_models_train_to_the_linen_models_metrics(tmp_path):
    """``--api equinox``: the same three configs as Equinox models (jaxnorm.equinox BN, vmapped over the batch), from
    the linen init's weights. Measured: LeNet's configs give linen's metrics exactly, LeNet_bn's differ by at most
    1.7e-8 relative (1.0e-7 after 3 epochs), the --api nnx run's numbers to the last digit."""
    pytest.importorskip("equinox")
    _check_trains_like_linen("equinox", tmp_path)
    assert json.loads((tmp_path / "equinox" / "run.json").read_text())["api"] == "equinox"
    assert "precise_bn" in json.loads((tmp_path / "equinox" / "bn_extras.json").read_text())


def test_api_equinox_without_equinox_installed_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "equinox", None)  # import equinox now raises ImportError
    with pytest.raises(SystemExit) as exit_:
        lenet.main(["--api", "equinox", "--data", "synthetic", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lenet: error: --api equinox needs Equinox, which is not installed")
    assert "pip install 'jaxnorm[equinox]'" in err[0]
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("n_train", [1, 7, 8])
def test_a_training_set_smaller_than_one_batch_trains_one_short_padded_batch_per_epoch(tmp_path, capsys, n_train):
    """Batch 16 with 1, 7 or 8 training images (8: the folder of 4 photos per class that crashed): every epoch is one
    batch padded to 16 and masked, so only the real images count."""
    if n_train == 8:
        data = _tiny_folder(tmp_path / "data", n_train=4, n_valid=2)
    else:
        data = _photo_arrays(tmp_path / "photos.npz", n_train)
    metrics = lenet.main(["--data", str(data), "--config", "bn", "--epochs", "2", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert out.count("Iteration[001/001]") == 4  # a Training and a Valid line per epoch
    assert [r["epoch"] for r in metrics["bn"]] == [0, 1]
    for record in metrics["bn"]:
        assert all(math.isfinite(v) for v in record.values()), record
        correct = record["train_acc"] * n_train  # an accuracy over the real images: a whole number of them
        assert abs(correct - round(correct)) < 1e-9 and 0 <= round(correct) <= n_train, record
    assert json.loads((tmp_path / "out" / "timing.json").read_text())["train_images"] == 2 * n_train
    assert "precise BN skipped: fewer training images than one batch" in out


def test_inspecting_lenet_bn_on_one_training_image_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        lenet.main(["--data", str(_photo_arrays(tmp_path / "photos.npz", 1)), "--config", "bn", "--inspect",
                    "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lenet: error: --inspect needs at least 2 training images for LeNet_bn (its train-mode BatchNorm1d has no "
        "variance over 1 image), got 1"]


def test_a_build_without_training_or_validation_images_is_a_clear_error():
    ds = images.synthetic_dataset(0, n_train=4, n_valid=2)
    task = steps.linen_task(models.make_model("bn"), training.make_optimizer(0.01, 1), ds.train_x[:1])
    empty = dataclasses.replace(ds, valid_x=ds.valid_x[:0], valid_y=ds.valid_y[:0])
    with pytest.raises(ValueError, match=r"at least 1 training and 1 validation example, got 4 and 0 \(SYNTHETIC"):
        training.Compiled.build(task, empty, 16, None)


def test_divergence_is_reported_and_stop_keeps_the_metrics_up_to_there(tmp_path, capsys):
    metrics = lenet.main(["--data", "synthetic", "--out", str(tmp_path), "--epochs", "4", "--config", "init",
                          "--on-nan", "stop"])
    out = capsys.readouterr().out
    assert "training loss became nan at epoch 0 iteration" in out and "stopping (--on-nan stop)" in out
    assert len(metrics["init"]) == 1 and math.isnan(metrics["init"][0]["train_loss"])
    assert "yes (epoch 0, iteration" in out


def test_the_embedded_photos_are_the_default_data():
    ds = images.load_dataset(None)
    assert ds.source == images.EMBEDDED_LABEL and ds.classes == ["cat", "dog"]
    assert ds.train_x.shape == (600, 32, 32, 3) and np.bincount(ds.train_y).tolist() == [300, 300]
    assert ds.valid_x.shape == (100, 32, 32, 3) and np.bincount(ds.valid_y).tolist() == [50, 50]


def test_the_embedded_photos_are_the_folder_decoded_by_the_committed_script(tmp_path):
    folder = ROOT.parent / "shared" / "data" / "cats_dogs"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here (the photos live outside the repository)")
    made = tmp_path / "made.npz"
    proc = subprocess.run([sys.executable, "scripts/make_embedded_photos.py", str(folder), "--out", str(made)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(made) as new, np.load(images.EMBEDDED) as committed:
        for key in ("train_x", "train_y", "valid_x", "valid_y", "classes", "train_files"):
            np.testing.assert_array_equal(new[key], committed[key], err_msg=key)


@pytest.mark.slow
def test_all_configs_on_a_folder_with_export_and_inspect(tmp_path, capsys):
    data = _tiny_folder(tmp_path / "data", n_train=10, n_valid=3)  # 20 train: a batch of 16 and one of 4
    folded = tmp_path / "folded.msgpack"
    metrics = lenet.main(["--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "2",
                          "--export-folded", str(folded), "--inspect"])
    out = capsys.readouterr().out
    assert list(metrics) == ["plain", "init", "bn"]
    assert "Iteration[002/002]" in out  # 16 + 4
    assert "first non-finite output" in out or "all outputs finite" in out  # the --inspect tables
    assert "fc1" in out and "bn3" in out
    # the exported, folded LeNet gives LeNet_bn's eval-mode logits
    from flax import serialization

    params = serialization.msgpack_restore(folded.read_bytes())["params"]
    assert set(params) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    line = next(line for line in out.splitlines() if "max |logit difference|" in line)
    assert float(line.rsplit(":", 1)[1]) < 1e-4
    extras = json.loads((tmp_path / "out" / "bn_extras.json").read_text())
    assert extras["folded_max_logit_diff"] < 1e-4


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics_and_skips_a_corrupt_checkpoint(tmp_path):
    data = _tiny_folder(tmp_path / "data", n_train=10, n_valid=3)
    common = ["--data", str(data), "--config", "bn", "--epochs", "40"]

    reference = _cli(*common, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    want = json.loads((tmp_path / "ref" / "metrics.json").read_text())

    ckdir = tmp_path / "ck"
    args = [sys.executable, "-m", "experiments.lenet", *common, "--out", str(tmp_path / "killed"),
            "--checkpoint-dir", str(ckdir)]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second = ckdir / "bn" / "epoch_0001.ckpt"  # two checkpoints: one to damage, one to fall back to
    deadline = time.monotonic() + 300
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists()
    saved = sorted(p.name for p in (ckdir / "bn").glob("epoch_*.ckpt"))
    assert len(saved) >= 2 and "epoch_0039.ckpt" not in saved, saved

    newest = ckdir / "bn" / saved[-1]
    newest.write_bytes(newest.read_bytes()[:-10])  # damage the newest checkpoint: resume must skip it
    resumed = _cli(*common, "--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ckdir), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"lenet: warning: skipping checkpoint {newest}" in resumed.stderr
    assert "resumed from" in resumed.stdout
    got = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert got == want  # bit-for-bit: every epoch's order and crops come from (seed, epoch) only


def test_the_quickly_compiled_epoch_order_is_the_default_compiled_one_bit_for_bit():
    for seed, epoch, n in ((1, 0, 600), (1, 9, 166), (7, 3, 5)):
        args = (np.int32(seed), np.int32(epoch), jnp.arange(n))
        quick, default = training._order_compiled(*args), jax.jit(training._order)(*args)
        for a, b in zip(quick, default, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_initialization_compiled_for_a_single_run_equals_the_default_to_one_ulp():
    """experiments.common.compile.QUICK_COMPILE (no backend optimization) only makes compiling faster: LeNet_bn's initial
    weights equal the default-compiled ones to one float32 ulp of their range (the uniform draws' affine map rounds
    differently without backend optimization)."""
    model, x = models.LeNetBN(), jnp.zeros((1, 32, 32, 3))

    def init(seed):
        return model.init(training.init_key(seed), x, train=False)

    fast, default = compile.jit_quick_compile(init)(1), jax.jit(init)(1)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        # the draws are U(-bound, bound) with bounds up to 0.115 (conv1): one ulp there is 2**-27 = 7.45e-9
        assert np.max(np.abs(a - b), initial=0) <= 2.0 ** -27, (a, b)


def test_initial_states_of_several_tasks_from_one_program_equal_each_tasks_own_init_bit_for_bit():
    """training.initial_states compiles the traceable initializers together (shared draws computed once); a task
    without one (NNX's) is initialized by its own ``init``."""
    x = jnp.zeros((1, 32, 32, 3))
    tasks = {config: steps.linen_task(models.make_model(config), training.make_optimizer(0.01, 38), x)
             for config in ("plain", "bn")}
    tasks["untraceable"] = training.Task(init=lambda seed: {"seed": seed}, train_step=None, eval_step=None,
                                         shapes=None)
    together = training.initial_states(tasks, 1)
    assert together["untraceable"] == {"seed": 1} and set(together) == set(tasks)
    for config in ("plain", "bn"):
        own = tasks[config].init(1)
        assert jax.tree.structure(together[config]) == jax.tree.structure(own)
        for a, b in zip(jax.tree.leaves(together[config]), jax.tree.leaves(own), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
