"""jaxnorm.recalibrate_batch_stats ("precise BN"), on linen and NNX models, with both estimators.

Golden: a float64 NumPy forward pass of the same network in training mode, averaging each BN layer's
per-batch mean and unbiased variance over the batches; and, with torch installed,
``torch.optim.swa_utils.update_bn`` on the same weights. For ``estimator="population"``: the float64 mean and
unbiased variance of all batches concatenated. NNX models: the linen result on the same weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.linen as jnn
import jaxnorm.nnx as jx
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
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(jnp.asarray(batches[0]))
    # non-trivial BN affine parameters and (garbage) running statistics, which must not matter
    variables = jax.tree.map(lambda a: a + jnp.asarray(rng.standard_normal(a.shape), a.dtype) if a.dtype == jnp.float32
                             else a + 3, variables)
    variables["batch_stats"]["bn1"]["running_var"] = jnp.full(8, jnp.nan)
    return model, variables, batches


def _assert_only_bn_statistics_recomputed(got: dict, want: dict, before: dict) -> None:
    """A twin model's state dict after recalibration: linen's recalibrated values, and only the BN statistics of
    ``before`` changed (three batches)."""
    assert set(got) == set(want)
    for key in got:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
        if not key.startswith(("bn1.running", "bn2.running", "bn1.num", "bn2.num")):
            np.testing.assert_array_equal(got[key], before[key], err_msg=key)  # only the BN statistics change
    assert int(got["bn1.num_batches_tracked"]) == 3 and not np.isnan(got["bn1.running_var"]).any()


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


# ------------------------------------------------------------------------------------------------
# NNX models, and the "population" estimator
# ------------------------------------------------------------------------------------------------


class NNXMLP(nnx.Module):
    """The NNX twin of MLP (same layer names, so that weights move between them through a state dict)."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1, self.bn1 = nnx.Linear(5, 8, rngs=rngs), jx.BatchNorm1d(8, momentum=0.3)
        self.fc2, self.bn2 = nnx.Linear(8, 6, rngs=rngs), jx.BatchNorm1d(6, momentum=None)
        self.inorm = jx.InstanceNorm1d(2, track_running_stats=True)
        self.head = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
        x = self.bn2(self.fc2(nnx.relu(self.bn1(self.fc1(x)))))
        x = self.inorm(x.reshape(x.shape[0], 2, 3))
        return self.head(x.reshape(x.shape[0], -1))


def _nnx_twin(variables):
    """An NNXMLP holding ``variables`` (built abstractly: no initializer runs)."""
    return jn.torch_to_nnx(flax_to_torch_state_dict(variables), nnx.eval_shape(lambda: NNXMLP(nnx.Rngs(0))))


@pytest.mark.parametrize("estimator", ["mean", "population"])
def test_nnx_model_is_recalibrated_in_place_as_linen(estimator):
    model, variables, batches = _setup(n_batches=3)
    want = flax_to_torch_state_dict(jn.recalibrate_batch_stats(model, variables, batches, train=False,
                                                                estimator=estimator))
    nmodel = _nnx_twin(variables)
    nmodel.eval()  # the InstanceNorm as linen's train=False; the BN layers are trained all the same
    before = jn.nnx_to_torch_state_dict(nmodel)
    assert jn.recalibrate_batch_stats(nmodel, batches, estimator=estimator) is nmodel  # in place
    got = jn.nnx_to_torch_state_dict(nmodel)
    _assert_only_bn_statistics_recomputed(got, want, before)
    assert nmodel.bn1.use_running_average is True and nmodel.bn1.momentum == 0.3  # the modes are left alone


def _golden_bn_input(batches, mask=None):
    """Per batch, the (C, values) float64 array a BatchNorm1d over (N, C, L) input normalizes (valid values only)."""
    out = []
    for x in batches:
        x = np.asarray(x, np.float64)
        valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
        out.append([x[:, c][valid[:, c]] for c in range(x.shape[1])])
    return out


