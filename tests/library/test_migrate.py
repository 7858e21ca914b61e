"""jaxnorm.migrate: Flax, Keras 3 and Haiku normalization checkpoints as jaxnorm's, against the real libraries.

Each source layer runs a few training-mode steps (what moves its running statistics; its parameters are set to random
values), is converted, and then (1) its eval outputs equal the converted layer's, and (2) one more training step of
the converted state equals PyTorch's ``BatchNorm1d`` loaded with it, while the source's own step differs from
PyTorch's exactly as documented (biased against unbiased variance). Whole models: a small CNN with Flax norms,
converted as linen variables and as an NNX model, gives the same eval logits. ``convert_sync_batch_norm`` equals
BatchNorm on the whole batch (named ``vmap`` axes here; 4 simulated devices in ``test_migrate_devices.py``). The
public names are reached as users reach them (``jn.from_flax_batch_norm``, ``jaxnorm.nnx.convert_flax_norms``, ...).
Keras/Haiku/torch/Equinox tests skip where those are not installed; ``freeze_batch_norm(..., where=)``:
``test_freeze.py``.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.linen as jnn
import jaxnorm.nnx as jnnx
from jaxnorm.nnx import BatchNorm, convert_flax_norms, convert_sync_batch_norm

batch_norm_options, convert_flax_variables, momentum_from_decay = (
    jn.batch_norm_options, jn.convert_flax_variables, jn.momentum_from_decay)
from_flax_batch_norm, from_keras_batch_norm, from_haiku_batch_norm = (
    jn.from_flax_batch_norm, jn.from_keras_batch_norm, jn.from_haiku_batch_norm)

os.environ.setdefault("KERAS_BACKEND", "jax")  # read when keras is first imported

RNG = np.random.default_rng(0)
C = 3
# float32 eval outputs of two implementations of the same affine map: a few ulps of O(1) values
TOL = 2e-6


def randn(*shape, scale=1.0, shift=0.0):
    return (shift + scale * RNG.standard_normal(shape)).astype(np.float32)


def batches(n=3, shape=(8, C)):
    """Training batches with a per-channel offset and spread, so the running statistics move visibly."""
    return [randn(*shape, scale=2.0, shift=1.5) for _ in range(n)]


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def torch_step(params, stats, options, x):
    """One training step of ``torch.nn.BatchNorm1d`` loaded with the converted state: (output, its buffers)."""
    torch = pytest.importorskip("torch")
    layer = torch.nn.BatchNorm1d(C, momentum=options["momentum"], eps=options["eps"], affine=bool(params))
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in jn.to_torch_state_dict(params, stats).items()})
    layer.train()
    y = layer(torch.from_numpy(x)).detach().numpy()
    return y, {k: v.numpy() for k, v in layer.state_dict().items()}


def check_train_step(params, stats, options, x, source_y, source_mean, source_var):
    """The converted state's next training step: jaxnorm equals PyTorch; the source's own step has the same output
    and mean, and its variance lacks PyTorch's Bessel correction, ``momentum · var_batch / (n − 1)``."""
    y, new = jn.batch_norm(jnp.asarray(x), params, stats, train=True, **options)
    torch_y, torch_stats = torch_step(params, stats, options, x)
    assert max_diff(y, torch_y) < 1e-5
    for key in ("running_mean", "running_var"):
        assert max_diff(new[key], torch_stats[key]) < 1e-6, key
    assert int(new["num_batches_tracked"]) == int(torch_stats["num_batches_tracked"]) == int(
        stats["num_batches_tracked"]) + 1
    assert max_diff(source_y, torch_y) < 1e-5
    assert max_diff(source_mean, torch_stats["running_mean"]) < 1e-6
    n = x.shape[0]
    bessel = options["momentum"] * x.astype(np.float64).var(0) / (n - 1)
    np.testing.assert_allclose(torch_stats["running_var"] - np.asarray(source_var), bessel, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Flax: linen and NNX BatchNorm
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_scale, use_bias", [(True, True), (False, True), (False, False)])
def test_flax_linen_batch_norm(use_scale, use_bias):
    layer = nn.BatchNorm(momentum=0.9, use_scale=use_scale, use_bias=use_bias)
    xs = batches(4)
    variables = layer.init(jax.random.key(0), xs[0], use_running_average=True)
    variables = {**variables, "params": {k: randn(C, shift=1.0) for k in variables.get("params", {})}}
    for x in xs[:3]:
        _, update = layer.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        variables = {**variables, **update}
    params, stats = from_flax_batch_norm(variables.get("params", {}), variables["batch_stats"])
    assert sorted(params) == (["bias", "weight"] if use_bias else [])
    assert int(stats["num_batches_tracked"]) == 0
    options = batch_norm_options(layer)
    assert options == {"momentum": 0.1, "eps": 1e-5, "axis": -1}
    y, _ = jn.batch_norm(jnp.asarray(xs[0]), params, stats, train=False, **options)
    assert max_diff(y, layer.apply(variables, xs[0], use_running_average=True)) < TOL
    if use_scale or use_bias:  # (a layer without parameters: its torch step is the same as the first case's)
        flax_y, flax_new = layer.apply(variables, xs[3], use_running_average=False, mutable=["batch_stats"])
        check_train_step(params, stats, options, xs[3], flax_y, flax_new["batch_stats"]["mean"],
                         flax_new["batch_stats"]["var"])


def test_flax_nnx_batch_norm_from_its_state():
    bn = nnx.BatchNorm(C, momentum=0.8, epsilon=1e-4, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = randn(C, shift=1.0), randn(C)
    xs = batches(4)
    for x in xs[:3]:
        bn(jnp.asarray(x))
    # nnx.State holds the Variables: the converter reads their values
    params, stats = from_flax_batch_norm(nnx.state(bn, nnx.Param), nnx.state(bn, nnx.BatchStat))
    options = batch_norm_options(bn)
    assert options == {"momentum": 0.2, "eps": 1e-4, "axis": -1}
    bn.eval()
    y, _ = jn.batch_norm(jnp.asarray(xs[0]), params, stats, train=False, **options)
    assert max_diff(y, bn(jnp.asarray(xs[0]))) < TOL
    bn.train()
    flax_y = bn(jnp.asarray(xs[3]))
    check_train_step(params, stats, options, xs[3], flax_y, bn.mean[...], bn.var[...])


# ------------------------------------------------------------------------------------------------
# Keras 3
# ------------------------------------------------------------------------------------------------


def _trained_keras(keras, xs, **kwargs):
    layer = keras.layers.BatchNormalization(momentum=0.9, **kwargs)
    layer.build(xs[0].shape)
    for weight in (layer.gamma, layer.beta):
        if weight is not None:
            weight.assign(randn(*weight.shape, shift=1.0))
    for x in xs:
        layer(x, training=True)
    return layer


@pytest.mark.parametrize("kwargs, shape, axis", [
    ({}, (8, C), -1),
    ({"center": False}, (8, C), -1),
    ({"scale": False, "epsilon": 1e-5}, (8, C), -1),
    ({"axis": 1}, (4, C, 2, 2), 1),  # channels-first images: the axis is reported
])
def test_keras_batch_norm(kwargs, shape, axis):
    keras = pytest.importorskip("keras")
    xs = batches(4, shape)
    layer = _trained_keras(keras, xs[:3], **kwargs)
    params, stats = from_keras_batch_norm(layer)
    expected = {"weight"} if layer.scale or layer.center else set()
    assert set(params) == expected | ({"bias"} if layer.center else set())
    options = batch_norm_options(layer)
    assert options == {"momentum": 0.1, "eps": kwargs.get("epsilon", 1e-3), "axis": axis}
    y, _ = jn.batch_norm(jnp.asarray(xs[0]), params, stats, train=False, **options)
    assert max_diff(y, keras.ops.convert_to_numpy(layer(xs[0], training=False))) < TOL
    if not kwargs:
        keras_y = keras.ops.convert_to_numpy(layer(xs[3], training=True))
        check_train_step(params, stats, options, xs[3], keras_y, keras.ops.convert_to_numpy(layer.moving_mean),
                         keras.ops.convert_to_numpy(layer.moving_variance))


def test_keras_errors():
    keras = pytest.importorskip("keras")
    with pytest.raises(TypeError, match=r"from_keras_batch_norm: expected a Keras 3 keras.layers.BatchNormalization, "
                                        r"got .*Dense"):
        from_keras_batch_norm(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="from_keras_batch_norm: Keras layer .* is not built"):
        from_keras_batch_norm(keras.layers.BatchNormalization())
    renorm = keras.layers.BatchNormalization(renorm=True)
    renorm.build((2, C))
    with pytest.raises(ValueError, match=r"from_keras_batch_norm: source entries \[.*moving_stddev.*renorm_mean"):
        from_keras_batch_norm(renorm)
    params, stats = from_keras_batch_norm(renorm, strict=False)  # the four weights a plain BatchNormalization has
    assert sorted(params) == ["bias", "weight"] and stats["running_mean"].shape == (C,)


# ------------------------------------------------------------------------------------------------
# Haiku
# ------------------------------------------------------------------------------------------------


def _haiku_model(hk, **kwargs):
    class Net(hk.Module):
        def __call__(self, x, is_training):
            return hk.BatchNorm(decay_rate=0.9, name="bn", **kwargs)(x, is_training)

    return hk.without_apply_rng(hk.transform_with_state(lambda x, is_training: Net()(x, is_training)))


@pytest.mark.parametrize("kwargs", [{"create_scale": True, "create_offset": True},
                                    {"create_scale": False, "create_offset": True, "eps": 1e-3}])
def test_haiku_batch_norm(kwargs):
    hk = pytest.importorskip("haiku")
    model = _haiku_model(hk, **kwargs)
    xs = batches(4)
    params, state = model.init(None, xs[0], True)
    params = jax.tree.map(lambda p: jnp.asarray(randn(*p.shape, shift=1.0)), params)
    for x in xs[:3]:
        _, state = model.apply(params, state, x, True)
    converted, stats = from_haiku_batch_norm(params, state, module="net/bn")
    assert sorted(converted) == ["bias", "weight"]  # an offset without a scale gets weight 1
    assert stats["running_mean"].shape == (C,) and int(stats["num_batches_tracked"]) == 3  # Haiku's update counter
    options = {"momentum": momentum_from_decay(0.9), "eps": kwargs.get("eps", 1e-5), "axis": -1}
    y, _ = jn.batch_norm(jnp.asarray(xs[0]), converted, stats, train=False, **options)
    assert max_diff(y, model.apply(params, state, xs[0], False)[0]) < TOL
    # Haiku's own next step debiases its averages (hidden / (1 - 0.9^4)): not PyTorch's update, so compare only
    # the converted state's step with PyTorch's.
    y, new = jn.batch_norm(jnp.asarray(xs[3]), converted, stats, train=True, **options)
    torch_y, torch_stats = torch_step(converted, stats, options, xs[3])
    assert max_diff(y, torch_y) < 1e-5 and max_diff(new["running_var"], torch_stats["running_var"]) < 1e-6
    assert max_diff(y, model.apply(params, state, xs[3], True)[0]) < 1e-5  # the batch statistics agree


def test_haiku_errors():
    hk = pytest.importorskip("haiku")
    model = _haiku_model(hk, create_scale=True, create_offset=True)
    params, state = model.init(None, batches(1)[0], True)
    with pytest.raises(ValueError, match=r"from_haiku_batch_norm: state has no 'batch_norm/~/mean_ema'.*"
                                         r"BatchNorm modules in this state: \['net/bn'\]"):
        from_haiku_batch_norm(params, state)
    extra = {**params, "net/bn/~/extra": {"w": jnp.ones(1)}}
    with pytest.raises(ValueError, match=r"source entries \[\"params\['net/bn/~/extra'\]\"\]"):
        from_haiku_batch_norm(extra, state, module="net/bn")
    assert from_haiku_batch_norm(extra, state, module="net/bn", strict=False)[0]


# ------------------------------------------------------------------------------------------------
# Bad input, one layer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda: from_flax_batch_norm({"scale": np.ones(3)}, {"mean": np.zeros(3)}), ValueError,
     r"from_flax_batch_norm: batch_stats has no 'var': expected Flax BatchNorm's \{'mean', 'var'\}, got keys \['mean'\]"),
    (lambda: from_flax_batch_norm({"scale": np.ones(3), "kernel": np.ones(3)}, {"mean": np.zeros(3), "var": np.ones(3)}),
     ValueError, r"from_flax_batch_norm: source entries \[\"params\['kernel'\]\"\] have no place .*strict=False"),
    (lambda: from_flax_batch_norm({"scale": np.ones(4)}, {"mean": np.zeros(3), "var": np.ones(3)}), ValueError,
     r"from_flax_batch_norm: expected every per-channel vector of the same shape, got params\['scale'\] \(4,\)"),
    (lambda: from_flax_batch_norm({}, {"mean": np.zeros((2, 3)), "var": np.ones((2, 3))}), ValueError,
     r"from_flax_batch_norm: batch_stats\['mean'\]: expected a per-channel vector \(C,\).*got shape \(2, 3\)"),
    (lambda: from_flax_batch_norm([], {}), TypeError, "from_flax_batch_norm: expected params to be a dict, got list"),
    (lambda: from_haiku_batch_norm({}, {"batch_norm/~/mean_ema": {"average": np.zeros((1, 3))},
                                        "batch_norm/~/var_ema": {}}), ValueError,
     r"from_haiku_batch_norm: state\['batch_norm/~/mean_ema'\] has no 'counter'"),
    (lambda: momentum_from_decay(1.5), ValueError, r"momentum_from_decay: expected a decay in \[0, 1\].*got 1.5"),
    (lambda: batch_norm_options(nn.LayerNorm()), TypeError, "batch_norm_options: expected flax.nnx.BatchNorm"),
    (lambda: batch_norm_options(nn.BatchNorm(axis=(1, 2))), ValueError,
     r"batch_norm_options: expected one channel axis \(an int\), got axis=\(1, 2\)"),
])
def test_one_layer_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_non_strict_ignores_unused_entries():
    params, stats = from_flax_batch_norm({"scale": np.ones(3), "kernel": np.ones(3)},
                                         {"mean": np.zeros(3), "var": np.ones(3)}, strict=False)
    assert sorted(params) == ["weight"] and stats["running_var"].tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------
