r"""The one statistics core: every normalization in jaxnorm calls these functions.

A normalization layer is a *spec of axes*: which axes of ``x`` are reduced to form the statistics (``reduce_axes``)
and along which axes the affine parameters live. Everything numerical happens here:

* :func:`moments` — mean and *biased* variance over ``reduce_axes``, stable (shifted one-pass), accumulated in at
  least float32, over the valid elements of an optional ``mask``, optionally combined across a named mapped axis
  (synchronized statistics, weighted by each device's count, optionally within device groups).
* :func:`normalize` — ``y = x̂ · γ + β`` with ``x̂ = (x − μ) / √(σ² + ε)`` (or ``x / √(E[x²] + ε)`` uncentred, for
  RMSNorm) from batch statistics, with a ``custom_jvp`` whose tangent is linear in the tangents, so that forward
  mode works and reverse mode is JAX's transpose of it (see :func:`_normalize_jvp` for why that transpose moves no
  more bytes than a hand-written backward).
* :func:`normalize_with` — ``x̂`` from given (running) statistics; :func:`affine` — ``x̂ · γ + β``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Axes = tuple[int, ...]
Array = jax.Array
MaybeArray = jax.Array | None  # an absent term or factor (a parameter the layer lacks, a symbolic-zero tangent)
Groups = tuple[tuple[int, ...], ...]
Triple = tuple[jax.Array, jax.Array, jax.Array]  # (mean_hi, mean_lo, var)
Tree = TypeVar("Tree")


def compute_dtype(dtype: Any) -> np.dtype[Any]:
    """Statistics are accumulated in at least float32 (float16/bfloat16 → float32, float64 stays)."""
    return np.dtype(np.float32) if jnp.finfo(dtype).bits < 32 else np.dtype(dtype)


def group_size(shape: Sequence[int], reduce_axes: Axes) -> int:
    """Number of elements in one statistics group (static)."""
    return math.prod(shape[a] for a in reduce_axes)


def _distinct(tree: Tree, tag: int) -> Tree:
    """The same values behind an optimization barrier, so XLA treats expressions built on them as different.

    Used where several fused passes each recompute a cheap elementwise expression of ``x`` (``x − s``, ``x̂``):
    without it, common-subexpression elimination merges them into one materialized full-size tensor, which costs an
    extra write and read of ``x``'s size — the dominant cost of a memory-bound normalization. Each use site passes
    its own ``tag`` (a dummy operand of that size) so that XLA cannot merge the barriers themselves either.
    """
    values, token = lax.optimization_barrier((tree, jnp.zeros((tag,), jnp.int8)))
    # XLA drops barrier operands whose results are unused, after which equal barriers are merged again: make every
    # value depend on the token (a float ``0 * t`` is not folded: it would be NaN for an infinite ``t``).
    result: Tree = jax.tree.map(lambda v: v + 0 * token[0].astype(v.dtype), values)
    return result


def _valid(v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``v`` where the mask is True and 0 elsewhere (``where``, not a product: padding may hold NaN or inf)."""
    return v if mask is None else jnp.where(mask, v, jnp.zeros((), v.dtype))


class Moments(NamedTuple):
    """Statistics of each group, reduced axes kept as size-1 dims: ``mean = hi + lo`` (an unevaluated sum),
    the biased variance (or ``E[x²]`` uncentred) and the number of valid elements (a float array; a constant
    without a mask)."""

    hi: jax.Array
    lo: jax.Array
    var: jax.Array
    valid: jax.Array  # (not ``count``: a NamedTuple field may not shadow tuple.count)


# --------------------------------------------------------------------------------------------- local moments
# Every full-size float32 sum of the statistics adds at most this many values per partial sum and level, or one
# reduced axis's length where a single axis is longer (:func:`block_sum`), whatever order XLA chooses inside a level.
SUM_BLOCK = 1024
# ... and the shifted sums of an ill-conditioned batch on the CPU, in levels of at most 256: at offsets beyond
# ~1e4·σ float32 inputs are quantized to a few hundred steps per σ, so ``(x − μ_p)²`` takes few distinct values and
# the rounding errors of a long chain of them add up instead of cancelling.
SHIFTED_SUM_BLOCK = 256
# The plain one-pass variance E[x²] − E[x]² is used only where it is as accurate as the shifted one: with float32
# sums of relative error γ its error is ≲ γ (σ² + 2μ²), i.e. (1 + 2K)γ relative to σ² when μ² ≤ K σ². With K = 1
# it amplifies the sums' rounding at most 3-fold, as the shifted formula does (whose shift is within ≈ σ of μ).
_PLAIN_VARIANCE_MAX_MEAN_SQ_OVER_VAR = 1.0
# Below this many elements (as the function sees ``x``: per example under vmap, per device under shard_map) the CPU
# too takes the shifted sums directly: there the conditional costs more than the plain sums save, at run time (one
# kernel launch dominates) and in trace and compile time (it doubles the statistics' program).
_PLAIN_SUMS_MIN_SIZE = 4096


