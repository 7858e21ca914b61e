"""How each library runs a case: a builder per implementation (jaxnorm, jaxnorm unmasked, Flax, PyTorch), and the
copy baseline.

A builder returns an :class:`Impl`: two zero-argument callables that run one training-mode step and block until it
is done, a ``result`` callable giving (y, dx) as NumPy in the case's layout for the cross-check, and (JAX only) the
compiled HLO text of either step.

* ``fwd``: ``y = norm(x)``. JAX: one ``jax.jit`` call. torch: the functional op under ``no_grad``.
* ``fwd+bwd``: ``y, vjp = jax.vjp(norm, x, params); dx, dparams = vjp(dy)`` with a *random* cotangent ``dy``, the
  whole thing under one ``jax.jit``. torch: ``y = op(x); y.backward(dy)``.

A JAX call includes its dispatch, as a user pays it; a CUDA torch call synchronizes, as ``block_until_ready`` does.
With ``calls_per_sync`` K > 1 a timed call dispatches K steps and waits for the last one only (JAX's and CUDA's
queues run in order on one device), and the benchmark divides its time by K: on a GPU this takes the fixed cost of a
dispatch and a synchronization off each step, which at the benchmark's sizes is a large part of a step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm as jn
from experiments.benchmark.cases import EPS, GROUPS, Case
from experiments.benchmark.inputs import Problem


@dataclasses.dataclass
class Impl:
    """One implementation of one case, ready to time and to check."""

    fwd: Callable[[], object]
    fwdbwd: Callable[[], object]
    result: Callable[[], tuple[np.ndarray, np.ndarray]]
    hlo: Callable[[str], str] | None = None  # pass -> optimized (compiled) HLO text; JAX only
    y_valid_only: bool = False  # y is defined at the mask's valid positions only (Flax's masked BN)


@dataclasses.dataclass(frozen=True)
class Options:
    """What the builders need besides the case: Flax's variance formula and PyTorch's device."""

    flax_fast_variance: bool = True
    torch_device: str = "cpu"
    calls_per_sync: int = 1  # steps dispatched per wait (see the module docstring)


def repeated(step: Callable[[], object], wait: Callable[[object], object], k: int) -> Callable[[], object]:
    """A call that runs ``step`` ``k`` times and then ``wait`` s for the last result only."""
    def run() -> object:
        out = step()
        for _ in range(k - 1):
            out = step()
        return wait(out)

    return run


def _jax_impl(apply, p: Problem, params, state, mask, k: int = 1) -> Impl:
    """Wrap ``apply(x, params, state, mask) -> (y, new_state)`` into jitted fwd and fwd+vjp steps.

    The mask is an argument of the jitted functions, not a closure constant, so XLA cannot specialize on its value.
    """
    x, dy = jnp.asarray(p.x), jnp.asarray(p.dy)
    mask = None if mask is None else jnp.asarray(mask)
    fwd = jax.jit(apply)

    @jax.jit
    def fwdbwd(x, params, state, mask, dy):
        # Differentiate w.r.t. x and the affine parameters, as a training step does; the updated
        # running statistics are an auxiliary output (not differentiated).
        y, vjp, new_state = jax.vjp(lambda x, q: apply(x, q, state, mask), x, params, has_aux=True)
        dx, dparams = vjp(dy)
        return y, new_state, dx, dparams

    def result():
        y, _, dx, _ = fwdbwd(x, params, state, mask, dy)
        return np.asarray(y), np.asarray(dx)

    def hlo(pass_):
        lowered = fwd.lower(x, params, state, mask) if pass_ == "fwd" else fwdbwd.lower(x, params, state, mask, dy)
        return lowered.compile().as_text()

    return Impl(fwd=repeated(lambda: fwd(x, params, state, mask), jax.block_until_ready, k),
                fwdbwd=repeated(lambda: fwdbwd(x, params, state, mask, dy), jax.block_until_ready, k),
                result=result, hlo=hlo)


def build_jaxnorm(case: Case, p: Problem, opts: Options, *, use_mask: bool = True) -> Impl:
    """jaxnorm's functional API on x in the case's own layout (``use_mask=False``: ignore the case's mask)."""
    axis = case.channel_axis
    params = {"weight": jnp.asarray(p.weight)} | ({} if p.bias is None else {"bias": jnp.asarray(p.bias)})
    stats = jn.batch_norm_init(p.x.shape[axis])[1] if case.op == "batch_norm_2d" else {}
    shape = (p.x.shape[-1],)
    if case.op == "batch_norm_2d":
        def apply(x, q, s, m):
            return jn.batch_norm_2d(x, q, s, train=True, momentum=0.1, eps=EPS, axis=axis, mask=m)
    elif case.op == "group_norm":
        def apply(x, q, s, m):
            return jn.group_norm(x, q, GROUPS, eps=EPS, axis=axis, mask=m), s
    elif case.op == "layer_norm":
        def apply(x, q, s, m):
            return jn.layer_norm(x, q, shape, eps=EPS, mask=m), s
    else:
        def apply(x, q, s, m):
            return jn.rms_norm(x, q, shape, eps=EPS, mask=m), s
    return _jax_impl(apply, p, params, stats, p.mask if use_mask else None, opts.calls_per_sync)


def build_jaxnorm_nomask(case: Case, p: Problem, opts: Options) -> Impl:
    """jaxnorm without the mask, on the same (full) batch: what the masked rows compare the mask's price with."""
    return build_jaxnorm(case, p, opts, use_mask=False)


def _flax_module(case: Case, fast_variance: bool):
    if case.op == "batch_norm_2d":
        # flax momentum is the weight of the *old* running value: 0.9 == PyTorch's 0.1.
        return nn.BatchNorm(use_running_average=False, axis=case.channel_axis, momentum=0.9, epsilon=EPS,
                            use_fast_variance=fast_variance)
    if case.op == "group_norm":
        return nn.GroupNorm(num_groups=GROUPS, epsilon=EPS, use_fast_variance=fast_variance)
    if case.op == "layer_norm":
        return nn.LayerNorm(epsilon=EPS, use_fast_variance=fast_variance)
    return nn.RMSNorm(epsilon=EPS)  # uncentred: E[x²] has no fast/two-pass choice


def build_flax(case: Case, p: Problem, opts: Options) -> Impl:
    """flax.linen's BatchNorm / GroupNorm / LayerNorm / RMSNorm with ``opts``' variance formula."""
    mod = _flax_module(case, opts.flax_fast_variance)
    params = {"scale": jnp.asarray(p.weight)} | ({} if p.bias is None else {"bias": jnp.asarray(p.bias)})
    if case.op == "batch_norm_2d":
        c = p.x.shape[case.channel_axis]
        state = {"mean": jnp.zeros(c), "var": jnp.ones(c)}

        def apply(x, q, s, m):
            y, updates = mod.apply({"params": q, "batch_stats": s}, x, mask=m, mutable=["batch_stats"])
            return y, updates["batch_stats"]
    elif case.op == "group_norm" and case.layout == "NCHW":
        state = {}

        def apply(x, q, s, m):
            # Flax's GroupNorm is channels-last only: the transposes in and out are part of Flax's NCHW path.
            y = mod.apply({"params": q}, jnp.transpose(x, (0, 2, 3, 1)))
            return jnp.transpose(y, (0, 3, 1, 2)), s
    else:
        state = {}

        def apply(x, q, s, m):
            return mod.apply({"params": q}, x), s
    impl = _jax_impl(apply, p, params, state, p.mask, opts.calls_per_sync)
    impl.y_valid_only = p.mask is not None
    return impl


def build_torch(case: Case, p: Problem, opts: Options) -> Impl:
    """torch.nn.functional ops on ``opts.torch_device``; BN updates running buffers in place, as nn.BatchNorm2d."""
    import torch
    import torch.nn.functional as F

    device = opts.torch_device
    xt, dyt = torch.from_numpy(p.x.copy()).to(device), torch.from_numpy(p.dy.copy()).to(device)
    # CUDA kernels run asynchronously: a timed call must wait for them, as block_until_ready does for JAX.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    to_case_layout = lambda a: a  # noqa: E731
    if case.layout == "NHWC":
        # A permuted view of NHWC memory *is* torch's channels_last NCHW tensor: no copy.
        xt, dyt = xt.permute(0, 3, 1, 2), dyt.permute(0, 3, 1, 2)
        assert xt.is_contiguous(memory_format=torch.channels_last)
        to_case_layout = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    c = p.weight.shape[0]
    weight = torch.from_numpy(p.weight.copy()).to(device).requires_grad_(True)
    bias = None if p.bias is None else torch.from_numpy(p.bias.copy()).to(device).requires_grad_(True)
    running_mean, running_var = torch.zeros(c, device=device), torch.ones(c, device=device)

    def op(inp):
        if case.op == "batch_norm_2d":
            return F.batch_norm(inp, running_mean, running_var, weight, bias, training=True, momentum=0.1, eps=EPS)
        if case.op == "group_norm":
            return F.group_norm(inp, GROUPS, weight, bias, eps=EPS)
        if case.op == "layer_norm":
            return F.layer_norm(inp, (c,), weight, bias, eps=EPS)
        return F.rms_norm(inp, (c,), weight, eps=EPS)

    def forward():
        with torch.no_grad():
            return op(xt)

    xg = xt.detach().requires_grad_(True)

    def forward_backward():
        # Drop old grads so backward writes them fresh instead of accumulating (an extra pass).
        xg.grad = weight.grad = None
        if bias is not None:
            bias.grad = None
        y = op(xg)
        y.backward(dyt)
        return y

    def wait(y):
        sync()
        return y

    def result():
        y = wait(forward_backward())
        return to_case_layout(y.detach().cpu().numpy()), to_case_layout(xg.grad.cpu().numpy())

    k = opts.calls_per_sync
    return Impl(fwd=repeated(forward, wait, k), fwdbwd=repeated(forward_backward, wait, k), result=result)


def build_copy(case: Case, p: Problem, opts: Options) -> Impl:
    """The memory floor of the case's data: ``y = x · w`` (fwd) and ``y, dx = x · w, dy · w`` (fwd+bwd), ``w`` the
    per-channel weight broadcast along the case's channel axis; each pass one jitted program, as jaxnorm's.

    Every normalization reads x and writes y (and reads dy, writes dx): what this moves, with no statistics. Its
    ``result`` is ``(y, dx)``, which :func:`experiments.benchmark.checks.check_copy` compares with NumPy's products.
    """
    x, dy = jnp.asarray(p.x), jnp.asarray(p.dy)
    view = tuple(-1 if a == case.channel_axis % p.x.ndim else 1 for a in range(p.x.ndim))
    w = jnp.asarray(p.weight).reshape(view)
    fwd = jax.jit(lambda x, w: x * w)
    fwdbwd = jax.jit(lambda x, w, dy: (x * w, dy * w))

    def result():
        y, dx = fwdbwd(x, w, dy)
        return np.asarray(y), np.asarray(dx)

    k = opts.calls_per_sync
    return Impl(fwd=repeated(lambda: fwd(x, w), jax.block_until_ready, k),
                fwdbwd=repeated(lambda: fwdbwd(x, w, dy), jax.block_until_ready, k), result=result)


def builders() -> dict[str, Callable[[Case, Problem, Options], Impl]]:
    """Looked up at run time, so that a test can replace one builder of this module with a wrong one."""
    return {"jaxnorm": build_jaxnorm, "jaxnorm_nomask": build_jaxnorm_nomask, "flax": build_flax,
            "torch": build_torch, "copy": build_copy}