# Whole models: a small CNN with Flax norms, linen and NNX
# ------------------------------------------------------------------------------------------------


class FlaxCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))  # auto-named BatchNorm_0
        x = nn.GroupNorm(num_groups=2)(nn.Conv(4, (3, 3))(x))
        x = nn.LayerNorm(name="ln")(x.mean((1, 2)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="head_bn")(nn.Dense(2)(x))
        return nn.RMSNorm()(x)


class JaxnormCNN(nn.Module):
    """FlaxCNN with jaxnorm.linen layers: same module names, Flax's eps, PyTorch's momentum, channels last."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(jnn.BatchNorm2d(4, momentum=0.1, axis=-1)(x, train=train))
        x = jnn.GroupNorm(2, 4, eps=1e-6, axis=-1)(nn.Conv(4, (3, 3))(x))
        x = jnn.LayerNorm(4, eps=1e-6, name="ln")(x.mean((1, 2)))
        x = jnn.BatchNorm1d(2, momentum=0.1, axis=-1, name="head_bn")(nn.Dense(2)(x), train=train)
        return jnn.RMSNorm(2, eps=1e-6)(x)


IMAGES = randn(4, 5, 5, 2, scale=2.0, shift=0.5)


def _randomized(tree):
    return jax.tree.map(lambda p: jnp.asarray(randn(*p.shape, shift=float(p.mean()), scale=0.3)), tree)


def test_linen_cnn_converted_whole_gives_the_same_eval_logits():
    flax_model = FlaxCNN()
    variables = jax.jit(lambda key: flax_model.init(key, IMAGES, train=False))(jax.random.key(0))  # eager: ~5 s
    variables = {**variables, "params": _randomized(variables["params"])}
    train = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=["batch_stats"])[1])
    for shift in (1.0, 2.0):
        variables = {**variables, **train(variables, IMAGES + shift)}
    template = jax.eval_shape(lambda: JaxnormCNN().init(jax.random.key(0), IMAGES, train=False))
    converted = convert_flax_variables(variables, template)
    assert sorted(converted["batch_stats"]) == ["BatchNorm2d_0", "head_bn"]  # BatchNorm_0 matched by its auto-name
    assert sorted(converted["params"]["ln"]) == ["bias", "weight"]
    want = jax.jit(lambda v: flax_model.apply(v, IMAGES, train=False))(variables)
    got = jax.jit(lambda v: JaxnormCNN().apply(v, IMAGES, train=False))(converted)
    assert max_diff(got, want) < 1e-5


def test_convert_flax_variables_errors():
    x = jnp.ones((2, 3))
    flax_vars = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    template = jnn.BatchNorm1d(4, axis=-1).init(jax.random.key(0), jnp.ones((2, 4)), train=False)
    with pytest.raises(ValueError, match=r"convert_flax_variables: params/weight: expected shape \(4,\) \(the "
                                         r"template's\), got \(3,\) from Flax's params/scale"):
        convert_flax_variables(flax_vars, template)
    template = {"params": {"bn": {"weight": jnp.ones(3)}}}
    with pytest.raises(ValueError, match=r"convert_flax_variables: the Flax variables have no value for the "
                                         r"template's \['params/bn/weight'\]"):
        convert_flax_variables(flax_vars, template)
    template = {"params": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}
    with pytest.raises(ValueError, match=r"convert_flax_variables: source entries \['batch_stats/mean', "
                                         r"'batch_stats/var'\]"):
        convert_flax_variables(flax_vars, template)
    assert sorted(convert_flax_variables(flax_vars, template, strict=False)) == ["params"]
    ambiguous = {"params": {"BatchNorm1d_0": {"weight": jnp.ones(3)}, "BatchNorm2d_0": {"weight": jnp.ones(3)}}}
    with pytest.raises(ValueError, match=r"params/BatchNorm1d_0: template modules \['BatchNorm1d_0', "
                                         r"'BatchNorm2d_0'\] cannot be matched"):
        convert_flax_variables({"params": {"BatchNorm_0": {"scale": np.ones(3)}}}, ambiguous)


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
        self.blocks = nnx.List([nnx.Conv(4, 4, (3, 3), rngs=rngs), nnx.GroupNorm(4, num_groups=2, rngs=rngs)])
        self.ln = nnx.LayerNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.head_bn = nnx.BatchNorm(2, momentum=0.9, use_scale=False, rngs=rngs)
        self.rms = nnx.RMSNorm(2, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        x = self.blocks[1](self.blocks[0](x))
        return self.rms(self.head_bn(self.head(self.ln(x.mean((1, 2))))))


def test_nnx_cnn_converted_in_place_gives_the_same_logits():
    model = nnx.eval_shape(lambda: NnxCNN(nnx.Rngs(0)))  # filled below: eagerly, Flax's initializers cost ~3 s
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        shape = variable.get_value().shape
        value = randn(*shape, scale=0.3, shift=0.5) if isinstance(variable, nnx.Param) else np.full(
            shape, path[-1] == "var", np.float32)  # Flax's initial mean 0, var 1
        variable.set_value(jnp.asarray(value))
    for _ in range(2):
        model(jnp.asarray(IMAGES + 1))
    model.eval()
    want = model(jnp.asarray(IMAGES))
    flax_bn = model.bn
    assert convert_flax_norms(model) is model
    assert [type(m) for m in (model.bn, model.blocks[1], model.ln, model.head_bn, model.rms)] == [
        BatchNorm, jnnx.GroupNorm, jnnx.LayerNorm, BatchNorm, jnnx.RMSNorm]
    assert model.bn.momentum == 0.1 and model.bn.eps == 1e-5 and model.ln.eps == 1e-6 and model.bn.axis == -1
    assert model.bn.running_var is flax_bn.var and model.bn.use_running_average  # the Variables themselves
    assert max_diff(model(jnp.asarray(IMAGES)), want) < 1e-5
    assert sorted(jn.nnx_to_torch_state_dict(model)) == sorted(
        ["conv.weight", "conv.bias", "blocks.0.weight", "blocks.0.bias", "head.weight", "head.bias", "rms.weight",
         *(f"{m}.{k}" for m in ("bn", "head_bn") for k in jn.to_torch_state_dict(*jn.batch_norm_init(1))),
         *(f"{m}.{k}" for m in ("blocks.1", "ln") for k in ("weight", "bias"))])


def test_nnx_training_mode_after_conversion_matches_flax():
    """One training-mode call: the same outputs (batch statistics) as the Flax layer; the running variance gets the
    unbiased batch variance, PyTorch's."""
    flax_bn = nnx.BatchNorm(C, momentum=0.9, rngs=nnx.Rngs(0))
    x = jnp.asarray(batches(1)[0])
    converted = convert_flax_norms(nnx.clone(flax_bn))  # a root layer: the new layer is returned
    assert type(converted) is BatchNorm and not converted.use_running_average
    assert max_diff(converted(x), flax_bn(x)) < 1e-5
    n = x.shape[0]
    np.testing.assert_allclose(converted.running_var[...] - flax_bn.var[...], 0.1 * np.var(x, 0) / (n - 1), rtol=1e-4)
    assert int(converted.num_batches_tracked[...]) == 1


def test_convert_flax_norms_errors_leave_the_model_unchanged():
    model = nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0)), nnx.LayerNorm(3, reduction_axes=(-2, -1),
                                                                              rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"convert_flax_norms: layers.1 \(nnx.LayerNorm\): expected reduction_axes=-1 "
                                         r"and feature_axes=-1 \(the last axis\).*got reduction_axes=\(-2, -1\)"):
        convert_flax_norms(model)
    assert type(model.layers[0]) is nnx.BatchNorm
    with pytest.raises(ValueError, match="convert_flax_norms: found no nnx.BatchNorm"):
        convert_flax_norms(nnx.Sequential(jnnx.LayerNorm(3)))
    with pytest.raises(TypeError, match="convert_flax_norms: expected a flax.nnx.Module, got dict"):
        convert_flax_norms({})