def sum_levels(shape: Sequence[int], reduce_axes: Axes, block: int = SUM_BLOCK) -> list[Axes]:
    """The reduced axes grouped into the levels of :func:`block_sum`, innermost (contiguous in memory) first.

    A level takes whole axes while the product of their lengths stays within ``block``: ``(N, C, H, W)`` reduced
    over ``(0, 2, 3)`` sums ``H·W`` values per partial sum first, then the ``N`` partials. Axes are never split (a
    reshape that splits an axis costs XLA:CPU a copy of the input), so an axis longer than ``block`` forms a level
    of its own. Length-1 axes need no level.
    """
    levels: list[Axes] = []
    current: list[int] = []
    filled = 1
    for a in sorted(reduce_axes, reverse=True):
        if shape[a] == 1:
            continue
        if current and filled * shape[a] > block:
            levels.append(tuple(current))
            current, filled = [], 1
        current.append(a)
        filled *= shape[a]
    return levels + [tuple(current)] if current else levels


def block_sum(v: jax.Array, reduce_axes: Axes, block: int = SUM_BLOCK) -> jax.Array:
    """``jnp.sum(v, reduce_axes, keepdims=True)`` in levels of at most ``block`` values per partial sum.

    Why: the error of a float32 sum depends on the order XLA adds in, which differs between CPUs, XLA versions and
    backends (one sequential chain over thousands of values on one, a tree on another). Summing bounded levels one
    after the other (:func:`sum_levels`) bounds every chain, so the accuracy holds by construction. The levels are
    separated by optimization barriers, since XLA otherwise merges consecutive reductions back into one; a level's
    partial sums are at most ``1/H·W``-th of ``v``'s size for images, so they add little traffic.
    """
    levels = sum_levels(v.shape, reduce_axes, block)
    if not levels:
        return v
    partial_sums = v
    for k, level in enumerate(levels):
        partial_sums = jnp.sum(partial_sums, axis=level, keepdims=True)
        if k < len(levels) - 1:
            partial_sums = lax.optimization_barrier(partial_sums)
    return partial_sums


def _plain_moments(x: Array, mask: MaybeArray, *, reduce_axes: Axes, n: Array | int) -> tuple[Array, Array]:
    """``(E[x], E[x²] − E[x]²)``: two plain sums with no broadcast operand (the fastest reductions on XLA:CPU).

    A mask enters as a 0/1 factor, not a ``where``: XLA:CPU fuses a product into the reduction but materializes a
    select (2N more traffic). A non-finite value in the padding makes these sums non-finite, which fails the
    conditioning test and so sends the batch to the shifted sums, which mask with ``where``.
    """
    x_m, x_m2 = x, x
    if mask is not None:  # distinct factors: one shared product would be materialized for the two sums
        x_m, x_m2 = x * mask.astype(x.dtype), x * _distinct(mask.astype(x.dtype), 3)
    mean = block_sum(x_m, reduce_axes) / n
    var = block_sum(jnp.square(x_m2), reduce_axes) / n - mean * mean
    return mean, var


