"""PyTorch's per-rank module classes (``BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d``) for linen and NNX.

In PyTorch those classes differ only in the input rank they accept; here they differ only in the rank-checked pure
function they call (``jaxnorm.batch_norm_2d``, ...), so each is one line: ``BatchNorm2d = per_rank(_BatchNorm,
batch_norm_2d, "BatchNorm2d", __name__)``. They are real subclasses (``isinstance``, ``help``, pickling by name).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

ModuleClass = TypeVar("ModuleClass", bound=type)


def per_rank(base: ModuleClass, function: Callable, name: str, module: str) -> ModuleClass:
    """The subclass ``name`` of ``base`` (defined in ``module``) that calls the rank-checked ``function``."""
    doc = (f"``torch.nn.{name}``: input {function.layout}; calls :func:`jaxnorm.{function.__name__}`.\n\n"
           + inspect.cleandoc(base.__doc__))
    namespace = {"__doc__": doc, "__module__": module, "__qualname__": name, "_function": staticmethod(function)}
    return type(base)(name, (base,), namespace)
