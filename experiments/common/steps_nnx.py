"""The training step of an NNX LeNet (``lenet --api nnx``) as pure functions of one state pytree.

A module of its own, imported only when the NNX API is chosen (:func:`experiments.lenet.make_task`,
:func:`experiments.common.steps.lenet_variables`), so that a linen run never imports ``flax.nnx``.

The state is the pure dict of ``nnx.state((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))``; each step merges it
into modules, takes ``nnx.value_and_grad`` with respect to the ``nnx.Param`` s and ``optimizer.update`` s them, and
splits the result again (the functional pattern of ``nnx.split``/``nnx.merge`` inside ``jax.jit``). The epoch loop
(:mod:`experiments.common.training`) gets the same :class:`~experiments.common.training.Task` as from linen.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxnorm as jn
from experiments.common import models
from experiments.common.compile import jit_quick_compile
from experiments.common.models_nnx import NnxLeNet
from experiments.common.steps import eval_sums
from experiments.common.training import State, Task, cross_entropy, init_key


def _nnx_parts(config: str, classes: int, tx: optax.GradientTransformation | None):
    """``(graphdef, abstract state)`` of an NNX LeNet (and its optimizer, when ``tx`` is given)."""

    def build():
        model = NnxLeNet(classes, bn=config == "bn", rngs=nnx.Rngs(0))
        return model if tx is None else (model, nnx.Optimizer(model, tx, wrt=nnx.Param))

    return nnx.split(nnx.eval_shape(build))


def _merge(graphdef, abstract, pure: dict):
    state = jax.tree.map(lambda a: a, abstract)  # a copy: replace_by_pure_dict fills it in place
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def nnx_task(config: str, classes: int, tx: optax.GradientTransformation, sample_x) -> Task:
    """A LeNet config as NNX modules trained with ``nnx.Optimizer``; the state is the pure dict of ``(model,
    optimizer)``. The initial weights are the linen init's (copied through PyTorch's names), so for the same seed
    an NNX run starts where the linen run starts."""
    graphdef, abstract = _nnx_parts(config, classes, tx)

    def init(seed):
        init_linen = jit_quick_compile(functools.partial(models.make_model(config, classes).init, train=False))
        variables = init_linen(init_key(seed), sample_x)
        model = nnx.eval_shape(lambda: NnxLeNet(classes, bn=config == "bn", rngs=nnx.Rngs(0)))
        jn.torch_to_nnx(jn.flax_to_torch_state_dict(variables), model)
        return nnx.to_pure_dict(nnx.state((model, nnx.Optimizer(model, tx, wrt=nnx.Param))))

    def train_step(state, x, y, mask):
        model, optimizer = _merge(graphdef, abstract, state)
        model.train()

        def loss_fn(model):
            return cross_entropy(model(x, mask=mask), y, mask)

        (loss, correct), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return nnx.to_pure_dict(nnx.state((model, optimizer))), (loss, correct)

    def eval_step(state, x, y, mask):
        model, _ = _merge(graphdef, abstract, state)
        model.eval()
        return eval_sums(model(x), y, mask)

    return Task(init, train_step, eval_step, lambda: nnx.to_pure_dict(abstract))


def nnx_to_linen(config: str, state: State, classes: int = 2) -> dict:
    """Linen variables of an NNX LeNet state (through PyTorch's state-dict names, which both APIs share)."""
    graphdef, abstract = _nnx_parts(config, classes, None)
    model = _merge(graphdef, abstract, jax.device_get(state)[0])
    template = jax.eval_shape(lambda: models.make_model(config, classes).init(init_key(0), jnp.zeros((1, 32, 32, 3)),
                                                                              train=False))
    return jn.torch_to_flax_variables(jn.nnx_to_torch_state_dict(model), template)