def _fast_two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a + b`` as an unevaluated sum ``hi + lo`` with ``hi = fl(a + b)`` (exact when ``|a| ≥ |b|``, Dekker)."""
    hi = a + b
    return hi, (a - hi) + b


def _mask_count(mask: Array, shape: Sequence[int], reduce_axes: Axes, dtype: Any) -> Array:
    """Valid elements per group, summed on the mask's own (possibly broadcast) shape: a mask of shape (N, 1, 1)
    for an input (N, C, L) costs a reduction over N, not over N·C·L."""
    own = tuple(a for a in reduce_axes if mask.shape[a] > 1)
    repeats = math.prod(shape[a] for a in reduce_axes if mask.shape[a] == 1)
    count = jnp.sum(mask, axis=own, keepdims=True, dtype=dtype) * repeats
    return jnp.broadcast_to(count, tuple(1 if a in reduce_axes else n for a, n in enumerate(shape)))


def _first_valid(x: jax.Array, mask: jax.Array, reduce_axes: Axes) -> jax.Array:
    """``x`` at the first valid position (row-major over ``reduce_axes``) of each group; 0 where none is valid.

    The position is found on the mask's own shape — along an axis the mask broadcasts over, the first index is as
    valid as any — and ``x`` is read at one element per group (a gather).
    """
    stats_shape = tuple(1 if a in reduce_axes else n for a, n in enumerate(x.shape))
    own = tuple(a for a in reduce_axes if mask.shape[a] > 1)
    position = jnp.zeros(mask.shape, jnp.int32)
    for a in own:
        position = position * mask.shape[a] + lax.broadcasted_iota(jnp.int32, mask.shape, a)
    size = group_size(mask.shape, own)
    first = jnp.broadcast_to(jnp.min(jnp.where(mask, position, size), axis=own, keepdims=True), stats_shape)
    index, rest = {}, jnp.minimum(first, size - 1)
    for a in reversed(own):
        index[a], rest = rest % mask.shape[a], rest // mask.shape[a]
    indices = tuple(index.get(a, jnp.zeros(stats_shape, jnp.int32)) if a in reduce_axes
                    else lax.broadcasted_iota(jnp.int32, stats_shape, a) for a in range(x.ndim))
    return jnp.where(first < size, x[indices], jnp.zeros((), x.dtype))


def _shift(x: Array, reduce_axes: Axes, mask: MaybeArray) -> Array:
    """One valid sample of ``x`` per statistics group (the first one), kept as a broadcastable slice.

    Why: ``Var[x] = E[(x−s)²] − E[x−s]²`` holds for any constant ``s``; choosing ``s`` from the data puts it within a
    few standard deviations of the mean, so the subtraction in the one-pass formula no longer cancels catastrophically
    (the naive ``E[x²] − E[x]²`` loses every digit once |mean| / std ≳ 1e3 in float32).
    """
    if mask is not None:
        return lax.stop_gradient(_first_valid(x, mask, reduce_axes))
    index = tuple(slice(0, 1) if a in reduce_axes else slice(None) for a in range(x.ndim))
    return lax.stop_gradient(x[index])


def _shifted_moments(x: Array, mask: MaybeArray, *, reduce_axes: Axes, n: Array | int, shift: MaybeArray = None,
                     block: int = SUM_BLOCK) -> Triple:
    """``(mean_hi, mean_lo, var)``: the shifted one-pass moments, the mean as ``hi + lo``; by default shifted by
    the first valid sample of each group (:func:`_shift`)."""
    shift = _shift(x, reduce_axes, mask) if shift is None else lax.stop_gradient(shift)
    delta = block_sum(_valid(x - shift, mask), reduce_axes, block) / n
    # A distinct (barriered) copy of the shift keeps XLA from CSE-ing ``x − s`` into one materialized tensor that both
    # sums then read: each sum fuses its own subtraction and reads ``x`` directly.
    mean_d2 = block_sum(_valid(jnp.square(x - _distinct(shift, 1)), mask), reduce_axes, block) / n
    # The mean is the unevaluated sum shift + delta: (x − shift) − delta then keeps the deviations' precision, and
    # unlike a renormalized hi + lo it needs no operation between the statistics and the normalizing pass, so that
    # XLA:CPU can compute a row's statistics and its normalized output in one kernel (LayerNorm).
    return shift, delta, mean_d2 - delta * delta


@jax.custom_batching.custom_vmap
def _all_true(ok: jax.Array) -> jax.Array:
    """``jnp.all(ok)``; under ``vmap`` one decision for the whole batch (an unbatched predicate).

    Why: a ``lax.cond`` whose predicate is batched becomes a ``select`` that runs *both* branches; with one
    predicate for all mapped examples it stays a branch. Either branch is correct for every example.
    """
    return jnp.all(ok)


@_all_true.def_vmap
def _all_true_vmap(axis_size: int, in_batched: list[bool], ok: Array) -> tuple[Array, bool]:
    return jnp.all(ok), False


def _shifted_by_mean(x: Array, mask: MaybeArray, mean: Array, *, reduce_axes: Axes, n: Array | int) -> Triple:
    """The shifted moments with the plain mean ``mean`` as the shift: a two-pass variance with its correction term.

    It amplifies the sums' rounding by ``1 + 3(μ − μ_p)²/σ²``, where ``|μ − μ_p| ≲ γ|μ|`` for sums of relative error
    ``γ``: ≈ 1 up to ``|μ|/σ ≈ 1e5``. Beyond, float32 inputs are quantized to steps of ``≥ u·|μ|``, so ``x − μ_p``
    takes few distinct values, whose sums are nearly exact in blocks of :data:`SHIFTED_SUM_BLOCK`. A group with a
    non-finite value keeps non-finite statistics; the other groups are unaffected.
    """
    # With a mask, the plain sums of :func:`_plain_moments` are non-finite where the *padding* holds a NaN or Inf:
    # there the first valid sample is the shift. Without, a non-finite mean is the group's own.
    shift = mean if mask is None else jnp.where(jnp.isfinite(mean), mean, _shift(x, reduce_axes, mask))
    return _shifted_moments(x, mask, reduce_axes=reduce_axes, n=n, shift=shift, block=SHIFTED_SUM_BLOCK)


def _plain_or_shifted_moments(x: Array, mask: MaybeArray, *, reduce_axes: Axes, n: Array | int) -> Triple:
    """The plain moments when every group is well conditioned (``μ² ≤ σ²``), else those shifted by the plain mean.

    Why: on XLA:CPU a reduction whose operand subtracts a broadcast shift runs ~1.8× slower than a plain ``Σx``,
    ``Σx²`` pass, and typical activations (centred, or post-ReLU with ``μ²/σ² ≈ 0.5``) are well conditioned. An
    ill-conditioned batch (large offsets, constant or non-finite groups) pays for the shifted sums as well
    (:func:`_shifted_by_mean`).
    """
    mean, var = _plain_moments(x, mask, reduce_axes=reduce_axes, n=n)
    mean_sq, var_c = lax.stop_gradient((mean * mean, var))
    well_conditioned = _all_true(mean_sq <= _PLAIN_VARIANCE_MAX_MEAN_SQ_OVER_VAR * var_c)
    chosen: Triple = lax.cond(well_conditioned, lambda: (mean, jnp.zeros_like(mean), var),
                              lambda: _shifted_by_mean(x, mask, mean, reduce_axes=reduce_axes, n=n))
    return chosen


def _two_pass_moments(x: Array, mask: MaybeArray, *, reduce_axes: Axes, n: Array | int) -> Triple:
    """The plain mean, then the moments shifted by it: small inputs on the CPU, where one kernel more costs less
    than the plain-or-shifted conditional (a few microseconds) and the first sample's shift would amplify rounding by
    up to ``1 + 3z²`` for a sample ``z`` standard deviations from the mean."""
    mean = lax.stop_gradient(block_sum(_valid(x, mask), reduce_axes) / n)
    return _shifted_by_mean(x, mask, mean, reduce_axes=reduce_axes, n=n)


def local_moments(x: jax.Array, reduce_axes: Axes, mask: jax.Array | None = None, *, center: bool = True) -> Moments:
    """Moments of one device's ``x`` (already in the compute dtype) over ``reduce_axes``; see :func:`moments`."""
    n: Array | int
    if mask is None:
        n = group_size(x.shape, reduce_axes)
        count = jnp.asarray(n, x.dtype)
    else:
        count = _mask_count(mask, x.shape, reduce_axes, x.dtype)
        n = jnp.maximum(count, 1)  # a group without valid elements gets mean 0, variance 0
    if not center:
        mean_square = block_sum(_valid(jnp.square(x), mask), reduce_axes) / n
        zero = jnp.zeros_like(mean_square)
        return Moments(zero, zero, mean_square, count)
    cpu = _two_pass_moments if x.size < _PLAIN_SUMS_MIN_SIZE else _plain_or_shifted_moments
    hi, lo, var = lax.platform_dependent(x, mask, cpu=partial(cpu, reduce_axes=reduce_axes, n=n),
                                         default=partial(_shifted_moments, reduce_axes=reduce_axes, n=n))
    return Moments(hi, lo, jnp.maximum(var, 0.0), count)


