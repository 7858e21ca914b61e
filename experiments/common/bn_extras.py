"""What a trained LeNet_bn offers beyond the lesson: precise BN, BN folding for inference, activation statistics.

All three work on linen variables of :func:`experiments.common.models.LeNetBN`; an NNX run's state is converted to
them through PyTorch's key names, which both front-ends share (``jaxnorm.nnx_to_torch_state_dict`` ->
``jaxnorm.torch_to_flax_variables``), so the numbers cannot depend on the API that trained the model.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import jaxnorm as jn
from experiments.common import models, steps, training
from jaxnorm.activations import activation_stats, format_table

FOLDED = (("conv1", "bn1"), ("conv2", "bn2"), ("fc1", "bn3"))


def precise_bn(result, compiled, data, batch_size: int, api: str, log) -> dict:
    """Recompute bn1..bn3's running statistics over the (un-augmented) training batches with the final weights
    (``jaxnorm.recalibrate_batch_stats``, PyTorch's ``update_bn``); returns valid loss/accuracy before (the last
    epoch's) and after (with the run's own compiled evaluation)."""
    variables = steps.lenet_bn_variables(result.state, api, len(data.classes))
    batches = [jnp.asarray(data.train_x[i:i + batch_size])
               for i in range(0, len(data.train_y) - batch_size + 1, batch_size)]
    if not batches:
        log("[bn] precise BN skipped: fewer training images than one batch")
        return {}
    new = jn.recalibrate_batch_stats(models.LeNetBN(len(data.classes)), variables, batches, train=True)
    state = steps.with_lenet_batch_stats(result.state, new["batch_stats"], api)
    loss_after, acc_after = training.evaluate(compiled, state, len(data.valid_y), training.Timer())
    before = result.history[-1]
    log(f"[bn] precise BN (running stats recomputed over {len(batches)} training batches): valid acc "
        f"{before['valid_acc']:.2%} -> {acc_after:.2%}, valid loss {before['valid_loss']:.4f} -> {loss_after:.4f}")
    return {"precise_bn": {"valid_acc_before": before["valid_acc"], "valid_acc_after": acc_after,
                           "valid_loss_before": before["valid_loss"], "valid_loss_after": loss_after,
                           "batches": len(batches)}}


def export_folded(state, data, path: Path, api: str, log) -> float:
    """Fold bn1/bn2/bn3 of a trained LeNet_bn into conv1/conv2/fc1 and write ``{"params": ...}`` of a plain LeNet.

    Returns the largest |logit difference| (eval mode) between the folded LeNet and LeNet_bn on the valid set.
    """
    variables = jax.device_get(steps.lenet_bn_variables(state, api, len(data.classes)))
    params, stats = variables["params"], variables["batch_stats"]
    folded = {k: dict(params[k]) for k in ("conv1", "conv2", "fc1", "fc2", "fc3")}
    for layer, bn in FOLDED:
        kernel, bias = jn.fold_batch_norm(params[layer]["kernel"], params[layer]["bias"], params[bn], stats[bn],
                                          out_axis=-1)
        folded[layer] = {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}
    x = jnp.asarray(data.valid_x)
    ref = models.LeNetBN(len(data.classes)).apply(variables, x, train=False)
    got = models.LeNet(len(data.classes)).apply({"params": folded}, x)
    err = float(jnp.max(jnp.abs(ref - got)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.msgpack_serialize({"params": jax.tree.map(np.asarray, folded)}))
    log(f"[bn] folded LeNet_bn -> LeNet params written to {path}; max |logit difference| on valid: {err:.2e}")
    return err


def activation_table(config: str, state, x, api: str, classes: int) -> str:
    """jaxnorm's per-layer activation statistics of one config at initialization (train-mode forward of ``x``)."""
    variables = steps.lenet_variables(config, state, api, classes)
    stats = activation_stats(models.make_model(config, classes), variables, jnp.asarray(x), train=True)
    return (f"[{config}] activation statistics at initialization (train-mode forward of {len(x)} training "
            f"images):\n{format_table(stats)}")