# ------------------------------------------------------------------------------------------------
# convert_sync_batch_norm: equals the whole batch (named vmap axes; devices: test_migrate_devices.py)
# ------------------------------------------------------------------------------------------------


def test_nnx_convert_sync_batch_norm_equals_the_whole_batch():
    model = convert_flax_norms(nnx.Sequential(nnx.Linear(2, C, rngs=nnx.Rngs(0)), nnx.BatchNorm(C, rngs=nnx.Rngs(0))))
    x = jnp.asarray(randn(8, 2, scale=2.0))
    whole = nnx.clone(model)
    want = whole(x)
    assert convert_sync_batch_norm(model, "data") is model and model.layers[1].axis_name == "data"
    graphdef, state = nnx.split(model)

    def shard(state, x):
        replica = nnx.merge(graphdef, state)
        return replica(x), nnx.state(replica)

    y, states = jax.vmap(shard, in_axes=(None, 0), axis_name="data")(state, x.reshape(4, 2, 2))
    assert max_diff(y.reshape(8, C), want) < 1e-5
    for key in ("running_mean", "running_var"):
        synced = np.asarray(states["layers"][1][key].get_value())
        assert max_diff(synced, np.broadcast_to(getattr(whole.layers[1], key)[...], synced.shape)) < 1e-6