# ------------------------------------------------------------------------------------------ across devices
def _combine(local: Moments, axis_name: Hashable, groups: Groups | None) -> Moments:
    r"""Moments of the union of every device's data (or of its device group's), from each device's moments.

    All-gathers ``(hiᵢ, loᵢ, σᵢ², nᵢ)`` in ONE collective and combines them with Chan's parallel formula weighted by
    the counts, relative to the first device that has data (so every replica gets bit-identical statistics and the
    shift is a *valid* mean):

    .. math::
        n = \sum n_i,\quad \delta = \tfrac{1}{n}\sum n_i (\mu_i - s),\quad
        \sigma^2 = \tfrac{1}{n}\sum n_i\big(\sigma_i^2 + (\mu_i - s - \delta)^2\big),\quad \mu = s + \delta

    A ``psum`` of ``Σx`` and ``Σx²`` would reintroduce the cancellation the shift removed. Groups (``[[0, 1], [2,
    3]]``) weigh the devices outside one's own group by 0, so they need no grouped collective.
    """
    devices = lax.axis_size(axis_name)
    me = lax.axis_index(axis_name)
    count = jnp.broadcast_to(jnp.asarray(local.valid, local.var.dtype), local.var.shape)
    rows = jnp.stack([local.hi, local.lo, local.var, count])
    one_hot = (jnp.arange(devices, dtype=me.dtype) == me).reshape((devices,) + (1,) * rows.ndim)
    # A psum's result is replicated (the same value and, under shard_map, the same "invariant" type on every
    # device), which an all_gather's is not.
    hi, lo, var, n = jnp.moveaxis(lax.psum(jnp.where(one_hot, rows[None], 0.0), axis_name), 1, 0)
    if groups is not None:
        if sorted(d for g in groups for d in g) != list(range(devices)):
            raise ValueError(f"axis_index_groups must partition the {devices} devices of axis {axis_name!r}, got "
                             f"{groups}")
        group_of = jnp.asarray([next(k for k, g in enumerate(groups) if d in g) for d in range(devices)], me.dtype)
        same = (group_of == group_of[me]).reshape((devices,) + (1,) * local.var.ndim)
        n = jnp.where(same, n, 0.0)
    has = n > 0
    first = has & (jnp.cumsum(has, axis=0) == 1)
    shift = lax.stop_gradient(jnp.sum(jnp.where(first, hi, 0.0), axis=0, keepdims=True))
    means = jnp.where(has, (hi - shift) + lo, 0.0)  # (hi_j − s) is exact for nearby means (Sterbenz)
    total = jnp.sum(n, axis=0, keepdims=True)
    safe = jnp.maximum(total, 1.0)
    delta = jnp.sum(n * means, axis=0, keepdims=True) / safe
    var = jnp.sum(n * (var + jnp.square(means - delta)), axis=0) / safe[0]
    shift, delta, total = shift[0], delta[0], total[0]
    return Moments(*_fast_two_sum(shift, delta), var, total)


