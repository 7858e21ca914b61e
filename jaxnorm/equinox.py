"""Equinox modules with ``torch.nn`` names and hyperparameters that adapt jaxnorm's pure functions.

Equinox's conventions hold: a layer acts on ONE example laid out ``(C, ...)`` (no batch axis) and is vmapped over the
batch. Where PyTorch takes statistics over the batch (BatchNorm's, and InstanceNorm's running statistics), they come
from the named mapped axis ``axis_name`` (default ``"batch"``; a name or a tuple of names, e.g. ``("device",
"batch")`` for a vmap inside ``shard_map``), so that::

    model, state = eqx.nn.make_with_state(Model)(...)
    ys, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xs, state)

gives PyTorch's full-batch output and running statistics. Stateful layers (``BatchNorm*d``, ``BatchRenorm``,
``InstanceNorm*d`` with ``track_running_stats=True``) keep PyTorch's three buffers as one dict in ``eqx.nn.State``
under the layer's ``state_index`` and are called ``y, state = layer(x, state, *, key=None, inference=None)``; their
``inference`` attribute (set for a whole model by ``eqx.nn.inference_mode``) selects the running statistics, as
PyTorch's ``eval()``. The other layers are called ``y = layer(x)`` (or ``y, state = layer(x, state)``, the state
passed through, as ``eqx.nn.LayerNorm`` allows). Every call takes ``mask=`` (boolean, broadcastable to the example,
True = valid), and ``eqx.nn.Sequential`` calls each layer the right way.

How a per-example layer gets full-batch statistics: under ``vmap`` it all-gathers the examples (which costs nothing:
the gathered batch is one unmapped array), calls the pure function once on that batch and keeps its own row. Mesh
axes (``shard_map``, ``pmap``) are synchronized by the pure function's ``axis_name`` instead, so devices exchange
statistics, not activations. Outputs, running statistics and gradients are then those of the pure function on the
whole batch (``tests/library/test_equinox.py`` checks them against ``torch.nn``).

Bad input raises at trace time, naming the class: a stateful layer called where its axis is not bound, an input of
the wrong rank (e.g. a whole batch given to a per-example layer), a missing or foreign ``state``, a non-bool
``inference``; and whatever the pure function raises. Equinox is an optional dependency (``pip install
jaxnorm[equinox]``); ``import jaxnorm`` does not import this module.

Whole models: :func:`named_layers` and :func:`replace_layers` find and swap the layers by their PyTorch-style dotted
path, :func:`torch_to_equinox` / :func:`equinox_to_torch_state_dict` load and export PyTorch state dicts,
:func:`convert_sync_batch_norm` synchronizes the BatchNorm layers over devices, :func:`freeze_batch_norm` turns them
into :class:`FrozenBatchNorm`; :func:`jaxnorm.recalibrate_batch_stats` recomputes their running statistics.

Example:
  >>> import equinox as eqx, jax, jax.numpy as jnp
  >>> import jaxnorm.equinox as jeqx
  >>> model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([eqx.nn.Linear(3, 4, key=jax.random.key(0)),
  ...                                                           jeqx.BatchNorm1d(4), jeqx.LayerNorm(4)])
  >>> xs = jnp.arange(6.0).reshape(2, 3)                      # a batch of 2 examples (3,)
  >>> ys, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xs, state)
  >>> ys.shape, [path for path, _ in jeqx.named_layers(model)]
  ((2, 4), ['1', '2'])

References:
  Kidger & Garcia, Equinox: neural networks in JAX via callable PyTrees and filtered transformations, 2021,
  https://arxiv.org/abs/2111.00254; PyTorch's ``torch.nn`` normalization layers,
  https://pytorch.org/docs/stable/nn.html#normalization-layers
"""

from __future__ import annotations

import inspect
import math
import textwrap
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, ClassVar, cast, overload

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm import _checks
from jaxnorm._types import PARAM_KEYS, BatchStats, Params
from jaxnorm.batch_norm import batch_norm, batch_norm_1d, batch_norm_2d, batch_norm_3d, batch_norm_init
from jaxnorm.batch_renorm import batch_renorm
from jaxnorm.frozen import frozen_batch_norm
from jaxnorm.group_norm import _check_groups, group_norm, group_norm_init
from jaxnorm.instance_norm import instance_norm_1d, instance_norm_2d, instance_norm_3d, instance_norm_init
from jaxnorm.layer_norm import layer_norm, layer_norm_init, rms_norm, rms_norm_init

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "FrozenBatchNorm", "named_layers", "replace_layers",
           "freeze_batch_norm", "convert_sync_batch_norm", "torch_to_equinox", "equinox_to_torch_state_dict"]


class _NoState:
    """The default of ``state``: the layer was called ``layer(x)`` (as ``eqx.nn.Sequential`` calls a stateless one)."""

    def __repr__(self) -> str:
        return "<no state>"


_NO_STATE = _NoState()


# A layer's ``axis_name``: one name, a tuple (or list) of names, or None
_AxisNames = Hashable | Sequence[Hashable] | None
# ``function(batch, batch_mask, axis_name) -> (y, stats)`` of :func:`_over_batch`
_BatchFunction = Callable[[jax.Array, jax.Array | None, Hashable | None], tuple[jax.Array, BatchStats]]
# A layer's output: ``y``, or ``(y, state)`` when it was called with the state
_Output = jax.Array | tuple[jax.Array, eqx.nn.State]


def _names(axis_name: _AxisNames) -> tuple[Hashable, ...]:
    if axis_name is None:
        return ()
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def _as_axis_name(names: tuple[Hashable, ...]) -> Hashable | None:
    """The pure functions' ``axis_name`` for these names: None, one name, or a tuple."""
    return None if not names else names[0] if len(names) == 1 else names


