"""Property tests (hypothesis): moments of normalized outputs and the GroupNorm identities, over random shapes."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnorm as jn

shapes = st.tuples(st.integers(2, 5), st.integers(1, 6), st.integers(2, 5), st.integers(1, 4))


# Jitted: each example has a new shape, and one compiled program per call is cheaper than compiling op by op.
batch_norm = jax.jit(jn.batch_norm, static_argnames=("train", "axis", "eps"))
group_norm = jax.jit(jn.group_norm, static_argnums=(2,), static_argnames=("axis", "eps"))
layer_norm = jax.jit(jn.layer_norm, static_argnums=(2,), static_argnames=("eps",))
rms_norm = jax.jit(jn.rms_norm, static_argnums=(2,), static_argnames=("eps",))
instance_norm_2d = jax.jit(jn.instance_norm_2d, static_argnames=("train",))


def _data(shape, seed, scale, offset):
    return (np.random.default_rng(seed).normal(size=shape) * scale + offset).astype(np.float32)


@settings(max_examples=12, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10**6), scale=st.floats(0.1, 100), offset=st.floats(-1e3, 1e3),
       channels_last=st.booleans())
def test_batch_norm_output_has_zero_mean_unit_variance_per_channel(shape, seed, scale, offset, channels_last):
    x = _data(shape, seed, scale, offset)
    axis = -1 if channels_last else 1
    y, _ = batch_norm(jnp.asarray(x), {}, {}, train=True, axis=axis, eps=0.0)
    axes = tuple(a for a in range(4) if a != axis % 4)
    y = np.asarray(y, np.float64)
    np.testing.assert_allclose(y.mean(axes), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(axes), 1.0, atol=1e-3)


@settings(max_examples=12, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10**6), groups_index=st.integers(0, 10), channels_last=st.booleans())
def test_group_norm_output_has_zero_mean_unit_variance_per_group(shape, seed, groups_index, channels_last):
    x = _data(shape, seed, 3.0, 2.0)
    c = shape[1]
    divisors = [g for g in range(1, c + 1) if c % g == 0]
    groups = divisors[groups_index % len(divisors)]
    xin = np.moveaxis(x, 1, -1) if channels_last else x
    y = np.asarray(group_norm(jnp.asarray(xin), {}, groups, eps=0.0, axis=-1 if channels_last else 1))
    y = (np.moveaxis(y, -1, 1) if channels_last else y).reshape(shape[0], groups, -1).astype(np.float64)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-3)


@settings(max_examples=12, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10**6))
def test_group_norm_identities(shape, seed):
    x = jnp.asarray(_data(shape, seed, 2.0, -1.0))
    c = shape[1]
    np.testing.assert_allclose(group_norm(x, {}, 1), layer_norm(x, {}, tuple(shape[1:])), atol=2e-5)
    np.testing.assert_allclose(group_norm(x, {}, c), instance_norm_2d(x, {}, {}, train=True)[0], atol=2e-5)


@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10**6), k=st.integers(1, 3))
def test_layer_norm_and_rms_norm_moments(shape, seed, k):
    x = _data(shape, seed, 5.0, 3.0)
    axes = tuple(range(4 - k, 4))
    if np.prod([shape[a] for a in axes]) < 2:
        return
    y = np.asarray(layer_norm(jnp.asarray(x), {}, tuple(shape[4 - k:]), eps=0.0), np.float64)
    np.testing.assert_allclose(y.mean(axes), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(axes), 1.0, atol=1e-3)
    r = np.asarray(rms_norm(jnp.asarray(x), {}, tuple(shape[4 - k:]), eps=0.0), np.float64)
    np.testing.assert_allclose((r**2).mean(axes), 1.0, atol=1e-3)
