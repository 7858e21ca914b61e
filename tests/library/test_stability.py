"""Numerical stability: large per-channel offsets, half precision, non-finite isolation, non-negative variance."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
from jaxnorm import _stats


def _reference(x, axes, eps=1e-5):
    x = np.asarray(x, np.float64)  # float64 reference computed from the *same* float32 input
    return (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)


# README: "the normalized output is within 6e-6 of a float64 reference computed from the same float32 input, for
# any offset up to 1e5 and spread, masked or not". It holds by construction (tests below): every sum runs in levels
# of at most 1024 values (256 for the shifted sums), and the variance formula in use amplifies their rounding at
# most (1 + 2K)-fold with K = mean²/variance ≤ 1 (plain sums) or ≈ 1-fold (shifted by the plain mean). Worst of
# scripts/stability_sweep.py (benchmarks/stability/*.json): 1.1e-6 with jax 0.10.2, 4.1e-6 with jax 0.8.1, whose XLA
# adds the 1024 values of a level in few long chains.
CLAIM = 6e-6
RATIOS = (0.0, 0.5, 1.0, 1.9, 2.1, 4.0, 30.0, 1e3, 1e5, 1e7)  # mean / std, offsets up to 1e5
# (8, 4, 8, 8): under _PLAIN_SUMS_MIN_SIZE, two passes; (32, 4, 8, 8): the plain-or-shifted conditional;
# (64, 4, 32, 32): levels of 32·32 = 1024 values, the block, where sequential chains add up the most rounding.
SHAPES = [(8, 4, 8, 8), (32, 4, 8, 8), (64, 4, 32, 32)]


@jax.jit  # one program per shape for every offset and std
def _every_norm(xs):
    return {
        "batch_norm NCHW": jn.batch_norm_2d(xs, {}, {}, train=True)[0],
        "batch_norm NHWC": jnp.moveaxis(jn.batch_norm(jnp.moveaxis(xs, 1, -1), {}, {}, train=True, axis=-1)[0], -1, 1),
        "layer_norm": jn.layer_norm(xs, {}, xs.shape[2:]),
        "group_norm": jn.group_norm(xs, {}, 4),
        "instance_norm": jn.instance_norm_2d(xs, {}, {}, train=True)[0],
    }


def _offset_input(shape, std: float, ratio: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise of ``std`` plus per-channel offsets up to ``ratio · std`` (of both signs)."""
    offsets = ratio * std * np.array([1.0, -0.5, 0.25, 1.0])
    return (np.random.default_rng(seed).normal(size=shape) * std + offsets[:, None, None]).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_normalized_output_within_the_claimed_bound(shape):
    worst = {}
    for std in (1.0, 1e-2):
        for ratio in (r for r in RATIOS if r * std <= 1e5):
            x = _offset_input(shape, std, ratio)
            for name, y in _every_norm(jnp.asarray(x)).items():
                error = np.abs(np.asarray(y) - _reference(x, (0, 2, 3) if name.startswith("batch_norm") else (2, 3)))
                worst[name] = max(worst.get(name, 0.0), float(error.max()))
    assert max(worst.values()) <= CLAIM, worst


def _sequential_sum(v: np.ndarray, levels) -> np.ndarray:
    """float32 sums over ``levels`` in turn, each partial sum one left-to-right chain (``np.cumsum`` is sequential)."""
    for level in levels:
        last = tuple(range(v.ndim - len(level), v.ndim))
        moved = np.moveaxis(v, level, last)
        total = np.cumsum(moved.reshape(moved.shape[:v.ndim - len(level)] + (-1,)), axis=-1, dtype=np.float32)[..., -1]
        v = np.moveaxis(total.reshape(total.shape + (1,) * len(level)), last, level)
    return v