def moments(x: jax.Array, reduce_axes: Axes, *, mask: jax.Array | None = None, axis_name: Hashable | None = None,
            groups: tuple[tuple[int, ...], ...] | None = None, center: bool = True) -> Moments:
    r"""Stable moments of ``x`` over ``reduce_axes`` as :class:`Moments` ``(mean_hi, mean_lo, var, count)``.

    .. math::
        s = x_{\text{first valid}},\quad d = x - s,\quad
        \delta = \tfrac{1}{n}\textstyle\sum d,\quad
        \sigma^2 = \max\!\big(0,\ \tfrac{1}{n}\sum d^2 - \delta^2\big),\quad
        \mu = s + \delta = \mu_{hi} + \mu_{lo}

    Both sums are taken in one pass over ``x`` in at least float32 (kept dims), over the elements where ``mask`` is
    True. The mean is returned as an unevaluated sum ``hi + lo`` because rounding ``μ`` itself costs up to half an ulp
    of ``|μ|`` — at offset 1e5 that is 4e-3, 40 % of a 1e-2 standard deviation — whereas ``(x − hi) − lo`` is exact to
    float32 rounding of the deviation (``x − hi`` is exact for ``x`` near the mean, Sterbenz).

    On the CPU the plain sums ``Σx``, ``Σx²`` (``s = 0``, ``lo = 0``) are taken first and kept when every group has
    ``μ² ≤ 4σ²``, where they are as accurate as the shifted ones and faster there (:func:`_plain_or_shifted_moments`);
    other platforms fuse the shift for free and always use it. ``center=False`` gives ``E[x²]`` (RMSNorm).

    With ``axis_name`` the statistics are those of every device's data together (:func:`_combine`); ``count`` is then
    the global number of valid elements per group.
    """
    x = x.astype(compute_dtype(x.dtype))
    local = local_moments(x, reduce_axes, mask, center=center)
    return local if axis_name is None else _combine(local, axis_name, groups)


# ------------------------------------------------------------------------------------------------ normalize
class Spec(NamedTuple):
    """What a normalization reduces and how (static; hashable)."""

    reduce_axes: Axes
    eps: float
    center: bool = True  # False: RMSNorm, x / √(E[x²] + ε)
    axis_name: Hashable | None = None
    groups: tuple[tuple[int, ...], ...] | None = None


