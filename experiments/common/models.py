"""The lesson's LeNet and LeNet_bn in Flax linen, channels-last (NHWC) with PyTorch-compatible parameters.

Layout choice: inputs are NHWC ``(N, 32, 32, 3)`` because that is Flax's (and XLA's CPU) native convolution
layout; BatchNorm2d therefore normalizes over ``axis=-1``. To keep the parameters one-to-one with PyTorch's
``state_dict``, the feature map is transposed to NCHW just before flattening, so the 400 inputs of ``fc1`` come
in PyTorch's ``view(N, -1)`` order (c, h, w) and ``fc1.kernel == fc1.weight.T``. Conv kernels are Flax's
``(kh, kw, in, out)`` (= PyTorch's ``weight.permute(2, 3, 1, 0)``).

Submodule names are PyTorch's: ``conv1, conv2, fc1, fc2, fc3`` and, in LeNetBN, ``bn1, bn2, bn3``.

Initializations (``LeNet.init_scheme``):

* ``"plain"`` -- PyTorch's defaults for ``nn.Conv2d``/``nn.Linear``: kernel and bias ~ U(-1/sqrt(fan_in),
  +1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)).
* ``"init"`` -- the lesson's ``initialize_weights``: conv kernels xavier_normal (std = sqrt(2 / (fan_in +
  fan_out))), linear weights N(0, 1), every bias 0. N(0, 1) on a 400-input layer gives pre-activations with
  std ~ sqrt(400) = 20x the input's, which is why this configuration can diverge.

LeNetBN uses the PyTorch defaults for its conv/linear layers (the lesson does not call initialize_weights for
it) and BN weight 1, bias 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

import jaxnorm.init as jinit
import jaxnorm.linen as jnn

INIT_SCHEMES = ("plain", "init")
# fan_in of every layer, for PyTorch's default bias bound 1/sqrt(fan_in): in_channels * 5 * 5 or in_features
_FAN_IN = {"conv1": 3 * 25, "conv2": 6 * 25, "fc1": 16 * 5 * 5, "fc2": 120, "fc3": 84}


def _inits(name: str, scheme: str, conv: bool):
    """(kernel_init, bias_init) for layer ``name`` under ``scheme``."""
    if scheme == "plain":
        return jinit.torch_default_kernel(), jinit.torch_default_bias(_FAN_IN[name])
    if scheme == "init":
        kernel = jinit.xavier_normal() if conv else jinit.normal(0.0, 1.0)
        return kernel, nn.initializers.zeros
    raise ValueError(f"init scheme must be one of {INIT_SCHEMES}, got {scheme!r}")


def _conv(name, features, scheme):
    k, b = _inits(name, scheme, conv=True)
    return nn.Conv(features, (5, 5), padding="VALID", kernel_init=k, bias_init=b, name=name)


def _dense(name, features, scheme):
    k, b = _inits(name, scheme, conv=False)
    return nn.Dense(features, kernel_init=k, bias_init=b, name=name)


def _check_input(x):
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"LeNet expects NHWC input of shape (N, 32, 32, 3), got {tuple(x.shape)}")


def _flatten_like_torch(x):
    """(N, H, W, C) -> (N, C*H*W) in PyTorch's NCHW ``view(N, -1)`` order, so fc1 maps 1:1 to PyTorch."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _pool(x):
    """2x2 max pool, stride 2 (F.max_pool2d(x, 2)), as a reshape + max.

    Same forward values as ``nn.max_pool``; written this way because XLA:CPU lowers the gradient of
    ``reduce_window`` max to ``select_and_scatter``, which made the whole LeNet train step ~3x slower. (At exact
    ties the gradient is split among the tied inputs instead of going to one of them; after a ReLU, ties are
    almost always zeros, whose ReLU gradient is 0 either way.)
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LeNet(nn.Module):
    """conv(3->6,5) relu pool, conv(6->16,5) relu pool, fc 400->120 relu, 120->84 relu, 84->classes."""

    classes: int = 2
    init_scheme: str = "plain"

    @nn.compact
    def __call__(self, x, *, train: bool = False):  # ``train`` unused: same signature as LeNetBN
        del train
        _check_input(x)
        s = self.init_scheme
        x = _pool(nn.relu(_conv("conv1", 6, s)(x)))
        x = _pool(nn.relu(_conv("conv2", 16, s)(x)))
        x = _flatten_like_torch(x)
        x = nn.relu(_dense("fc1", 120, s)(x))
        x = nn.relu(_dense("fc2", 84, s)(x))
        return _dense("fc3", self.classes, s)(x)


class LeNetBN(nn.Module):
    """LeNet with BatchNorm after conv1 (bn1), conv2 (bn2) and fc1 (bn3), each before its ReLU (the lesson's
    LeNet_bn). Call with ``train=True`` and ``mutable=["batch_stats"]`` to train."""

    classes: int = 2

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        _check_input(x)
        x = _conv("conv1", 6, "plain")(x)
        x = _pool(nn.relu(jnn.BatchNorm2d(6, axis=-1, name="bn1")(x, train=train)))
        x = _conv("conv2", 16, "plain")(x)
        x = _pool(nn.relu(jnn.BatchNorm2d(16, axis=-1, name="bn2")(x, train=train)))
        x = _flatten_like_torch(x)
        x = nn.relu(jnn.BatchNorm1d(120, name="bn3")(_dense("fc1", 120, "plain")(x), train=train))
        x = nn.relu(_dense("fc2", 84, "plain")(x))
        return _dense("fc3", self.classes, "plain")(x)


CONFIGS = ("plain", "init", "bn")


def make_model(config: str, classes: int = 2) -> nn.Module:
    """The model of an experiment config: ``plain``/``init`` -> LeNet, ``bn`` -> LeNetBN."""
    if config == "bn":
        return LeNetBN(classes=classes)
    if config in INIT_SCHEMES:
        return LeNet(classes=classes, init_scheme=config)
    raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
