"""jaxnorm.nnx: the NNX modules give the pure functions' and the linen modules' numbers, follow NNX's modes and
transforms (train/eval/view, jit + value_and_grad + Optimizer, split/merge, vmap with axis_name, scan over a
vmapped stack), and raise the pure functions' errors.

Goldens: the pure functions (jaxnorm.batch_norm_*, ...) and jaxnorm.linen on the same inputs and parameters; for the
training step, the same step written with the pure functions and optax.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.linen as jnn
import jaxnorm.nnx as jx

RNG = np.random.default_rng(0)
TOL = {"rtol": 1e-6, "atol": 1e-6}


def randn(*shape, scale=1.0, offset=0.0):
    return jnp.asarray((scale * RNG.standard_normal(shape) + offset).astype(np.float32))


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _pure_init(cls: str):
    return jn.batch_norm_init if cls.startswith("Batch") else jn.instance_norm_init


def _pure_fn(cls: str):
    kind, rank = re.fullmatch(r"(BatchNorm|InstanceNorm)(\dd)", cls).groups()
    return getattr(jn, f"{'batch' if kind == 'BatchNorm' else 'instance'}_norm_{rank}")


# name: (class, constructor kwargs, input shape, channels, with mask, linen has the option). Few distinct shapes:
# eagerly, every new shape compiles the pure function's operations again (~1 s each).
NCHW, NHWC = (4, 3, 5, 5), (4, 5, 5, 3)
STATEFUL = {
    "bn1d_cumulative": ("BatchNorm1d", {"momentum": None}, (4, 3, 5), 3, False, True),
    "bn2d": ("BatchNorm2d", {"momentum": 0.3, "eps": 1e-3}, NCHW, 3, False, True),
    "bn2d_channels_last": ("BatchNorm2d", {"axis": -1}, NHWC, 3, False, True),
    "bn3d": ("BatchNorm3d", {}, (2, 3, 2, 3, 3), 3, False, True),
    "bn2d_no_affine_mask": ("BatchNorm2d", {"affine": False, "momentum": 0.5}, NCHW, 3, True, True),
    "bn2d_untracked": ("BatchNorm2d", {"track_running_stats": False}, NCHW, 3, False, True),
    "bn2d_ghost": ("BatchNorm2d", {"virtual_batch_size": 2}, NCHW, 3, False, False),
    "in1d": ("InstanceNorm1d", {}, (4, 3, 5), 3, False, True),
    "in2d_affine_tracked": ("InstanceNorm2d", {"affine": True, "track_running_stats": True, "momentum": 0.3},
                            NCHW, 3, False, True),
    "in2d_channels_last_mask": ("InstanceNorm2d", {"track_running_stats": True, "axis": -1}, NHWC, 3, True, True),
    "in3d_unbatched": ("InstanceNorm3d", {"affine": True}, (3, 2, 3, 3), 3, False, True),
}


def _bn_state(module: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


@pytest.mark.parametrize("case", sorted(STATEFUL))
def test_stateful_modules_match_pure_functions_and_linen(case):
    cls, kwargs, shape, c, with_mask, in_linen = STATEFUL[case]
    module = getattr(jx, cls)(c, **kwargs)
    params, stats = _pure_init(cls)(c, affine=module.affine, track_running_stats=module.track_running_stats)
    if params:  # non-trivial affine parameters, the same in all three
        params = {"weight": randn(c, scale=0.5, offset=1.0), "bias": randn(c)}
        module.weight[...], module.bias[...] = params["weight"], params["bias"]
    chex.assert_trees_all_equal(_bn_state(module), stats)
    pure_kwargs = {"momentum": module.momentum, "eps": module.eps, "axis": module.axis,
                   **({"virtual_batch_size": module.virtual_batch_size} if cls.startswith("Batch") else {})}
    graphdef, state = nnx.split(module)
    linen_module = getattr(jnn, cls)(c, **kwargs) if in_linen else None

    @jax.jit  # one program per case (compiling it is cheaper than running the three eagerly)
    def run(state, params, stats, x1, x2, mask):
        m = nnx.merge(graphdef, state)
        got = {"y": m(x1, mask=mask), "stats": _bn_state(m)}  # training mode: batch statistics, stats updated
        m.eval()
        got.update(y_eval=m(x2, mask=mask), stats_eval=_bn_state(m))  # eval: running statistics, no update
        y, new_stats = _pure_fn(cls)(x1, params, stats, train=True, mask=mask, **pure_kwargs)
        want = {"y": y, "stats": new_stats, "stats_eval": new_stats,
                "y_eval": _pure_fn(cls)(x2, params, new_stats, train=False, mask=mask, **pure_kwargs)[0]}
        if linen_module is None:
            return got, want, None
        variables = {name: tree for name, tree in (("params", params), ("batch_stats", stats)) if tree}
        y_lin, updates = linen_module.apply(variables, x1, train=True, mask=mask, mutable=["batch_stats"])
        y_lin_eval = linen_module.apply({**variables, **updates}, x2, train=False, mask=mask)
        return got, want, {"y": y_lin, "stats": updates.get("batch_stats", {}), "y_eval": y_lin_eval}

    mask = jnp.asarray(RNG.uniform(size=shape) < 0.7) if with_mask else None
    x1, x2 = randn(*shape, scale=2.0, offset=1.0), randn(*shape, scale=0.5, offset=-1.0)
    got, want, lin = run(state, params, stats, x1, x2, mask)
    chex.assert_trees_all_equal(got, want)
    if stats:
        assert int(want["stats"]["num_batches_tracked"]) == (1 if cls.startswith("Batch") else 0)  # PyTorch's quirk
    if lin is not None:
        chex.assert_trees_all_close(lin, {k: want[k] for k in lin}, **TOL)


STATELESS = {  # name: (module, linen module, pure function(x, params, mask), input, with mask)
    "layer_norm": (lambda: jx.LayerNorm((5, 5)), lambda: jnn.LayerNorm((5, 5)),
                   lambda x, p, m: jn.layer_norm(x, p, (5, 5), mask=m), NCHW, False),
    "layer_norm_no_bias_mask": (lambda: jx.LayerNorm(5, bias=False, eps=1e-3),
                                lambda: jnn.LayerNorm(5, bias=False, eps=1e-3),
                                lambda x, p, m: jn.layer_norm(x, p, 5, eps=1e-3, mask=m), NCHW, True),
    "layer_norm_no_affine": (lambda: jx.LayerNorm(5, elementwise_affine=False),
                             lambda: jnn.LayerNorm(5, elementwise_affine=False),
                             lambda x, p, m: jn.layer_norm(x, p, 5, mask=m), NCHW, False),
    "group_norm": (lambda: jx.GroupNorm(3, 3, eps=1e-3), lambda: jnn.GroupNorm(3, 3, eps=1e-3),
                   lambda x, p, m: jn.group_norm(x, p, 3, eps=1e-3, mask=m), NCHW, False),
    "group_norm_channels_last_no_affine_mask": (
        lambda: jx.GroupNorm(1, 3, axis=-1, affine=False), lambda: jnn.GroupNorm(1, 3, axis=-1, affine=False),
        lambda x, p, m: jn.group_norm(x, p, 1, axis=-1, mask=m), NHWC, True),
    "rms_norm": (lambda: jx.RMSNorm((5, 5)), lambda: jnn.RMSNorm((5, 5)),
                 lambda x, p, m: jn.rms_norm(x, p, (5, 5), mask=m), NCHW, False),
    "rms_norm_eps_no_affine_mask": (lambda: jx.RMSNorm(5, eps=1e-2, elementwise_affine=False),
                                    lambda: jnn.RMSNorm(5, eps=1e-2, elementwise_affine=False),
                                    lambda x, p, m: jn.rms_norm(x, p, 5, eps=1e-2, mask=m), NCHW, True),
}


@pytest.mark.parametrize("case", sorted(STATELESS))
def test_stateless_modules_match_pure_functions_and_linen(case):
    make, make_linen, pure, shape, with_mask = STATELESS[case]
    module = make()
    params = {key: randn(*getattr(module, key)[...].shape) for key in ("weight", "bias")
              if getattr(module, key, None) is not None}
    for key, value in params.items():
        getattr(module, key)[...] = value
    assert set(nnx.to_pure_dict(nnx.state(module, nnx.Param))) == set(params)
    graphdef, state = nnx.split(module)

    @jax.jit
    def run(state, params, x, mask):
        linen_y = make_linen().apply({"params": params} if params else {}, x, mask=mask)
        return nnx.merge(graphdef, state)(x, mask=mask), pure(x, params, mask), linen_y

    mask = jnp.asarray(RNG.uniform(size=shape[-1:]) < 0.7) if with_mask else None
    y, want, linen_y = run(state, params, randn(*shape, scale=2.0, offset=1.0), mask)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(linen_y, want, **TOL)


def numpy_init(key, shape, dtype=jnp.float32):
    """A kernel initializer drawing from NumPy: eagerly, Flax's random initializers compile for every new shape."""
    return jnp.asarray(RNG.standard_normal(shape) / np.sqrt(shape[0]), dtype)