def _mesh_axes() -> frozenset[Hashable]:
    """The mesh axes bound here (``shard_map``, ``pmap``): their statistics are exchanged between devices."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    return frozenset(getattr(get(), "manual_axes", ())) if get is not None else frozenset()


def _check_bound(name: str, axis_name: _AxisNames) -> tuple[Hashable, ...]:
    """The layer's axis names, each checked to be bound by an enclosing vmap/shard_map/pmap (static, at trace time)."""
    names = _names(axis_name)
    if not names:
        raise ValueError(f"{name}: expected an axis_name (the batch's named axis) for batch statistics, got "
                         "axis_name=None; an Equinox layer sees one example, so build it with axis_name='batch' and "
                         "call the model under jax.vmap(..., axis_name='batch')")
    for n in names:
        try:
            lax.axis_size(n)
        except NameError:
            raise ValueError(f"{name}: batch statistics come from the named axis {n!r}, which is not bound here: call "
                             f"the model under jax.vmap(..., axis_name={n!r}) (or eqx.filter_vmap, shard_map or pmap "
                             "with that name), or build the layer with the axis_name your vmap uses") from None
    return names


def _gather(name: str, a: jax.Array, names: tuple[Hashable, ...]) -> jax.Array:
    """The examples of every index of the named (vmap) axes stacked on a new axis 0, in ``axis_index`` order."""
    shape = a.shape
    try:
        for n in reversed(names):  # innermost first: (N_1, ..., N_k, *shape), row-major as axis_index(names)
            a = lax.all_gather(a, n)
    except AssertionError:  # jax 0.10: any collective over a vmap axis inside a shard_map that checks vma
        raise ValueError(f"{name}: JAX cannot run a collective over the vmap axis {names[-1]!r} inside a shard_map "
                         "that checks varying manual axes; pass check_vma=False to jax.shard_map") from None
    return a.reshape((-1, *shape))


def _set_state(name: str, state: eqx.nn.State, index: eqx.nn.StateIndex[Any], old: BatchStats,
               new: BatchStats) -> eqx.nn.State:
    """``state.set(index, new)``; where Equinox refuses statistics of the same shapes and dtypes, what differs is
    JAX's varying-manual-axes type (jax < 0.10 lets the collective through a checked shard_map, then the new
    statistics vary over the mesh axis and the old ones do not): that error names the fix."""
    try:
        return state.set(index, new)
    except ValueError as error:
        def signature(stats: BatchStats) -> list[tuple[Any, ...]]:
            return [(path, jnp.shape(a), jnp.result_type(a)) for path, a in jax.tree_util.tree_leaves_with_path(stats)]

        if signature(old) != signature(new):
            raise
        raise ValueError(f"{name}: the updated running statistics vary over a mesh axis the state does not (JAX "
                         "checks varying manual axes in this shard_map); pass check_vma=False to jax.shard_map") from error


def _over_batch(name: str, axis_name: _AxisNames, x: jax.Array, mask: jax.Array | None, function: _BatchFunction, *,
                sync_all: bool = False) -> tuple[jax.Array, BatchStats]:
    """``function(batch, batch_mask, axis_name) -> (y, stats)`` applied to the batch this example belongs to;
    returns this example's row of ``y`` and the statistics.

    The vmap axes among the layer's names are all-gathered: under ``vmap`` the gathered batch is one unmapped array,
    so the pure function runs once on it, at the cost of the plain function (its own synchronization over a vmap axis
    would hold an (N, N, C) array). The mesh axes (``shard_map``, ``pmap``) are left to the pure function's
    ``axis_name``: devices exchange statistics, not activations. ``sync_all``: the pure function synchronizes every
    name itself (``axis_index_groups`` partition the named axis as a whole).
    """
    names = _check_bound(name, axis_name)
    mesh = _mesh_axes()
    local = () if sync_all else tuple(n for n in names if n not in mesh)
    if not local:
        y, stats = function(x[None], None if mask is None else mask[None], _as_axis_name(names))
        return y[0], stats
    devices = tuple(n for n in names if n in mesh)
    batch_mask = None if mask is None else _gather(name, mask, local)
    y, stats = function(_gather(name, x, local), batch_mask, _as_axis_name(devices))
    return y[lax.axis_index(_as_axis_name(local))], stats


def _check_example(name: str, x: jax.Array, ranks: tuple[int, ...], layout: str) -> None:
    _checks.check_floating(name, x)
    if x.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected one example {layout} ({want}; Equinox layers act on one example, vmap "
                         f"them over the batch), got {x.ndim}-D input with shape {tuple(x.shape)}")


def _batched_axis(name: str, axis: int, x: jax.Array) -> int:
    """The channel axis of one floating example ``x`` (checked) as an axis of the batch of one the pure functions
    take."""
    _checks.check_floating(name, x)
    ndim = x.ndim
    if ndim < 1:
        raise ValueError(f"{name}: expected one example (C, *), got a 0-D input")
    if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise ValueError(f"{name}: expected a channel axis in [{-ndim}, {ndim}) for a {ndim}-D example, got {axis!r}")
    return axis + 1 if axis >= 0 else axis


def _batched_mask(name: str, mask: jax.Array | None, x: jax.Array) -> jax.Array | None:
    """The mask checked against one example and given its rank plus a leading batch axis of 1 (or None)."""
    mask = _checks.check_mask(name, mask, x)
    return None if mask is None else mask[None]


def _params(layer: eqx.Module) -> dict[str, jax.Array]:
    return {key: getattr(layer, key) for key in PARAM_KEYS if getattr(layer, key, None) is not None}


def _affine(params: Params, key: str, dtype: Any) -> jax.Array | None:
    return params[key].astype(dtype) if key in params else None


