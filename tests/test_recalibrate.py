"""jaxnorm.recalibrate_batch_stats ("precise BN").

Golden: a float64 NumPy forward pass of the same network in training mode, averaging each BN layer's
per-batch mean and unbiased variance over the batches; and, with torch installed,
``torch.optim.swa_utils.update_bn`` on the same weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
import jaxnorm.linen as jnn
from jaxnorm.interop import flax_to_torch_state_dict, torch_to_flax_variables

EPS = 1e-5


class MLP(nn.Module):
    """Dense -> BN(momentum 0.3) -> relu -> Dense -> BN -> IN(tracked, not recalibrated) -> Dense."""

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.relu(jnn.BatchNorm1d(8, momentum=0.3, name="bn1")(nn.Dense(8, name="fc1")(x), train=train))
        x = jnn.BatchNorm1d(6, momentum=None, name="bn2")(nn.Dense(6, name="fc2")(x), train=train)
        x = jnn.InstanceNorm1d(2, track_running_stats=True, name="inorm")(x.reshape(x.shape[0], 2, 3), train=train)
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))


def _golden_mlp(params, batches):
    """Float64 NumPy: each BN layer's average (over batches) of per-batch mean and unbiased variance."""
    p = {name: {k: np.asarray(v, np.float64) for k, v in layer.items()} for name, layer in params.items()}
    sums = {"bn1": [0.0, 0.0], "bn2": [0.0, 0.0]}

    def bn(name, h):
        mean, var = h.mean(0), h.var(0)
        sums[name][0] = sums[name][0] + mean
        sums[name][1] = sums[name][1] + h.var(0, ddof=1)
        return (h - mean) / np.sqrt(var + EPS) * p[name]["weight"] + p[name]["bias"]

    for x in batches:
        h = np.maximum(bn("bn1", np.asarray(x, np.float64) @ p["fc1"]["kernel"] + p["fc1"]["bias"]), 0)
        bn("bn2", h @ p["fc2"]["kernel"] + p["fc2"]["bias"])
    return {name: (m / len(batches), v / len(batches)) for name, (m, v) in sums.items()}


def _setup(n_batches=5, batch=16):
    rng = np.random.default_rng(1)
    model = MLP()
    batches = [(rng.standard_normal((batch, 5)) * 3 + 2).astype(np.float32) for _ in range(n_batches)]
    variables = model.init(jax.random.key(0), jnp.asarray(batches[0]), train=False)
    # non-trivial BN affine parameters and (garbage) running statistics, which must not matter
    variables = jax.tree.map(lambda a: a + jnp.asarray(rng.standard_normal(a.shape), a.dtype) if a.dtype == jnp.float32
                             else a + 3, variables)
    variables["batch_stats"]["bn1"]["running_var"] = jnp.full(8, jnp.nan)
    return model, variables, batches


def test_equals_float64_numpy_average():
    model, variables, batches = _setup()
    new = jn.recalibrate_batch_stats(model, variables, batches, train=False)
    golden = _golden_mlp(variables["params"], batches)
    for name in ("bn1", "bn2"):
        stats = new["batch_stats"][name]
        for key, want in zip(("running_mean", "running_var"), golden[name], strict=True):
            np.testing.assert_allclose(np.asarray(stats[key], np.float64), want, rtol=2e-5, atol=2e-6, err_msg=f"{name}/{key}")
        assert stats["num_batches_tracked"].dtype == jnp.int32
        assert int(stats["num_batches_tracked"]) == len(batches)
    # params and the InstanceNorm's tracked statistics are left alone; the input is not modified
    jax.tree.map(np.testing.assert_array_equal, new["params"], variables["params"])
    jax.tree.map(np.testing.assert_array_equal, new["batch_stats"]["inorm"], variables["batch_stats"]["inorm"])
    assert np.isnan(variables["batch_stats"]["bn1"]["running_var"]).all()


