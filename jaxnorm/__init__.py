"""jaxnorm — PyTorch-exact normalization layers for JAX as pure functions.

Every normalization returns its output (and, for the stateful ones, the updated ``batch_stats``); all of them share
one statistics core (:mod:`jaxnorm._stats`). Flax linen wrappers are in :mod:`jaxnorm.linen`, Flax NNX modules in
:mod:`jaxnorm.nnx`, PyTorch-compatible initializers in :mod:`jaxnorm.init`, PyTorch state-dict interop and BN folding
in :mod:`jaxnorm.interop` (whole NNX models: :mod:`jaxnorm.nnx_interop`), an activation-statistics inspector in
:mod:`jaxnorm.activations`; Equinox modules in :mod:`jaxnorm.equinox`, converters from Flax, Keras and Haiku in
:mod:`jaxnorm.migrate`.

``import jaxnorm`` imports jax and the pure functions only. The names that work on Flax or Equinox models
(``freeze_batch_norm``, ``recalibrate_batch_stats``, ``torch_to_nnx``, ``nnx_to_torch_state_dict``,
``torch_to_equinox``, ``equinox_to_torch_state_dict``, :mod:`jaxnorm.migrate`'s ``from_flax_batch_norm``, ...) and
the front-end modules load their module, and Flax or Equinox with it, when first used (:data:`_LAZY`). The
Equinox names are listed in ``__all__`` only where Equinox is installed.

Example:
  >>> import jax.numpy as jnp
  >>> import jaxnorm as jn
  >>> params, stats = jn.batch_norm_init(3)
  >>> y, stats = jn.batch_norm_2d(jnp.ones((2, 3, 4, 4)), params, stats, train=True)
  >>> y.shape, int(stats["num_batches_tracked"])
  ((2, 3, 4, 4), 1)

References:
  Ioffe & Szegedy, Batch Normalization, ICML 2015, https://arxiv.org/abs/1502.03167; Ba et al., Layer
  Normalization, 2016, https://arxiv.org/abs/1607.06450; Ulyanov et al., Instance Normalization, 2016,
  https://arxiv.org/abs/1607.08022; Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494;
  Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467;
  PyTorch's ``torch.nn`` normalization layers, https://pytorch.org/docs/stable/nn.html#normalization-layers
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from jaxnorm import init
from jaxnorm.batch_norm import batch_norm, batch_norm_1d, batch_norm_2d, batch_norm_3d, batch_norm_init
from jaxnorm.batch_renorm import batch_renorm, renorm_clip_schedule
from jaxnorm.frozen import frozen_batch_norm
from jaxnorm.group_norm import group_norm, group_norm_init
from jaxnorm.instance_norm import (
    instance_norm,
    instance_norm_1d,
    instance_norm_2d,
    instance_norm_3d,
    instance_norm_init,
)
from jaxnorm.interop import (
    flax_to_torch_state_dict,
    fold_batch_norm,
    from_torch_state_dict,
    to_torch_state_dict,
    torch_to_flax_variables,
)
from jaxnorm.layer_norm import layer_norm, layer_norm_init, rms_norm, rms_norm_init

if TYPE_CHECKING:  # what _LAZY loads at run time, for type checkers and IDEs
    from jaxnorm import activations as activations
    from jaxnorm import equinox as equinox
    from jaxnorm import freeze as freeze
    from jaxnorm import linen as linen
    from jaxnorm import migrate as migrate
    from jaxnorm import nnx as nnx
    from jaxnorm import nnx_interop as nnx_interop
    from jaxnorm import recalibrate as recalibrate
    from jaxnorm.equinox import equinox_to_torch_state_dict as equinox_to_torch_state_dict
    from jaxnorm.equinox import torch_to_equinox as torch_to_equinox
    from jaxnorm.freeze import freeze_batch_norm
    from jaxnorm.migrate import (
        batch_norm_options,
        convert_flax_variables,
        from_flax_batch_norm,
        from_haiku_batch_norm,
        from_keras_batch_norm,
        momentum_from_decay,
    )
    from jaxnorm.nnx_interop import nnx_to_torch_state_dict, torch_to_nnx
    from jaxnorm.recalibrate import recalibrate_batch_stats

__version__ = "0.1.0"

__all__ = [
    "batch_norm", "batch_norm_1d", "batch_norm_2d", "batch_norm_3d", "batch_norm_init",
    "layer_norm", "layer_norm_init", "rms_norm", "rms_norm_init",
    "instance_norm", "instance_norm_1d", "instance_norm_2d", "instance_norm_3d", "instance_norm_init",
    "group_norm", "group_norm_init", "init", "batch_renorm", "renorm_clip_schedule", "recalibrate_batch_stats",
    "frozen_batch_norm", "freeze_batch_norm",
    "fold_batch_norm", "from_torch_state_dict", "to_torch_state_dict", "flax_to_torch_state_dict",
    "torch_to_flax_variables", "torch_to_nnx", "nnx_to_torch_state_dict",
    "from_flax_batch_norm", "from_keras_batch_norm", "from_haiku_batch_norm", "convert_flax_variables",
    "batch_norm_options", "momentum_from_decay",
]

# Loaded on first use, because their modules import a Flax front-end (or another library jaxnorm does not need
# itself): attribute name -> the module it lives in; a module maps to itself. A new front-end adds its lines here
# (and to the TYPE_CHECKING imports above).
_LAZY: dict[str, str] = {
    "freeze_batch_norm": "jaxnorm.freeze",
    "recalibrate_batch_stats": "jaxnorm.recalibrate",
    "torch_to_nnx": "jaxnorm.nnx_interop",
    "nnx_to_torch_state_dict": "jaxnorm.nnx_interop",
    "torch_to_equinox": "jaxnorm.equinox",
    "equinox_to_torch_state_dict": "jaxnorm.equinox",
    **{name: "jaxnorm.migrate" for name in ("from_flax_batch_norm", "from_keras_batch_norm", "from_haiku_batch_norm",
                                            "convert_flax_variables", "batch_norm_options", "momentum_from_decay")},
    **{module: f"jaxnorm.{module}" for module in ("linen", "nnx", "nnx_interop", "freeze", "recalibrate",
                                                   "activations", "equinox", "migrate")},
}
# The lazy names whose module needs a library that jaxnorm does not depend on (an extra): name -> that library. They
# are in __all__ where it is installed (found without importing it), so that `from jaxnorm import *` works without.
_OPTIONAL: dict[str, str] = {"torch_to_equinox": "equinox", "equinox_to_torch_state_dict": "equinox"}
__all__ += [name for name, library in _OPTIONAL.items() if importlib.util.find_spec(library) is not None]


def __getattr__(name: str) -> Any:
    """The lazily loaded names of :data:`_LAZY` (PEP 562): import their module, then keep the value here."""
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxnorm' has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name])
    except ModuleNotFoundError as e:
        if name not in _OPTIONAL or e.name != _OPTIONAL[name]:
            raise
        raise ModuleNotFoundError(f"jaxnorm.{name} needs {_OPTIONAL[name]}, which is not installed: pip install "
                                  f"'jaxnorm[{_OPTIONAL[name]}]'", name=e.name) from e
    value = module if module.__name__ == f"jaxnorm.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
