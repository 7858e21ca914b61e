"""Flax linen wrappers: collections and keys, train/eval behaviour identical to the pure functions."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
import jaxnorm.linen as jnn

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 5, 5)).astype(np.float32) * 2 + 1)


def test_batchnorm2d_collections_and_update_match_pure_function():
    module = jnn.BatchNorm2d(3, momentum=0.3)
    variables = module.init(jax.random.key(0), X, train=False)
    assert set(variables["params"]) == {"weight", "bias"}
    assert set(variables["batch_stats"]) == {"running_mean", "running_var", "num_batches_tracked"}
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 0  # init is not a training step
    y, updates = module.apply(variables, X, train=True, mutable=["batch_stats"])
    y_ref, stats_ref = jn.batch_norm_2d(X, *jn.batch_norm_init(3), train=True, momentum=0.3)
    chex.assert_trees_all_close(y, y_ref)
    chex.assert_trees_all_close(updates["batch_stats"], stats_ref)
    y_eval = module.apply({**variables, **updates}, X, train=False)
    chex.assert_trees_all_close(y_eval, jn.batch_norm_2d(X, *jn.batch_norm_init(3)[:1], stats_ref, train=False)[0])


def test_init_with_train_true_does_not_count_a_step():
    variables = jnn.BatchNorm2d(3).init(jax.random.key(0), X, train=True)
    assert int(variables["batch_stats"]["num_batches_tracked"]) == 0


@pytest.mark.parametrize("cls, x", [(jnn.BatchNorm1d, X[:, :, 0]), (jnn.BatchNorm3d, jnp.repeat(X[..., None], 2, axis=-1))])
def test_batchnorm_rank_checked(cls, x):
    variables = cls(3).init(jax.random.key(0), x, train=False)
    y, _ = cls(3).apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_shape(y, x.shape)
    with pytest.raises(ValueError, match="expected"):
        cls(3).apply(variables, X[0], train=True, mutable=["batch_stats"])


def test_options_affine_and_tracking_off():
    module = jnn.BatchNorm2d(3, affine=False, track_running_stats=False)
    variables = module.init(jax.random.key(0), X, train=False)
    assert "params" not in variables and "batch_stats" not in variables
    np.testing.assert_allclose(module.apply(variables, X, train=False), jn.batch_norm_2d(X, {}, {}, train=True)[0])


def test_instance_layer_group_rms_modules_call_pure_functions():
    x_last = jnp.moveaxis(X, 1, -1)
    checks = [
        (jnn.InstanceNorm2d(3), X, jn.instance_norm_2d(X, {}, {}, train=True)[0]),
        (jnn.LayerNorm((5, 5)), X, jn.layer_norm(X, jn.layer_norm_init((5, 5)), (5, 5))),
        (jnn.GroupNorm(3, 3), X, jn.group_norm(X, jn.group_norm_init(3, 3), 3)),
        (jnn.GroupNorm(1, 3, axis=-1), x_last, jn.group_norm(x_last, {}, 1, axis=-1)),
        (jnn.RMSNorm(5), X, jn.rms_norm(X, jn.rms_norm_init(5), 5)),
    ]
    for module, x, expected in checks:
        kwargs = {"train": True} if isinstance(module, jnn.InstanceNorm2d) else {}
        variables = module.init(jax.random.key(0), x, **kwargs)
        chex.assert_trees_all_close(module.apply(variables, x, **kwargs), expected)
    assert set(jnn.LayerNorm(5, bias=False).init(jax.random.key(0), X)["params"]) == {"weight"}


def test_module_inside_a_model_trains_under_jit():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            x = nn.Dense(8)(x)
            x = jnn.BatchNorm1d(8, axis=-1)(x, train=train)
            return nn.Dense(1)(nn.relu(x))

    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32))
    net = Net()
    variables = net.init(jax.random.key(0), x, train=False)

    @jax.jit
    def step(variables):
        def loss(params):
            out, upd = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                 mutable=["batch_stats"])
            return jnp.mean((out - 1.0) ** 2), upd
        (value, upd), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        params = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
        return {"params": params, **upd}, value

    losses = []
    for _ in range(5):
        variables, value = step(variables)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    assert int(variables["batch_stats"]["BatchNorm1d_0"]["num_batches_tracked"]) == 5
