"""jaxnorm.equinox against torch.nn: the committed PyTorch goldens (no torch needed) and live torch modules.

Each case runs PyTorch's steps (train x 3 then eval for BatchNorm, ...) through the Equinox layer vmapped over the
batch, Equinox's way (``jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))``, the state
chained from step to step, ``eqx.nn.inference_mode`` for eval), and compares the output, the gradients of ``<y, gy>``
with respect to the input, weight and bias (``jax.vjp`` of the vmapped layer), the running statistics and
``num_batches_tracked`` after every step. Metric and tolerance are the parity suites' (``test_parity_golden.py``:
``rel_err <= 3e-5``, the denominator floored at 0.3 max|expected|).

Goldens: a subset of ``tests/library/golden/*.npz`` (the linen and NNX modules only adapt the pure functions, which
replay every case; these cases cover every Equinox class and option: each rank, momentum 0.1/0.3/None, affine and
running statistics on and off, eps 1e-3, an unbatched InstanceNorm input as one example). Live: random
configurations drawn like ``test_parity_torch.py``'s, run by torch in float32 (asserted) and float64 (recorded), some
under ``eqx.filter_vmap`` instead of ``jax.vmap``. ``pytest -s`` prints the worst errors.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

eqx = pytest.importorskip("equinox")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_parity_golden import RTOL, load_family, print_worst, record_worst, rel_err  # noqa: E402

import jaxnorm.equinox as jeqx  # noqa: E402

WORST: dict[tuple[str, str], tuple[float, str]] = defaultdict(lambda: (0.0, ""))

GOLDEN_CASES = [
    ("batch_norm", "bn1d_2d_mNone_affine1_track1_eps1e-05"),
    ("batch_norm", "bn1d_3d_m0.3_affine0_track1_eps1e-05"),
    ("batch_norm", "bn2d_m0.1_affine1_track0_eps0.001"),
    ("batch_norm", "bn3d_m0.3_affine1_track1_eps0.001"),
    ("instance_norm", "in1d_unbatched_m0.1_affine1_track1_eps1e-05"),
    ("instance_norm", "in2d_m0.3_affine1_track1_eps0.001"),
    ("instance_norm", "in3d_mNone_affine0_track1_eps1e-05"),
    ("layer_norm", "ln_ns4x5x6_affine1_bias1_eps1e-05"),
    ("layer_norm", "ln_ns6_affine1_bias0_eps1e-05"),
    ("group_norm", "gn_4d_g3_affine1_eps0.001"),
    ("group_norm", "gn_3d_g6_affine0_eps1e-05"),
    ("rms_norm", "rms_ns5x6_affine1_epsNone"),
    ("rms_norm", "rms_ns6_affine0_eps0.001"),
]


def make_layer(cfg: dict):
    """``(layer, state)`` of the jaxnorm.equinox class named by a parity config (PyTorch's constructor arguments)."""
    kind, make = cfg["module"], eqx.nn.make_with_state(getattr(jeqx, cfg["module"]))
    if kind.startswith(("BatchNorm", "InstanceNorm")):
        return make(cfg["num_features"], eps=cfg["eps"], momentum=cfg["momentum"], affine=cfg["affine"],
                    track_running_stats=cfg["track_running_stats"])
    if kind == "LayerNorm":
        return make(tuple(cfg["normalized_shape"]), eps=cfg["eps"], elementwise_affine=cfg["elementwise_affine"],
                    bias=cfg["bias"])
    if kind == "GroupNorm":
        return make(cfg["num_groups"], cfg["num_channels"], eps=cfg["eps"], affine=cfg["affine"])
    return make(tuple(cfg["normalized_shape"]), eps=cfg["eps"], elementwise_affine=cfg["elementwise_affine"])


def replay(cfg: dict, params: dict, steps: list, *, filter_vmap: bool = False) -> list[dict]:
    """PyTorch's ``[(mode, x, gy)]`` through the vmapped Equinox layer in one compiled program: per step ``y``,
    ``dx``, ``d<param>`` and the running statistics, as ``test_parity_torch.run_torch`` records them."""
    layer, state = make_layer(cfg)
    unbatched = cfg.get("unbatched", False)  # PyTorch's unbatched input: one example, a batch of one here
    modes = [mode for mode, _, _ in steps]

    def vmapped(layer):
        if filter_vmap:
            return eqx.filter_vmap(layer, in_axes=(0, None), out_axes=(0, None), axis_name="batch")
        return jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))

    @eqx.filter_jit
    def run(layer, state, params, xs, gys):
        records = []
        for mode, x, gy in zip(modes, xs, gys, strict=True):
            current = eqx.nn.inference_mode(layer, mode == "eval")

            def forward(x, params, current=current, state=state):
                with_params = eqx.tree_at(lambda m: [getattr(m, k) for k in params], current, list(params.values()))
                y, new_state = vmapped(with_params)(x[None] if unbatched else x, state)
                return (y[0] if unbatched else y), new_state

            y, vjp, state = jax.vjp(forward, x, params, has_aux=True)
            dx, dparams = vjp(gy)
            record = {"y": y, "dx": dx, **{"d" + k: v for k, v in dparams.items()}}
            if getattr(layer, "state_index", None) is not None:
                record.update(state.get(layer.state_index))
            records.append(record)
        return records

    params = {k: jnp.asarray(v) for k, v in params.items()}
    records = run(layer, state, params, [jnp.asarray(x) for _, x, _ in steps], [jnp.asarray(g) for _, _, g in steps])
    return [{k: int(v) if k == "num_batches_tracked" else np.asarray(v) for k, v in r.items()} for r in records]


