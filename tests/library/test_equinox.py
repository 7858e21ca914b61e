"""jaxnorm.equinox: per-example Equinox layers vmapped over a batch give the pure functions' numbers on the whole
batch, follow Equinox's conventions (make_with_state, State, inference_mode, Sequential, filter_jit/grad/vmap), reach
every option of the pure functions (masks, Ghost BN, device groups, forward mode), find and replace layers by their
PyTorch path, and raise named errors at trace time.

Goldens: the pure functions (jaxnorm.batch_norm_2d, ...) on the whole batch, inside the same compiled program; the
torch.nn parity of these layers is in test_equinox_parity.py, 4 devices in test_equinox_devices.py.
"""

from __future__ import annotations

import re

import pytest

eqx = pytest.importorskip("equinox")

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxnorm as jn  # noqa: E402
import jaxnorm.equinox as jeqx  # noqa: E402

RNG = np.random.default_rng(0)
TOL = {"rtol": 1e-6, "atol": 1e-6}


def randn(*shape, scale=1.0, offset=0.0):
    return jnp.asarray((scale * RNG.standard_normal(shape) + offset).astype(np.float32))


def batched(layer, *, axis_name="batch", masked=False):
    """``layer`` vmapped over the batch, Equinox's way: examples mapped, the state broadcast and returned unmapped."""
    if masked:
        return jax.vmap(lambda x, m, s: layer(x, s, mask=m), axis_name=axis_name, in_axes=(0, 0, None),
                        out_axes=(0, None))
    return jax.vmap(layer, axis_name=axis_name, in_axes=(0, None), out_axes=(0, None))


def with_random_params(layer):
    """The layer with non-trivial weight and bias (when it has them), and those as the pure functions' params."""
    params = {k: randn(*getattr(layer, k).shape, scale=0.5, offset=1.0 if k == "weight" else 0.0)
              for k in ("weight", "bias") if getattr(layer, k, None) is not None}
    if params:
        layer = eqx.tree_at(lambda m: [getattr(m, k) for k in params], layer, list(params.values()))
    return layer, params


NCHW, NHWC = (4, 3, 5, 5), (4, 5, 5, 3)
# name: (class, constructor kwargs, batch shape, pure function, its extra kwargs, mask). Few distinct shapes.
STATEFUL = {
    "bn1d_cumulative": (jeqx.BatchNorm1d, {"momentum": None}, (4, 3, 5), jn.batch_norm_1d, {}, False),
    "bn1d_features": (jeqx.BatchNorm1d, {}, (6, 3), jn.batch_norm_1d, {}, False),
    "bn2d": (jeqx.BatchNorm2d, {"momentum": 0.3, "eps": 1e-3}, NCHW, jn.batch_norm_2d, {}, False),
    "bn2d_channels_last": (jeqx.BatchNorm2d, {"axis": -1}, NHWC, jn.batch_norm_2d, {"axis": -1}, False),
    "bn3d": (jeqx.BatchNorm3d, {}, (2, 3, 2, 3, 3), jn.batch_norm_3d, {}, False),
    "bn2d_no_affine_mask": (jeqx.BatchNorm2d, {"affine": False, "momentum": 0.5}, NCHW, jn.batch_norm_2d, {}, True),
    "bn2d_untracked": (jeqx.BatchNorm2d, {"track_running_stats": False}, NCHW, jn.batch_norm_2d, {}, False),
    "bn2d_ghost": (jeqx.BatchNorm2d, {"virtual_batch_size": 2}, NCHW, jn.batch_norm_2d,
                   {"virtual_batch_size": 2}, False),
    "renorm": (jeqx.BatchRenorm, {"r_max": 1.5, "d_max": 0.5}, NCHW, jn.batch_renorm, {"r_max": 1.5, "d_max": 0.5},
               False),
    "in2d_affine_tracked": (jeqx.InstanceNorm2d, {"affine": True, "track_running_stats": True, "momentum": 0.3},
                            NCHW, jn.instance_norm_2d, {}, False),
    "in2d_channels_last_mask": (jeqx.InstanceNorm2d, {"track_running_stats": True, "axis": -1}, NHWC,
                                jn.instance_norm_2d, {"axis": -1}, True),
    "in1d_stateless": (jeqx.InstanceNorm1d, {}, (4, 3, 5), jn.instance_norm_1d, {}, False),
}