def test_population_estimator_equals_float64_over_concatenated_batches():
    rng = np.random.default_rng(5)
    offset = np.array([1e3, -2e3, 5e2])[None, :, None]  # a naive float32 sum of squares cancels here
    batches = [(rng.standard_normal((n, 3, 4)) * (1 + i) + offset).astype(np.float32) for i, n in enumerate((7, 16, 3))]
    model = jnn.BatchNorm1d(3)
    variables = model.init(jax.random.key(0), jnp.asarray(batches[0]), train=False)
    per_batch = _golden_bn_input(batches)
    pooled = [np.concatenate([b[c] for b in per_batch]) for c in range(3)]
    want_mean, want_var = np.array([p.mean() for p in pooled]), np.array([p.var(ddof=1) for p in pooled])

    population = jn.recalibrate_batch_stats(model, variables, batches, estimator="population")["batch_stats"]
    nnx_bn = jx.BatchNorm1d(3)
    jn.recalibrate_batch_stats(nnx_bn, batches, estimator="population")
    for stats in (population, nnx.to_pure_dict(nnx.state(nnx_bn, nnx.BatchStat))):
        np.testing.assert_allclose(stats["running_mean"], want_mean, rtol=1e-7, atol=2e-5)
        np.testing.assert_allclose(stats["running_var"], want_var, rtol=2e-5)
        assert int(stats["num_batches_tracked"]) == 3
    # what the accumulation avoids: float32 sums of x and x^2 lose the variance at this offset
    x32 = np.concatenate([b.transpose(1, 0, 2).reshape(3, -1) for b in batches], axis=1)
    n = np.float32(x32.shape[1])
    naive = (np.sum(x32 * x32, axis=1) - np.sum(x32, axis=1) ** 2 / n) / (n - 1)
    assert np.max(np.abs(naive / want_var - 1)) > 1e-3

    # the default estimator is unchanged: the mean of the per-batch unbiased variances, which differs here
    mean = jn.recalibrate_batch_stats(model, variables, batches)["batch_stats"]
    want_mean_var = np.mean([[b[c].var(ddof=1) for c in range(3)] for b in per_batch], axis=0)
    np.testing.assert_allclose(mean["running_var"], want_mean_var, rtol=2e-5)
    np.testing.assert_allclose(mean["running_mean"], np.mean([[b[c].mean() for c in range(3)] for b in per_batch], 0),
                               rtol=1e-7, atol=2e-5)
    assert not np.allclose(mean["running_var"], population["running_var"], rtol=0.02)


@pytest.mark.parametrize("estimator", ["mean", "population"])
def test_mask_is_honoured(estimator):
    rng = np.random.default_rng(6)
    batches = [rng.standard_normal((n, 3, 4)).astype(np.float32) * 2 + 1 for n in (5, 5)]
    mask = rng.uniform(size=(1, 3, 4)) < 0.6
    model = jnn.BatchNorm1d(3)
    variables = model.init(jax.random.key(0), jnp.asarray(batches[0]), train=False)
    stats = jn.recalibrate_batch_stats(model, variables, batches, estimator=estimator, mask=jnp.asarray(mask),
                                       train=True)["batch_stats"]
    per_batch = _golden_bn_input(batches, mask)
    if estimator == "population":
        pooled = [np.concatenate([b[c] for b in per_batch]) for c in range(3)]
        want = [p.mean() for p in pooled], [p.var(ddof=1) for p in pooled]
    else:
        want = (np.mean([[b[c].mean() for c in range(3)] for b in per_batch], 0),
                np.mean([[b[c].var(ddof=1) for c in range(3)] for b in per_batch], 0))
    np.testing.assert_allclose(stats["running_mean"], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["running_var"], want[1], rtol=1e-5)


