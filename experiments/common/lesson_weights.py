"""The lesson's exact MLP weights and input, drawn with PyTorch's RNG in the lesson's order (needs torch)."""

from __future__ import annotations

import numpy as np

INITS = ("torch_default", "normal", "kaiming")


def lesson_weights_and_input(init: str, *, seed: int, layers: int, width: int,
                             batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The lesson's exact weights and input, drawn with PyTorch's RNG in the lesson's order.

    ``set_seed(1)``; build 100 ``nn.Linear(bias=False)`` (default init draws) and 100 ``BatchNorm1d`` (no
    draws); ``initialize()`` (``normal_`` or ``kaiming_normal_`` for those ``init``; none for ``torch_default``); ``torch.randn``.
    Returns Flax-layout kernels (the transposes) and the input as NumPy. Needs torch.
    """
    import random

    import torch  # optional; only this function needs it

    if init not in INITS:
        raise ValueError(f"lesson_weights_and_input: expected init in {INITS}, got {init!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    linears = [torch.nn.Linear(width, width, bias=False) for _ in range(layers)]
    with torch.no_grad():
        for lin in linears:
            if init == "normal":
                torch.nn.init.normal_(lin.weight, std=1.0)
            elif init == "kaiming":
                torch.nn.init.kaiming_normal_(lin.weight)
    x = torch.randn((batch, width))
    w = np.stack([lin.weight.detach().numpy().T for lin in linears])
    return w.astype(np.float32), x.numpy().astype(np.float32)


def torch_available() -> bool:
    """True when PyTorch imports (it is optional: a test oracle, never a dependency)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
