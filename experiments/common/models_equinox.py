"""The lesson's LeNet and LeNet_bn as an Equinox module with jaxnorm.equinox BatchNorm (``lenet --api equinox``).

Equinox's conventions hold: the model acts on ONE image and is vmapped over the batch with ``axis_name="batch"``; its
BatchNorm layers take their statistics over that named axis and keep their running statistics in ``eqx.nn.State``
(``eqx.nn.make_with_state``). Its conv and fc layers are Equinox's own ``eqx.nn.Conv2d`` and ``eqx.nn.Linear``, which
hold PyTorch's layouts (weights ``(out, in, 5, 5)`` and ``(out, in)``), under PyTorch's names (``conv1, conv2, fc1,
fc2, fc3``, ``bn1, bn2, bn3``), so ``jaxnorm.torch_to_equinox`` loads a linen LeNet's weights through the state-dict
names all the front-ends share.

One image is laid out ``(32, 32, 3)``, channels last like a row of the linen model's NHWC batch, and the forward pass
is the linen model's, written for one image: the blocked convolutions of :mod:`experiments.common.models` (their
Flax kernel is the conv weight transposed, an exact copy), BN on the channel axis -1, fc as ``x @ weight.T + bias``
(``nn.Dense``'s product, on a copy of ``weight.T``). Under ``vmap`` each operation becomes the linen model's batched one, and BN computes the
pure function on the whole (gathered) batch, so an Equinox run follows the linen run's numbers.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

import jaxnorm.equinox as jeqx
from experiments.common.models import as_feature_map, blocked_conv, pool_windows

IMAGE = (32, 32, 3)


def _dense(layer: eqx.nn.Linear, x):
    """``x @ weight.T + bias``: ``nn.Dense``'s product with its ``(in, out)`` kernel, copied out of the PyTorch-layout
    weight. The barrier keeps XLA from folding the transpose into the product: XLA:CPU then multiplies by the
    transposed operand in another summation order, and the logits of a training step differed from linen's by an ulp
    (2e-7 on fc1), enough for the runs to separate after a few epochs; with the copy the gradients of a LeNet step are
    linen's bit for bit (measured on 16 photos)."""
    return x @ jax.lax.optimization_barrier(layer.weight.T) + layer.bias


def _norm(bn, h, state, mask):
    """``bn(h)`` in the model's mode (``(h, state)`` unchanged without a BN); ``mask``: this image's () bool."""
    if bn is None:
        return h, state
    return bn(h, state, mask=None if mask is None else jnp.reshape(mask, (1,) * h.ndim))


def _conv_norm_relu_pool(conv: eqx.nn.Conv2d, bn, h, state, mask):
    """conv 5x5 [bn] relu 2x2-pool of one ``(H, W, C)`` image, by :func:`blocked_conv` as the linen model."""
    kernel = jnp.transpose(conv.weight, (2, 3, 1, 0))  # PyTorch's (O, I, kh, kw) -> Flax's (kh, kw, I, O)
    y = blocked_conv(h[None], kernel, conv.bias.reshape(-1))  # (1, h, w, 4, O): a batch of one image
    z, state = _norm(bn, as_feature_map(y)[0], state, mask)
    return pool_windows(jax.nn.relu(z).reshape(y.shape))[0], state


class EqxLeNet(eqx.Module):
    """conv(3->6,5) [bn] relu pool, conv(6->16,5) [bn] relu pool, fc 400->120 [bn] relu, 120->84 relu, 84->classes;
    ``bn=True`` is LeNet_bn. Build it with ``eqx.nn.make_with_state(EqxLeNet)(classes, bn=..., key=...)`` and call
    ``logits, state = model(image, state, mask=None)`` on one ``(32, 32, 3)`` image, vmapped with
    ``axis_name="batch"``; ``eqx.nn.inference_mode(model)`` normalizes with the running statistics. Its parameters
    start as Equinox's initializers draw them; the experiments load a linen init into it."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    fc3: eqx.nn.Linear
    bn1: jeqx.BatchNorm2d | None
    bn2: jeqx.BatchNorm2d | None
    bn3: jeqx.BatchNorm1d | None

    def __init__(self, classes: int = 2, *, bn: bool = False, key: jax.Array):
        keys = jax.random.split(key, 5)
        self.conv1 = eqx.nn.Conv2d(3, 6, 5, key=keys[0])
        self.conv2 = eqx.nn.Conv2d(6, 16, 5, key=keys[1])
        self.fc1, self.fc2 = eqx.nn.Linear(400, 120, key=keys[2]), eqx.nn.Linear(120, 84, key=keys[3])
        self.fc3 = eqx.nn.Linear(84, classes, key=keys[4])
        self.bn1 = jeqx.BatchNorm2d(6, axis=-1) if bn else None  # one image's feature map is (h, w, C)
        self.bn2 = jeqx.BatchNorm2d(16, axis=-1) if bn else None
        self.bn3 = jeqx.BatchNorm1d(120) if bn else None

    def __call__(self, x, state: eqx.nn.State, *, mask=None):
        """``(logits (classes,), state)`` of one image ``x`` (32, 32, 3); ``mask``: a () bool, False for a padding
        image (BN's batch statistics leave it out)."""
        if x.shape != IMAGE:
            raise ValueError(f"EqxLeNet expects one image of shape {IMAGE} (vmap it over the batch), got "
                             f"{tuple(x.shape)}")
        h, state = _conv_norm_relu_pool(self.conv1, self.bn1, x, state, mask)
        h, state = _conv_norm_relu_pool(self.conv2, self.bn2, h, state, mask)
        h, state = _norm(self.bn3, _dense(self.fc1, jnp.transpose(h, (2, 0, 1)).reshape(-1)), state, mask)  # (c, h, w)
        return _dense(self.fc3, jax.nn.relu(_dense(self.fc2, jax.nn.relu(h)))), state