@pytest.mark.parametrize("case", sorted(STATEFUL))
def test_stateful_layers_equal_the_pure_function_on_the_whole_batch(case):
    cls, kwargs, shape, pure, pure_kwargs, with_mask = STATEFUL[case]
    layer, state = eqx.nn.make_with_state(cls)(3, **kwargs)
    layer, params = with_random_params(layer)
    stats = {} if layer.state_index is None else state.get(layer.state_index)
    chex.assert_trees_all_equal(stats, jn.batch_norm_init(3, track_running_stats=layer.track_running_stats)[1])
    options = {"momentum": layer.momentum, "eps": layer.eps, **pure_kwargs}

    @eqx.filter_jit  # one program per case: the vmapped layer and the pure function on the whole batch
    def run(layer, state, x1, x2, mask):
        y1, state = batched(layer, masked=mask is not None)(x1, *(() if mask is None else (mask,)), state)
        y2, state_eval = batched(eqx.nn.inference_mode(layer), masked=mask is not None)(
            x2, *(() if mask is None else (mask,)), state)
        want1, new = pure(x1, params, stats, train=True, mask=mask, **options)
        want2, _ = pure(x2, params, new, train=False, mask=mask, **options)
        got = {} if layer.state_index is None else state.get(layer.state_index)
        got_eval = {} if layer.state_index is None else state_eval.get(layer.state_index)
        return (y1, got, y2, got_eval), (want1, new, want2, new)

    mask = jnp.asarray(RNG.uniform(size=shape) < 0.7) if with_mask else None
    got, want = run(layer, state, randn(*shape, scale=2.0, offset=1.0), randn(*shape, scale=0.5, offset=-1.0), mask)
    chex.assert_trees_all_close(got, want, **TOL)
    if layer.state_index is not None:  # PyTorch's counts: BN counts the batch, InstanceNorm never does
        assert int(got[1]["num_batches_tracked"]) == (0 if case.startswith("in") else 1)


def test_stateless_layers_equal_the_pure_functions():
    x, rows = randn(*NCHW, scale=2.0, offset=1.0), randn(4, 6, 5, offset=3.0)
    mask = jnp.asarray(RNG.uniform(size=(5,)) < 0.7)
    cases = {  # name: (layer, pure function of (x, params), input, mask)
        "layer_norm": (jeqx.LayerNorm((5, 5)), lambda x, p, m: jn.layer_norm(x, p, (5, 5), mask=m), x, None),
        "layer_norm_rows_mask": (jeqx.LayerNorm(5, eps=1e-3, bias=False),
                                 lambda x, p, m: jn.layer_norm(x, p, 5, eps=1e-3, mask=m), rows, mask),
        "group_norm": (jeqx.GroupNorm(3, 3, eps=1e-3), lambda x, p, m: jn.group_norm(x, p, 3, eps=1e-3, mask=m), x,
                       None),
        "group_norm_channels_last_mask": (jeqx.GroupNorm(5, 5, axis=-1),  # groups > 1: the axis matters
                                          lambda x, p, m: jn.group_norm(x, p, 5, axis=-1, mask=m), rows, mask),
        "rms_norm": (jeqx.RMSNorm((5, 5)), lambda x, p, m: jn.rms_norm(x, p, (5, 5), mask=m), x, None),
        "rms_norm_mask": (jeqx.RMSNorm(5, eps=1e-2, elementwise_affine=False),
                          lambda x, p, m: jn.rms_norm(x, p, 5, eps=1e-2, mask=m), rows, mask),
    }
    layers, params = {}, {}
    for name, (layer, *_rest) in cases.items():
        layers[name], params[name] = with_random_params(layer)

    @eqx.filter_jit
    def run(layers, params):
        got, want = {}, {}
        for name, (_, pure, x, m) in cases.items():
            got[name] = jax.vmap(lambda x, layer=layers[name], m=m: layer(x, mask=m))(x)
            want[name] = pure(x, params[name], m)
        return got, want

    got, want = run(layers, params)
    chex.assert_trees_all_close(got, want, **TOL)
    state = eqx.nn.State(jeqx.LayerNorm(3))  # Equinox's LayerNorm convention: a state passes through unchanged
    y, same = jeqx.LayerNorm(3)(jnp.arange(3.0), state)
    assert same is state and y.shape == (3,)


class MLP(eqx.Module):
    """Linear -> jaxnorm BatchNorm1d -> relu -> Linear, per example (4,) -> (1,)."""

    fc1: eqx.nn.Linear
    bn: jeqx.BatchNorm1d
    fc2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.fc1, self.bn, self.fc2 = eqx.nn.Linear(4, 8, key=k1), jeqx.BatchNorm1d(8, momentum=0.3), \
            eqx.nn.Linear(8, 1, key=k2)

    def __call__(self, x, state):
        h, state = self.bn(self.fc1(x), state)
        return self.fc2(jax.nn.relu(h)), state