def test_estimator_and_nnx_errors():
    model, variables, batches = _setup(n_batches=1)
    with pytest.raises(ValueError, match=r"expected estimator to be one of \('mean', 'population'\), got 'median'"):
        jn.recalibrate_batch_stats(model, variables, batches, estimator="median")
    with pytest.raises(ValueError, match="at least one batch"):
        jn.recalibrate_batch_stats(jx.BatchNorm1d(5), [])
    with pytest.raises(ValueError, match="expected InstanceNorm1d to contain a jaxnorm BatchNorm"):
        jn.recalibrate_batch_stats(jx.InstanceNorm1d(5, track_running_stats=True), [np.ones((2, 5, 4), np.float32)])
    with pytest.raises(ValueError, match="expected BatchNorm1d to contain a jaxnorm BatchNorm"):  # none tracking
        jn.recalibrate_batch_stats(jx.BatchNorm1d(5, track_running_stats=False), [np.ones((2, 5), np.float32)])
    with pytest.raises(TypeError, match="expected a flax.linen, flax.nnx or Equinox Module, got function"):
        jn.recalibrate_batch_stats(lambda x: x, batches)


def test_nnx_recalibration_changes_no_class():
    """While the batches run (traced), every class of the model's modules is as it was: the layers are reached
    through an attribute of a traced copy's layer objects, not by patching ``__call__`` on classes."""
    seen = []

    class Probe(nnx.Module):
        def __call__(self, x):
            seen.append({cls: dict(vars(cls)) for cls in classes} == before)
            return x

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc, self.bn, self.probe = nnx.Linear(3, 4, rngs=rngs), jx.BatchNorm1d(4), Probe()

        def __call__(self, x):
            return self.probe(self.bn(self.fc(x)))

    classes = {cls for c in (Net, nnx.Linear, jx.BatchNorm1d, Probe) for cls in c.__mro__ if cls is not object}
    before = {cls: dict(vars(cls)) for cls in classes}
    model = Net(nnx.Rngs(0))
    batches = [np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32) for _ in range(2)]
    jn.recalibrate_batch_stats(model, batches)
    assert seen and all(seen), seen
    assert {cls: dict(vars(cls)) for cls in classes} == before
    assert int(model.bn.num_batches_tracked[...]) == 2