class _Stateful(eqx.nn.StatefulLayer):
    """Shared body of BatchNorm*/BatchRenorm/InstanceNorm*: PyTorch's parameters as ``weight``/``bias`` (None without
    ``affine``), its buffers as one dict in the ``eqx.nn.State`` under ``state_index`` (None without
    ``track_running_stats``). Subclasses set ``_function``, ``_init``, ``_ranks`` and ``_layout`` and implement
    ``_normalize``."""

    weight: jax.Array | None
    bias: jax.Array | None
    state_index: eqx.nn.StateIndex[BatchStats] | None
    inference: bool
    num_features: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    momentum: float | None = eqx.field(static=True)
    affine: bool = eqx.field(static=True)
    track_running_stats: bool = eqx.field(static=True)
    axis: int = eqx.field(static=True)
    axis_name: Hashable | tuple[Hashable, ...] | None = eqx.field(static=True)

    # Class variables, not fields, set per class: the pure function (batch_norm*, batch_renorm, instance_norm*, whose
    # signatures differ, hence the loose Callable) and its init, the ranks and layout of one example
    _function: ClassVar[Callable[..., tuple[jax.Array, BatchStats]]] = staticmethod(batch_norm)
    _init: ClassVar[Callable[..., tuple[Params, BatchStats]]] = staticmethod(batch_norm_init)
    _ranks: ClassVar[tuple[int, ...]] = ()
    _layout: ClassVar[str] = "(C, ...)"

    def _setup(self, num_features: int, *, eps: float, momentum: float | None, affine: bool,
               track_running_stats: bool, axis: int, axis_name: _AxisNames, inference: bool, dtype: Any) -> None:
        name = type(self).__name__
        _checks.check_num_features(name, num_features)
        _checks.check_momentum(name, momentum)
        if not isinstance(inference, bool):
            raise TypeError(f"{name}: expected inference to be a Python bool, got {type(inference).__name__}")
        params, stats = self._init(num_features, affine=affine, track_running_stats=track_running_stats)
        self.weight, self.bias = _affine(params, "weight", dtype), _affine(params, "bias", dtype)
        self.state_index = eqx.nn.StateIndex(stats) if stats else None
        self.inference = inference
        self.num_features, self.eps, self.momentum = int(num_features), eps, momentum
        self.affine, self.track_running_stats, self.axis = affine, track_running_stats, axis
        self.axis_name = tuple(axis_name) if isinstance(axis_name, list) else axis_name

    def is_stateful(self) -> bool:
        """Whether the layer keeps running statistics (``eqx.nn.Sequential`` then passes it the state)."""
        return self.state_index is not None

    def _read_state(self, state: object) -> BatchStats:
        """This layer's running statistics from ``state`` (``{}`` when it keeps none)."""
        name = type(self).__name__
        if self.state_index is None:
            return {}
        if isinstance(state, _NoState):  # _NO_STATE, its one instance
            raise TypeError(f"{name}: expected the model's eqx.nn.State (this layer keeps running statistics): call "
                            "it y, state = layer(x, state), with model, state = eqx.nn.make_with_state(Model)(...)")
        if not isinstance(state, eqx.nn.State):
            raise TypeError(f"{name}: expected state to be an eqx.nn.State, got {type(state).__name__}")
        return _layer_stats(name, None, self, state)

    # The two call forms, for type checkers: y = layer(x); y, state = layer(x, state).
    @overload
    def __call__(self, x: jax.Array, state: _NoState = ..., *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None) -> jax.Array: ...
    @overload
    def __call__(self, x: jax.Array, state: eqx.nn.State, *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None) -> tuple[jax.Array, eqx.nn.State]: ...
    def __call__(self, x: jax.Array, state: eqx.nn.State | _NoState = _NO_STATE, *, key: Any = None,
                 inference: bool | None = None, mask: jax.Array | None = None) -> _Output:
        """Normalize one example ``x``; in training mode the running statistics in ``state`` are updated.

        Args:
          x: one example, channels on ``axis`` (the layer's layout, e.g. ``(C, H, W)`` for 2d).
          state: the model's ``eqx.nn.State``; required when the layer keeps running statistics.
          key: ignored (Equinox's calling convention).
          inference: ``False``: batch statistics over the named axis, running statistics updated (PyTorch's
            ``train()``); ``True``: running statistics (``eval()``; batch statistics without running statistics).
            ``None``: the layer's ``inference`` attribute.
          mask: boolean, broadcastable to ``x``, True = valid (see :func:`jaxnorm.batch_norm`).

        Returns:
          ``(y, state)`` when a state was passed (updated in training mode), else ``y``; ``y`` has ``x``'s shape
          and dtype.

        Raises:
          TypeError: ``inference`` not a Python bool, no or a wrong ``state``.
          ValueError: the layout check, an unbound axis name, a state of another model; the pure function's errors.
        """
        del key
        return self._call(x, state, inference, mask, {})

    def _call(self, x: jax.Array, state: eqx.nn.State | _NoState, inference: bool | None, mask: jax.Array | None,
              options: dict[str, Any]) -> _Output:
        name = type(self).__name__
        inference = self.inference if inference is None else inference
        if not isinstance(inference, bool):
            raise TypeError(f"{name}: expected inference to be a Python bool (static: use eqx.filter_jit, which "
                            f"keeps bools static), got {type(inference).__name__}")
        _check_example(name, x, self._ranks, self._layout)
        stats = self._read_state(state)
        y, new_stats = self._normalize(x, stats, not inference, mask, **options)
        if isinstance(state, _NoState):
            return y
        if not inference and stats and self.state_index is not None:  # (stats are read only through an index)
            state = _set_state(name, state, self.state_index, stats, new_stats)
        return y, state

    def _normalize(self, x: jax.Array, stats: BatchStats, train: bool, mask: jax.Array | None,
                   **options: Any) -> tuple[jax.Array, BatchStats]:
        raise NotImplementedError


