"""PyTorch-compatible weight initializers, usable as Flax initializers ``init(key, shape, dtype)``.

Fans follow ``torch.nn.init._calculate_fan_in_and_fan_out``. ``layout="flax"`` (default) reads kernels as Flax
stores them — Dense ``(in, out)``, Conv ``(*kernel, in, out)``; ``layout="torch"`` reads PyTorch's
``(out, in, *kernel)``.

Example:
  >>> import flax.linen as nn
  >>> import jax
  >>> import jaxnorm.init as jinit
  >>> dense = nn.Dense(4, kernel_init=jinit.kaiming_normal(), bias_init=jinit.torch_default_bias(16))
  >>> jax.tree.map(jax.numpy.shape, dense.init(jax.random.key(0), jax.numpy.ones((1, 16)))["params"])
  {'bias': (4,), 'kernel': (16, 4)}

References:
  PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html;
  He, Zhang, Ren & Sun, Delving Deep into Rectifiers, ICCV 2015, https://arxiv.org/abs/1502.01852;
  Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS
  2010, https://proceedings.mlr.press/v9/glorot10a.html
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

__all__ = ["Initializer", "fans", "calculate_gain", "kaiming_uniform", "kaiming_normal", "xavier_normal",
           "xavier_uniform", "normal", "torch_default_kernel", "torch_default_bias"]

Shape = Sequence[int]


class Initializer(Protocol):
    """Flax's initializer signature: ``init(key, shape, dtype=float32) -> array``.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> init: jinit.Initializer = jinit.normal(std=0.5)
      >>> init(jax.random.key(0), (2, 3)).shape
      (2, 3)

    References:
      Flax's initializers, https://flax.readthedocs.io/en/latest/api_reference/flax.linen/initializers.html
    """

    def __call__(self, key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32, /) -> jax.Array: ...


_LAYOUTS = ("flax", "torch")


def fans(shape: Sequence[int], layout: str = "flax") -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``: ``fan_in = in · receptive``, ``fan_out = out · receptive``.

    Example:
      >>> import jaxnorm.init as jinit
      >>> jinit.fans((3, 3, 16, 32)), jinit.fans((32, 16, 3, 3), layout="torch")   # a 3x3 conv, 16 -> 32
      ((144, 288), (144, 288))

    References:
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html (``_calculate_fan_in_and_fan_out``)
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"fans: expected layout in {_LAYOUTS}, got {layout!r}")
    if len(shape) < 2:
        raise ValueError(f"fans: expected a weight with at least 2 dims (fan in/out), got shape {tuple(shape)}")
    if layout == "flax":
        receptive = math.prod(shape[:-2])
        return shape[-2] * receptive, shape[-1] * receptive
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """``torch.nn.init.calculate_gain``: 1 for linear/conv/sigmoid, 5/3 tanh, √2 relu, √(2/(1+a²)) leaky_relu,
    3/4 selu.

    Example:
      >>> import jaxnorm.init as jinit
      >>> round(jinit.calculate_gain("relu"), 4), round(jinit.calculate_gain("leaky_relu", 0.2), 4)
      (1.4142, 1.3868)

    References:
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html
    """
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of linear, conv1d, "
                     "conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d, sigmoid, tanh, relu, "
                     "leaky_relu, selu")


def _uniform(key: jax.Array, shape: Shape, dtype: DTypeLike, bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def kaiming_uniform(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.kaiming_uniform_``: ``U(−b, b)``, ``b = gain · √(3 / fan_mode)``.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> w = jinit.kaiming_uniform(nonlinearity="relu")(jax.random.key(0), (50, 20))   # b = √2 · √(3/50)
      >>> bool(abs(w).max() <= 2 ** 0.5 * (3 / 50) ** 0.5)
      True

    References:
      He, Zhang, Ren & Sun, Delving Deep into Rectifiers, ICCV 2015, https://arxiv.org/abs/1502.01852;
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html
    """
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan = _fan(shape, mode, layout)
        return _uniform(key, shape, dtype, calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan))
    return init


