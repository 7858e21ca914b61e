"""Live, randomized parity against ``torch.nn`` modules (skipped when torch is not installed; CI installs it).

Each seed draws a random configuration (input shape, momentum incl. ``None``, affine, track_running_stats,
eps, groups, normalized_shape, batched/unbatched, channels-first or channels-last) and random data
(per-channel means in [-3, 3], scales in [0.2, 3], weights of both signs, random cotangents), then runs the
same train/eval steps through the torch module (float32, as users run it) and through jaxnorm's functional
API under ``jax.jit``, comparing outputs, running statistics, ``num_batches_tracked`` and the gradients of
``<y, gy>`` with respect to input, weight and bias.

Metric and tolerance as in ``test_parity_golden.py``: ``rel_err = max_i |got_i - exp_i| / max(|exp_i|,
0.3 max_j |exp_j|) <= 3e-5``. Here the reference is PyTorch's *float32* result, so the measured error is
the sum of both implementations' rounding; the same steps are also run by torch in float64 and jaxnorm's
distance to that is recorded too (printed, not asserted separately -- it is the smaller of the two in
practice).

Groups of 2 elements are not drawn: there x_hat = +-sqrt(var / (var + eps)) ~ +-1, so the exact input
gradient ``(w/sigma)(g - mean(g) - x_hat mean(g x_hat))`` is O(eps/var) -- a cancellation of O(1) terms that
no float32 implementation resolves (torch's own float32 result is off by up to 1e-2 relative from its float64
one there). Their gradients are checked in float64 in ``test_grads.py``.

``python -m pytest tests/library/test_parity_torch.py -q -s`` prints the worst errors per family; with
``JAXNORM_PARITY_REPORT=FILE`` they are also written to FILE as JSON.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_parity_golden import RTOL, print_worst, record_worst, rel_err  # noqa: E402  (one metric for both parity suites)

import jaxnorm as jn  # noqa: E402

# (family, reference) -> (worst rel_err, where); reference is "torch-f32" (asserted) or "torch-f64" (recorded)
WORST: dict[tuple[str, str], tuple[float, str]] = defaultdict(lambda: (0.0, ""))


# ------------------------------------------------------------------------------------------- random configs
def group_size(cfg: dict) -> int:
    """Number of elements each mean/variance is taken over."""
    shape = cfg["shape"]
    kind = cfg["module"]
    if kind.startswith("BatchNorm"):
        return int(np.prod(shape)) // shape[1]
    if kind.startswith("InstanceNorm"):
        return int(np.prod(shape[1:] if cfg["unbatched"] else shape[2:]))
    if kind == "GroupNorm":
        return int(np.prod(shape[1:])) // cfg["num_groups"]
    return int(np.prod(cfg["normalized_shape"]))


def random_config(family: str, rng: np.random.Generator) -> dict:
    """A random configuration whose statistics groups have at least 3 elements (see ``draw_config``)."""
    while True:
        cfg = draw_config(family, rng)
        if group_size(cfg) >= 3:
            return cfg


def draw_config(family: str, rng: np.random.Generator) -> dict:
    """A random module configuration and input shape (PyTorch layout) for ``family``."""
    eps = float(rng.choice([1e-5, 1e-3]))
    if family == "batch_norm":
        dims = int(rng.integers(0, 4))  # 0: BatchNorm1d (N, C); 1: (N, C, L); 2: 2d; 3: 3d
        spatial = tuple(int(s) for s in rng.integers(1, 5, size=dims))
        module = "BatchNorm1d" if dims <= 1 else f"BatchNorm{dims}d"
        shape = (int(rng.integers(2, 6)), int(rng.integers(1, 7))) + spatial
        return dict(module=module, shape=shape, num_features=shape[1], eps=eps,
                    momentum=[0.1, 0.3, None][int(rng.integers(3))], affine=bool(rng.integers(2)),
                    track_running_stats=bool(rng.integers(2)), steps=["train", "train", "eval"],
                    channels_last=bool(rng.integers(2)), unbatched=False)
    if family == "instance_norm":
        dims = int(rng.integers(1, 4))
        unbatched = bool(rng.integers(2))
        spatial = tuple(int(s) for s in rng.integers(2, 6, size=dims))
        c = int(rng.integers(1, 6))
        shape = ((c,) if unbatched else (int(rng.integers(1, 4)), c)) + spatial
        return dict(module=f"InstanceNorm{dims}d", shape=shape, num_features=c, eps=eps,
                    momentum=[0.1, 0.3, None][int(rng.integers(3))], affine=bool(rng.integers(2)),
                    track_running_stats=bool(rng.integers(2)), steps=["train", "train", "eval"],
                    channels_last=bool(rng.integers(2)), unbatched=unbatched)
    if family == "group_norm":
        groups = int(rng.integers(1, 5))
        c = groups * int(rng.integers(1, 4))
        spatial = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(0, 4))))
        shape = (int(rng.integers(1, 4)), c) + spatial
        return dict(module="GroupNorm", shape=shape, num_groups=groups, num_channels=c, eps=eps,
                    affine=bool(rng.integers(2)), steps=["train"], channels_last=bool(rng.integers(2)),
                    unbatched=False)
    lead = tuple(int(s) for s in rng.integers(1, 5, size=int(rng.integers(1, 3))))
    norm = tuple(int(s) for s in rng.integers(2, 7, size=int(rng.integers(1, 4))))
    if family == "layer_norm":
        affine = bool(rng.integers(2))
        return dict(module="LayerNorm", shape=lead + norm, normalized_shape=norm, eps=eps,
                    elementwise_affine=affine, bias=affine and bool(rng.integers(2)), steps=["train"],
                    channels_last=False, unbatched=False)
    if family == "rms_norm":
        return dict(module="RMSNorm", shape=lead + norm, normalized_shape=norm, eps=[None, 1e-3][int(rng.integers(2))],
                    elementwise_affine=bool(rng.integers(2)), steps=["train"], channels_last=False, unbatched=False)
    raise AssertionError(family)


def channel_axis(cfg: dict) -> int | None:
    if cfg["module"] in ("LayerNorm", "RMSNorm"):
        return None
    return 0 if cfg["unbatched"] else 1


def random_data(cfg: dict, rng: np.random.Generator) -> tuple[dict, list]:
    """Parameters (random, both signs) and [(mode, x, gy)] steps, float32, PyTorch layout."""
    caxis = channel_axis(cfg)
    if caxis is None:
        pshape, has_w = tuple(cfg["normalized_shape"]), cfg["elementwise_affine"]
        has_b = cfg.get("bias", False)
    else:
        pshape = (cfg["shape"][caxis],)
        has_w = has_b = cfg["affine"]
    params = {}
    if has_w:
        params["weight"] = (rng.choice([-1.0, 1.0], pshape) * rng.uniform(0.5, 2.0, pshape)).astype(np.float32)
    if has_b:
        params["bias"] = (0.5 * rng.standard_normal(pshape)).astype(np.float32)
    shape = cfg["shape"]
    if caxis is None:  # per-sample offsets for LayerNorm/RMSNorm
        bshape = shape[: len(shape) - len(cfg["normalized_shape"])] + (1,) * len(cfg["normalized_shape"])
    else:
        bshape = tuple(s if a == caxis else 1 for a, s in enumerate(shape))
    steps = []
    for mode in cfg["steps"]:
        x = rng.uniform(-3, 3, bshape) + rng.uniform(0.2, 3, bshape) * rng.standard_normal(shape)
        steps.append((mode, x.astype(np.float32), rng.standard_normal(shape).astype(np.float32)))
    return params, steps


# ------------------------------------------------------------------------------------------- runners
def torch_module(cfg: dict, dtype):
    nn = torch.nn
    kind = cfg["module"]
    if kind.startswith(("BatchNorm", "InstanceNorm")):
        return getattr(nn, kind)(cfg["num_features"], eps=cfg["eps"], momentum=cfg["momentum"], affine=cfg["affine"],
                                 track_running_stats=cfg["track_running_stats"], dtype=dtype)
    if kind == "GroupNorm":
        return nn.GroupNorm(cfg["num_groups"], cfg["num_channels"], eps=cfg["eps"], affine=cfg["affine"], dtype=dtype)
    if kind == "LayerNorm":
        return nn.LayerNorm(cfg["normalized_shape"], eps=cfg["eps"], elementwise_affine=cfg["elementwise_affine"],
                            bias=cfg["bias"], dtype=dtype)
    return nn.RMSNorm(cfg["normalized_shape"], eps=cfg["eps"], elementwise_affine=cfg["elementwise_affine"], dtype=dtype)


def run_torch(cfg: dict, params: dict, steps: list, dtype) -> list[dict]:
    """Per step: y, dx, dweight, dbias, running stats (PyTorch layout, numpy)."""
    mod = torch_module(cfg, dtype)
    with torch.no_grad():
        for k, v in params.items():
            getattr(mod, k).copy_(torch.from_numpy(v))
    records = []
    for mode, x_np, gy_np in steps:
        mod.train(mode == "train")
        mod.zero_grad(set_to_none=True)
        x = torch.from_numpy(x_np).to(dtype).requires_grad_(True)
        y = mod(x)
        y.backward(torch.from_numpy(gy_np).to(dtype))
        rec = {"y": y.detach().numpy(), "dx": x.grad.numpy()}
        rec.update({"d" + k: getattr(mod, k).grad.numpy() for k in params})
        if getattr(mod, "running_mean", None) is not None:
            rec["running_mean"] = mod.running_mean.numpy().copy()
            rec["running_var"] = mod.running_var.numpy().copy()
            rec["num_batches_tracked"] = int(mod.num_batches_tracked)
        records.append(rec)
    return records


def jax_fn(cfg: dict, train: bool):
    """jaxnorm's ``f(x, params, stats) -> (y, stats)`` for the config (layout from ``cfg``)."""
    kind = cfg["module"]
    axis = -1 if cfg["channels_last"] else 1
    if kind.startswith(("BatchNorm", "InstanceNorm")):
        fn = getattr(jn, ("batch_norm_" if kind.startswith("Batch") else "instance_norm_") + kind[-2:].lower())
        return lambda x, p, s: fn(x, p, s, train=train, momentum=cfg["momentum"], eps=cfg["eps"], axis=axis)
    if kind == "GroupNorm":
        return lambda x, p, s: (jn.group_norm(x, p, cfg["num_groups"], eps=cfg["eps"], axis=axis), s)
    if kind == "LayerNorm":
        return lambda x, p, s: (jn.layer_norm(x, p, cfg["normalized_shape"], eps=cfg["eps"]), s)
    return lambda x, p, s: (jn.rms_norm(x, p, cfg["normalized_shape"], eps=cfg["eps"]), s)