class _BatchNorm(_Stateful):
    r"""Batch normalization of one example with the statistics of the whole named axis:

    .. math:: y = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \varepsilon}}\,\gamma + \beta

    with :math:`\mu_B, \sigma_B^2` the mean and biased variance per channel over every example of the batch (the
    named axis) and the other axes; in training mode PyTorch's running update (unbiased variance with the global
    count, ``momentum`` weighing the new batch, None = cumulative average). Reference: Ioffe & Szegedy, 2015; see
    :func:`jaxnorm.batch_norm`. ``axis_index_groups``: statistics within groups of the axis' indices;
    ``virtual_batch_size``: Ghost BN over consecutive examples of the named (vmap) axis.
    """

    axis_index_groups: tuple[tuple[int, ...], ...] | None = eqx.field(static=True)
    virtual_batch_size: int | None = eqx.field(static=True)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, axis: int = 0,
                 axis_name: Hashable | Sequence[Hashable] | None = "batch",
                 axis_index_groups: Sequence[Sequence[int]] | None = None, virtual_batch_size: int | None = None,
                 inference: bool = False, dtype: Any = jnp.float32):
        self._setup(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats,
                    axis=axis, axis_name=axis_name, inference=inference, dtype=dtype)
        name = type(self).__name__
        self.axis_index_groups = _checks.check_axis_index_groups(name, axis_index_groups, axis_name)
        self.virtual_batch_size = _checks.check_virtual_batch_size(name, virtual_batch_size, virtual_batch_size or 1)

    def _options(self) -> dict[str, Any]:
        return {"virtual_batch_size": self.virtual_batch_size}

    def _normalize(self, x: jax.Array, stats: BatchStats, train: bool, mask: jax.Array | None,
                   **options: Any) -> tuple[jax.Array, BatchStats]:
        name = type(self).__name__
        axis = _batched_axis(name, self.axis, x)
        mask = _checks.check_mask(name, mask, x)
        if not (train or not stats):  # running statistics: nothing from the other examples
            y, _ = self._function(x[None], _params(self), stats, train=False, eps=self.eps, axis=axis,
                                  mask=None if mask is None else mask[None])
            return y[0], stats
        kwargs: dict[str, Any] = {"train": train, "momentum": self.momentum, "eps": self.eps, "axis": axis,
                                  **self._options(), **options}
        if self.axis_index_groups is not None:
            kwargs["axis_index_groups"] = self.axis_index_groups

        def function(batch: jax.Array, batch_mask: jax.Array | None,
                     axis_name: Hashable | None) -> tuple[jax.Array, BatchStats]:
            return self._function(batch, _params(self), stats, mask=batch_mask, axis_name=axis_name, **kwargs)

        return _over_batch(name, self.axis_name, x, mask, function, sync_all=self.axis_index_groups is not None)


def _document(cls: type[eqx.Module], example: str) -> None:
    """Give the per-rank class ``cls`` its one-line docstring, then its base class's (the math), then ``example``."""
    base = cls.__mro__[1]
    cls.__doc__ = f"{cls.__doc__}\n\n{inspect.cleandoc(base.__doc__ or '')}\n\n{textwrap.dedent(example)}"


_BN_EXAMPLE = """\
    >>> import equinox as eqx, jax, jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> bn, state = eqx.nn.make_with_state(jeqx.{name})(2)
    >>> xs = jnp.arange({size}, dtype=jnp.float32).reshape{shape} ** 2        # a batch of 2 examples
    >>> ys, state = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xs, state)
    >>> ys.shape, state.get(bn.state_index)["num_batches_tracked"]
    ({shape}, Array(1, dtype=int32))
    >>> y_eval, _ = eqx.nn.inference_mode(bn)(xs[0], state)          # running statistics, one example

    References:
      Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift, ICML 2015, https://arxiv.org/abs/1502.03167
"""


def _bn_example(name: str, spatial: tuple[int, ...]) -> str:
    shape = (2, 2, *spatial)
    return _BN_EXAMPLE.format(name=name, size=math.prod(shape), shape=shape)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d`` for one example (C,) or (C, L); calls :func:`jaxnorm.batch_norm_1d` on the batch."""

    _function = staticmethod(batch_norm_1d)
    _ranks = (1, 2)
    _layout = "(C,) or (C, L)"


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d`` for one example (C, H, W); calls :func:`jaxnorm.batch_norm_2d` on the batch."""

    _function = staticmethod(batch_norm_2d)
    _ranks = (3,)
    _layout = "(C, H, W)"


class BatchNorm3d(_BatchNorm):
    """``torch.nn.BatchNorm3d`` for one example (C, D, H, W); calls :func:`jaxnorm.batch_norm_3d` on the batch."""

    _function = staticmethod(batch_norm_3d)
    _ranks = (4,)
    _layout = "(C, D, H, W)"


_document(BatchNorm1d, _bn_example("BatchNorm1d", (3,)))
_document(BatchNorm2d, _bn_example("BatchNorm2d", (2, 2)))
_document(BatchNorm3d, _bn_example("BatchNorm3d", (1, 2, 2)))


