"""experiments.mlp_study.layer_stds against a float64 NumPy loop, at magnitudes where float32 squares fail."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import mlp_study
from experiments.common import deep_mlp
from experiments.common.lesson_weights import lesson_weights_and_input
from experiments.mlp_study import layer_stds  # the contract's name (DESIGN.md)

F32_MAX = float(np.finfo(np.float32).max)


def numpy_layer_stds(weights, x, *, batch_norm=False, eps=1e-5):
    """float64 reference: same network, std with ddof=1; a layer whose activations would not fit float32
    (|y| > float32 max) is non-finite, and so is every later one."""
    h = np.asarray(x, np.float64)
    out, bad = [], False
    for w in np.asarray(weights, np.float64):
        h = h @ w
        if batch_norm:
            h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + eps)
        h = np.maximum(h, 0.0)
        bad = bad or not np.all(np.abs(h) <= F32_MAX)
        out.append(np.nan if bad else h.std(ddof=1))
    return np.array(out)


def naive_float32_stds(weights, x):
    """The textbook float32 formula sqrt((sum y^2 - n mean^2) / (n - 1)): what layer_stds must not be."""
    h = jnp.asarray(x, jnp.float32)
    out = []
    for w in jnp.asarray(weights, jnp.float32):
        h = jax.nn.relu(jnp.matmul(h, w, precision=jax.lax.Precision.HIGHEST))
        n = h.size
        out.append(float(jnp.sqrt((jnp.sum(h * h) - n * jnp.mean(h) ** 2) / (n - 1))))
    return np.array(out)


def _case(seed, layers, width, batch, gain, x_scale):
    """Random kernels whose activations grow by ~``gain`` per layer, input of scale ``x_scale`` (float32)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((layers, width, width)) * gain * np.sqrt(2.0 / width)
    x = rng.standard_normal((batch, width)) * x_scale
    return w.astype(np.float32), x.astype(np.float32)


def test_matches_float64_numpy_at_moderate_scale():
    w, x = _case(0, layers=7, width=8, batch=5, gain=1.3, x_scale=1.0)
    got = np.asarray(layer_stds(w, x))
    assert got.shape == (7,) and got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_layer_stds(w, x), rtol=2e-5)


def test_batch_norm_matches_float64_numpy():
    w, x = _case(1, layers=6, width=12, batch=6, gain=5.0, x_scale=3.0)
    got = np.asarray(layer_stds(w, x, batch_norm=True))
    np.testing.assert_allclose(got, numpy_layer_stds(w, x, batch_norm=True), rtol=5e-5)
    # without BN the same weights blow the scale up; with BN it is pinned near std(relu(N(0,1)))
    assert np.all(np.abs(got - 0.584) < 0.2)


def test_huge_stds_do_not_overflow():
    # std 1e18 -> ~1e33 over 6 layers: y**2 overflows float32 from ~1.8e19 on
    w, x = _case(2, layers=6, width=8, batch=4, gain=1e3, x_scale=1e18)
    ref = numpy_layer_stds(w, x)
    assert ref.max() > 1e30 and np.all(np.isfinite(ref))
    np.testing.assert_allclose(np.asarray(layer_stds(w, x)), ref, rtol=2e-5)
    # the case bites: the naive float32 formula is wrong here (inf / NaN)
    assert not np.allclose(naive_float32_stds(w, x), ref, rtol=1e-2, atol=0)


def test_tiny_stds_do_not_underflow():
    # std 1e-12 -> ~1e-24 over 6 layers: y**2 underflows float32 below ~1.1e-19
    w, x = _case(3, layers=6, width=8, batch=4, gain=1e-2, x_scale=1e-12)
    ref = numpy_layer_stds(w, x)
    assert ref.min() < 1e-22 and np.all(ref > 0)
    np.testing.assert_allclose(np.asarray(layer_stds(w, x)), ref, rtol=2e-5)
    assert not np.allclose(naive_float32_stds(w, x), ref, rtol=1e-2, atol=0)


def test_nan_from_the_first_non_finite_layer_on():
    # x1e10 per layer: 1e10, 1e20, 1e30, then 1e40 > float32 max -> inf at layer 3 and NaN after
    w, x = _case(4, layers=7, width=8, batch=4, gain=1e10, x_scale=1.0)
    ref = numpy_layer_stds(w, x)
    got = np.asarray(layer_stds(w, x))
    first_bad = int(np.flatnonzero(np.isnan(ref))[0])
    assert first_bad == 3
    assert np.all(np.isnan(got[first_bad:])) and np.all(np.isfinite(got[:first_bad]))
    np.testing.assert_allclose(got[:first_bad], ref[:first_bad], rtol=2e-5)
    assert mlp_study.first_nan_layer(got) == 3


def test_non_finite_input_is_nan_everywhere():
    w, x = _case(5, layers=3, width=4, batch=3, gain=1.0, x_scale=1.0)
    x[0, 0] = np.inf
    assert np.all(np.isnan(np.asarray(layer_stds(w, x))))


def test_all_zero_activations_give_zero_not_nan():
    w = np.zeros((3, 4, 4), np.float32)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(np.asarray(layer_stds(w, x)), np.zeros(3, np.float32))


