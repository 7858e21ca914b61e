"""The lesson's LeNet and LeNet_bn as a Flax NNX module with jaxnorm.nnx BatchNorm (``lenet --api nnx``).

A module of its own, imported only when the NNX API is chosen (:func:`experiments.lenet.make_task`,
:func:`experiments.common.steps.lenet_variables`), so that a linen run never imports ``flax.nnx``. The layers, names
and layout are :class:`experiments.common.models.LeNet`'s, and so is the forward pass (its blocked convolutions).
"""

from __future__ import annotations

from flax import nnx

import jaxnorm.nnx as jnnx
from experiments.common.models import (
    _check_input,
    as_feature_map,
    blocked_conv,
    flatten_like_torch,
    pool,
    pool_windows,
)


class NnxLeNet(nnx.Module):
    """The lesson's LeNet (``bn=False``) or LeNet_bn (``bn=True``) as a Flax NNX module with jaxnorm.nnx BatchNorm:
    the same layers, names and layout as :class:`~experiments.common.models.LeNet`, so the two load each other's
    weights through PyTorch's state-dict names. Its parameters start as NNX's initializers draw them; the experiments
    copy a linen init in."""

    def __init__(self, classes: int = 2, *, bn: bool = False, blocked: bool = True, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, (5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(400, 120, rngs=rngs), nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, classes, rngs=rngs)
        self.bn, self.blocked = bn, blocked
        if bn:
            self.bn1, self.bn2 = jnnx.BatchNorm2d(6, axis=-1), jnnx.BatchNorm2d(16, axis=-1)
            self.bn3 = jnnx.BatchNorm1d(120)

    def __call__(self, x, *, mask=None):
        _check_input(x)
        m4, m2 = (None, None) if mask is None else (mask.reshape(-1, 1, 1, 1), mask.reshape(-1, 1))
        norm = (lambda layer, h, m: layer(h, mask=m)) if self.bn else (lambda layer, h, m: h)

        def conv_norm_relu_pool(conv, bn, h):  # as LeNet's, blocked or direct
            if not self.blocked:
                return pool(nnx.relu(norm(bn, conv(h), m4)))
            y = blocked_conv(h, conv.kernel[...], conv.bias[...])
            return pool_windows(nnx.relu(norm(bn, as_feature_map(y), m4).reshape(y.shape)))

        x = conv_norm_relu_pool(self.conv1, getattr(self, "bn1", None), x)
        x = conv_norm_relu_pool(self.conv2, getattr(self, "bn2", None), x)
        x = nnx.relu(norm(getattr(self, "bn3", None), self.fc1(flatten_like_torch(x)), m2))
        return self.fc3(nnx.relu(self.fc2(x)))