class BatchRenorm(_BatchNorm):
    r"""Batch Renormalization (Ioffe, 2017) of one example ``(C, ...)``, statistics over the named axis:

    .. math:: y = \Big(\frac{x - \mu_B}{\sigma_B}\,r + d\Big)\gamma + \beta,\quad
              r = \mathrm{clip}(\sigma_B/\sigma,\ 1/r_{max},\ r_{max}),\quad
              d = \mathrm{clip}((\mu_B - \mu)/\sigma,\ -d_{max},\ d_{max})

    with :math:`\mu, \sigma` from the running statistics (required); see :func:`jaxnorm.batch_renorm`. ``r_max`` and
    ``d_max`` may be given per call (e.g. from :func:`jaxnorm.renorm_clip_schedule`), else the layer's.

    >>> import equinox as eqx, jax, jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> rn, state = eqx.nn.make_with_state(jeqx.BatchRenorm)(2, r_max=1.0, d_max=0.0)   # BatchNorm until relaxed
    >>> xs = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    >>> ys, state = jax.vmap(rn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xs, state)
    >>> ys.round(3)
    Array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)

    References:
      Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models, NeurIPS 2017,
      https://arxiv.org/abs/1702.03275
    """

    r_max: float = eqx.field(static=True)
    d_max: float = eqx.field(static=True)

    _function = staticmethod(batch_renorm)
    _ranks = (1, 2, 3, 4)
    _layout = "(C, ...)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 r_max: float = 3.0, d_max: float = 5.0, axis: int = 0,
                 axis_name: Hashable | Sequence[Hashable] | None = "batch",
                 axis_index_groups: Sequence[Sequence[int]] | None = None, inference: bool = False,
                 dtype: Any = jnp.float32):
        super().__init__(num_features, eps, momentum, affine, True, axis=axis, axis_name=axis_name,
                         axis_index_groups=axis_index_groups, inference=inference, dtype=dtype)
        self.r_max, self.d_max = r_max, d_max

    def _options(self) -> dict[str, Any]:
        return {}

    @overload
    def __call__(self, x: jax.Array, state: _NoState = ..., *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None, r_max: float | jax.Array | None = None,
                 d_max: float | jax.Array | None = None) -> jax.Array: ...
    @overload
    def __call__(self, x: jax.Array, state: eqx.nn.State, *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None, r_max: float | jax.Array | None = None,
                 d_max: float | jax.Array | None = None) -> tuple[jax.Array, eqx.nn.State]: ...
    def __call__(self, x: jax.Array, state: eqx.nn.State | _NoState = _NO_STATE, *, key: Any = None,
                 inference: bool | None = None, mask: jax.Array | None = None, r_max: float | jax.Array | None = None,
                 d_max: float | jax.Array | None = None) -> _Output:
        """As the BatchNorm layers' ``__call__``; ``r_max``/``d_max`` (Python numbers or traced scalars) override
        the layer's clips for this call."""
        del key
        clips = {"r_max": self.r_max if r_max is None else r_max, "d_max": self.d_max if d_max is None else d_max}
        return self._call(x, state, inference, mask, clips)


class _InstanceNorm(_Stateful):
    r"""Instance normalization of one example: statistics per channel over its own spatial axes,

    .. math:: y_{c\cdot} = \frac{x_{c\cdot} - \mu_c}{\sqrt{\sigma^2_c + \varepsilon}}\,\gamma_c + \beta_c

    (Ulyanov et al., 2016; see :func:`jaxnorm.instance_norm`). PyTorch's defaults ``affine=False``,
    ``track_running_stats=False``: the layer is then stateless, ``y = layer(x)``. With running statistics, training
    averages the per-instance statistics over the named axis (``axis_name``), as PyTorch averages them over the batch.
    """

    _init = staticmethod(instance_norm_init)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, *, axis: int = 0,
                 axis_name: Hashable | Sequence[Hashable] | None = "batch", inference: bool = False,
                 dtype: Any = jnp.float32):
        self._setup(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats,
                    axis=axis, axis_name=axis_name, inference=inference, dtype=dtype)

    def _normalize(self, x: jax.Array, stats: BatchStats, train: bool, mask: jax.Array | None,
                   **options: Any) -> tuple[jax.Array, BatchStats]:
        name = type(self).__name__
        axis = _batched_axis(name, self.axis, x)
        mask = _checks.check_mask(name, mask, x)

        def function(batch: jax.Array, batch_mask: jax.Array | None,
                     axis_name: Hashable | None) -> tuple[jax.Array, BatchStats]:
            return self._function(batch, _params(self), stats, train=train, momentum=self.momentum, eps=self.eps,
                                  axis=axis, axis_name=axis_name, mask=batch_mask)

        if train and stats:  # the running statistics average the instances of the whole batch
            return _over_batch(name, self.axis_name, x, mask, function)
        y, _ = function(x[None], None if mask is None else mask[None], None)
        return y[0], stats


_IN_EXAMPLE = """\
    >>> import jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> x = jnp.arange({size}, dtype=jnp.float32).reshape{shape} ** 2   # one example, 2 channels
    >>> jeqx.{name}(2)(x).shape                                  # stateless by default: y = layer(x)
    {shape}

    References:
      Ulyanov, Vedaldi & Lempitsky, Instance Normalization: The Missing Ingredient for Fast Stylization, 2016,
      https://arxiv.org/abs/1607.08022
"""


def _in_example(name: str, spatial: tuple[int, ...]) -> str:
    shape = (2, *spatial)
    return _IN_EXAMPLE.format(name=name, size=math.prod(shape), shape=shape)


class InstanceNorm1d(_InstanceNorm):
    """``torch.nn.InstanceNorm1d`` for one example (C, L); calls :func:`jaxnorm.instance_norm_1d` on the batch."""

    _function = staticmethod(instance_norm_1d)
    _ranks = (2,)
    _layout = "(C, L)"


class InstanceNorm2d(_InstanceNorm):
    """``torch.nn.InstanceNorm2d`` for one example (C, H, W); calls :func:`jaxnorm.instance_norm_2d` on the batch."""

    _function = staticmethod(instance_norm_2d)
    _ranks = (3,)
    _layout = "(C, H, W)"


class InstanceNorm3d(_InstanceNorm):
    """``torch.nn.InstanceNorm3d`` for one example (C, D, H, W); calls :func:`jaxnorm.instance_norm_3d` on the batch."""

    _function = staticmethod(instance_norm_3d)
    _ranks = (4,)
    _layout = "(C, D, H, W)"


_document(InstanceNorm1d, _in_example("InstanceNorm1d", (3,)))
_document(InstanceNorm2d, _in_example("InstanceNorm2d", (2, 2)))
_document(InstanceNorm3d, _in_example("InstanceNorm3d", (1, 2, 2)))