def compare(family: str, label: str, got: list[dict], want: list[dict], reference: str, *, assert_ok=True) -> None:
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert sorted(g) == sorted(w), f"{label} step {t}: Equinox returned {sorted(g)}, PyTorch {sorted(w)}"
        for key, expected in w.items():
            where = f"{label} step {t} {key}"
            if key == "num_batches_tracked":
                assert g[key] == int(expected), f"{where}: {g[key]}, PyTorch {int(expected)}"
                continue
            assert np.shape(g[key]) == np.shape(expected), f"{where}: shape {np.shape(g[key])}, {np.shape(expected)}"
            err, idx = rel_err(g[key], expected)
            record_worst(WORST, (family, f"{reference} {key}"), err, where)
            assert not assert_ok or err <= RTOL, f"{where}: rel_err {err:.3e} > {RTOL:g} at {idx}"


@pytest.mark.parametrize("family,case", GOLDEN_CASES)
def test_golden(family: str, case: str) -> None:
    golden = load_family(family)[case]
    cfg = golden["config"]
    params = {k: golden[k] for k in ("weight", "bias") if k in golden}
    steps = [(mode, golden[f"step{t}/x"], golden[f"step{t}/gy"]) for t, mode in enumerate(cfg["steps"])]
    fields = ("y", "dx", "dweight", "dbias", "running_mean", "running_var", "num_batches_tracked")
    want = [{k: golden[f"step{t}/{k}"] for k in fields if f"step{t}/{k}" in golden} for t in range(len(steps))]
    compare(family, case, replay(cfg, params, steps), want, "golden")


# Live configurations, drawn by hand to cover each class once in both vmaps: (family, config, filter_vmap).
LIVE = [
    ("batch_norm", dict(module="BatchNorm2d", shape=(4, 3, 3, 5), num_features=3, eps=1e-5, momentum=0.1,
                        affine=True, track_running_stats=True), False),
    ("batch_norm", dict(module="BatchNorm1d", shape=(6, 4), num_features=4, eps=1e-3, momentum=None, affine=True,
                        track_running_stats=True), True),
    ("batch_norm", dict(module="BatchNorm3d", shape=(2, 2, 2, 3, 2), num_features=2, eps=1e-5, momentum=0.3,
                        affine=False, track_running_stats=True), False),
    ("instance_norm", dict(module="InstanceNorm1d", shape=(3, 4, 6), num_features=4, eps=1e-5, momentum=0.1,
                           affine=True, track_running_stats=True), True),
    ("group_norm", dict(module="GroupNorm", shape=(2, 4, 3, 3), num_groups=2, num_channels=4, eps=1e-5, affine=True),
     False),
    ("layer_norm", dict(module="LayerNorm", shape=(3, 2, 4, 5), normalized_shape=(4, 5), eps=1e-5,
                        elementwise_affine=True, bias=True), True),
    ("rms_norm", dict(module="RMSNorm", shape=(3, 2, 6), normalized_shape=(6,), eps=None, elementwise_affine=True),
     False),
]


@pytest.mark.parametrize("index", range(len(LIVE)))
def test_live(index: int) -> None:
    torch = pytest.importorskip("torch")
    from test_parity_torch import random_data, run_torch

    family, cfg, filter_vmap = LIVE[index]
    stateful = cfg["module"].startswith(("Batch", "Instance"))
    cfg = {**cfg, "steps": ["train", "train", "eval"] if stateful else ["train"], "channels_last": False,
           "unbatched": False}
    params, steps = random_data(cfg, np.random.default_rng([11, index]))
    label = f"{cfg['module']} {'filter_vmap' if filter_vmap else 'vmap'} {cfg['shape']}"
    got = replay(cfg, params, steps, filter_vmap=filter_vmap)
    compare(family, label, got, run_torch(cfg, params, steps, torch.float32), "torch-f32")
    compare(family, label, got, run_torch(cfg, params, steps, torch.float64), "torch-f64", assert_ok=False)


def teardown_module() -> None:
    print_worst("of jaxnorm.equinox vs PyTorch (goldens and live torch-f32 asserted; torch-f64 recorded)", WORST)