def test_nnx_model_converted_from_flax_is_recalibrated():
    """convert_flax_norms' any-rank BatchNorm is a jaxnorm BatchNorm layer like the per-rank ones."""
    model = jx.convert_flax_norms(nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
                                                 nnx.BatchNorm(4, rngs=nnx.Rngs(0))))
    assert type(model.layers[1]) is jx.BatchNorm
    rng = np.random.default_rng(8)
    batches = [rng.standard_normal((n, 3)).astype(np.float32) * 2 + 1 for n in (5, 7)]
    jn.recalibrate_batch_stats(model, batches)
    fc, bn = model.layers
    h = [b.astype(np.float64) @ np.asarray(fc.kernel[...], np.float64) + np.asarray(fc.bias[...]) for b in batches]
    np.testing.assert_allclose(bn.running_mean[...], np.mean([a.mean(0) for a in h], 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var[...], np.mean([a.var(0, ddof=1) for a in h], 0), rtol=1e-5)
    assert int(bn.num_batches_tracked[...]) == 2


# ------------------------------------------------------------------------------------------------
# Equinox models: the linen result on the same weights and batches
# ------------------------------------------------------------------------------------------------


def _equinox_twin(variables):
    """The Equinox twin of MLP (per example; same attribute names) holding ``variables``, and its state."""
    eqx = pytest.importorskip("equinox")
    import jaxnorm.equinox as jeqx

    class EqxMLP(eqx.Module):
        fc1: eqx.nn.Linear
        bn1: jeqx.BatchNorm1d
        fc2: eqx.nn.Linear
        bn2: jeqx.BatchNorm1d
        inorm: jeqx.InstanceNorm1d
        head: eqx.nn.Linear

        def __init__(self, key):
            keys = jax.random.split(key, 3)
            self.fc1, self.bn1 = eqx.nn.Linear(5, 8, key=keys[0]), jeqx.BatchNorm1d(8, momentum=0.3)
            self.fc2, self.bn2 = eqx.nn.Linear(8, 6, key=keys[1]), jeqx.BatchNorm1d(6, momentum=None)
            self.inorm = jeqx.InstanceNorm1d(2, track_running_stats=True)
            self.head = eqx.nn.Linear(6, 2, key=keys[2])

        def __call__(self, x, state):
            h, state = self.bn1(self.fc1(x), state)
            h, state = self.bn2(self.fc2(jax.nn.relu(h)), state)
            h, state = self.inorm(h.reshape(2, 3), state)
            return self.head(h.reshape(-1)), state

    abstract = eqx.filter_eval_shape(eqx.nn.make_with_state(EqxMLP), jax.random.key(0))
    model, state = jn.torch_to_equinox(flax_to_torch_state_dict(variables), *abstract)
    return eqx, jeqx, eqx.nn.inference_mode(model), state  # the InstanceNorm as linen's train=False


@pytest.mark.parametrize("estimator", ["mean", "population"])
def test_equinox_model_is_recalibrated_as_linen(estimator):
    model, variables, batches = _setup(n_batches=3)
    batches[-1] = batches[-1][:7]  # an uneven last batch
    want = flax_to_torch_state_dict(jn.recalibrate_batch_stats(model, variables, batches, train=False,
                                                                estimator=estimator))
    _, _, emodel, state = _equinox_twin(variables)
    before = jn.equinox_to_torch_state_dict(emodel, state)
    returned, new_state = jn.recalibrate_batch_stats(emodel, state, iter(batches), estimator=estimator)
    assert returned is emodel
    got = jn.equinox_to_torch_state_dict(emodel, new_state)
    _assert_only_bn_statistics_recomputed(got, want, before)
    after = jn.equinox_to_torch_state_dict(emodel, state)  # the caller's state is still valid, and unchanged
    assert all(np.array_equal(after[key], before[key], equal_nan=True) for key in before)


def test_equinox_axis_names_groups_and_errors():
    eqx = pytest.importorskip("equinox")
    import jaxnorm.equinox as jeqx

    rng = np.random.default_rng(9)
    batches = [rng.standard_normal((4, 2)).astype(np.float32) * 3 for _ in range(2)]
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([jeqx.BatchNorm1d(2), jeqx.LayerNorm(2)])
    want = np.mean([b.var(0, ddof=1) for b in batches], 0)
    # the batch runs over the layers' own axis names (of a tuple, the batch on the last); device groups set aside
    synced = jeqx.convert_sync_batch_norm(model, ("data", "batch"), axis_index_groups=[[0]])
    _, new_state = jn.recalibrate_batch_stats(synced, state, batches)
    np.testing.assert_allclose(new_state.get(synced.layers[0].state_index)["running_var"], want, rtol=1e-5)
    with pytest.raises(TypeError, match=r"^recalibrate_batch_stats: expected the Equinox model's eqx.nn.State"):
        jn.recalibrate_batch_stats(model, batches)
    with pytest.raises(ValueError, match="^recalibrate_batch_stats: expected at least one batch"):
        jn.recalibrate_batch_stats(model, state, [])
    with pytest.raises(ValueError, match="^recalibrate_batch_stats: expected LayerNorm to contain a jaxnorm BatchNorm "
                                         "layer with running statistics, found none"):
        jn.recalibrate_batch_stats(jeqx.LayerNorm(2), state, batches)
    two, two_state = eqx.nn.make_with_state(eqx.nn.Sequential)([jeqx.BatchNorm1d(2),
                                                                jeqx.BatchNorm1d(2, axis_name="b")])
    with pytest.raises(ValueError, match=r"^recalibrate_batch_stats: expected the BatchNorm layers of Sequential to "
                                         r"share one axis_name .* got \[\"0: 'batch'\", \"1: 'b'\"\]"):
        jn.recalibrate_batch_stats(two, two_state, batches)


    class Bypass(eqx.Module):  # holds a BatchNorm that the batches do not reach
        bn: jeqx.BatchNorm1d

        def __call__(self, x, state):
            return x, state

    bypass, bypass_state = eqx.nn.make_with_state(Bypass)(jeqx.BatchNorm1d(2))
    with pytest.raises(ValueError, match="^recalibrate_batch_stats: expected Bypass to contain a jaxnorm BatchNorm "
                                         "layer with running statistics that the batches reach, found none"):
        jn.recalibrate_batch_stats(bypass, bypass_state, batches)