def test_convert_sync_batch_norm_errors():
    with pytest.raises(ValueError, match="convert_sync_batch_norm: found no BatchNorm layer in Sequential"):
        convert_sync_batch_norm(nnx.Sequential(jnnx.LayerNorm(3)), "data")
    with pytest.raises(ValueError, match="convert_sync_batch_norm: axis_index_groups=.* needs axis_name|axis_name=None"):
        convert_sync_batch_norm(nnx.Sequential(jnnx.BatchNorm1d(3)), None)
    flax_bn = convert_sync_batch_norm(nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0))), "data",
                                      axis_index_groups=[[0, 1], [2, 3]])
    assert flax_bn.layers[0].axis_name == "data" and flax_bn.layers[0].axis_index_groups == ((0, 1), (2, 3))


def test_equinox_convert_sync_batch_norm_equals_the_whole_batch():
    eqx = pytest.importorskip("equinox")
    import jaxnorm.equinox as jeqx
    eqx_convert = jeqx.convert_sync_batch_norm

    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([jeqx.LayerNorm(C), jeqx.BatchNorm1d(C)])
    synced = eqx_convert(model, ("data", "batch"))
    assert synced.layers[1].axis_name == ("data", "batch") and model.layers[1].axis_name == "batch"
    x = jnp.asarray(randn(8, C, scale=2.0))
    per_example = lambda m: jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))  # noqa: E731
    want, want_state = per_example(model)(x, state)
    y, new_state = jax.vmap(per_example(synced), axis_name="data", in_axes=(0, None), out_axes=(0, None))(
        x.reshape(4, 2, C), state)
    assert max_diff(y.reshape(8, C), want) < 1e-5
    got, expected = new_state.get(synced.layers[1].state_index), want_state.get(model.layers[1].state_index)
    assert max_diff(got["running_var"], expected["running_var"]) < 1e-6
