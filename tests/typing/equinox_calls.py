"""What a type checker infers for the Equinox layers' two call forms: ``python -m mypy`` (strict, .ci/run step 1)
checks this file with the library, so an ``assert_type`` that no longer holds fails CI. Not a pytest module: it is
never run, only type-checked.

``y = layer(x)`` gives an array; ``y, state = layer(x, state)`` gives ``(array, eqx.nn.State)``, for every layer
kind (stateful BatchNorm/InstanceNorm, BatchRenorm with its extra clips, the stateless norms, FrozenBatchNorm).
"""

from typing import assert_type

import equinox as eqx
import jax

from jaxnorm.equinox import BatchNorm2d, BatchRenorm, FrozenBatchNorm, GroupNorm, InstanceNorm2d, LayerNorm, RMSNorm


def calls(x: jax.Array, state: eqx.nn.State, bn: BatchNorm2d, renorm: BatchRenorm, instance: InstanceNorm2d,
          ln: LayerNorm, rms: RMSNorm, gn: GroupNorm, frozen: FrozenBatchNorm) -> None:
    assert_type(bn(x, state), tuple[jax.Array, eqx.nn.State])
    assert_type(bn(x, state, inference=True), tuple[jax.Array, eqx.nn.State])
    assert_type(bn(x, inference=True), jax.Array)
    assert_type(renorm(x, state, r_max=3.0), tuple[jax.Array, eqx.nn.State])
    assert_type(renorm(x, inference=True), jax.Array)
    assert_type(instance(x), jax.Array)
    assert_type(instance(x, state), tuple[jax.Array, eqx.nn.State])
    for layer in (ln, rms, gn):
        assert_type(layer(x), jax.Array)
        assert_type(layer(x, state), tuple[jax.Array, eqx.nn.State])
    assert_type(frozen(x, mask=None), jax.Array)
    assert_type(frozen(x, state), tuple[jax.Array, eqx.nn.State])
    y, new_state = bn(x, state)  # unpacks without a cast
    assert_type(new_state, eqx.nn.State)