def _pure_mlp(params, stats, x):
    h = x @ params["fc1"]["weight"].T + params["fc1"]["bias"][None]
    h, stats = jn.batch_norm_1d(h, params["bn"], stats, train=True, momentum=0.3)
    return jax.nn.relu(h) @ params["fc2"]["weight"].T + params["fc2"]["bias"][None], stats


def test_filter_jit_grad_training_steps_equal_the_pure_functions_and_optax():
    model, state = eqx.nn.make_with_state(MLP)(jax.random.key(0))
    params = {name: {k: getattr(getattr(model, name), k) for k in ("weight", "bias")} for name in ("fc1", "bn", "fc2")}
    stats = state.get(model.bn.state_index)
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state, pure_opt_state = tx.init(eqx.filter(model, eqx.is_array)), tx.init(params)
    x, target = randn(16, 4), randn(16, 1)

    @eqx.filter_jit
    def step(model, state, opt_state):
        def loss(model):
            y, new_state = batched(model)(x, state)
            return jnp.mean((y - target) ** 2), new_state
        (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, opt_state, value, grads

    @jax.jit
    def pure_step(params, stats, opt_state):
        def loss(p):
            y, new_stats = _pure_mlp(p, stats, x)
            return jnp.mean((y - target) ** 2), new_stats
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, value, grads

    for _ in range(2):
        model, state, opt_state, value, grads = step(model, state, opt_state)
        params, stats, pure_opt_state, want_value, want_grads = pure_step(params, stats, pure_opt_state)
        np.testing.assert_allclose(value, want_value, **TOL)
        got_grads = {name: {k: getattr(getattr(grads, name), k) for k in ("weight", "bias")} for name in params}
        chex.assert_trees_all_close(got_grads, want_grads, **TOL)
    chex.assert_trees_all_close(state.get(model.bn.state_index), stats, **TOL)
    assert int(state.get(model.bn.state_index)["num_batches_tracked"]) == 2
    # gradients reach the arrays only: the running statistics are in the state, not the model; the bool is static
    assert grads.bn.inference is None and not jax.tree.leaves(grads.bn.state_index)


def test_inference_mode_call_override_and_sequential():
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([
        eqx.nn.Linear(4, 3, key=jax.random.key(1)), jeqx.BatchNorm1d(3), eqx.nn.Lambda(jax.nn.relu),
        jeqx.BatchNorm1d(3, track_running_stats=False, affine=False), jeqx.LayerNorm(3)])
    assert [layer.is_stateful() for layer in model.layers[1::2]] == [True, False]
    x = randn(8, 4, offset=2.0)
    forward = eqx.filter_jit(lambda model, x, state: batched(model)(x, state))
    y, state = forward(model, x, state)
    stats = state.get(model.layers[1].state_index)
    assert int(stats["num_batches_tracked"]) == 1
    evaluated = eqx.nn.inference_mode(model)
    assert [layer.inference for layer in evaluated.layers[1::2]] == [True, True]
    y_eval, state_eval = forward(evaluated, x, state)
    chex.assert_trees_all_equal(state_eval.get(model.layers[1].state_index), stats)  # eval: nothing updated
    h = jax.vmap(model.layers[0])(x)
    want, _ = jn.batch_norm_1d(h, {"weight": model.layers[1].weight, "bias": model.layers[1].bias}, stats, train=False)
    np.testing.assert_allclose(jax.vmap(lambda h: model.layers[1](h, state, inference=True)[0])(h), want, **TOL)
    back = eqx.nn.inference_mode(evaluated, value=False)  # and back to training
    assert int(forward(back, x, state)[1].get(model.layers[1].state_index)["num_batches_tracked"]) == 2
    with pytest.raises(TypeError, match=r"^BatchNorm1d: expected inference to be a Python bool \(static: use "
                                         r"eqx.filter_jit"):
        jax.jit(lambda layer, h, s: layer(h, s))(model.layers[1], h[0], state)  # plain jit traces the bool


def test_transformations_equal_the_pure_function_on_the_whole_batch():
    """Nested vmaps (a tuple of axis names), eqx.filter_vmap, grad and forward mode, in one program."""
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm2d)(3, axis_name=("outer", "batch"))
    layer, params = with_random_params(layer)
    simple = eqx.tree_at(lambda m: (m.weight, m.bias), jeqx.BatchNorm2d(3), (layer.weight, layer.bias))
    simple = eqx.tree_at(lambda m: m.state_index, simple, layer.state_index)  # the same statistics
    stats = state.get(layer.state_index)
    x, t = randn(*NCHW, offset=2.0), randn(*NCHW)

    @eqx.filter_jit
    def run(layer, simple, state, x, t):
        def nested(x):
            inner = jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
            y, s = jax.vmap(inner, axis_name="outer", in_axes=(0, None), out_axes=(0, None))(x.reshape(2, 2, 3, 5, 5),
                                                                                             state)
            return y.reshape(x.shape), s
        filtered = eqx.filter_vmap(simple, in_axes=(0, None), out_axes=(0, None), axis_name="batch")
        pure = lambda x: jn.batch_norm_2d(x, params, stats, train=True)  # noqa: E731
        got = {"nested": nested(x), "filter_vmap": filtered(x, state),
               "jvp": jax.jvp(lambda x: nested(x)[0], (x,), (t,))[1],
               "grad": jax.grad(lambda x: jnp.sum(batched(simple)(x, state)[0] * t))(x)}
        want = {"nested": pure(x), "filter_vmap": pure(x), "jvp": jax.jvp(lambda x: pure(x)[0], (x,), (t,))[1],
                "grad": jax.grad(lambda x: jnp.sum(pure(x)[0] * t))(x)}
        got["nested"] = (got["nested"][0], got["nested"][1].get(layer.state_index))
        got["filter_vmap"] = (got["filter_vmap"][0], got["filter_vmap"][1].get(layer.state_index))
        return got, want

    got, want = run(layer, simple, state, x, t)
    chex.assert_trees_all_close(got, want, **TOL)