class _Stateless(eqx.Module):
    """Shared call convention of LayerNorm/GroupNorm/RMSNorm: ``y = layer(x)``, or ``y, state = layer(x, state)``
    with the state passed through (as ``eqx.nn.LayerNorm``)."""

    @overload
    def __call__(self, x: jax.Array, state: _NoState = ..., *, key: Any = None,
                 mask: jax.Array | None = None) -> jax.Array: ...
    @overload
    def __call__(self, x: jax.Array, state: eqx.nn.State, *, key: Any = None,
                 mask: jax.Array | None = None) -> tuple[jax.Array, eqx.nn.State]: ...
    def __call__(self, x: jax.Array, state: eqx.nn.State | _NoState = _NO_STATE, *, key: Any = None,
                 mask: jax.Array | None = None) -> _Output:
        """Normalize ``x`` (``mask``: boolean, broadcastable to ``x``, True = valid); ``key`` is ignored.

        Returns:
          ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was passed.
        """
        del key
        y = self._normalize(x, mask)
        return y if isinstance(state, _NoState) else (y, state)

    def _normalize(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        raise NotImplementedError


class LayerNorm(_Stateless):
    r"""``torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)`` over the trailing
    ``normalized_shape`` dims of ``x`` (leading dims, e.g. a sequence's positions, are normalized independently):

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \varepsilon}}\odot\gamma + \beta

    (Ba et al., 2016; see :func:`jaxnorm.layer_norm`.)

    >>> import jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> import numpy as np
    >>> np.asarray(jeqx.LayerNorm(3)(jnp.array([1.0, 2.0, 3.0]))).round(3)
    array([-1.225,  0.   ,  1.225], dtype=float32)

    References:
      Ba, Kiros & Hinton, Layer Normalization, 2016, https://arxiv.org/abs/1607.06450
    """

    weight: jax.Array | None
    bias: jax.Array | None
    normalized_shape: tuple[int, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    elementwise_affine: bool = eqx.field(static=True)

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype: Any = jnp.float32):
        self.normalized_shape = _checks.normalized_shape_tuple(type(self).__name__, normalized_shape)
        params = layer_norm_init(self.normalized_shape, elementwise_affine=elementwise_affine, bias=bias, dtype=dtype)
        self.weight, self.bias = params.get("weight"), params.get("bias")
        self.eps, self.elementwise_affine = eps, elementwise_affine

    def _normalize(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        return layer_norm(x, _params(self), self.normalized_shape, eps=self.eps, mask=mask)


class RMSNorm(_Stateless):
    r"""``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine)`` over the trailing dims:

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \varepsilon}}\odot\gamma

    (Zhang & Sennrich, 2019; ``eps=None`` is ``finfo(x.dtype).eps``; see :func:`jaxnorm.rms_norm`.)

    >>> import jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> import numpy as np
    >>> np.asarray(jeqx.RMSNorm(2)(jnp.array([3.0, 4.0]))).round(3)
    array([0.849, 1.131], dtype=float32)

    References:
      Zhang & Sennrich, Root Mean Square Layer Normalization, NeurIPS 2019, https://arxiv.org/abs/1910.07467
    """

    weight: jax.Array | None
    normalized_shape: tuple[int, ...] = eqx.field(static=True)
    eps: float | None = eqx.field(static=True)
    elementwise_affine: bool = eqx.field(static=True)

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, *, dtype: Any = jnp.float32):
        self.normalized_shape = _checks.normalized_shape_tuple(type(self).__name__, normalized_shape)
        self.weight = rms_norm_init(self.normalized_shape, elementwise_affine=elementwise_affine,
                                    dtype=dtype).get("weight")
        self.eps, self.elementwise_affine = eps, elementwise_affine

    def _normalize(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        return rms_norm(x, _params(self), self.normalized_shape, eps=self.eps, mask=mask)


class GroupNorm(_Stateless):
    r"""``torch.nn.GroupNorm(num_groups, num_channels, eps, affine)`` of one example ``(C, *)`` (``axis=-1``:
    channels last): statistics per group of ``C / G`` channels over those channels and every spatial position,

    .. math:: y_{g\cdot} = \frac{x_{g\cdot} - \mu_g}{\sqrt{\sigma^2_g + \varepsilon}}\,\gamma_c + \beta_c

    (Wu & He, 2018; see :func:`jaxnorm.group_norm`.)

    >>> import jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> import numpy as np
    >>> np.asarray(jeqx.GroupNorm(1, 2)(jnp.array([[1.0, 3.0], [5.0, 7.0]]))).round(3)
    array([[-1.342, -0.447],
           [ 0.447,  1.342]], dtype=float32)

    References:
      Wu & He, Group Normalization, ECCV 2018, https://arxiv.org/abs/1803.08494
    """

    weight: jax.Array | None
    bias: jax.Array | None
    num_groups: int = eqx.field(static=True)
    num_channels: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    affine: bool = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *, axis: int = 0,
                 dtype: Any = jnp.float32):
        _check_groups(type(self).__name__, num_groups, num_channels)
        params = group_norm_init(num_groups, num_channels, affine=affine, dtype=dtype)
        self.weight, self.bias = params.get("weight"), params.get("bias")
        self.num_groups, self.num_channels, self.eps, self.affine, self.axis = (
            int(num_groups), int(num_channels), eps, affine, axis)

    def _normalize(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        name = type(self).__name__
        axis = _batched_axis(name, self.axis, x)
        return group_norm(x[None], _params(self), self.num_groups, eps=self.eps, axis=axis,
                          mask=_batched_mask(name, mask, x))[0]


class FrozenBatchNorm(_Stateless):
    r"""torchvision's ``FrozenBatchNorm2d`` for one example ``(C, *)`` (``axis``: its channel axis, ``-1`` for
    channels last): the fixed affine map of :func:`jaxnorm.frozen_batch_norm`,

    .. math:: y = x\,s + t,\qquad s = \frac{\gamma}{\sqrt{v + \varepsilon}},\qquad t = \beta - \mu\,s

    with ``weight`` :math:`\gamma`, ``bias`` :math:`\beta`, ``running_mean`` :math:`\mu` and ``running_var`` :math:`v`
    (C,). :func:`freeze_batch_norm` makes it from a trained layer. Nothing of it changes: it keeps no state and the
    map is held constant, so its four arrays get zero gradients (they are arrays of the model, torchvision's buffers,
    so :func:`equinox_to_torch_state_dict` gives ``FrozenBatchNorm2d``'s keys; leave them out of an optimizer that
    decays weights, e.g. with ``optax.masked``). Called ``y = layer(x)`` (or ``y, state = layer(x, state)``, the state
    passed through); ``inference`` is accepted and ignored (one mode); ``mask``: 0 off the mask.

    >>> import jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> frozen = jeqx.FrozenBatchNorm(jnp.ones(2), jnp.zeros(2), jnp.array([1.0, 2.0]), jnp.ones(2), eps=0.0)
    >>> frozen(jnp.array([2.0, 2.0])).tolist()                   # one example (C,)
    [1.0, 0.0]

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html
    """

    weight: jax.Array
    bias: jax.Array
    running_mean: jax.Array
    running_var: jax.Array
    eps: float = eqx.field(static=True)
    axis: int = eqx.field(static=True)

    def __init__(self, weight: jax.Array, bias: jax.Array, running_mean: jax.Array, running_var: jax.Array, *,
                 eps: float = 1e-5, axis: int = 0):
        self.weight, self.bias = jnp.asarray(weight), jnp.asarray(bias)
        self.running_mean, self.running_var = jnp.asarray(running_mean), jnp.asarray(running_var)
        self.eps, self.axis = eps, axis

    @overload
    def __call__(self, x: jax.Array, state: _NoState = ..., *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None) -> jax.Array: ...
    @overload
    def __call__(self, x: jax.Array, state: eqx.nn.State, *, key: Any = None, inference: bool | None = None,
                 mask: jax.Array | None = None) -> tuple[jax.Array, eqx.nn.State]: ...
    def __call__(self, x: jax.Array, state: eqx.nn.State | _NoState = _NO_STATE, *, key: Any = None,
                 inference: bool | None = None, mask: jax.Array | None = None) -> _Output:
        """The fixed affine map of one example ``x`` (0 off ``mask``); ``key`` and ``inference`` are ignored.

        Returns:
          ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was passed.
        """
        del key, inference
        y = self._normalize(x, mask)
        return y if isinstance(state, _NoState) else (y, state)

    def _normalize(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        name = type(self).__name__
        axis = _batched_axis(name, self.axis, x)
        mask = _checks.check_mask(name, mask, x)
        stats = {"running_mean": self.running_mean, "running_var": self.running_var}
        y = frozen_batch_norm(x[None], {"weight": self.weight, "bias": self.bias}, stats, eps=self.eps, axis=axis)[0]
        return y if mask is None else jnp.where(mask, y, jnp.zeros((), y.dtype))


# --------------------------------------------------------------------------------------------
# Finding and replacing layers by their PyTorch-style dotted path (layer1.0.bn1)
# --------------------------------------------------------------------------------------------

KeyPath = tuple[Any, ...]


def _key_name(key: Any) -> str:
    """One entry of a JAX key path as PyTorch names it: an attribute by its name, a sequence item by its index."""
    for attr in ("name", "idx", "key"):  # GetAttrKey, SequenceKey, DictKey / FlattenedIndexKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _children(node: Any) -> list[tuple[Any, Any]]:
    """``(key, child)`` for the direct children of a pytree node (a module's fields, a sequence's items, a dict's
    values); ``[]`` for a leaf (an array, a bool, a function)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda n: n is not node)
    return [(path[0], child) for path, child in flat if path]


def _child(node: Any, key: Any) -> Any:
    if isinstance(key, jax.tree_util.GetAttrKey):
        return getattr(node, key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return node[key.idx]
    if isinstance(key, jax.tree_util.DictKey):
        return node[key.key]
    return dict(_children(node))[key]


def _at(node: Any, path: KeyPath) -> Any:
    """The node at ``path`` (a key path of ``node``'s tree)."""
    for key in path:
        node = _child(node, key)
    return node


def _walk(node: Any, stop: Callable[[Any], bool], path: KeyPath = (),
          name: str = "") -> Iterator[tuple[KeyPath, str, Any]]:
    """Depth first, in the model's field order: ``(key path, dotted name, node)`` for every node where ``stop`` holds
    (not looked into). Names join attributes and sequence indices with dots; the ``layers`` field of an
    ``eqx.nn.Sequential`` is left out, as PyTorch's ``nn.Sequential`` numbers its modules directly."""
    if stop(node):
        yield path, name, node
        return
    sequential = isinstance(node, eqx.nn.Sequential)
    for key, child in _children(node):
        part = "" if sequential and _key_name(key) == "layers" else _key_name(key)
        yield from _walk(child, stop, (*path, key), ".".join(filter(None, (name, part))))


def _is_layer(node: Any) -> bool:
    return isinstance(node, _NORM_LAYERS)


def named_layers(model: Any) -> list[tuple[str, eqx.Module]]:
    """Every jaxnorm Equinox layer in ``model`` with its PyTorch-style dotted path, in the model's field order.

    Paths join attribute names and sequence indices (``layer1.0.bn1``; an ``eqx.nn.Sequential``'s ``layers`` field is
    left out), the names of :func:`equinox_to_torch_state_dict`'s keys. ``model`` itself is ``""`` if it is a layer.

    >>> import equinox as eqx
    >>> import jaxnorm.equinox as jeqx
    >>> model = eqx.nn.Sequential([jeqx.LayerNorm(3), eqx.nn.Lambda(abs), jeqx.BatchNorm1d(3)])
    >>> [(path, type(layer).__name__) for path, layer in jeqx.named_layers(model)]
    [('0', 'LayerNorm'), ('2', 'BatchNorm1d')]

    References:
      PyTorch's ``torch.nn.Module.named_modules``,
      https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.named_modules
    """
    return [(name, node) for _, name, node in _walk(model, _is_layer)]


def replace_layers(model: Any, replace: Callable[[str, eqx.Module], Any]) -> Any:
    """A copy of ``model`` with every jaxnorm Equinox layer ``layer`` at dotted path ``path`` replaced by
    ``replace(path, layer)`` (return ``layer`` itself to keep it), through one ``eqx.tree_at``.

    The state is not touched: a replaced stateful layer's entry stays in it, unused (``state.substate(model)`` drops
    it).

    >>> import equinox as eqx
    >>> import jaxnorm.equinox as jeqx
    >>> model = eqx.nn.Sequential([jeqx.LayerNorm(3), jeqx.LayerNorm(3)])
    >>> model = jeqx.replace_layers(model, lambda path, layer: jeqx.RMSNorm(3) if path == "1" else layer)
    >>> [type(layer).__name__ for layer in model.layers]
    ['LayerNorm', 'RMSNorm']

    References:
      ``equinox.tree_at``, https://docs.kidger.site/equinox/api/manipulation/#equinox.tree_at
    """
    found = list(_walk(model, _is_layer))
    if not found:
        return model
    if found[0][0] == ():
        return replace("", model)
    new = [replace(name, node) for _, name, node in found]
    return eqx.tree_at(lambda m: [_at(m, path) for path, _, _ in found], model, new, is_leaf=lambda n: n is None)


def _layer_stats(function: str, path: str | None, layer: _Stateful, state: eqx.nn.State) -> BatchStats:
    """The running statistics of ``layer`` (at ``path`` in the model, None for the layer being called) in ``state``;
    a state made for another model raises naming the layer."""
    assert layer.state_index is not None  # only layers with running statistics are read
    try:
        return state.get(layer.state_index)
    except KeyError:
        where = "this layer" if path is None else f"the layer {path!r}"
        raise ValueError(f"{function}: the state holds no running statistics for {where} "
                         f"({type(layer).__name__}): it belongs to another model; pass the state made with this "
                         "model, model, state = eqx.nn.make_with_state(Model)(...)") from None


def _frozen(name: str, path: str, layer: _Stateful, state: eqx.nn.State) -> FrozenBatchNorm:
    """The :class:`FrozenBatchNorm` of a layer with running statistics, from its parameters and its entry in
    ``state``."""
    stats = _layer_stats(name, path, layer, state)
    mean = stats["running_mean"]
    weight = jnp.ones_like(mean) if layer.weight is None else layer.weight
    bias = jnp.zeros_like(mean) if layer.bias is None else layer.bias
    return FrozenBatchNorm(weight, bias, mean, stats["running_var"], eps=layer.eps, axis=layer.axis)


def freeze_batch_norm(model: Any, state: eqx.nn.State, *,
                      where: Callable[[str], bool] | None = None) -> tuple[Any, eqx.nn.State]:
    """torchvision's ``FrozenBatchNorm2d`` for an Equinox model: the layers with running statistics
    (``BatchNorm1d/2d/3d``, ``BatchRenorm``, ``InstanceNorm*d`` with ``track_running_stats=True``), all of them or
    those whose dotted path ``where`` selects (open_clip's ``module_match``), become :class:`FrozenBatchNorm` layers
    computing the fixed map of their running statistics, as PyTorch's ``eval()`` does, in both modes.

    The returned state is ``state.substate(model)`` of the new model: it loses the frozen layers' entries (their
    statistics are now arrays of the frozen layers) and keeps every other one; the input ``model`` and ``state`` stay
    valid and unchanged.

    Args:
      model: an Equinox model (any pytree of modules).
      state: its ``eqx.nn.State``.
      where: ``None`` (every such layer), or ``where(path) -> bool`` of a layer's dotted path as
        :func:`named_layers` gives it (``layer1.0.bn1``; ``""`` for a model that is itself the layer).

    Returns:
      ``(model, state)``: the new model and its state.

    Raises:
      TypeError: ``state`` is not an ``eqx.nn.State``, or ``where`` is not callable.
      ValueError: no layer with running statistics, ``where`` selects none of them (the message lists their paths),
        or a state of another model.

    >>> import equinox as eqx, jax, jax.numpy as jnp
    >>> import jaxnorm.equinox as jeqx
    >>> model, state = eqx.nn.make_with_state(eqx.nn.Sequential)([jeqx.BatchNorm1d(2), jeqx.BatchNorm1d(2)])
    >>> model, state = jeqx.freeze_batch_norm(model, state, where=lambda path: path == "0")
    >>> [type(layer).__name__ for layer in model.layers], len(jax.tree.leaves(state))
    (['FrozenBatchNorm', 'BatchNorm1d'], 3)
    >>> model.layers[0](jnp.array([1.0, 2.0]), inference=False).round(3).tolist()   # running mean 0, var 1
    [1.0, 2.0]

    References:
      torchvision's ``FrozenBatchNorm2d``,
      https://pytorch.org/vision/stable/generated/torchvision.ops.FrozenBatchNorm2d.html; open_clip's
      ``freeze_batch_norm_2d(module, module_match)``, https://github.com/mlfoundations/open_clip
    """
    name = "freeze_batch_norm"
    if not isinstance(state, eqx.nn.State):
        raise TypeError(f"{name}: expected state to be the model's eqx.nn.State (model, state = "
                        f"eqx.nn.make_with_state(Model)(...)), got {type(state).__name__}")
    paths = [path for path, layer in named_layers(model) if isinstance(layer, _Stateful) and layer.is_stateful()]
    chosen = set(_checks.layers_to_freeze(name, where, paths, type(model).__name__))

    def freeze(path: str, layer: eqx.Module) -> eqx.Module:
        # chosen: paths of _Stateful layers with running statistics
        return _frozen(name, path, cast(_Stateful, layer), state) if path in chosen else layer

    new = replace_layers(model, freeze)
    return new, state.substate(new)


_NORM_LAYERS = (_Stateful, _Stateless)

from jaxnorm._equinox_convert import convert_sync_batch_norm  # noqa: E402  (they use the above)
from jaxnorm._equinox_interop import equinox_to_torch_state_dict, torch_to_equinox  # noqa: E402