def initial_stats(cfg: dict) -> dict:
    kind = cfg["module"]
    if kind.startswith("BatchNorm"):
        return jn.batch_norm_init(cfg["num_features"], affine=cfg["affine"],
                                  track_running_stats=cfg["track_running_stats"])[1]
    if kind.startswith("InstanceNorm"):
        return jn.instance_norm_init(cfg["num_features"], affine=cfg["affine"],
                                     track_running_stats=cfg["track_running_stats"])[1]
    return {}


def run_jax(cfg: dict, params: dict, steps: list) -> list[dict]:
    """Same steps through jaxnorm (jit), results moved back to PyTorch layout."""
    caxis = channel_axis(cfg)
    last = cfg["channels_last"]
    to_jax = (lambda a: np.moveaxis(a, caxis, -1)) if last else (lambda a: a)
    to_torch = (lambda a: np.moveaxis(np.asarray(a), -1, caxis)) if last else np.asarray

    def make_step(train):
        fwd = jax_fn(cfg, train)

        def step(x, p, s, gy):
            y, vjp, new_s = jax.vjp(lambda x_, p_: fwd(x_, p_, s), x, p, has_aux=True)
            return y, new_s, vjp(gy)

        return jax.jit(step)

    compiled = {m: make_step(m == "train") for m in set(cfg["steps"])}
    p = {k: jnp.asarray(v) for k, v in params.items()}
    stats = initial_stats(cfg)
    records = []
    for mode, x, gy in steps:
        y, stats, (dx, dp) = compiled[mode](jnp.asarray(to_jax(x)), p, stats, jnp.asarray(to_jax(gy)))
        rec = {"y": to_torch(y), "dx": to_torch(dx)}
        rec.update({"d" + k: np.asarray(v) for k, v in dp.items()})
        if stats:
            rec["running_mean"] = np.asarray(stats["running_mean"])
            rec["running_var"] = np.asarray(stats["running_var"])
            rec["num_batches_tracked"] = int(stats["num_batches_tracked"])
        records.append(rec)
    return records


