"""The performance design, pinned: the exact memory traffic of every norm's compiled CPU program.

Normalization is memory-bound, so what makes jaxnorm fast on the CPU is how many times its compiled programs read
and write full-size arrays. ``hlo_traffic`` counts that from the optimized HLO (each kernel charged its operands and
result; a conditional its cheapest branch, the plain-sum one on this well-conditioned data) in units of ``N``, the
bytes of ``x``. The numbers below are the README's; they hold only while

* the optimization barriers (``_stats._distinct``) keep XLA from merging ``x − μ`` / ``x̂`` into one materialized
  tensor (without them BN forward+backward moves 12N instead of 10N), and
* the backward shares its full-size sums between the input and the parameter gradients.

Shapes are large enough for XLA:CPU's production fusion decisions (small arrays fuse differently) and are only
compiled, never run. Exact XLA versions decide fusion, so these tests belong to the pinned environment only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
from experiments.common.hlo import hlo_traffic

pytestmark = pytest.mark.xla_exact

BN, LN = (16, 64, 32, 32), (64, 128, 256)


def _bn(axis, mask=None):
    stats = jn.batch_norm_init(64)[1]
    return lambda x, p: jn.batch_norm(x, p, stats, train=True, axis=axis, mask=mask)[0]


def _in(x, p):
    return jn.instance_norm(x, p, {}, train=True)[0]


CASES = {  # name: (shape, apply(x, params), params, forward traffic, forward+backward traffic) in units of N
    "batch_norm NCHW": (BN, _bn(1), jn.batch_norm_init(64)[0], 4, 10),
    "batch_norm NHWC": (BN[:1] + BN[2:] + BN[1:2], _bn(-1), jn.batch_norm_init(64)[0], 4, 10),
    "instance_norm": (BN, _in, jn.instance_norm_init(64, affine=True)[0], 4, 10),
    "group_norm": (BN, lambda x, p: jn.group_norm(x, p, 8), jn.group_norm_init(8, 64), 4, 10),
    "layer_norm": (LN, lambda x, p: jn.layer_norm(x, p, 256), jn.layer_norm_init(256), 4, 10),
    # README: RMSNorm moves 8N forward+backward (Flax's 17N); uncentred, its forward is one fused pass (2N)
    "rms_norm": (LN, lambda x, p: jn.rms_norm(x, p, 256), jn.rms_norm_init(256), 2, 8),
    # README's cost of a per-example mask (a padded batch, 12 of 16 valid)
    "batch_norm NCHW, per-example mask": (BN, _bn(1, (np.arange(16) < 12).reshape(16, 1, 1, 1)),
                                          jn.batch_norm_init(64)[0], 4, 12),
}


def traffic(fn, *args) -> float:
    """Bytes the compiled program moves, in units of the first argument's bytes."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return hlo_traffic(text) / (math.prod(args[0].shape) * args[0].dtype.itemsize)


def forward_backward(apply):
    def step(x, params, dy):
        y, vjp = jax.vjp(apply, x, params)
        return y, vjp(dy)

    return step


@pytest.mark.parametrize("name", CASES)
def test_training_forward_and_backward_traffic_is_pinned(name):
    shape, apply, params, fwd, fwdbwd = CASES[name]
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    got_fwd = traffic(apply, x, params)
    got_fwdbwd = traffic(forward_backward(apply), x, params, x)
    # Per-channel vectors add a few thousandths of N; a materialized full-size tensor adds 2N.
    assert abs(got_fwd - fwd) < 0.2, f"{name} forward: expected {fwd}N of traffic, measured {got_fwd:.3f}N"
    assert abs(got_fwdbwd - fwdbwd) < 0.2, (
        f"{name} forward+backward: expected {fwdbwd}N of traffic, measured {got_fwdbwd:.3f}N")


def test_an_elementwise_mask_costs_the_readmes_traffic():
    """README: an elementwise mask, passed in like the data, costs BatchNorm 11N forward and 22N forward+backward."""
    stats = jn.batch_norm_init(64)[1]
    x, mask = jax.ShapeDtypeStruct(BN, jnp.float32), jax.ShapeDtypeStruct(BN, jnp.bool_)

    def apply(x_, p, m):
        return jn.batch_norm(x_, p, stats, train=True, mask=m)[0]

    def step(x_, p, dy, m):
        y, vjp = jax.vjp(lambda a, b: apply(a, b, m), x_, p)
        return y, vjp(dy)

    params = jn.batch_norm_init(64)[0]
    got_fwd, got_fwdbwd = traffic(apply, x, params, mask), traffic(step, x, params, x, mask)
    assert abs(got_fwd - 11) < 0.3, f"masked forward: expected 11N of traffic, measured {got_fwd:.3f}N"
    assert abs(got_fwdbwd - 22) < 0.3, f"masked forward+backward: expected 22N of traffic, measured {got_fwdbwd:.3f}N"


def test_group_norm_channels_last_broadcasts_its_statistics_per_channel():
    """What makes GroupNorm NHWC fast (_stats._minor_expanded): its group statistics (N, 1, 1, G, 1) are expanded to
    per-channel arrays (N, 1, 1, G, C/G) before any full-size kernel uses them, in the forward and in the backward;
    channels-first GroupNorm, whose minor axis is spatial, keeps them per group."""
    def jaxpr(shape, axis):
        params = jn.group_norm_init(4, 16)

        def step(x, p, dy):
            return jax.vjp(lambda x_, p_: jn.group_norm(x_, p_, 4, axis=axis), x, p)[1](dy)

        return str(jax.make_jaxpr(step)(jnp.ones(shape), params, jnp.ones(shape)))

    channels_last = jaxpr((4, 8, 8, 16), -1)
    assert channels_last.count("f32[4,1,1,4,4] = broadcast_in_dim") >= 6  # hi, lo, 1/σ: forward and backward
    assert "f32[4,4,4,1,1] = broadcast_in_dim" not in jaxpr((4, 16, 8, 8), 1)
