"""The training step of an Equinox LeNet (``lenet --api equinox``) as pure functions of one state pytree.

The state is plain dicts, as linen's, so that the epoch loop places, donates, checkpoints and restores it the same
way: ``{"params": {dotted path: array}, "batch_stats": {bn: {running_mean, running_var, num_batches_tracked}},
"opt_state"}``. Each step rebuilds the model (``eqx.combine`` of those arrays with the model's static part) and its
``eqx.nn.State``, vmaps the model over the batch with ``axis_name="batch"``, differentiates with respect to the
arrays and applies the optax update. The initial weights are the linen init's, loaded through PyTorch's state-dict
names (``jaxnorm.flax_to_torch_state_dict`` -> ``jaxnorm.equinox.torch_to_equinox``), so for the same seed an Equinox
run starts where the linen run starts.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import jaxnorm as jn
import jaxnorm.equinox as jeqx
from experiments.common import models
from experiments.common.compile import jit_quick_compile
from experiments.common.models_equinox import EqxLeNet
from experiments.common.steps import eval_sums
from experiments.common.training import State, Task, cross_entropy, init_key


def _is_array(node) -> bool:
    return eqx.is_array(node) or isinstance(node, jax.ShapeDtypeStruct)


class Parts(NamedTuple):
    """An Equinox LeNet taken apart: the abstract model (ShapeDtypeStruct arrays), its non-array part, its arrays'
    tree and names, a state template (zeros) and its BN layers by name."""

    abstract: EqxLeNet
    static: Any
    treedef: Any
    names: tuple[str, ...]
    state: eqx.nn.State
    bns: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, config: str, classes: int) -> Parts:
        """The parts of the config's model, built abstractly (no initializer runs)."""
        model, state = eqx.filter_eval_shape(eqx.nn.make_with_state(EqxLeNet), classes, bn=config == "bn",
                                             key=jax.random.key(0))
        arrays, static = eqx.partition(model, _is_array)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
        names = tuple(jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in leaves)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)  # a concrete State to set entries in
        return cls(model, static, treedef, names, zeros, tuple(jeqx.named_layers(model)))

    def model(self, params: dict) -> EqxLeNet:
        return eqx.combine(jax.tree.unflatten(self.treedef, [params[n] for n in self.names]), self.static)

    def eqx_state(self, batch_stats: dict) -> eqx.nn.State:
        state = jax.tree.map(lambda a: a, self.state)  # a new State: State.set invalidates the one it is called on
        for name, layer in self.bns:
            state = state.set(layer.state_index, batch_stats[name])
        return state

    def params(self, model: EqxLeNet) -> dict:
        return dict(zip(self.names, jax.tree.leaves(eqx.filter(model, _is_array)), strict=True))

    def batch_stats(self, state: eqx.nn.State) -> dict:
        return {name: state.get(layer.state_index) for name, layer in self.bns}


def equinox_task(config: str, classes: int, tx: optax.GradientTransformation, sample_x) -> Task:
    """A LeNet config as an Equinox model trained with ``tx`` (the linen init's weights, see the module docstring)."""
    parts = Parts.of(config, classes)

    def pure(params, batch_stats):
        return {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params)}

    def init(seed):
        init_linen = jit_quick_compile(functools.partial(models.make_model(config, classes).init, train=False))
        variables = init_linen(init_key(seed), sample_x)
        model, state = jeqx.torch_to_equinox(jn.flax_to_torch_state_dict(variables), parts.abstract, parts.state)
        return pure(parts.params(model), parts.batch_stats(state))

    def train_step(state, x, y, mask):
        def loss_fn(params):
            model = parts.model(params)

            def one(image, valid):
                return model(image, parts.eqx_state(state["batch_stats"]), mask=valid)

            logits, new_state = jax.vmap(one, axis_name="batch", out_axes=(0, None))(x, mask)
            loss, correct = cross_entropy(logits, y, mask)
            return loss, (correct, parts.batch_stats(new_state))

        (loss, (correct, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
               "opt_state": opt_state}
        return new, (loss, correct)

    def eval_step(state, x, y, mask):
        model = eqx.nn.inference_mode(parts.model(state["params"]))
        logits = jax.vmap(lambda image: model(image, parts.eqx_state(state["batch_stats"]))[0])(x)
        return eval_sums(logits, y, mask)

    def shapes():
        return jax.eval_shape(pure, parts.params(parts.abstract), parts.batch_stats(parts.state))

    return Task(init, train_step, eval_step, shapes)


def equinox_to_linen(config: str, state: State, classes: int = 2) -> dict:
    """Linen variables of an Equinox LeNet state (through PyTorch's state-dict names, which both APIs share)."""
    parts = Parts.of(config, classes)
    host = jax.device_get(state)
    model, eqx_state = parts.model(host["params"]), parts.eqx_state(host["batch_stats"])
    template = jax.eval_shape(lambda: models.make_model(config, classes).init(init_key(0), jnp.zeros((1, 32, 32, 3)),
                                                                              train=False))
    return jn.torch_to_flax_variables(jeqx.equinox_to_torch_state_dict(model, eqx_state), template)