def test_layer_loop_is_a_scan_under_jit():
    w, x = _case(6, layers=5, width=4, batch=3, gain=1.0, x_scale=1.0)
    jaxpr = str(jax.make_jaxpr(lambda a, b: deep_mlp._layer_stds(a, b, batch_norm=True))(w, x))
    assert "scan" in jaxpr and "length=5" in jaxpr


@pytest.mark.parametrize(
    "weights, x, error, match",
    [
        (np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32), ValueError, "shape \\(L, n_in, n_out\\)"),
        (np.zeros((2, 4, 5), np.float32), np.zeros((3, 4), np.float32), ValueError, "square"),
        (np.zeros((2, 4, 4), np.float32), np.zeros((3, 5), np.float32), ValueError, "\\(batch, 4\\)"),
        (np.zeros((2, 4, 4), np.int32), np.zeros((3, 4), np.int32), TypeError, "floating"),
        (np.zeros((2, 1, 1), np.float32), np.zeros((1, 1), np.float32), ValueError, "at least 2"),
    ],
)
def test_bad_input_is_rejected(weights, x, error, match):
    with pytest.raises(error, match=match):
        layer_stds(weights, x)


def test_config_weights_have_the_documented_distributions():
    key = jax.random.PRNGKey(0)
    n = 256
    default = np.asarray(mlp_study.make_weights("default", key, layers=4, width=n))
    assert default.shape == (4, n, n)
    bound = 1 / math.sqrt(n)  # PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(default).max() <= bound and np.abs(default).max() > 0.99 * bound
    assert abs(np.std(mlp_study.make_weights("normal", key, layers=4, width=n)) - 1.0) < 0.01
    kaiming = np.std(mlp_study.make_weights("kaiming", key, layers=4, width=n))
    assert abs(kaiming / math.sqrt(2 / n) - 1) < 0.01
    with pytest.raises(ValueError, match="config"):
        mlp_study.make_weights("xavier", key)


def test_default_and_bn_default_share_weights_like_the_lesson():
    a, xa = mlp_study.jax_weights_and_input("default", layers=3, width=8, batch=2)
    b, xb = mlp_study.jax_weights_and_input("bn_default", layers=3, width=8, batch=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(xa, xb)


def test_json_writes_nan_as_null():
    assert mlp_study._to_json([1.0, float("nan")]) == [1.0, None]


@pytest.mark.slow
def test_run_writes_json_and_figure(tmp_path, capsys):
    res = mlp_study.run(tmp_path, layers=40, width=16, batch=4, weights="jax", spread_seeds=2)
    data = json.loads((tmp_path / "stds.json").read_text())
    assert list(data) == list(mlp_study.CONFIGS) and all(len(v) == 40 for v in data.values())
    assert (tmp_path / "mlp_stds.png").stat().st_size > 10_000
    assert res["stds"] == data and len(res["kaiming_seed_spread"]) == 2
    out = capsys.readouterr().out
    assert "layers:0, std:" in out and "== bn_default ==" in out


# ------------------------------------------------------------------- the lesson's own weights (PyTorch's RNG)
@pytest.fixture(scope="module")
def lesson_stds():
    pytest.importorskip("torch")
    out = {}
    for config in ("default", "normal", "kaiming", "bn_kaiming"):
        w, x = lesson_weights_and_input(mlp_study._INIT[config], seed=mlp_study.SEED, layers=mlp_study.LAYERS,
                                        width=mlp_study.WIDTH, batch=mlp_study.BATCH)
        out[config] = np.asarray(layer_stds(w, x, batch_norm=mlp_study._BN[config]), np.float64)
    return out


def test_lesson_weights_reproduce_the_normal_run_and_its_nan_layer(lesson_stds):
    """Golden values: the lesson's printed stds up to 7.45e36 (where today's torch.std() itself gives inf)."""
    got = lesson_stds["normal"]
    for layer, printed in mlp_study.LESSON_STDS["normal"].items():
        assert got[layer] == pytest.approx(printed, rel=1e-4), layer
    assert mlp_study.first_nan_layer(got) == mlp_study.LESSON_FIRST_NAN["normal"] == 35


def test_lesson_weights_reproduce_the_printed_stds(lesson_stds):
    lesson = mlp_study.LESSON_STDS
    for layer in range(8):  # the first printed layers, every config
        assert lesson_stds["default"][layer] == pytest.approx(lesson["default"][layer], rel=1e-5)
        assert lesson_stds["kaiming"][layer] == pytest.approx(lesson["kaiming"][layer], rel=1e-5)
    for layer in range(7):
        assert lesson_stds["bn_kaiming"][layer] == pytest.approx(lesson["bn_kaiming"][layer], rel=1e-5)
    for layer in range(92, 100):  # kaiming has no BN to amplify rounding: all 100 layers stay within 1e-4
        assert lesson_stds["kaiming"][layer] == pytest.approx(lesson["kaiming"][layer], rel=1e-4)
    # 7.5e-38 is still a normal float32, so the std is right even there (a few denormal entries are flushed)
    assert lesson_stds["default"][93] == pytest.approx(lesson["default"][93], rel=0.05)