def compare(family: str, label: str, cfg: dict, got: list[dict], exp32: list[dict], exp64: list[dict]) -> None:
    for t, (g, e32, e64) in enumerate(zip(got, exp32, exp64, strict=True)):
        assert sorted(g) == sorted(e32), f"{label} step {t}: jaxnorm returned {sorted(g)}, torch {sorted(e32)}"
        for key in e32:
            where = f"{label} step {t} ({cfg['steps'][t]}) {key}"
            if key == "num_batches_tracked":
                assert g[key] == e32[key], f"{where}: jaxnorm {g[key]}, torch {e32[key]}"
                continue
            assert np.shape(g[key]) == np.shape(e32[key]), f"{where}: shape {np.shape(g[key])} vs {np.shape(e32[key])}"
            err64, _ = rel_err(g[key], e64[key])
            record_worst(WORST, (family, "torch-f64"), err64, where)
            err, idx = rel_err(g[key], e32[key])
            record_worst(WORST, (family, "torch-f32"), err, where)
            assert err <= RTOL, (f"{where}: rel_err {err:.3e} > {RTOL:g} at {idx}: jaxnorm "
                                 f"{np.asarray(g[key])[idx]!r}, torch {np.asarray(e32[key])[idx]!r} "
                                 f"(torch float64: {np.asarray(e64[key])[idx]!r})")