class MLP(nnx.Module):
    """Linear -> jaxnorm BatchNorm1d (channels last) -> relu -> Dropout -> Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(4, 8, kernel_init=numpy_init, rngs=rngs)
        self.bn = jx.BatchNorm1d(8, axis=-1, momentum=0.3, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.fc2 = nnx.Linear(8, 1, kernel_init=numpy_init, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(nnx.relu(self.bn(self.fc1(x)))))


def _pure_forward(params, stats, x):
    h = x @ params["fc1"]["kernel"] + params["fc1"]["bias"][None]
    h, stats = jn.batch_norm_1d(h, params["bn"], stats, train=True, momentum=0.3, axis=-1)
    return nnx.relu(h) @ params["fc2"]["kernel"] + params["fc2"]["bias"][None], stats


def test_jit_value_and_grad_optimizer_step_matches_pure_functions_and_optax():
    model = MLP(nnx.Rngs(0))
    model.set_attributes(nnx.Dropout, deterministic=True)  # dropout off: the reference has none
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["bn"]
    tx = optax.sgd(0.1, momentum=0.9)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, target = randn(16, 4), randn(16, 1)

    @nnx.jit
    def step(model, optimizer, x, target):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        optimizer.update(model, grads)
        return loss, grads

    @jax.jit
    def pure_step(params, stats, opt_state, x, target):
        def loss_fn(p):
            out, new_stats = _pure_forward(p, stats, x)
            return jnp.mean((out - target) ** 2), new_stats
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), stats, opt_state, grads

    opt_state = tx.init(params)
    for _ in range(2):
        loss, grads = step(model, optimizer, x, target)
        want_loss, params, stats, opt_state, want_grads = pure_step(params, stats, opt_state, x, target)
        # gradients reach the Params only: no BatchStat in the grads state, and they are the reference's
        assert not nnx.to_flat_state(nnx.state(grads, nnx.BatchStat))
        assert all(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(grads))
        chex.assert_trees_all_close(nnx.to_pure_dict(grads), want_grads, **TOL)
        np.testing.assert_allclose(loss, want_loss, **TOL)
    chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params, **TOL)
    chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))["bn"], stats, **TOL)
    assert int(model.bn.num_batches_tracked[...]) == 2 and int(optimizer.step[...]) == 2


def test_train_eval_and_view_switch_the_mode():
    model = MLP(nnx.Rngs(1))
    x = randn(8, 4)
    assert model.bn.use_running_average is False and model.drop.deterministic is False
    model.eval()
    assert model.bn.use_running_average is True and model.drop.deterministic is True
    before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    h = model.fc1(x)
    np.testing.assert_array_equal(model.bn(h), jn.batch_norm_1d(h, nnx.to_pure_dict(nnx.state(model.bn, nnx.Param)),
                                                                 before["bn"], train=False, axis=-1)[0])
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), before)  # eval: no update

    training = nnx.view(model, use_running_average=False)  # shares the Variables, not the mode
    assert training.bn.use_running_average is False and model.bn.use_running_average is True
    training.bn(h)
    assert int(model.bn.num_batches_tracked[...]) == 1
    model.bn(h, use_running_average=False)  # the call argument overrides the attribute
    assert int(model.bn.num_batches_tracked[...]) == 2
    model.train()
    assert model.bn.use_running_average is False
    model.bn(h)
    assert int(model.bn.num_batches_tracked[...]) == 3
    assert nnx.view(model, use_running_average=True).bn.use_running_average is True
    with pytest.raises(TypeError, match="expected use_running_average to be a Python bool"):
        model.bn(h, use_running_average=jnp.asarray(True))


def test_split_merge_round_trip_and_batch_stat_leaves():
    class Net(nnx.Module):
        def __init__(self):
            self.bn = jx.BatchNorm2d(3)
            self.untracked = jx.BatchNorm2d(3, track_running_stats=False, affine=False)
            self.inorm = jx.InstanceNorm2d(3)
            self.ln = jx.LayerNorm((5, 5))

        def __call__(self, x):
            return self.ln(self.inorm(self.untracked(self.bn(x))))

    model = Net()
    flat = nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    assert [path for path, _ in flat] == [("bn", key) for key in sorted(jn.batch_norm_init(3)[1])]
    chex.assert_type([v[...] for _, v in flat], [jnp.int32, jnp.float32, jnp.float32])
    assert {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))} == {
        ("bn", "weight"), ("bn", "bias"), ("ln", "weight"), ("ln", "bias")}
    forward = nnx.jit(lambda m, x: m(x))
    x = randn(*NCHW, offset=3.0)
    forward(model, x)  # a training step: the statistics move
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    assert int(stats["bn"]["num_batches_tracked"][...]) == 1
    # merge of copies of the arrays (as after a trip through jax.jit): an independent, equal model
    merged = nnx.merge(graphdef, *jax.tree.map(jnp.copy, (params, stats)))
    assert_trees_equal(nnx.to_pure_dict(nnx.state(merged)), nnx.to_pure_dict(nnx.state(model)))
    np.testing.assert_array_equal(forward(merged, x), forward(model, x))  # another step of each: the same
    assert_trees_equal(nnx.to_pure_dict(nnx.state(merged)), nnx.to_pure_dict(nnx.state(model)))
    assert int(model.bn.num_batches_tracked[...]) == int(merged.bn.num_batches_tracked[...]) == 2


def _numpy_bn(x, momentum=0.3, eps=1e-5):
    """Float64 BN of a (N, C) batch with weight 1, bias 0 from fresh statistics: ``(y, running_mean, running_var)``."""
    x = np.asarray(x, np.float64)
    mean, var = x.mean(0), x.var(0)
    return (x - mean) / np.sqrt(var + eps), momentum * mean, 1 - momentum + momentum * x.var(0, ddof=1)


def test_vmap_with_axis_name_synchronizes_statistics():
    x = randn(4, 2, 3, scale=2.0, offset=1.0)  # 4 mapped "devices" x 2 samples x 3 channels
    run = nnx.jit(nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), out_axes=0, axis_name="data"))
    synced = jx.BatchNorm1d(3, momentum=0.3, axis_name="data")
    y = run(synced, x)
    want_y, want_mean, want_var = _numpy_bn(x.reshape(8, 3))  # BN of the whole batch
    np.testing.assert_allclose(y.reshape(8, 3), want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(synced.running_mean[...], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(synced.running_var[...], want_var, rtol=1e-5, atol=1e-6)
    assert int(synced.num_batches_tracked[...]) == 1
    # within groups of devices: each group's output is BN of that group's samples alone (the groups' running
    # statistics would differ, which a module broadcast over the mapped axis cannot hold: none are kept here)
    grouped = jx.BatchNorm1d(3, axis_name="data", axis_index_groups=[[0, 1], [2, 3]], track_running_stats=False)
    y = run(grouped, x)
    for group in (slice(0, 2), slice(2, 4)):
        np.testing.assert_allclose(y[group].reshape(4, 3), _numpy_bn(x[group].reshape(4, 3))[0], rtol=1e-5, atol=1e-6)


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(8, 8, kernel_init=nnx.initializers.normal(0.5), rngs=rngs)  # one key per layer
        self.bn = jx.BatchNorm1d(8, axis=-1)

    def __call__(self, x):
        return nnx.relu(self.bn(self.fc(x)))


def test_scan_over_vmapped_stack_equals_python_loop():
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return Block(rngs)

    blocks = create(nnx.Rngs(0))
    chex.assert_shape([blocks.fc.kernel[...], blocks.bn.running_mean[...], blocks.bn.num_batches_tracked[...]],
                      [(3, 8, 8), (3, 8), (3,)])
    graphdef, state = nnx.split(blocks)
    layers = [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(3)]

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, block):
        return block(x)

    @nnx.jit
    def loop(layers, x):
        for layer in layers:
            x = layer(x)
        return x

    x = randn(8, 8, offset=2.0)
    np.testing.assert_allclose(forward(x, blocks), loop(layers, x), **TOL)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)) for m in layers])
    chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(blocks, nnx.BatchStat)), stacked, **TOL)
    np.testing.assert_array_equal(blocks.bn.num_batches_tracked[...], [1, 1, 1])


def test_shapes_and_dtypes():
    bn = jx.BatchNorm2d(3, param_dtype=jnp.bfloat16, axis=-1)
    chex.assert_type([bn.weight[...], bn.running_mean[...], bn.num_batches_tracked[...]],
                     [jnp.bfloat16, jnp.float32, jnp.int32])
    chex.assert_shape([bn.weight[...], bn.running_var[...], bn.num_batches_tracked[...]], [(3,), (3,), ()])
    x = randn(2, 4, 4, 3).astype(jnp.bfloat16)
    y = bn(x)
    chex.assert_shape(y, x.shape)
    chex.assert_type(y, jnp.bfloat16)
    chex.assert_type([bn.running_mean[...], bn.running_var[...]], jnp.float32)  # statistics stay float32
    assert jx.BatchNorm2d(3, affine=False).weight is None and jx.LayerNorm(4, bias=False).bias is None
    chex.assert_shape(jx.LayerNorm((2, 3)).weight[...], (2, 3))
    chex.assert_type(jx.GroupNorm(2, 4, param_dtype=jnp.float16).bias[...], jnp.float16)


def _message(fn) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    return str(info.value)


def test_errors_are_the_pure_functions():
    x4 = randn(4, 3, 2, 2)
    calls = [  # (module call, the same mistake made with the pure function): the same error
        (lambda: jx.BatchNorm2d(3)(x4[0]), lambda: jn.batch_norm_2d(x4[0], *jn.batch_norm_init(3), train=True)),
        (lambda: jx.BatchNorm2d(4)(x4), lambda: jn.batch_norm_2d(x4, *jn.batch_norm_init(4), train=True)),
        (lambda: jx.BatchNorm1d(3)(x4[:1, :, 0, 0]),
         lambda: jn.batch_norm_1d(x4[:1, :, 0, 0], *jn.batch_norm_init(3), train=True)),
        (lambda: jx.BatchNorm2d(3)(x4.astype(jnp.int32)),
         lambda: jn.batch_norm_2d(x4.astype(jnp.int32), *jn.batch_norm_init(3), train=True)),
        (lambda: jx.BatchNorm2d(3)(x4, mask=jnp.ones(3, bool)),
         lambda: jn.batch_norm_2d(x4, *jn.batch_norm_init(3), train=True, mask=jnp.ones(3, bool))),
        (lambda: jx.BatchNorm2d(3, virtual_batch_size=3)(x4),
         lambda: jn.batch_norm_2d(x4, *jn.batch_norm_init(3), train=True, virtual_batch_size=3)),
        (lambda: jx.InstanceNorm2d(3)(x4[:, :, :1, :1]),
         lambda: jn.instance_norm_2d(x4[:, :, :1, :1], {}, {}, train=True)),
        (lambda: jx.LayerNorm(3)(x4), lambda: jn.layer_norm(x4, jn.layer_norm_init(3), 3)),
        (lambda: jx.GroupNorm(2, 4)(x4), lambda: jn.group_norm(x4, jn.group_norm_init(2, 4), 2)),
        (lambda: jx.RMSNorm(3)(x4), lambda: jn.rms_norm(x4, jn.rms_norm_init(3), 3)),
    ]
    for module_call, pure_call in calls:
        with pytest.raises((ValueError, TypeError), match=re.escape(_message(pure_call))):
            module_call()
    # constructor arguments: the pure functions' checks (jaxnorm._checks), naming the class
    constructors = [
        ("BatchNorm2d", lambda: jx.BatchNorm2d(0), lambda: jn.batch_norm_init(0)),
        ("InstanceNorm1d", lambda: jx.InstanceNorm1d(2.5), lambda: jn.instance_norm_init(2.5)),
        ("GroupNorm", lambda: jx.GroupNorm(2, 3), lambda: jn.group_norm_init(2, 3)),
        ("GroupNorm", lambda: jx.GroupNorm(0, 3), lambda: jn.group_norm_init(0, 3)),
        ("RMSNorm", lambda: jx.RMSNorm(()), lambda: jn.rms_norm_init(())),
        ("LayerNorm", lambda: jx.LayerNorm((3, 0)), lambda: jn.layer_norm_init((3, 0))),
        ("BatchNorm2d", lambda: jx.BatchNorm2d(3, momentum=2.0),
         lambda: jn.batch_norm_2d(x4, {}, {}, train=True, momentum=2.0)),
        ("BatchNorm1d", lambda: jx.BatchNorm1d(3, axis_index_groups=[[0]]),
         lambda: jn.batch_norm(x4, {}, {}, train=True, axis_index_groups=[[0]])),
    ]
    for name, module_call, pure_call in constructors:
        message = _message(pure_call).split(": ", 1)[1]
        with pytest.raises((ValueError, TypeError), match=f"^{name}: {re.escape(message)}$"):
            module_call()