def _cpu_statistics_summed_left_to_right(x: np.ndarray, axes, *, block: int, shifted_block: int) -> np.ndarray:
    """The normalized output of the CPU's statistics (the plain sums, or those shifted by the plain mean when a
    group has mean² > variance) in float32, as if XLA added every level of :func:`_stats.sum_levels` in one chain."""
    n = np.float32(math.prod(x.shape[a] for a in axes))
    plain = lambda v: _sequential_sum(v, _stats.sum_levels(x.shape, axes, block))  # noqa: E731
    mean = plain(x) / n
    var = plain(x * x) / n - mean * mean
    lo = np.zeros_like(mean)
    if not np.all(mean * mean <= _stats._PLAIN_VARIANCE_MAX_MEAN_SQ_OVER_VAR * var):
        shifted = lambda v: _sequential_sum(v, _stats.sum_levels(x.shape, axes, shifted_block))  # noqa: E731
        delta = shifted(x - mean) / n
        var = shifted(np.square(x - mean)) / n - delta * delta
        hi = mean + delta
        mean, lo = hi, (mean - hi) + delta
    return ((x - mean) - lo) / np.sqrt(np.maximum(var, 0) + np.float32(1e-5))


def test_the_bound_holds_however_xla_orders_the_sums_in_a_level():
    """The claim does not rest on the order XLA adds in: were every level one left-to-right chain of up to 1024
    values (the least accurate order of XLA's reductions), the output would still be within it. With unbounded
    chains (no levels) the same arithmetic is off by more than 1 at offset 1e5, std 1e-2 (the check can fail)."""
    blocks = {"block": _stats.SUM_BLOCK, "shifted_block": _stats.SHIFTED_SUM_BLOCK}
    worst = 0.0
    for axes in ((0, 2, 3), (2, 3)):
        for std, ratio in ((1.0, 0.5), (1.0, 1.9), (1.0, 30.0), (1.0, 1e5), (1e-2, 1e5), (1e-2, 1e7)):
            x = _offset_input((64, 4, 32, 32), std, ratio)
            worst = max(worst, np.abs(_cpu_statistics_summed_left_to_right(x, axes, **blocks)
                                      - _reference(x, axes)).max())
    assert worst <= CLAIM
    x = _offset_input((64, 4, 32, 32), 1e-2, 1e7)
    unbounded = _cpu_statistics_summed_left_to_right(x, (0, 2, 3), block=x.size, shifted_block=x.size)
    assert np.abs(unbounded - _reference(x, (0, 2, 3))).max() > 1.0


def _reduce_lengths(fn, x) -> list[int]:
    """How many values each reduction of the compiled program adds per result, over reductions of ``x``'s size."""
    text = jax.jit(fn).lower(x).compile().as_text()
    lengths = []
    for block in text.split("\n\n"):
        shapes = dict(re.findall(r"%([\w.\-]+) = \w+\[([\d,]*)\]", block))
        for operand, dims in re.findall(r"= \w+\[[\d,]*\]\S* reduce\(%([\w.\-]+),.*?dimensions=\{([\d,]*)\}", block):
            shape = [int(d) for d in shapes[operand].split(",") if d]
            if math.prod(shape) == x.size:
                lengths.append(math.prod(shape[int(d)] for d in dims.split(",")))
    return lengths


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_every_full_size_sum_of_the_compiled_statistics_adds_at_most_a_block(layout):
    """The levels survive compilation: XLA merges consecutive reductions unless they are kept apart."""
    shape, axis = ((64, 8, 32, 32), 1) if layout == "NCHW" else ((64, 32, 32, 8), -1)
    lengths = _reduce_lengths(lambda v: _stats.moments(v, tuple(a for a in range(4) if a != axis % 4)),
                              jax.ShapeDtypeStruct(shape, jnp.float32))
    assert lengths and max(lengths) <= _stats.SUM_BLOCK, lengths  # 65536 values per channel in all
    assert _stats.sum_levels((64, 8, 32, 32), (0, 2, 3)) == [(3, 2), (0,)]
    assert _stats.sum_levels((64, 8, 32, 32), (0, 2, 3), _stats.SHIFTED_SUM_BLOCK) == [(3,), (2,), (0,)]
    assert _stats.sum_levels((4, 5000), (1,)) == [(1,)]  # an axis longer than the block is its own level