class Renorm(NamedTuple):
    """Batch Renormalization's inputs (Ioffe 2017): running statistics (stats-shaped) and the clips (arrays)."""

    running_mean: jax.Array
    running_var: jax.Array
    r_max: jax.Array
    d_max: jax.Array


def _renorm_correction(st: Moments, inv_std: Array, renorm: Renorm | None, eps: float) -> tuple[MaybeArray, MaybeArray]:
    r"""``(r, d)`` with ``x̂·r + d`` the renormalized output, both held constant (``stop_gradient``); None without.

    .. math:: r = \mathrm{clip}\big(\sigma_B/\sigma,\ 1/r_{max},\ r_{max}\big),\quad
              d = \mathrm{clip}\big((\mu_B - \mu)/\sigma,\ -d_{max},\ d_{max}\big),\quad \sigma = \sqrt{v + \varepsilon}
    """
    if renorm is None:
        return None, None
    dtype = inv_std.dtype
    running_mean, running_var, r_max, d_max = (jnp.asarray(v).astype(dtype) for v in renorm)
    inv_running = lax.rsqrt(running_var + eps)
    r = jnp.clip(inv_running / inv_std, 1.0 / r_max, r_max)
    d = jnp.clip(((st.hi - running_mean) + st.lo) * inv_running, -d_max, d_max)
    return lax.stop_gradient(r), lax.stop_gradient(d)


def _add(*terms: MaybeArray) -> MaybeArray:
    """The sum of the terms that are not None (None when all are)."""
    present = [t for t in terms if t is not None]
    return None if not present else present[0] if len(present) == 1 else sum(present[1:], present[0])


def _mul(*factors: MaybeArray) -> MaybeArray:
    """The product of the factors that are not None — None stands for a factor of 1 (None when all are)."""
    present = [f for f in factors if f is not None]
    return None if not present else present[0] if len(present) == 1 else math.prod(present[1:], start=present[0])


def _both(a: MaybeArray, b: MaybeArray) -> MaybeArray:
    """``a · b``, or None (an absent term) when either is None."""
    return None if a is None or b is None else a * b


def _minor_expanded(spec: Spec, x: Array, stats: Triple, weight: MaybeArray, bias: MaybeArray, r: MaybeArray
                    ) -> Triple:
    """``stats`` broadcast along the last axis of ``x`` when that axis is reduced but the parameters vary along it
    (GroupNorm channels-last: the channels of a group), as small arrays of their own.

    Why: a full-size kernel that broadcasts group statistics along the minor axis runs slowly on XLA:CPU (it cannot
    vectorize along a broadcast innermost dimension); broadcast per channel, the statistics vary along the minor
    axis and the kernel broadcasts them along the leading axes only. GroupNorm NHWC forward+backward took 0.54x
    the time in a paired measurement; the traffic is unchanged. The barrier keeps XLA from folding the expansion
    into the full-size broadcast again.
    """
    minor = x.ndim - 1
    shared = _shared_axes(spec, x, weight, bias, r)
    if not shared or minor not in spec.reduce_axes or minor in shared:
        return stats
    hi, lo, inv_std = (jnp.broadcast_to(v, v.shape[:-1] + x.shape[-1:]) for v in stats)
    return _distinct((hi, lo, inv_std), 11)


def _x_hat(x: Array, hi: Array, lo: Array, inv_std: Array, center: bool) -> Array:
    return ((x - hi) - lo) * inv_std if center else x * inv_std


def _forward(spec: Spec, x: Array, weight: MaybeArray, bias: MaybeArray, mask: MaybeArray, renorm: Renorm | None
             ) -> tuple[tuple[Array, Array, Array, Array], tuple[Any, ...]]:
    """Primal outputs ``(y, mean_hi, var, count)`` and what the tangent rule needs."""
    x = x.astype(compute_dtype(x.dtype))
    weight, bias = (None if p is None else p.astype(x.dtype) for p in (weight, bias))
    st = moments(x, spec.reduce_axes, mask=mask, axis_name=spec.axis_name, groups=spec.groups, center=spec.center)
    inv_std = lax.rsqrt(st.var + spec.eps)
    r, d = _renorm_correction(st, inv_std, renorm, spec.eps)
    scale, shift = _mul(weight, r), _add(bias, None if d is None else _mul(weight, d))  # y = x̂·scale + shift
    hi, lo, i = _minor_expanded(spec, x, (st.hi, st.lo, inv_std), weight, bias, r)
    y = _x_hat(x, hi, lo, i, spec.center)
    y = y if scale is None else y * scale
    y = y if shift is None else y + shift
    return (_valid(y, mask), st.hi + st.lo, st.var, st.valid), (x, st, inv_std, scale, r, d)