def test_device_groups_and_batch_size_one():
    x = randn(4, 3, 5, scale=2.0, offset=1.0)
    grouped = jeqx.BatchNorm1d(3, track_running_stats=False, axis_index_groups=[[0, 1], [2, 3]])
    y = eqx.filter_jit(jax.vmap(grouped, axis_name="batch"))(x)
    for group in (slice(0, 2), slice(2, 4)):  # each group's examples normalized on their own
        np.testing.assert_allclose(y[group], jn.batch_norm_1d(x[group], {}, {}, train=True)[0], **TOL)
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm1d)(3)
    with pytest.raises(ValueError, match=re.escape("batch_norm_1d: expected more than 1 value per channel when "
                                                   "training, got input shape (1, 3)")):
        batched(layer)(x[:1, :, 0], state)  # a batch of one example of 3 features: PyTorch raises too


def test_memory_is_linear_in_the_batch():
    """The layer gathers the batch rather than letting the pure function combine N "devices" (an (N, N, C) array)."""
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm1d)(64)
    x = jax.ShapeDtypeStruct((1024, 64), jnp.float32)
    compiled = jax.jit(lambda x, s: batched(layer)(x, s)).lower(x, state).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    assert analysis.temp_size_in_bytes < 8 * 1024 * 64 * 4, analysis  # one combine over N would take 1024 x that


def _message(fn) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    return str(info.value)


