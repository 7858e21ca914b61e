"""The lesson's LeNet and LeNet_bn in Flax linen, channels-last (NHWC) with PyTorch-compatible parameters, and the
same LeNet with another normalization in place of BN (the small-batch study). Their NNX and Equinox twins
(``lenet --api nnx`` / ``--api equinox``) are in :mod:`experiments.common.models_nnx` and
:mod:`experiments.common.models_equinox`, imported only for those APIs: this module needs flax.linen only.

Layout choice: inputs are NHWC ``(N, 32, 32, 3)`` because that is Flax's (and XLA's CPU) native convolution
layout; BatchNorm2d therefore normalizes over ``axis=-1``. To keep the parameters one-to-one with PyTorch's
``state_dict``, the feature map is transposed to NCHW just before flattening, so the 400 inputs of ``fc1`` come
in PyTorch's ``view(N, -1)`` order (c, h, w) and ``fc1.kernel == fc1.weight.T``. Conv kernels are Flax's
``(kh, kw, in, out)`` (= PyTorch's ``weight.permute(2, 3, 1, 0)``).

Submodule names are PyTorch's: ``conv1, conv2, fc1, fc2, fc3`` and, in LeNet_bn, ``bn1, bn2, bn3`` (``norm1..3``
for the other normalizations).

Initializations (``LeNet.init_scheme``):

* ``"plain"`` -- PyTorch's defaults for ``nn.Conv2d``/``nn.Linear``: kernel and bias ~ U(-1/sqrt(fan_in),
  +1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)).
* ``"init"`` -- the lesson's ``initialize_weights``: conv kernels xavier_normal (std = sqrt(2 / (fan_in +
  fan_out))), linear weights N(0, 1), every bias 0. N(0, 1) on a 400-input layer gives pre-activations with
  std ~ sqrt(400) = 20x the input's, which is why this configuration can diverge.

The normalized models use the PyTorch defaults for their conv/linear layers (the lesson does not call
initialize_weights for LeNet_bn) and norm weight 1, bias 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxnorm.init as jinit
import jaxnorm.linen as jnn

INIT_SCHEMES = ("plain", "init")
CONFIGS = ("plain", "init", "bn")  # the lesson's three runs
NORMS = ("none", "bn", "renorm", "gn", "ln", "in")  # the small-batch study's
# fan_in of every layer, for PyTorch's default bias bound 1/sqrt(fan_in): in_channels * 5 * 5 or in_features
_FAN_IN = {"conv1": 3 * 25, "conv2": 6 * 25, "fc1": 16 * 5 * 5, "fc2": 120, "fc3": 84}
# Groups of GroupNorm per layer (the GN paper's 32 groups exceed LeNet's 6 and 16 channels): 2-3 channels a group.
_GN_GROUPS = {6: 3, 16: 8, 120: 40}


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


def flatten_like_torch(x):
    """(N, H, W, C) -> (N, C*H*W) in PyTorch's NCHW ``view(N, -1)`` order, so fc1 maps 1:1 to PyTorch."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def pool(x):
    """2x2 max pool, stride 2 (F.max_pool2d(x, 2)), as a reshape + max.

    Same forward values as ``nn.max_pool``; written this way because XLA:CPU lowers the gradient of
    ``reduce_window`` max to ``select_and_scatter``, which made the whole LeNet train step ~3x slower. (At exact
    ties the gradient is split among the tied inputs instead of going to one of them; after a ReLU, ties are
    almost always zeros, whose ReLU gradient is 0 either way.)
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# ------------------------------------------------------------------------------------- blocked convolution
# conv(5x5, VALID) followed by a 2x2 max pool, computed on 2x2 blocks of pixels ("space to depth"). Why: XLA:CPU's
# convolution is slow on few channels -- LeNet's conv1 (3 -> 6 channels) took 0.68 of a 1.9 ms training step, at a
# fifth of conv2's FLOP rate. On 2x2 blocks conv1 becomes a 3x3 convolution from 12 to 24 channels (1.44x the
# FLOPs, at a far better rate) and its output channels are the four pixels of each pooling window, so the pool is
# a max over a channel axis. Measured on the project's 2-core VM (interleaved rounds, docs/performance.md, LeNet):
# conv1+pool forward and backward 1.40 -> 0.65 ms, conv2+pool 0.74 -> 0.49 ms (PyTorch eager: 0.65 and 0.46 ms);
# the training phase of `python -m experiments.lenet` 0.65x (8 paired rounds), its evaluation 0.80x.
# The parameters stay nn.Conv's ((5, 5, C, O) kernel and bias) and the values are the same convolution summed in
# another order: equal to float32 rounding (tested against the direct model and PyTorch's). A training run is not:
# a one-ulp difference flips a ReLU or a pool's argmax near a tie, and the trajectories separate after a few dozen
# steps, as they do after any change of summation order.
def space_to_depth(x):
    """``(N, H, W, C) -> (N, H/2, W/2, 4C)``: each 2x2 block of pixels as one pixel, channels ordered (dy, dx, c)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def blocked_kernel(kernel):
    """A ``(5, 5, C, O)`` kernel as the ``(3, 3, 4C, 4O)`` kernel of the same VALID convolution on
    :func:`space_to_depth` input: output channel ``(py, px, o)`` of block ``(i, j)`` is the direct convolution's
    channel ``o`` at pixel ``(2i + py, 2j + px)``, i.e. tap ``(ky, kx, (dy, dx, c))`` holds
    ``kernel[2ky + dy - py, 2kx + dx - px, c]`` (zero outside the 5x5 kernel)."""
    kh, kw, c, o = kernel.shape
    if (kh, kw) != (5, 5):
        raise ValueError(f"blocked_kernel expects a 5x5 kernel, got {kh}x{kw}")
    phases = []
    for py in (0, 1):
        for px in (0, 1):
            shifted = jnp.pad(kernel, ((py, 1 - py), (px, 1 - px), (0, 0), (0, 0)))  # 6x6: index 2k + d
            phases.append(shifted.reshape(3, 2, 3, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(3, 3, 4 * c, o))
    return jnp.concatenate(phases, axis=-1)


def blocked_conv(x, kernel, bias):
    """``conv(x, kernel) + bias`` (5x5, VALID, NHWC, even H and W) as ``(N, H/2 - 2, W/2 - 2, 4, O)``: the output
    pixels of each 2x2 pooling window along axis 3, in the order (0, 0), (0, 1), (1, 0), (1, 1)."""
    y = jax.lax.conv_general_dilated(space_to_depth(x), blocked_kernel(kernel), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, w, _ = y.shape
    return y.reshape(n, h, w, 4, kernel.shape[-1]) + bias.reshape(1, 1, 1, 1, -1)  # explicit: no rank promotion


def pool_windows(y):
    """The 2x2 max pool of :func:`blocked_conv`'s output: ``(N, h, w, 4, O) -> (N, h, w, O)``."""
    return y.max(axis=3)


def as_feature_map(y):
    """:func:`blocked_conv`'s output as an ``(N, h, 4w, O)`` map of the same values (for a norm whose statistics
    run over all pixels of a channel: BN, GN, IN); a reshape, no copy."""
    n, h, w, p, o = y.shape
    return y.reshape(n, h, w * p, o)


class BlockedConv(nn.Module):
    """``nn.Conv(features, (5, 5), padding="VALID")``'s parameters (same names, shapes and initial values)
    computed by :func:`blocked_conv`."""

    features: int
    kernel_init: object
    bias_init: object

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (5, 5, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return blocked_conv(x, kernel, bias)


def _normalize(norm: str, index: int, features: int, x, train: bool, mask, clips):
    """``norm`` (one of :data:`NORMS` but "none") applied to conv (NHWC) or fc (N, C) features ``x``.

    ``mask``: (N,) bool, True for the real examples of a padded batch; the batch statistics use those only.
    """
    conv = x.ndim == 4
    name = f"bn{index}" if norm == "bn" else f"norm{index}"
    m = None if mask is None else mask.reshape((-1,) + (1,) * (x.ndim - 1))
    if norm in ("bn", "renorm"):
        layer = ((jnn.BatchNorm2d(features, axis=-1, name=name) if conv else jnn.BatchNorm1d(features, name=name))
                 if norm == "bn" else jnn.BatchRenorm(features, axis=-1, name=name))
        extra = {} if norm == "bn" or clips is None else {"r_max": clips[0], "d_max": clips[1]}
        return layer(x, train=train, mask=m, **extra)
    if norm == "gn":
        return jnn.GroupNorm(_GN_GROUPS[features], features, axis=-1, name=name)(x)
    if norm == "ln":
        return jnn.LayerNorm(x.shape[1:], name=name)(x)
    if norm == "in":  # per-sample statistics over the spatial axes; fc features have none, so fc1 stays plain
        return jnn.InstanceNorm2d(features, affine=True, axis=-1, name=name)(x, train=train) if conv else x
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class LeNet(nn.Module):
    """conv(3->6,5) [norm] relu pool, conv(6->16,5) [norm] relu pool, fc 400->120 [norm] relu, 120->84 relu,
    84->classes. ``norm="none"`` is the lesson's LeNet, ``"bn"`` its LeNet_bn (BN before each ReLU); call with
    ``train=True`` and ``mutable=["batch_stats"]`` to train a model with running statistics."""

    classes: int = 2
    init_scheme: str = "plain"
    norm: str = "none"
    # Convolutions by blocked_conv (faster on XLA:CPU; the same parameters and values). Off by default so that the
    # small-batch study, which builds LeNet with other norms, keeps its committed results; make_model turns it on.
    blocked: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None, clips=None):
        _check_input(x)
        if self.blocked and self.norm == "ln":  # LayerNorm's elementwise affine is laid out per pixel
            raise ValueError("LeNet(blocked=True) needs a norm whose statistics span a channel's pixels, not 'ln'")
        s = self.init_scheme

        def normed(index, features, h):
            return h if self.norm == "none" else _normalize(self.norm, index, features, h, train, mask, clips)

        def conv_norm_relu_pool(index, features, h):
            if not self.blocked:
                return pool(nn.relu(normed(index, features, _conv(f"conv{index}", features, s)(h))))
            y = BlockedConv(features, *_inits(f"conv{index}", s, conv=True), name=f"conv{index}")(h)
            return pool_windows(nn.relu(normed(index, features, as_feature_map(y)).reshape(y.shape)))

        x = conv_norm_relu_pool(1, 6, x)
        x = conv_norm_relu_pool(2, 16, x)
        x = nn.relu(normed(3, 120, _dense("fc1", 120, s)(flatten_like_torch(x))))
        x = nn.relu(_dense("fc2", 84, s)(x))
        return _dense("fc3", self.classes, s)(x)


def LeNetBN(classes: int = 2, *, blocked: bool = True) -> LeNet:  # noqa: N802 -- the lesson's class name
    """The lesson's LeNet_bn: BatchNorm after conv1 (bn1), conv2 (bn2) and fc1 (bn3), each before its ReLU."""
    return LeNet(classes, norm="bn", blocked=blocked)


def make_model(config: str, classes: int = 2, *, blocked: bool = True) -> LeNet:
    """The model of an experiment config: ``plain``/``init`` -> LeNet with that init, ``bn`` -> LeNet_bn; their
    convolutions by :func:`blocked_conv` unless ``blocked=False``."""
    if config == "bn":
        return LeNetBN(classes, blocked=blocked)
    if config in INIT_SCHEMES:
        return LeNet(classes, init_scheme=config, blocked=blocked)
    raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