def normalize(x: jax.Array, weight: jax.Array | None, bias: jax.Array | None, spec: Spec, *,
              mask: jax.Array | None = None, renorm: Renorm | None = None) -> tuple[Array, Array, Array, Array]:
    r"""Normalize with batch statistics over ``spec.reduce_axes`` and apply the affine map.

    .. math::
        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \qquad y = \hat x\,\gamma + \beta

    (``x̂ = x / √(E[x²] + ε)`` with ``spec.center=False``; ``y = (x̂·r + d)·γ + β`` with ``renorm``.)
    ``weight``/``bias`` (or None) are already shaped to broadcast against ``x``. Returns ``(y, μ, σ², count)``: ``y`` in the compute dtype
    (≥ float32) and 0 where ``mask`` is False; the statistics with the reduced axes kept as size-1 dims.

    Without ``axis_name`` the derivatives are :func:`_normalize_jvp`'s. With ``axis_name`` (statistics over a named
    mapped axis) the forward is differentiated by autodiff through the collective instead, in both modes.
    """
    if spec.axis_name is None:
        return _normalize_local(spec, x, weight, bias, mask, renorm)
    return _forward(spec, x, weight, bias, mask, renorm)[0]


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _normalize_local(spec: Spec, x: Array, weight: MaybeArray, bias: MaybeArray, mask: MaybeArray,
                     renorm: Renorm | None) -> tuple[Array, Array, Array, Array]:
    """:func:`normalize` on one device, with the linear tangent rule :func:`_normalize_jvp`."""
    return _forward(spec, x, weight, bias, mask, renorm)[0]


def _tangent_or_none(t: Any, dtype: Any) -> MaybeArray:
    return None if t is None or isinstance(t, jax.custom_derivatives.SymbolicZero) else t.astype(dtype)


def _shared_axes(spec: Spec, x: Array, *small: MaybeArray) -> Axes:
    """Reduced axes along which neither the parameters nor the renorm factors vary (BN: all; IN, GN: spatial)."""
    return tuple(a for a in spec.reduce_axes
                 if x.shape[a] != 1 and all(s is None or jnp.shape(s)[a] == 1 for s in small))


def _normalize_jvp(spec: Spec, primals: tuple[Any, ...], tangents: tuple[Any, ...]
                   ) -> tuple[tuple[Array, Array, Array, Array], tuple[Array, Array, Array, Array]]:
    r"""The tangent of :func:`normalize`, written so that JAX's transpose of it is the classic closed-form backward.

    With ``u = ẋ`` (0 off the mask), ``t₁ = Σ u``, ``t₂ = Σ u·x̂`` over the reduced axes, ``a = γ·r`` the scale:

    .. math::
        \dot y = a\,i\,u \;+\; \underbrace{\big(\dot\beta + \dot\gamma\,d - a\,i\,t_1/n\big)}_{c_1}
              \;+\; \hat x\,\underbrace{\big(\dot\gamma\,r - a\,i\,t_2/n\big)}_{c_2},\qquad
        \dot\mu = t_1/n,\quad \dot{\sigma^2} = 2\,t_2/(n\,i)

    Where ``c₁``, ``c₂`` are constant along some reduced axes (BN: all of them; IN, GN: the spatial ones), the
    transpose needs only two full-size sums over those axes, ``Σ g`` and ``Σ g·x̂``, and one map for ``dx`` — the
    same three passes as a hand-written backward; every other sum runs on their small results. LayerNorm and
    RMSNorm, whose parameters vary along the reduced axes, take the unfactored form (four full-size sums). Each
    full-size use of ``x̂`` is built from its own barriered copy of the statistics (:func:`_distinct`) so that XLA
    recomputes it inside the pass that needs it instead of writing it out. Symbolic-zero tangents (a parameter not
    differentiated, ``x`` held fixed) skip their terms entirely.
    """
    x, weight, bias, mask, renorm = primals
    outputs, (x32, st, inv_std, scale, r, d) = _forward(spec, x, weight, bias, mask, renorm)
    u, dw, db = (_tangent_or_none(t, x32.dtype) for t in tangents[:3])
    n = jnp.maximum(st.valid, 1) if mask is not None else st.valid

    shared = _shared_axes(spec, x32, weight, bias, r)
    expanded = _minor_expanded(spec, x32, (st.hi, st.lo, inv_std), weight, bias, r)

    def x_hat(tag: int) -> Array:  # a full-size x̂ recomputed by the one pass that uses it
        hi, lo, i = _distinct(expanded, tag)
        return _valid(_x_hat(x32, hi, lo, i, spec.center), mask)

    u = None if u is None else _valid(u, mask)
    t1 = None if u is None or not spec.center else jnp.sum(u, axis=spec.reduce_axes, keepdims=True)
    t2 = None if u is None else jnp.sum(u * x_hat(3), axis=spec.reduce_axes, keepdims=True)
    terms = (x_hat, u, t1, t2, n, scale, inv_std, dw, db, r, d)
    if shared:
        dy = _factored_tangent(*terms, mask)
    else:
        dy = _unfactored_tangent(*terms)
        dy = None if dy is None else _valid(dy, mask)
    y, mean, var, count = outputs
    zero = jnp.zeros_like
    dy = zero(y) if dy is None else jnp.broadcast_to(dy, y.shape)
    d_mean = zero(mean) if t1 is None else t1 / n
    d_var = zero(var) if t2 is None else 2.0 * t2 / (n * inv_std)
    return outputs, (dy, d_mean, d_var, zero(count))


