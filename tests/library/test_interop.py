"""jaxnorm.interop: PyTorch state dicts <-> jaxnorm, whole Flax models <-> flat state dicts, BN folding.

Goldens: real ``torch.nn`` modules when torch is installed (outputs, running statistics, ``load_state_dict``
with strict key checking, ``torch.nn.utils.fusion``); without torch, a BatchNorm1d state dict and eval output
printed by PyTorch 2.13 (inline below). Folding is also checked against the unfolded layer followed by
jaxnorm's eval-mode BN.
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

RNG = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def assert_close(got, want, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------------
# One norm layer, no torch: PyTorch-printed golden
# ------------------------------------------------------------------------------------------------

# torch.nn.BatchNorm1d(3, momentum=0.2), weight/bias set, trained on two batches, then .state_dict() and
# the eval-mode output on GOLDEN_X (PyTorch 2.13, float32).
GOLDEN_SD = {
    "weight": np.array([0.5, -1.25, 2.0], np.float32),
    "bias": np.array([0.25, 0.0, -0.75], np.float32),
    "running_mean": np.array([0.40666669607162476, 0.1483333259820938, 0.5233333110809326], np.float32),
    "running_var": np.array([1.346666693687439, 2.0391669273376465, 2.049999952316284], np.float32),
    "num_batches_tracked": np.array(2, np.int64),
}
GOLDEN_X = np.array([[0.5, -0.5, 1.0], [2.0, 1.0, -1.0]], np.float32)
GOLDEN_Y = np.array([[0.29021379351615906, 0.5675196647644043, -0.08416473865509033],
                     [0.936506986618042, -0.7455078959465027, -2.8778791427612305]], np.float32)


def test_numpy_state_dict_round_trip_and_golden_output():
    model_sd = {"conv.weight": randn(3, 2, 1), **{f"bn1.{k}": v for k, v in GOLDEN_SD.items()}}
    params, stats = jn.from_torch_state_dict(model_sd, prefix="bn1")  # trailing dot optional
    assert sorted(params) == ["bias", "weight"]
    assert sorted(stats) == ["num_batches_tracked", "running_mean", "running_var"]
    assert stats["num_batches_tracked"].dtype == jnp.int32 and stats["num_batches_tracked"].shape == ()
    assert int(stats["num_batches_tracked"]) == 2
    assert params["weight"].dtype == jnp.float32

    y, _ = jn.batch_norm(jnp.asarray(GOLDEN_X), params, stats, train=False)
    assert_close(y, GOLDEN_Y, atol=1e-6)

    back = jn.to_torch_state_dict(params, stats)
    assert list(back) == list(GOLDEN_SD)  # PyTorch's key order
    for key, value in GOLDEN_SD.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value)
    assert back["weight"].flags.writeable  # torch.from_numpy warns on read-only arrays
    assert list(jn.to_torch_state_dict(params, stats, prefix="bn1.")) == [f"bn1.{k}" for k in GOLDEN_SD]


def test_partial_layers_and_old_checkpoints():
    # LayerNorm(bias=False) / RMSNorm: only a weight; affine=False BN: only buffers; pre-0.4.1: no counter
    params, stats = jn.from_torch_state_dict({"weight": randn(4, 5)})
    assert list(params) == ["weight"] and stats == {}
    params, stats = jn.from_torch_state_dict({"running_mean": randn(3), "running_var": np.ones(3, np.float32)})
    assert params == {} and int(stats["num_batches_tracked"]) == 0


@pytest.mark.parametrize(
    "state_dict, prefix, match",
    [
        ({"bn1.weight": np.ones(3), "bn1.bias": np.zeros(3)}, "", r"entries directly under prefix '', got none.*'bn1\.'"),
        ({"bn1.weight": np.ones(3)}, "bn2.", "got none"),
        ({"w.weight": np.ones((3, 2)), "w.bias": np.zeros(3)}, "w.", r"same shape.*\(3, 2\).*\(3,\)"),
        ({"weight": np.ones(3), "foo": np.ones(3)}, "", r"got also \['foo'\]"),
        ({"running_mean": np.ones(3)}, "", "both 'running_mean' and 'running_var'"),
        ({"weight": np.ones(3), "running_mean": np.ones(4), "running_var": np.ones(4)}, "", "same shape"),
    ],
)
def test_from_torch_state_dict_errors(state_dict, prefix, match):
    with pytest.raises(ValueError, match=f"^from_torch_state_dict: .*{match}"):
        jn.from_torch_state_dict(state_dict, prefix=prefix)


def test_to_torch_state_dict_errors():
    with pytest.raises(ValueError, match=r"^to_torch_state_dict: expected params keys.*got also \['scale'\]"):
        jn.to_torch_state_dict({"scale": jnp.ones(3)}, {})
    with pytest.raises(TypeError, match="^to_torch_state_dict: expected batch_stats to be a dict"):
        jn.to_torch_state_dict({}, None)
    with pytest.raises(TypeError, match="^from_torch_state_dict: expected a state dict"):
        jn.from_torch_state_dict([("weight", np.ones(3))])


# ------------------------------------------------------------------------------------------------
# One norm layer against real torch modules
# ------------------------------------------------------------------------------------------------

# (torch module factory, input shape, jaxnorm forward(x, params, stats, train) -> (y, new_stats))
def _bn(x, p, s, train):
    return jn.batch_norm(x, p, s, train=train, momentum=0.3)


TORCH_CASES = {
    "BatchNorm1d_NC": (lambda t: t.nn.BatchNorm1d(5, momentum=0.3), (8, 5), _bn),
    "BatchNorm1d_NCL": (lambda t: t.nn.BatchNorm1d(4, momentum=0.3), (6, 4, 7), _bn),
    "BatchNorm2d": (lambda t: t.nn.BatchNorm2d(3, momentum=0.3), (4, 3, 5, 6), _bn),
    "BatchNorm3d": (lambda t: t.nn.BatchNorm3d(2, momentum=0.3), (3, 2, 3, 4, 5), _bn),
    "BatchNorm2d_noaffine": (lambda t: t.nn.BatchNorm2d(3, momentum=0.3, affine=False), (4, 3, 5, 6), _bn),
    "InstanceNorm2d_tracked": (
        lambda t: t.nn.InstanceNorm2d(3, momentum=0.3, affine=True, track_running_stats=True), (4, 3, 5, 6),
        lambda x, p, s, train: jn.instance_norm(x, p, s, train=train, momentum=0.3)),
    "LayerNorm": (lambda t: t.nn.LayerNorm((4, 6)), (3, 5, 4, 6), lambda x, p, s, train: (jn.layer_norm(x, p, (4, 6)), s)),
    "LayerNorm_nobias": (lambda t: t.nn.LayerNorm(6, bias=False), (3, 6), lambda x, p, s, train: (jn.layer_norm(x, p, 6), s)),
    "GroupNorm": (lambda t: t.nn.GroupNorm(2, 6), (3, 6, 4, 5), lambda x, p, s, train: (jn.group_norm(x, p, 2), s)),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_round_trip_with_torch_module(case):
    torch = pytest.importorskip("torch")
    make, shape, forward = TORCH_CASES[case]
    torch.manual_seed(0)
    module = make(torch)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
        module.train()
        for _ in range(2):
            module(torch.randn(shape) * 2 + 1)

    params, stats = jn.from_torch_state_dict(module.state_dict())  # tensors straight in
    x = randn(*shape, scale=1.5)
    for train in (False, True):  # eval: running stats; train: batch stats and the stats update
        module.train(train)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        y, stats = forward(jnp.asarray(x), params, stats, train)
        assert_close(y, want, atol=2e-5, rtol=2e-5)
    got_sd = jn.to_torch_state_dict(params, stats)
    want_sd = module.state_dict()
    assert list(got_sd) == list(want_sd)
    for key, value in want_sd.items():
        assert got_sd[key].dtype == value.numpy().dtype and got_sd[key].shape == tuple(value.shape), key
        assert_close(got_sd[key], value.numpy(), atol=1e-6, rtol=1e-6)

    fresh = make(torch)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in got_sd.items()}, strict=True)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), got_sd[key])


def test_prefix_selects_layer_of_torch_model():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(3, 4, 3))
    model.add_module("bn", torch.nn.BatchNorm2d(4))
    model.add_module("head", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(4)))
    sd = model.state_dict()
    params, stats = jn.from_torch_state_dict(sd, prefix="bn.")
    np.testing.assert_array_equal(stats["running_var"], sd["bn.running_var"].numpy())
    params, stats = jn.from_torch_state_dict(sd, prefix="head.1")
    assert sorted(params) == ["bias", "weight"] and stats == {}
    with pytest.raises(ValueError, match=r"\['bn\.', 'head\.1\.'\]"):  # forgot the prefix: lists the layers
        jn.from_torch_state_dict(sd)


def test_loaded_arrays_do_not_alias_torch_tensors():
    # tensor.numpy() shares memory and jnp.asarray may share it again (alignment permitting): an in-place
    # update in PyTorch afterwards must not change the loaded JAX arrays.
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm1d(120)
    params, stats = jn.from_torch_state_dict(bn.state_dict())
    template = {"params": {"bn": {"weight": jnp.zeros(120), "bias": jnp.zeros(120)}},
                "batch_stats": {"bn": {k: jnp.zeros_like(v) for k, v in stats.items()}}}
    loaded = torch_to_flax_variables({f"bn.{k}": v for k, v in bn.state_dict().items()}, template)
    with torch.no_grad():
        for tensor in bn.state_dict().values():
            tensor.add_(1)
    for tree in (params, stats, loaded["params"]["bn"], loaded["batch_stats"]["bn"]):
        for key, value in tree.items():
            want = {"weight": 1.0, "running_var": 1.0}.get(key, 0.0)
            np.testing.assert_array_equal(value, np.full(value.shape, want), err_msg=key)


# ------------------------------------------------------------------------------------------------
# Folding
# ------------------------------------------------------------------------------------------------


def _bn_state(c):
    params = {"weight": jnp.asarray(randn(c)), "bias": jnp.asarray(randn(c))}
    stats = {"running_mean": jnp.asarray(randn(c)), "running_var": jnp.asarray(RNG.uniform(0.2, 3.0, c).astype(np.float32)),
             "num_batches_tracked": jnp.asarray(7, jnp.int32)}
    return params, stats


def _conv(x_nchw, w_oihw, b):
    y = jax.lax.conv_general_dilated(x_nchw, w_oihw, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     precision="highest")
    return y + b[None, :, None, None]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("out_axis", [-1, 0])
def test_fold_matches_unfolded_eval_bn(kind, out_axis, with_bias, affine):
    c, eps = 5, 1e-3
    params, stats = _bn_state(c)
    params = params if affine else {}
    bias = jnp.asarray(randn(c)) if with_bias else None
    b0 = bias if with_bias else jnp.zeros(c)
    if kind == "dense":
        x, w_torch = jnp.asarray(randn(6, 4)), jnp.asarray(randn(c, 4))  # torch Linear layout (out, in)
        layer = lambda w_t, b: jnp.dot(x, w_t.T, precision="highest") + b[None]  # noqa: E731
        kernel = w_torch.T if out_axis == -1 else w_torch  # Flax Dense: (in, out)
        to_torch = lambda k: k.T if out_axis == -1 else k  # noqa: E731
    else:
        x, w_torch = jnp.asarray(randn(2, 3, 7, 6)), jnp.asarray(randn(c, 3, 3, 2))
        layer = lambda w_t, b: _conv(x, w_t, b)  # noqa: E731
        kernel = w_torch.transpose(2, 3, 1, 0) if out_axis == -1 else w_torch  # Flax Conv: (kh, kw, in, out)
        to_torch = lambda k: k.transpose(3, 2, 0, 1) if out_axis == -1 else k  # noqa: E731

    want, _ = jn.batch_norm(layer(w_torch, b0), params, stats, train=False, eps=eps, axis=1)
    k2, b2 = jn.fold_batch_norm(kernel, bias, params, stats, eps=eps, out_axis=out_axis)
    assert k2.shape == kernel.shape and k2.dtype == kernel.dtype and b2.shape == (c,)
    assert_close(layer(to_torch(k2), b2), want, atol=2e-5, rtol=2e-5)


def test_fold_matches_torch_fusion():
    torch = pytest.importorskip("torch")
    from torch.nn.utils import fusion

    params, stats = _bn_state(4)
    t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
    w, b = randn(4, 3, 3, 3), randn(4)
    want_w, want_b = fusion.fuse_conv_bn_weights(t(w), t(b), t(stats["running_mean"]), t(stats["running_var"]), 1e-5,
                                                 t(params["weight"]), t(params["bias"]))
    got_w, got_b = jn.fold_batch_norm(w, b, params, stats, out_axis=0)
    assert_close(got_w, want_w.detach().numpy(), atol=1e-6, rtol=1e-6)
    assert_close(got_b, want_b.detach().numpy(), atol=1e-6, rtol=1e-6)
    lw = randn(4, 6)
    want_w, want_b = fusion.fuse_linear_bn_weights(t(lw), None, t(stats["running_mean"]), t(stats["running_var"]), 1e-5,
                                                   t(params["weight"]), t(params["bias"]))
    got_w, got_b = jn.fold_batch_norm(lw.T, None, params, stats, out_axis=-1)
    assert_close(got_w.T, want_w.detach().numpy(), atol=1e-6, rtol=1e-6)
    assert_close(got_b, want_b.detach().numpy(), atol=1e-6, rtol=1e-6)


def test_fold_errors():
    params, stats = _bn_state(4)
    with pytest.raises(ValueError, match=r"^fold_batch_norm: .*4 output channels on out_axis=-1.*expected running_mean "
                                         r"of shape \(4,\), got \(5,\)"):
        jn.fold_batch_norm(jnp.ones((3, 4)), None, *_bn_state(5))
    with pytest.raises(ValueError, match=r"^fold_batch_norm: .*expected layer bias of shape \(4,\), got \(3,\)"):
        jn.fold_batch_norm(jnp.ones((3, 4)), jnp.ones(3), params, stats)
    with pytest.raises(ValueError, match="^fold_batch_norm: .*cannot be folded"):
        jn.fold_batch_norm(jnp.ones((3, 4)), None, params, {})
    with pytest.raises(ValueError, match=r"^fold_batch_norm: expected out_axis in \[-2, 2\)"):
        jn.fold_batch_norm(jnp.ones((3, 4)), None, params, stats, out_axis=2)


# ------------------------------------------------------------------------------------------------
# Whole Flax models <-> flat PyTorch state dicts
# ------------------------------------------------------------------------------------------------


class Net(nn.Module):
    """Conv (1-D, 2-D or 3-D, channels-last) -> jaxnorm BN -> relu -> flatten -> Dense -> LayerNorm."""

    spatial: int

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Conv(4, (3,) * self.spatial, padding="VALID", name="conv")(x)
        x = {1: jnn.BatchNorm1d, 2: jnn.BatchNorm2d, 3: jnn.BatchNorm3d}[self.spatial](4, axis=-1, name="bn")(x, train=train)
        x = jnp.moveaxis(nn.relu(x), -1, 1).reshape(x.shape[0], -1)  # torch's NC... flatten order
        x = nn.Dense(3, name="fc")(x)
        return jnn.LayerNorm(3, name="ln")(x)


def _torch_net(torch, spatial, n_flat):
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[spatial]
    bn = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[spatial]
    m = torch.nn.Module()
    m.conv, m.bn, m.fc, m.ln = conv(2, 4, 3), bn(4), torch.nn.Linear(n_flat, 3), torch.nn.LayerNorm(3)
    m.forward = lambda x: m.ln(m.fc(torch.relu(m.bn(m.conv(x))).flatten(1)))
    return m


def _init_net(spatial, size=5):
    x = randn(3, *(size,) * spatial, 2)
    model = Net(spatial)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(spatial), jnp.asarray(x))
    variables = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(RNG.standard_normal(a.shape), a.dtype)
                             if a.dtype == jnp.float32 else a, variables)  # non-trivial BN/LN values
    return model, variables, x


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_flax_model_state_dict_round_trip_numpy(spatial):
    model, variables, _ = _init_net(spatial)
    sd = flax_to_torch_state_dict(variables)
    assert sd["conv.weight"].shape == (4, 2, *(3,) * spatial)  # (out, in, *k)
    assert sd["fc.weight"].shape == (3, 4 * 3 ** spatial)  # (out, in)
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"].shape == ()
    assert set(sd) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias", "ln.weight",
                       "ln.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    back = torch_to_flax_variables(sd, variables)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b) or (a.dtype == b.dtype) or pytest.fail("dtype"),
                 back, variables)
    # a shape-only template (jax.eval_shape) works the same
    shapes = jax.eval_shape(lambda: variables)
    jax.tree.map(np.testing.assert_array_equal, torch_to_flax_variables(sd, shapes), variables)


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_flax_model_matches_torch_model(spatial):
    torch = pytest.importorskip("torch")
    model, variables, x = _init_net(spatial)
    tmodel = _torch_net(torch, spatial, 4 * 3 ** spatial)
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in flax_to_torch_state_dict(variables).items()}, strict=True)
    x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    for train in (False, True):
        tmodel.train(train)
        with torch.no_grad():
            want = tmodel(x_torch).numpy()
        got, state = model.apply(variables, jnp.asarray(x), train=train, mutable=["batch_stats"])
        assert_close(got, want, atol=2e-5, rtol=2e-5)
    # the train step's running statistics, loaded back from torch, equal the Flax update
    updated = torch_to_flax_variables(tmodel.state_dict(), variables)
    jax.tree.map(lambda a, b: assert_close(a, b, atol=1e-6, rtol=1e-6), updated["batch_stats"], state["batch_stats"])


def test_torch_to_flax_errors():
    _, variables, _ = _init_net(2)
    sd = flax_to_torch_state_dict(variables)
    with pytest.raises(ValueError, match=r"^torch_to_flax_variables: .*missing keys \['fc.bias'\]"):
        torch_to_flax_variables({k: v for k, v in sd.items() if k != "fc.bias"}, variables)
    with pytest.raises(ValueError, match=r"^torch_to_flax_variables: .*unexpected keys \['extra.weight'\]"):
        torch_to_flax_variables({**sd, "extra.weight": np.ones(2)}, variables)
    with pytest.raises(TypeError, match=r"^flax_to_torch_state_dict: expected Flax variables .*got list"):
        flax_to_torch_state_dict([variables])
    loaded = torch_to_flax_variables({**sd, "extra.weight": np.ones(2)}, variables, strict=False)
    np.testing.assert_array_equal(loaded["params"]["fc"]["bias"], variables["params"]["fc"]["bias"])
    with pytest.raises(ValueError, match=r"^torch_to_flax_variables: .*'conv.weight': expected shape \(4, 2, 3, 3\)"
                                         r".*\(3, 3, 2, 4\)\), got \(4, 2, 3, 2\)"):
        torch_to_flax_variables({**sd, "conv.weight": np.ones((4, 2, 3, 2))}, variables)
    # a counter missing (pre-0.4.1 checkpoint) loads as 0; a counter the template lacks is ignored
    loaded = torch_to_flax_variables({k: v for k, v in sd.items() if k != "bn.num_batches_tracked"}, variables)
    assert loaded["batch_stats"]["bn"]["num_batches_tracked"].dtype == jnp.int32
    assert int(loaded["batch_stats"]["bn"]["num_batches_tracked"]) == 0