def test_naive_formula_would_fail_here():
    """The test above can fail: E[x²] − E[x]² in float32 is far off at offset 1e4 (guards against a weak test)."""
    x = (np.random.default_rng(1).normal(size=(32, 64)) + 1e4).astype(np.float32)
    naive_var = np.mean(x * x, 0, dtype=np.float32) - np.mean(x, 0, dtype=np.float32) ** 2
    assert np.abs(naive_var - x.astype(np.float64).var(0)).max() > 0.5


def test_variance_is_never_negative_and_constant_channels_give_zero():
    x = jnp.full((16, 3, 4), 12345.678, jnp.float32)
    var = _stats.moments(x, (0, 2)).var
    assert float(var.min()) >= 0.0
    y, stats = jn.batch_norm_1d(x, *jn.batch_norm_init(3), train=True)
    assert np.all(np.asarray(y) == 0.0) and np.all(np.asarray(stats["running_var"]) == 0.9)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_large_values_stay_finite(dtype):
    x = jnp.asarray(np.linspace(-60000, 60000, 2 * 4 * 16).reshape(2, 4, 16), dtype)  # near float16's max 65504
    params, stats = jn.batch_norm_init(4)

    @jax.jit
    def every_norm(x):
        return jn.batch_norm_1d(x, params, stats, train=True), (
            jn.layer_norm(x, {}, 16), jn.group_norm(x, {}, 2), jn.rms_norm(x, {}, 16),
            jn.instance_norm_1d(x, {}, {}, train=True)[0])

    (y, new), others = every_norm(x)
    assert y.dtype == dtype and np.isfinite(np.asarray(y, np.float32)).all()
    assert new["running_var"].dtype == jnp.float32 and np.isfinite(np.asarray(new["running_var"])).all()
    for out in others:
        assert out.dtype == dtype and np.isfinite(np.asarray(out, np.float32)).all()


# README: "A NaN or Inf stays in its statistics group: the other groups' outputs change by at most 4e-6." They
# change at all because the whole batch then takes the shifted sums (the input has at least
# _stats._PLAIN_SUMS_MIN_SIZE elements, so that the CPU first tries the plain ones). Worst measured with jax 0.10.2
# over rows of 192, 512 and 2048 values and 4 seeds: 2.4e-6 (GroupNorm, InstanceNorm, LayerNorm), i.e. 10 ulps of
# the largest outputs (~3).
ISOLATION = 4e-6
LENGTH = 192


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_value_stays_in_its_group(bad):
    x = np.random.default_rng(2).normal(size=(8, 3, LENGTH)).astype(np.float32)
    assert x.size >= _stats._PLAIN_SUMS_MIN_SIZE
    x_bad = x.copy()
    x_bad[3, 1, 2] = bad
    params, stats = jn.batch_norm_init(3)
    families = {  # name: (function, the groups the bad value is not in)
        "batch_norm": (lambda v: jn.batch_norm_1d(v, params, stats, train=True), lambda a: a[:, [0, 2]]),
        "instance_norm": (lambda v: (jn.instance_norm_1d(v, {}, {}, train=True)[0],), _other_rows),
        "layer_norm": (lambda v: (jn.layer_norm(v, {}, LENGTH),), _other_rows),
        "group_norm": (lambda v: (jn.group_norm(v, {}, 3),), _other_rows),
        "rms_norm": (lambda v: (jn.rms_norm(v, {}, LENGTH),), _other_rows),
    }
    for name, (fn, others) in families.items():
        clean, dirty = fn(jnp.asarray(x)), fn(jnp.asarray(x_bad))
        got, want = others(np.asarray(dirty[0])), others(np.asarray(clean[0]))
        assert np.isfinite(got).all(), name
        assert np.abs(got - want).max() <= ISOLATION, (name, float(np.abs(got - want).max()))
        assert not np.isfinite(np.asarray(dirty[0])).all(), name  # the bad group is visibly bad, not "fixed"
    _, new = families["batch_norm"][0](jnp.asarray(x_bad))
    _, ref = families["batch_norm"][0](jnp.asarray(x))
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(np.asarray(new[key])[[0, 2]], np.asarray(ref[key])[[0, 2]], rtol=ISOLATION)


