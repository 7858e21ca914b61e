"""jaxnorm — PyTorch-exact normalization layers for JAX as pure functions.

Every normalization returns its output (and, for the stateful ones, the updated ``batch_stats``); all of them share
one statistics core (:mod:`jaxnorm._stats`). Flax linen wrappers are in :mod:`jaxnorm.linen`, Flax NNX modules in
:mod:`jaxnorm.nnx`, PyTorch-compatible initializers in :mod:`jaxnorm.init`, PyTorch state-dict interop and BN folding
in :mod:`jaxnorm.interop` (whole NNX models: :mod:`jaxnorm.nnx_interop`), an activation-statistics inspector in
:mod:`jaxnorm.activations`.
"""

from jaxnorm import init
from jaxnorm.batch_norm import batch_norm, batch_norm_1d, batch_norm_2d, batch_norm_3d, batch_norm_init
from jaxnorm.batch_renorm import batch_renorm, renorm_clip_schedule
from jaxnorm.freeze import freeze_batch_norm
from jaxnorm.frozen import frozen_batch_norm
from jaxnorm.group_norm import group_norm, group_norm_init
from jaxnorm.instance_norm import (
    instance_norm,
    instance_norm_1d,
    instance_norm_2d,
    instance_norm_3d,
    instance_norm_init,
)
from jaxnorm.layer_norm import layer_norm, layer_norm_init, rms_norm, rms_norm_init
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
]

from jaxnorm.interop import (
    flax_to_torch_state_dict,
    fold_batch_norm,
    from_torch_state_dict,
    to_torch_state_dict,
    torch_to_flax_variables,
)
from jaxnorm.nnx_interop import nnx_to_torch_state_dict, torch_to_nnx
