"""The training step of a model as pure functions of one state pytree, for Flax linen; Flax NNX's and Equinox's
are in :mod:`experiments.common.steps_nnx` and :mod:`experiments.common.steps_equinox`, imported only when asked for
(a linen run imports neither flax.nnx nor Equinox, which is optional).

The front-ends give the epoch loop (:mod:`experiments.common.training`) the same :class:`Task`: the state is a
pytree the loop can place on devices, donate, checkpoint and restore, whatever the API that made it.

* linen: ``{"params", "batch_stats", "opt_state"}``; ``model.apply`` with ``mutable=["batch_stats"]``.
* NNX: the pure dict of ``nnx.state((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))``
  (:func:`experiments.common.steps_nnx.nnx_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments.common.compile import jit_quick_compile
from experiments.common.training import State, Task, cross_entropy, init_key


def eval_sums(logits, y, mask):
    """``(sum of the real examples' cross-entropies, number of them classified right)`` of one evaluation chunk."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum((jnp.argmax(logits, -1) == y) & mask)


def linen_initial(model, tx: optax.GradientTransformation, sample_x) -> Callable[[Any], State]:
    """``initial(seed) -> state`` of a linen model (jittable, vmappable over seeds)."""

    def initial(seed):
        variables = model.init(init_key(seed), sample_x, train=False)
        params = variables["params"]
        return {"params": params, "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(params)}

    return initial


def linen_task(model, tx: optax.GradientTransformation, sample_x, *, init_model=None,
               call_options: Callable[[State], dict] | None = None) -> Task:
    """A linen model trained with ``tx``, initialized by ``init_model`` (default: ``model``; LeNet's ``init``
    config differs from ``plain`` only there, so both share one compiled step); ``call_options(state)`` adds keyword
    arguments to the training call (the small-batch study's renorm clips)."""

    initial = linen_initial(init_model or model, tx, sample_x)

    def variables(params, batch_stats):
        return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}

    def train_step(state, x, y, mask):
        options = {} if call_options is None else call_options(state)

        def loss_fn(params):
            logits, updates = model.apply(variables(params, state["batch_stats"]), x, train=True, mask=mask,
                                          mutable=["batch_stats"], **options)
            loss, correct = cross_entropy(logits, y, mask)
            return loss, (correct, updates.get("batch_stats", {}))

        (loss, (correct, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {**state, "params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
               "opt_state": opt_state}
        return new, (loss, correct)

    def eval_step(state, x, y, mask):
        return eval_sums(model.apply(variables(state["params"], state["batch_stats"]), x, train=False), y, mask)

    return Task(jit_quick_compile(initial), train_step, eval_step, lambda: jax.eval_shape(initial, 0), initial)


def update_count(state: State):
    """Number of optimizer updates so far (optax's SGD schedule count) of a linen state."""
    return optax.tree_utils.tree_get(state["opt_state"], "count")


def lenet_variables(config: str, state: State, api: str, classes: int = 2) -> dict:
    """Linen variables (``params``, ``batch_stats``) of a LeNet config's training state, from any API."""
    if api == "nnx":  # imported only here (and in experiments.lenet.make_task): a linen run never loads flax.nnx
        from experiments.common import steps_nnx

        return steps_nnx.nnx_to_linen(config, state, classes)
    if api == "equinox":
        from experiments.common import steps_equinox

        return steps_equinox.equinox_to_linen(config, state, classes)
    return {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}


def lenet_bn_variables(state: State, api: str, classes: int = 2) -> dict:
    return lenet_variables("bn", state, api, classes)


def with_lenet_batch_stats(state: State, batch_stats: dict, api: str) -> State:
    """The training state with LeNet_bn's running statistics replaced (linen ``batch_stats`` naming, which an
    Equinox state's ``batch_stats`` shares)."""
    if api == "nnx":  # the model's part of the pure dict holds each BN's BatchStats under the same names
        model = {**state[0], **{name: {**state[0][name], **stats} for name, stats in batch_stats.items()}}
        return {**state, 0: model}
    return {**state, "batch_stats": batch_stats}
