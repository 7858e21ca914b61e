"""PyTorch-compatible weight initializers, usable as Flax initializers ``init(key, shape, dtype)``.

Fans follow ``torch.nn.init._calculate_fan_in_and_fan_out``. ``layout="flax"`` (default) reads kernels as Flax
stores them — Dense ``(in, out)``, Conv ``(*kernel, in, out)``; ``layout="torch"`` reads PyTorch's
``(out, in, *kernel)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

Shape = Sequence[int]


class Initializer(Protocol):
    """Flax's initializer signature: ``init(key, shape, dtype=float32) -> array``."""

    def __call__(self, key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32, /) -> jax.Array: ...


_LAYOUTS = ("flax", "torch")


def fans(shape: Sequence[int], layout: str = "flax") -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``: ``fan_in = in · receptive``, ``fan_out = out · receptive``."""
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
    3/4 selu."""
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
    r"""``torch.nn.init.kaiming_uniform_``: ``U(−b, b)``, ``b = gain · √(3 / fan_mode)``."""
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan = _fan(shape, mode, layout)
        return _uniform(key, shape, dtype, calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan))
    return init


def kaiming_normal(a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.kaiming_normal_`` (same defaults): ``N(0, std²)``, ``std = gain / √fan_mode``.

    PyTorch's default ``nonlinearity="leaky_relu"`` with ``a=0`` gives gain √2, the ReLU gain.
    """
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode, layout))
        return std * jax.random.normal(key, shape, dtype)
    return init


def xavier_normal(gain: float = 1.0, layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.xavier_normal_``: ``N(0, std²)``, ``std = gain · √(2 / (fan_in + fan_out))``."""
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan_in, fan_out = fans(shape, layout)
        return gain * math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)
    return init


def xavier_uniform(gain: float = 1.0, layout: str = "flax") -> Initializer:
    r"""``torch.nn.init.xavier_uniform_``: ``U(−b, b)``, ``b = gain · √(6 / (fan_in + fan_out))``."""
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan_in, fan_out = fans(shape, layout)
        return _uniform(key, shape, dtype, gain * math.sqrt(6.0 / (fan_in + fan_out)))
    return init


def normal(mean: float = 0.0, std: float = 1.0) -> Initializer:
    """``torch.nn.init.normal_``: ``N(mean, std²)``."""
    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return mean + std * jax.random.normal(key, shape, dtype)
    return init


def torch_default_kernel(layout: str = "flax") -> Initializer:
    r"""The default ``nn.Linear``/``nn.Conv*`` weight init: ``kaiming_uniform_(a=√5)``, i.e. ``U(±1/√fan_in)``."""
    return kaiming_uniform(a=math.sqrt(5.0), layout=layout)


def torch_default_bias(fan_in: int) -> Initializer:
    r"""The default ``nn.Linear``/``nn.Conv*`` bias init: ``U(±1/√fan_in)`` (zeros when ``fan_in = 0``)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return _uniform(key, shape, dtype, bound)
    return init


def _fan(shape: Shape, mode: str, layout: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"fans: expected mode 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape, layout)
    return fan_in if mode == "fan_in" else fan_out
