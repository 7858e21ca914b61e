"""jaxnorm.freeze_batch_norm(..., where=): the layers whose dotted path ``where`` selects, and only those, become
torchvision's ``FrozenBatchNorm2d`` (linen variables, NNX models, Equinox models); a frozen layer computes the fixed
affine map of its running statistics (its eval-mode output) in both modes and no longer updates, the others keep
training. A ``where`` that selects nothing raises, listing the paths. Equinox tests skip where it is not installed.
(Freezing every layer: tests/library/test_bn_variants.py.)
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
import jaxnorm.nnx as jnnx

C = 3
RNG = np.random.default_rng(0)
FROZEN_KEYS = ["bias", "running_mean", "running_var", "weight"]


def randn(*shape, shift=0.0):
    return jnp.asarray(shift + RNG.standard_normal(shape), jnp.float32)


class Blocks(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        for name in ("block1", "block2"):
            x = jnn.BatchNorm1d(C, name=f"{name}_bn")(nn.Dense(C, name=f"{name}_fc")(x), train=train)
        return jnn.BatchNorm1d(C, name="head")(x, train=train)


def test_linen_where_freezes_exactly_the_selected_layers():
    x = randn(6, C)
    variables = Blocks().init(jax.random.key(0), x, train=False)
    _, update = Blocks().apply(variables, x + 2, train=True, mutable=["batch_stats"])
    variables = {**variables, **update}
    frozen = jn.freeze_batch_norm(variables, where=lambda path: path.startswith("block"))
    assert sorted(frozen["params"]) == ["block1_fc", "block2_fc", "head"]
    for layer in ("block1_bn", "block2_bn"):
        assert sorted(frozen["batch_stats"][layer]) == FROZEN_KEYS
    assert frozen["batch_stats"]["head"] is variables["batch_stats"]["head"]
    # the frozen map is the eval-mode output; in training mode the frozen layers update nothing, the head trains
    np.testing.assert_allclose(Blocks().apply(frozen, x, train=False), Blocks().apply(variables, x, train=False),
                               rtol=1e-6, atol=1e-6)
    y, update = Blocks().apply(frozen, x, train=True, mutable=["batch_stats"])
    assert int(update["batch_stats"]["head"]["num_batches_tracked"]) == 2
    assert update["batch_stats"]["block1_bn"] == frozen["batch_stats"]["block1_bn"]
    # freezing again freezes what is left and keeps the frozen layers' affine parameters as they are
    again = jn.freeze_batch_norm(frozen)
    assert sorted(again["batch_stats"]["head"]) == FROZEN_KEYS and again["params"].keys() == {"block1_fc", "block2_fc"}
    assert again["batch_stats"]["block1_bn"] is frozen["batch_stats"]["block1_bn"]
    with pytest.raises(ValueError, match=r"^freeze_batch_norm: where selected none of the layers with running "
                                         r"statistics \['block1_bn', 'block2_bn', 'head'\]"):
        jn.freeze_batch_norm(variables, where=lambda path: path == "block1")
    with pytest.raises(TypeError, match="^freeze_batch_norm: expected where to be a function"):
        jn.freeze_batch_norm(variables, where="block1_bn")
    with pytest.raises(TypeError, match=r"^freeze_batch_norm: expected no state \(only an Equinox model has one\)"):
        jn.freeze_batch_norm(variables, {})


def test_nnx_where_freezes_exactly_the_selected_layers():
    model = nnx.Sequential(jnnx.BatchNorm1d(C), nnx.Sequential(jnnx.BatchNorm1d(C), jnnx.LayerNorm(C)),
                           jnnx.BatchNorm1d(C))
    x = randn(6, C, shift=2.0)
    model(x)
    want = nnx.view(model, use_running_average=True)(x)
    trained = model.layers[1].layers[0].running_var[...]
    assert jn.freeze_batch_norm(model, where=lambda path: path in ("layers.0", "layers.1.layers.0")) is model
    kinds = [type(m).__name__ for m in (model.layers[0], model.layers[1].layers[0], model.layers[1].layers[1],
                                        model.layers[2])]
    assert kinds == ["FrozenBatchNorm", "FrozenBatchNorm", "LayerNorm", "BatchNorm1d"]
    np.testing.assert_array_equal(model.layers[1].layers[0].running_var[...], trained)
    np.testing.assert_allclose(nnx.view(model, use_running_average=True)(x), want, rtol=1e-6, atol=1e-6)
    model(x)  # training mode: the last layer trains, the frozen ones do not change
    assert int(model.layers[2].num_batches_tracked[...]) == 2
    np.testing.assert_array_equal(model.layers[1].layers[0].running_var[...], trained)
    with pytest.raises(ValueError, match=r"^freeze_batch_norm: where selected none of the layers with running "
                                         r"statistics \['layers.2'\]"):
        jn.freeze_batch_norm(model, where=lambda path: path == "layers.0")
    with pytest.raises(TypeError, match=r"^freeze_batch_norm: expected no state"):
        jn.freeze_batch_norm(model, {})


def _equinox_model():
    eqx = pytest.importorskip("equinox")
    import jaxnorm.equinox as jeqx

    return eqx, jeqx, eqx.nn.make_with_state(eqx.nn.Sequential)([
        jeqx.BatchNorm1d(C), eqx.nn.Sequential([jeqx.BatchNorm1d(C, momentum=None), jeqx.LayerNorm(C)]),
        jeqx.BatchNorm1d(C)])


def test_equinox_where_freezes_exactly_the_selected_layers():
    eqx, jeqx, (model, state) = _equinox_model()
    x = randn(6, C, shift=2.0)
    per_example = lambda m: jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))  # noqa: E731
    _, state = per_example(model)(x, state)
    want, _ = per_example(eqx.nn.inference_mode(model))(x, state)
    frozen, frozen_state = jn.freeze_batch_norm(model, state, where=lambda path: path in ("0", "1.0"))
    kinds = [type(layer).__name__ for layer in (frozen.layers[0], *frozen.layers[1].layers, frozen.layers[2])]
    assert kinds == ["FrozenBatchNorm", "FrozenBatchNorm", "LayerNorm", "BatchNorm1d"]
    assert [path for path, _ in jeqx.named_layers(frozen)] == ["0", "1.0", "1.1", "2"]
    # the returned state holds the unfrozen layer's entry only; the input state stays valid
    assert jax.tree.structure(frozen_state) == jax.tree.structure(state.substate(model.layers[2]))
    assert int(state.get(model.layers[0].state_index)["num_batches_tracked"]) == 1
    stats = state.get(model.layers[1].layers[0].state_index)
    layer = frozen.layers[1].layers[0]
    np.testing.assert_array_equal(layer.running_var, stats["running_var"])
    np.testing.assert_allclose(layer(x[0]), (x[0] - stats["running_mean"]) / jnp.sqrt(stats["running_var"] + 1e-5),
                               rtol=1e-6, atol=1e-6)  # weight 1, bias 0
    # train or eval, the frozen layers compute their map; only the last layer updates its statistics
    y, new_state = per_example(frozen)(x, frozen_state)
    y_eval, _ = per_example(eqx.nn.inference_mode(frozen))(x, frozen_state)
    np.testing.assert_allclose(y_eval, want, rtol=1e-6, atol=1e-6)
    assert int(new_state.get(frozen.layers[2].state_index)["num_batches_tracked"]) == 2
    grads = jax.tree.leaves(eqx.filter_grad(lambda frozen_layer: jnp.sum(frozen_layer(x[0]) ** 2))(layer))
    assert len(grads) == 4 and all(float(jnp.max(jnp.abs(g))) == 0 for g in grads)  # held constant: not trained
    keys = [k for k in jn.equinox_to_torch_state_dict(frozen, frozen_state) if k.startswith("0.")]
    assert keys == ["0.weight", "0.bias", "0.running_mean", "0.running_var"]  # FrozenBatchNorm2d's buffers


def test_equinox_freeze_errors_and_every_layer_by_default():
    eqx, jeqx, (model, state) = _equinox_model()
    frozen, frozen_state = jn.freeze_batch_norm(model, state)
    assert [type(layer).__name__ for _, layer in jeqx.named_layers(frozen)] == ["FrozenBatchNorm", "FrozenBatchNorm",
                                                                                  "LayerNorm", "FrozenBatchNorm"]
    assert jax.tree.leaves(frozen_state) == []
    with pytest.raises(ValueError, match=r"^freeze_batch_norm: where selected none of the layers with running "
                                         r"statistics \['0', '1.0', '2'\]"):
        jn.freeze_batch_norm(model, state, where=lambda path: path == "1")
    with pytest.raises(ValueError, match="^freeze_batch_norm: found no layer with running statistics in Sequential"):
        jn.freeze_batch_norm(frozen, frozen_state)
    with pytest.raises(TypeError, match=r"^freeze_batch_norm: expected the Equinox model's eqx.nn.State"):
        jn.freeze_batch_norm(model)
    with pytest.raises(TypeError, match="^freeze_batch_norm: expected where to be a function"):
        jn.freeze_batch_norm(model, state, where="0")
    with pytest.raises(ValueError, match=r"^freeze_batch_norm: the state holds no running statistics for the layer "
                                         r"'0' \(BatchNorm1d\)"):
        jn.freeze_batch_norm(model, eqx.nn.make_with_state(jeqx.BatchNorm1d)(C)[1])