def _factored_tangent(x_hat: Callable[[int], Array], u: MaybeArray, t1: MaybeArray, t2: MaybeArray, n: Array,
                      scale: MaybeArray, inv_std: Array, dw: MaybeArray, db: MaybeArray, r: MaybeArray, d: MaybeArray,
                      mask: MaybeArray) -> MaybeArray:
    """``a·i·u + c₁ + x̂·c₂`` with ``c₁, c₂`` constant along the shared axes (BN, IN, GN), 0 off the mask.

    The mask enters as a 0/1 factor of ``c₁`` (``u`` and ``x̂`` are already 0 there), not as a final ``where``: the
    transpose then reduces ``g·m``, which XLA:CPU fuses into the reduction, instead of a materialized select.
    """
    a_i = inv_std if scale is None else scale * inv_std
    c1 = _add(db, _both(dw, d), None if t1 is None else -a_i * t1 / n)
    c2 = _add(_mul(dw, r), None if t2 is None else -a_i * t2 / n)
    if c1 is not None and mask is not None:
        c1 = c1 * mask.astype(c1.dtype)
    return _add(None if u is None else a_i * u, c1, None if c2 is None else x_hat(4) * c2)


def _unfactored_tangent(x_hat: Callable[[int], Array], u: MaybeArray, t1: MaybeArray, t2: MaybeArray, n: Array,
                        scale: MaybeArray, inv_std: Array, dw: MaybeArray, db: MaybeArray, r: MaybeArray,
                        d: MaybeArray) -> MaybeArray:
    """LayerNorm / RMSNorm, whose parameters vary along the reduced axes: every term full-size, each with its own
    barriered copy of the small factors (four full-size sums in the transpose)."""

    def a_i(tag: int) -> Array:
        if scale is None:
            return _distinct(inv_std, tag)
        s, i = _distinct((scale, inv_std), tag)
        return s * i

    return _add(None if u is None else a_i(5) * u, None if t1 is None else -a_i(6) * t1 / n,
                None if t2 is None else -x_hat(7) * a_i(8) * t2 / n,
                None if dw is None else x_hat(9) * (dw if r is None else dw * r), db, _both(dw, d))


_normalize_local.defjvp(_normalize_jvp, symbolic_zeros=True)


# ------------------------------------------------------------------------------------------ other helpers
def normalize_with(x: jax.Array, mean: jax.Array, var: jax.Array, eps: float) -> jax.Array:
    """``(x − mean) / √(var + ε)`` with given (e.g. running) statistics, in the compute dtype."""
    x = x.astype(compute_dtype(x.dtype))
    return (x - mean) * lax.rsqrt(var.astype(x.dtype) + eps)


def broadcast_params(params: Mapping[str, Array], shape: Sequence[int]) -> tuple[MaybeArray, MaybeArray]:
    """``(weight, bias)`` from a params dict, reshaped to the broadcast ``shape``; None where absent."""
    weight, bias = (jnp.reshape(params[k], shape) if k in params else None for k in ("weight", "bias"))
    return weight, bias


def affine(x_hat: Array, params: Mapping[str, Array], shape: Sequence[int]) -> Array:
    """``x̂ · weight + bias`` with the parameters reshaped to the broadcast ``shape``; missing keys are skipped."""
    weight, bias = broadcast_params(params, shape)
    y = x_hat if weight is None else x_hat * weight.astype(x_hat.dtype)
    return y if bias is None else y + bias.astype(x_hat.dtype)