SEEDS = {"batch_norm": 16, "instance_norm": 12, "group_norm": 10, "layer_norm": 8, "rms_norm": 8}


@pytest.mark.parametrize("family,seed", [(f, s) for f, n in SEEDS.items() for s in range(n)])
def test_live_parity(family: str, seed: int) -> None:
    rng = np.random.default_rng([7, list(SEEDS).index(family), seed])
    cfg = random_config(family, rng)
    params, steps = random_data(cfg, rng)
    label = f"{family}[seed {seed}] {({k: v for k, v in cfg.items() if k != 'steps'})}"
    exp32 = run_torch(cfg, params, steps, torch.float32)
    exp64 = run_torch(cfg, params, steps, torch.float64)
    compare(family, label, cfg, run_jax(cfg, params, steps), exp32, exp64)


@pytest.mark.parametrize("module,fn,spatial", [
    ("BatchNorm1d", jn.batch_norm_1d, (1,)),
    ("BatchNorm2d", jn.batch_norm_2d, (2, 2)),
    ("BatchNorm3d", jn.batch_norm_3d, (2, 2, 3)),
])
def test_lesson_demo_matches_torch_and_printed_numbers(module, fn, spatial) -> None:
    """The lesson's demo: constant feature maps 1..C, batch 3, momentum 0.3, two training iterations.

    The lesson prints (BatchNorm1d, C=5) running_mean 0.3 0.6 0.9 1.2 1.5 then 0.51 1.02 1.53 2.04 2.55 and
    running_var 0.7 then 0.49 (the batch variance is 0); the shapes of running_mean/var, weight and bias are (C,).
    """
    c = {"BatchNorm1d": 5, "BatchNorm2d": 6, "BatchNorm3d": 4}[module]
    maps = np.stack([np.full(spatial, i + 1.0, np.float32) for i in range(c)])
    x = np.stack([maps] * 3)  # (3, C, *spatial)
    bn = getattr(torch.nn, module)(num_features=c, momentum=0.3)
    params, stats = jn.batch_norm_init(c)
    step = jax.jit(lambda x_, s: fn(x_, params, s, train=True, momentum=0.3))
    printed_mean = [0.3 * np.arange(1, c + 1), 0.51 * np.arange(1, c + 1)]
    printed_var = [0.7, 0.49]
    for i in range(2):
        y_torch = bn(torch.from_numpy(x)).detach().numpy()
        y, stats = step(jnp.asarray(x), stats)
        np.testing.assert_allclose(stats["running_mean"], bn.running_mean.numpy(), rtol=RTOL, atol=0)
        np.testing.assert_allclose(stats["running_var"], bn.running_var.numpy(), rtol=RTOL, atol=0)
        np.testing.assert_allclose(stats["running_mean"], printed_mean[i], rtol=RTOL, atol=0)
        np.testing.assert_allclose(stats["running_var"], np.full(c, printed_var[i]), rtol=RTOL, atol=0)
        assert int(stats["num_batches_tracked"]) == int(bn.num_batches_tracked) == i + 1
        # zero batch variance: the exact output is the bias (0). torch's float32 batch mean of a constant is
        # off by an ulp (y_torch up to 3e-5 = ulp(3)/sqrt(eps)); jaxnorm's shifted moments give exactly 0.
        np.testing.assert_allclose(y_torch, 0.0, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(y), 0.0)
        for k in ("running_mean", "running_var"):
            assert stats[k].shape == tuple(getattr(bn, k).shape) == (c,)
        for k in ("weight", "bias"):
            assert params[k].shape == tuple(getattr(bn, k).shape) == (c,)


def teardown_module() -> None:
    print_worst("of jaxnorm vs live torch (asserted vs torch-f32; torch-f64 recorded)", WORST)
    path = os.environ.get("JAXNORM_PARITY_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({f"{fam}/{ref}": {"rel_err": e, "where": w} for (fam, ref), (e, w) in WORST.items()}, f, indent=1)