def _other_rows(a):
    """Every (sample, channel) row of an (8, 3, L) output but the one holding the bad value (sample 3, channel 1)."""
    return np.delete(a.reshape(24, LENGTH), 3 * 3 + 1, axis=0)


@pytest.mark.parametrize("offset, plain", [(0.0, True), (0.9, True), (1.1, False), (1e4, False)])
def test_cpu_statistics_take_the_plain_sums_only_when_well_conditioned(offset, plain):
    # Unit variance: the plain sums serve while mean² ≤ variance, i.e. |offset| ≤ 1.
    x = jnp.asarray(np.random.default_rng(4).normal(size=(64, 3, 32)).astype(np.float32) + offset)
    axes, n = (0, 2), 64 * 32
    hi, lo, var = jax.jit(lambda v: _stats._plain_or_shifted_moments(v, None, reduce_axes=axes, n=n))(x)
    mean = _stats._plain_moments(x, None, reduce_axes=axes, n=n)[0]
    expected = (_stats._plain_moments(x, None, reduce_axes=axes, n=n) if plain
                else _stats._shifted_by_mean(x, None, mean, reduce_axes=axes, n=n)[::2])
    np.testing.assert_allclose(np.asarray(hi), np.asarray(expected[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(var), np.asarray(expected[1]), rtol=1e-5)
    if plain:
        assert np.all(np.asarray(lo) == 0.0)  # the plain branch carries the mean unsplit
    if jax.default_backend() == "cpu":  # ... and stable_moments picks that CPU branch (other platforms always shift)
        np.testing.assert_allclose(np.asarray(_stats.moments(x, axes).var), np.asarray(var), rtol=1e-6)


def test_under_vmap_the_branch_is_chosen_once_for_the_whole_batch():
    # A batched predicate would turn lax.cond into a select that runs both statistics branches (~1.5x slower).
    ok = jnp.asarray([[True, True], [True, False]])
    assert np.asarray(jax.vmap(_stats._all_true)(ok)).tolist() == [False, False]
    assert bool(_stats._all_true(ok[0])) and not bool(_stats._all_true(ok[1]))
    # Mixed batch: example 1 is ill-conditioned, so all examples take the shifted sums, and all stay accurate.
    x = (np.random.default_rng(5).normal(size=(3, 16, 256)) + np.array([0.0, 1e4, 0.5])[:, None, None]).astype(np.float32)
    y = jax.jit(jax.vmap(lambda xi: jn.layer_norm(xi, {}, 256)))(jnp.asarray(x))
    assert np.abs(np.asarray(y) - _reference(x, (2,))).max() <= 1e-4
    grads = jax.jit(jax.vmap(jax.grad(lambda xi: jn.layer_norm(xi, {}, 256)[0, 0])))(jnp.asarray(x[[0, 2]]))
    assert np.isfinite(np.asarray(grads)).all()


def _conditionals(fn, x) -> int:
    return str(jax.make_jaxpr(fn)(x)).count("cond[")


@pytest.mark.parametrize("norm", ["batch_norm", "layer_norm"])
def test_only_inputs_of_the_minimum_size_carry_the_plain_or_shifted_conditional(norm):
    # Below _PLAIN_SUMS_MIN_SIZE elements the program holds only the platform choice (the CPU's two passes or the
    # other platforms' shifted sums); at that size and above also the CPU's plain-or-shifted choice.
    fn = {"batch_norm": lambda v: jn.batch_norm(v, {}, {}, train=True)[0],
          "layer_norm": lambda v: jn.layer_norm(v, {}, v.shape[-1])}[norm]
    size = _stats._PLAIN_SUMS_MIN_SIZE
    small, large = jnp.ones((size // 64 - 1, 4, 16), jnp.float32), jnp.ones((size // 64, 4, 16), jnp.float32)
    assert small.size < size <= large.size
    assert _conditionals(fn, small) == 1
    assert _conditionals(fn, large) == 2