def test_independent_of_train_flag_and_accepts_labelled_batches():
    model, variables, batches = _setup(n_batches=3)
    a = jn.recalibrate_batch_stats(model, variables, batches, train=False)
    b = jn.recalibrate_batch_stats(model, variables, iter([(x, np.zeros(len(x))) for x in batches]), train=True)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), a, b)


def test_uneven_last_batch():
    model, variables, batches = _setup(n_batches=3)
    batches = [*batches, batches[0][:5]]  # a smaller last batch still counts as one batch (as in PyTorch)
    new = jn.recalibrate_batch_stats(model, variables, batches, train=False)
    want_mean, want_var = _golden_mlp(variables["params"], batches)["bn2"]
    np.testing.assert_allclose(new["batch_stats"]["bn2"]["running_mean"], want_mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(new["batch_stats"]["bn2"]["running_var"], want_var, rtol=2e-5, atol=2e-6)


def test_errors():
    model, variables, batches = _setup(n_batches=1)
    with pytest.raises(ValueError, match="at least one batch"):
        jn.recalibrate_batch_stats(model, variables, [], train=False)
    plain = nn.Dense(3)
    pv = plain.init(jax.random.key(0), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="'batch_stats' collection"):
        jn.recalibrate_batch_stats(plain, pv, batches)
    no_bn = jnn.InstanceNorm1d(5, track_running_stats=True)
    nv = no_bn.init(jax.random.key(0), jnp.ones((2, 5, 4)), train=False)
    with pytest.raises(ValueError, match="InstanceNorm1d to contain a jaxnorm BatchNorm"):
        jn.recalibrate_batch_stats(no_bn, nv, [np.ones((2, 5, 4), np.float32)], train=True)


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):  # NHWC
        x = nn.relu(jnn.BatchNorm2d(4, axis=-1, name="bn1")(nn.Conv(4, (3, 3), padding="VALID", name="conv1")(x), train=train))
        x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)
        return jnn.BatchNorm1d(3, name="bn2")(nn.Dense(3, name="fc")(x), train=train)


def test_matches_torch_update_bn():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import update_bn

    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 7, 7, 3)) * 2 - 1).astype(np.float32) for _ in range(4)]
    model = ConvNet()
    variables = model.init(jax.random.key(1), jnp.asarray(batches[0]), train=False)
    new = jn.recalibrate_batch_stats(model, variables, batches, train=True)

    tmodel = torch.nn.Module()
    tmodel.conv1, tmodel.bn1 = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    tmodel.fc, tmodel.bn2 = torch.nn.Linear(4 * 25, 3), torch.nn.BatchNorm1d(3)
    tmodel.forward = lambda x: tmodel.bn2(tmodel.fc(torch.relu(tmodel.bn1(tmodel.conv1(x))).flatten(1)))
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in flax_to_torch_state_dict(variables).items()})
    loader = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in batches]
    update_bn(loader, tmodel)
    want = torch_to_flax_variables(tmodel.state_dict(), variables)["batch_stats"]
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b)))), new["batch_stats"], want)
    print("max |jaxnorm - torch update_bn|:", diffs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new["batch_stats"], want)


def test_model_that_is_a_batch_norm():
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((8, 3, 5)).astype(np.float32) * (i + 1) for i in range(3)]
    model = jnn.BatchNorm1d(3)
    variables = model.init(jax.random.key(0), jnp.asarray(batches[0]), train=False)
    new = jn.recalibrate_batch_stats(model, variables, batches, train=False)
    per_batch = [b.astype(np.float64).transpose(1, 0, 2).reshape(3, -1) for b in batches]  # (C, N*L)
    np.testing.assert_allclose(new["batch_stats"]["running_mean"], np.mean([b.mean(1) for b in per_batch], 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["running_var"], np.mean([b.var(1, ddof=1) for b in per_batch], 0), rtol=1e-5)
