"""jaxnorm.activations.activation_stats / format_table on small models with known statistics and a known NaN layer.

Goldens: the same forward pass recomputed with float64 NumPy from the parameters; for NNX models, the linen rows on
the same weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.linen as jnn
import jaxnorm.nnx as jx
from jaxnorm.activations import ActivationStats, activation_stats, format_table
from jaxnorm.interop import flax_to_torch_state_dict


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(6, name="fc")(x))


class Log(nn.Module):
    """log(x - 1): NaN wherever x < 1 (after BN, about 84% of a standard normal)."""

    def __call__(self, x):
        return jnp.log(x - 1.0)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        x = Block(name="block")(x)
        x = jnn.BatchNorm1d(6, name="bn")(x, train=train)
        x = Log(name="bad")(x)
        return nn.Dense(3, name="head")(x)


@pytest.fixture(scope="module")
def setup():
    x = jax.random.normal(jax.random.key(0), (32, 5))
    model = Net()
    return model, model.init(jax.random.key(1), x, train=False), x


def test_rows_order_values_and_first_nonfinite(setup):
    model, variables, x = setup
    stats = activation_stats(model, variables, x, train=True)
    assert isinstance(stats, ActivationStats)
    # execution order: a module's row follows its children's; the root last
    assert [row.path for row in stats.layers] == ["block.fc", "block", "bn", "bad", "head", "(root)"]
    assert stats.first_nonfinite == "bad"
    assert [row.finite for row in stats.layers] == [True, True, True, False, False, False]

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    pre = np.asarray(x, np.float64) @ p["block"]["fc"]["kernel"] + p["block"]["fc"]["bias"]
    relu = np.maximum(pre, 0)
    for path, want in (("block.fc", pre), ("block", relu)):
        row = stats[path]
        assert row.shape == want.shape and row.dtype == "float32"
        np.testing.assert_allclose(row.mean, want.mean(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row.std, want.std(ddof=1), rtol=1e-5)  # Bessel, as torch.Tensor.std()
        np.testing.assert_allclose(row.max_abs, np.abs(want).max(), rtol=1e-5)
        assert row.frac_zeros == np.mean(want == 0)
    assert 0.2 < stats["block"].frac_zeros < 0.8  # dead ReLUs are counted
    # train-mode BN output: per-channel mean 0, biased std 1 -> overall std sqrt(n / (n - 1))
    np.testing.assert_allclose(stats["bn"].std, np.sqrt(192 / 191), rtol=1e-4)
    assert np.isnan(stats["bad"].mean) and np.isnan(stats["bad"].std)


def test_eval_mode_all_finite_and_table(setup):
    model, variables, x = setup
    params = {**variables["params"], "bn": {**variables["params"]["bn"], "bias": jnp.full(6, 10.0)}}
    stats = activation_stats(model, {**variables, "params": params}, x, train=False)  # eval BN output >= 10
    assert stats.first_nonfinite is None
    table = format_table(stats)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "shape", "mean", "std", "zeros", "max|x|", "finite"]
    assert len(lines) == 2 + 6 + 1 and lines[-1] == "all outputs finite"
    assert "first non-finite output: bad" in format_table(activation_stats(model, variables, x, train=True))
    assert stats.as_dicts()[0]["path"] == "block.fc"
    with pytest.raises(KeyError, match="no layer 'nope'"):
        stats["nope"]
    with pytest.raises(TypeError, match="expected ActivationStats"):
        format_table(stats.as_dicts())


class Scale(nn.Module):
    factor: float

    def __call__(self, x):
        return x * self.factor


class Deep(nn.Module):
    """Activations of std ~1e30 and ~1e-30: a float32 sum of squares would overflow / underflow."""

    @nn.compact
    def __call__(self, x):
        x = Scale(1e30, name="up")(x)
        x = Scale(1e-30, name="down")(x)
        x = Scale(1e-30, name="tiny")(x)
        same = Scale(1e15, name="same")
        return same(same(x))  # the same module called twice: one row per call


def test_extreme_scales_and_repeated_calls():
    x = jax.random.normal(jax.random.key(2), (64,))
    stats = activation_stats(Deep(), {}, x)
    want = np.asarray(x, np.float64).std(ddof=1)
    np.testing.assert_allclose(stats["up"].std, want * 1e30, rtol=1e-5)
    np.testing.assert_allclose(stats["tiny"].std, want * 1e-30, rtol=1e-5)
    assert [row.path for row in stats.layers] == ["up", "down", "tiny", "same[call 0]", "same[call 1]", "(root)"]
    np.testing.assert_allclose(stats["same[call 0]"].std, want * 1e-15, rtol=1e-5)
    np.testing.assert_allclose(stats["same[call 1]"].std, want, rtol=1e-5)
    assert stats.first_nonfinite is None


# ------------------------------------------------------------------------------------------------
# NNX models: activation_stats(model, x, **call_kwargs), the model's own mode, no side effects
# ------------------------------------------------------------------------------------------------


class NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(5, 6, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.fc(x))


class NNXLog(nnx.Module):
    def __call__(self, x):
        return jnp.log(x - 1.0)


class NNXNet(nnx.Module):
    """The NNX twin of Net (same names, so that weights move between them through a state dict)."""

    def __init__(self, rngs: nnx.Rngs):
        self.block, self.bn = NNXBlock(rngs), jx.BatchNorm1d(6)
        self.bad, self.head = NNXLog(), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.bad(self.bn(self.block(x))))


@pytest.mark.parametrize("train", [True, False])
def test_nnx_model_rows_equal_linen(setup, train):
    model, variables, x = setup
    nmodel = jn.torch_to_nnx(flax_to_torch_state_dict(variables), nnx.eval_shape(lambda: NNXNet(nnx.Rngs(0))))
    nmodel.train() if train else nmodel.eval()
    stats = activation_stats(nmodel, x)
    want = activation_stats(model, variables, x, train=train)
    assert [row.path for row in stats.layers] == ["block.fc", "block", "bn", "bad", "head", "(root)"]
    assert stats.first_nonfinite == want.first_nonfinite == "bad"
    for row, want_row in zip(stats.layers, want.layers, strict=True):
        assert (row.path, row.shape, row.dtype, row.finite) == (want_row.path, want_row.shape, want_row.dtype,
                                                                want_row.finite)
        np.testing.assert_allclose([row.mean, row.std, row.frac_zeros, row.max_abs],
                                   [want_row.mean, want_row.std, want_row.frac_zeros, want_row.max_abs],
                                   rtol=1e-5, atol=1e-6, err_msg=row.path)
    assert int(nmodel.bn.num_batches_tracked[...]) == 0  # ran on a copy: a training-mode pass left no trace
    # the mode decides the BN row (batch statistics: per-channel mean 0, biased std 1)
    assert (abs(stats["bn"].mean) < 1e-6) == train


def test_nnx_lists_repeated_calls_and_call_kwargs():
    class Stack(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([jx.LayerNorm(4), jx.RMSNorm(4, elementwise_affine=False)])
            self.shared = jx.LayerNorm(4, elementwise_affine=False)

        def __call__(self, x, *, scale):
            for layer in self.layers:
                x = layer(x)
            return self.shared(self.shared(x) * scale)

    x = jax.random.normal(jax.random.key(3), (8, 4)) * 5 + 2
    stats = activation_stats(Stack(), x, scale=3.0)
    assert [row.path for row in stats.layers] == ["layers.0", "layers.1", "shared[call 0]", "shared[call 1]", "(root)"]
    np.testing.assert_allclose(stats["layers.1"].std, stats["layers.0"].std, rtol=1e-4)  # LN output is RMS-normal
    with pytest.raises(TypeError, match="expected a flax.linen or flax.nnx Module, got function"):
        activation_stats(lambda x: x, x)


def test_nnx_calls_are_observed_without_changing_a_class_or_another_thread():
    """The NNX form observes the calls (a profile function of this thread): no class is patched while the model
    runs, and a call of the same classes from another thread at the same time is neither recorded nor changed."""
    import threading

    seen, other_thread = [], []
    started, release = threading.Event(), threading.Event()

    class Probe(nnx.Module):
        def __call__(self, x):
            seen.append({cls: dict(vars(cls)) for cls in classes} == before)
            if threading.current_thread() is threading.main_thread():
                started.set()
                release.wait(timeout=60)  # the other thread calls a Probe while this call is in progress
            return x

    classes = {cls for c in (Probe, nnx.Linear) for cls in c.__mro__ if cls is not object}
    before = {cls: dict(vars(cls)) for cls in classes}
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), Probe())

    def call_from_another_thread():
        started.wait(timeout=60)
        other_thread.append(Probe()(jnp.ones(3)))
        release.set()

    worker = threading.Thread(target=call_from_another_thread)
    worker.start()
    stats = activation_stats(model, jnp.ones((4, 2)))
    worker.join()
    assert [row.path for row in stats.layers] == ["layers.0", "layers.1", "(root)"]
    assert seen == [True, True] and len(other_thread) == 1