def kaiming_normal(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.kaiming_normal_`` (same defaults): ``N(0, std²)``, ``std = gain / √fan_mode``.

    PyTorch's default ``nonlinearity="leaky_relu"`` with ``a=0`` gives gain √2, the ReLU gain.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> w = jinit.kaiming_normal()(jax.random.key(0), (200, 100))               # std = √2 / √200 = 0.1
      >>> bool(abs(float(w.std()) - 0.1) < 0.005)
      True

    References:
      He, Zhang, Ren & Sun, Delving Deep into Rectifiers, ICCV 2015, https://arxiv.org/abs/1502.01852;
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html
    """
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode, layout))
        return std * jax.random.normal(key, shape, dtype)
    return init


def xavier_normal(gain: float = 1.0, layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.xavier_normal_``: ``N(0, std²)``, ``std = gain · √(2 / (fan_in + fan_out))``.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> w = jinit.xavier_normal()(jax.random.key(0), (100, 100))                # std = √(2/200) = 0.1
      >>> bool(abs(float(w.std()) - 0.1) < 0.005)
      True

    References:
      Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS
      2010, https://proceedings.mlr.press/v9/glorot10a.html;
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html
    """
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan_in, fan_out = fans(shape, layout)
        return gain * math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)
    return init


def xavier_uniform(gain: float = 1.0, layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.xavier_uniform_``: ``U(−b, b)``, ``b = gain · √(6 / (fan_in + fan_out))``.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> w = jinit.xavier_uniform(layout="torch")(jax.random.key(0), (30, 20))   # PyTorch's (out, in)
      >>> bool(abs(w).max() <= (6 / 50) ** 0.5)
      True

    References:
      Glorot & Bengio, Understanding the difficulty of training deep feedforward neural networks, AISTATS
      2010, https://proceedings.mlr.press/v9/glorot10a.html;
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html
    """
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan_in, fan_out = fans(shape, layout)
        return _uniform(key, shape, dtype, gain * math.sqrt(6.0 / (fan_in + fan_out)))
    return init


def normal(mean: float = 0.0, std: float = 1.0) -> Initializer:
    """``torch.nn.init.normal_``: ``N(mean, std²)``.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> w = jinit.normal(mean=1.0, std=0.01)(jax.random.key(0), (1000,))
      >>> bool(abs(float(w.mean()) - 1.0) < 0.002)
      True

    References:
      PyTorch's ``torch.nn.init``, https://pytorch.org/docs/stable/nn.init.html
    """
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return mean + std * jax.random.normal(key, shape, dtype)
    return init


def torch_default_kernel(layout: str = "flax") -> Initializer:
    r"""The default ``nn.Linear``/``nn.Conv*`` weight init: ``kaiming_uniform_(a=√5)``, i.e. ``U(±1/√fan_in)``.

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> w = jinit.torch_default_kernel()(jax.random.key(0), (25, 8))            # Flax Dense (in, out): 1/√25
      >>> bool(abs(w).max() <= 0.2)
      True

    References:
      PyTorch's ``torch.nn.Linear``, https://pytorch.org/docs/stable/generated/torch.nn.Linear.html
    """
    return kaiming_uniform(a=math.sqrt(5.0), layout=layout)


def torch_default_bias(fan_in: int) -> Initializer:
    r"""The default ``nn.Linear``/``nn.Conv*`` bias init: ``U(±1/√fan_in)`` (zeros when ``fan_in = 0``).

    Example:
      >>> import jax
      >>> import jaxnorm.init as jinit
      >>> b = jinit.torch_default_bias(fan_in=4)(jax.random.key(0), (8,))
      >>> bool(abs(b).max() <= 0.5), float(abs(jinit.torch_default_bias(0)(jax.random.key(0), (3,))).max())
      (True, 0.0)

    References:
      PyTorch's ``torch.nn.Linear``, https://pytorch.org/docs/stable/generated/torch.nn.Linear.html
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, bound)
    return init


def _fan(shape: Shape, mode: str, layout: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"fans: expected mode 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape, layout)
    return fan_in if mode == "fan_in" else fan_out