def test_bad_input_raises_at_trace_time_naming_the_layer():
    layer, state = eqx.nn.make_with_state(jeqx.BatchNorm2d)(3)
    x = randn(*NCHW)
    unbound = _message(lambda: eqx.filter_jit(layer)(x[0], state))
    assert unbound == ("BatchNorm2d: batch statistics come from the named axis 'batch', which is not bound here: call "
                       "the model under jax.vmap(..., axis_name='batch') (or eqx.filter_vmap, shard_map or pmap with "
                       "that name), or build the layer with the axis_name your vmap uses")
    assert _message(lambda: batched(layer, axis_name="data")(x, state)) == unbound  # bound, but another name
    assert _message(lambda: batched(layer)(x[None], state)) == (
        "BatchNorm2d: expected one example (C, H, W) (3-D; Equinox layers act on one example, vmap them over the "
        "batch), got 4-D input with shape (4, 3, 5, 5)")
    assert _message(lambda: layer(x[0])).startswith("BatchNorm2d: expected the model's eqx.nn.State")
    assert _message(lambda: layer(x[0], {})) == "BatchNorm2d: expected state to be an eqx.nn.State, got dict"
    _, other = eqx.nn.make_with_state(jeqx.BatchNorm2d)(3)  # another model's state: not this layer's index
    foreign = eqx.nn.State(jeqx.LayerNorm(2))
    assert "belongs to another model" in _message(lambda: batched(layer)(x, foreign))
    assert batched(layer)(x, other)[0].shape == x.shape  # the same class: Equinox's compatible states
    with_none = eqx.nn.make_with_state(jeqx.BatchNorm2d)(3, axis_name=None)
    assert "got axis_name=None" in _message(lambda: batched(with_none[0])(x, with_none[1]))
    wrong_shape = eqx.nn.make_with_state(jeqx.BatchNorm2d)(4)[1]  # the same index name, stats of 4 channels
    assert _message(lambda: batched(layer)(x, wrong_shape)) == (
        "batch_norm_2d: batch_stats['running_mean'] has shape (4,), expected (3,) to match the input's 3 channels")
    assert _message(lambda: batched(layer, masked=True)(x, jnp.ones((4, 2), bool), state)) == (
        "BatchNorm2d: mask of shape (2,) does not broadcast to the input's shape (3, 5, 5)")
    assert _message(lambda: jeqx.InstanceNorm2d(3)(x)).startswith("InstanceNorm2d: expected one example (C, H, W)")
    assert _message(lambda: layer(x[0], state, inference=1)).startswith("BatchNorm2d: expected inference to be a")
    constructors = [
        ("BatchNorm2d", lambda: jeqx.BatchNorm2d(0), "expected num_features >= 1, got 0"),
        ("BatchNorm1d", lambda: jeqx.BatchNorm1d(3, momentum=2.0), "expected momentum in [0, 1] or None, got 2.0"),
        ("BatchNorm1d", lambda: jeqx.BatchNorm1d(3, axis_name=None, axis_index_groups=[[0]]),
         "axis_index_groups=[[0]] needs axis_name (the mapped axis to group)"),
        ("BatchNorm2d", lambda: jeqx.BatchNorm2d(3, virtual_batch_size=0),
         "expected virtual_batch_size to be a positive int or None, got 0"),
        ("InstanceNorm1d", lambda: jeqx.InstanceNorm1d(2.5), "expected an int num_features, got 2.5"),
        ("GroupNorm", lambda: jeqx.GroupNorm(2, 3), "num_channels (3) must be divisible by num_groups (2)"),
        ("LayerNorm", lambda: jeqx.LayerNorm((3, 0)), "expected normalized_shape to be a positive int or a non-empty "
                                                       "tuple of them, got (3, 0)"),
        ("RMSNorm", lambda: jeqx.RMSNorm(()), "expected normalized_shape to be a positive int or a non-empty tuple of "
                                              "them, got ()"),
        ("BatchNorm3d", lambda: jeqx.BatchNorm3d(3, inference="no"), "expected inference to be a Python bool, got str"),
    ]
    for name, make, message in constructors:
        assert _message(make) == f"{name}: {message}"


class Block(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: jeqx.BatchNorm2d
    extra: dict

    def __init__(self, key):
        self.conv, self.bn = eqx.nn.Conv2d(3, 3, 1, key=key), jeqx.BatchNorm2d(3)
        self.extra = {"norm": jeqx.GroupNorm(1, 3)}


def test_named_layers_and_replace_layers():
    model, state = eqx.nn.make_with_state(lambda: [Block(jax.random.key(0)), eqx.nn.Sequential(
        [jeqx.LayerNorm(3), eqx.nn.Sequential([jeqx.InstanceNorm1d(3)])])])()
    named = jeqx.named_layers(model)
    assert [(path, type(layer).__name__) for path, layer in named] == [
        ("0.bn", "BatchNorm2d"), ("0.extra.norm", "GroupNorm"), ("1.0", "LayerNorm"), ("1.1.0", "InstanceNorm1d")]
    assert named[0][1] is model[0].bn
    visited = []
    replaced = jeqx.replace_layers(model, lambda path, layer: visited.append(path) or (
        eqx.nn.inference_mode(layer) if isinstance(layer, jeqx.BatchNorm2d) else jeqx.RMSNorm(3)))
    assert visited == [path for path, _ in named]
    assert replaced[0].bn.inference is True and model[0].bn.inference is False  # functional: a new model
    assert [type(layer).__name__ for _, layer in jeqx.named_layers(replaced)] == ["BatchNorm2d", "RMSNorm", "RMSNorm",
                                                                                  "RMSNorm"]
    assert replaced[0].conv.weight is model[0].conv.weight  # the other arrays are kept, not copied
    assert jeqx.named_layers(model[0].bn) == [("", model[0].bn)]
    assert jeqx.replace_layers(model[0].bn, lambda path, layer: path) == ""
    y, _ = batched(replaced[0].bn)(randn(2, 3, 2, 2), state)  # the replaced layer still finds its statistics
    assert y.shape == (2, 3, 2, 2)
