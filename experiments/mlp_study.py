r"""The lesson's 100-layer MLP study: how the activation scale evolves with depth under each initialization.

Run ``python -m experiments.mlp_study`` (``--help`` for flags). The network is the lesson's: ``L = 100``
layers, each ``y = relu(bn(x @ W[l]))`` (no bias; ``bn`` only for the ``bn_*`` configs), width 256, a batch
of 16 standard-normal inputs, seed 1. After every layer it records the standard deviation of *all*
activations, as ``torch.Tensor.std()`` does (Bessel's correction, ``n = batch * width``):

.. math::
    s_l = \sqrt{\frac{1}{n - 1} \sum_i (y_i - \bar y)^2}.

Configs (``W[l]`` in Flax layout ``(n_in, n_out)``; ``fan_in = 256``):

============== ================================================================ =========================
config         weights                                                          lesson prints
============== ================================================================ =========================
``default``    PyTorch ``nn.Linear`` default, ``U(±1/sqrt(fan_in))``              0.33 -> 2.5e-40 (vanishes)
``normal``     ``N(0, 1)``                                                      9.35 -> 7.5e36, NaN at 35
``kaiming``    ``N(0, 2/fan_in)`` (Kaiming normal, ReLU gain)                   ~0.6-0.9 throughout
``bn_kaiming`` Kaiming normal + training-mode BN (weight 1, bias 0)             ~0.58 throughout
``bn_default`` PyTorch default + training-mode BN                               ~0.58 throughout
============== ================================================================ =========================

Why ~0.58 with BN: BN makes each pre-activation ~N(0, 1); ``relu`` of a standard normal has variance
``1/2 - 1/(2 pi) = 0.3408``, i.e. std 0.584.

Numerics. The activations are float32, like PyTorch's, so the *network* overflows/underflows exactly as the
lesson's does; the *statistic* must not add failures of its own. A naive ``sqrt(mean(y**2) - mean(y)**2)``
in float32 overflows once ``|y| > ~1.8e19`` (``y**2 > 3.4e38``) and underflows below ``~1.1e-19``
(``y**2`` below the smallest normal, 1.2e-38), while the lesson prints stds from 2.5e-40 to 7.5e36. So
:func:`layer_stds` divides by ``m = max|y|`` first: the scaled values lie in ``[-1, 1]``, their squared
deviations cannot overflow, and any that underflow are below float32's relative resolution of the result
anyway; the std is ``m * std(y / m)``. The first layer whose activations are not all finite, and every layer
after it, reports NaN (the lesson's ``output is nan in 35 layers``).

XLA on CPU flushes denormal floats (|x| < 1.2e-38) to zero, so the ``default`` config reaches exactly 0
in the last layers where PyTorch (which keeps denormals) prints ~1e-40. (Not checked on GPU/TPU, whose
flush-to-zero behaviour may differ; the backend is recorded in the results.)

Outputs in ``--out DIR``: ``stds.json`` (``{config: [std per layer]}``; JSON has no NaN, so a NaN std is
written as ``null``), ``mlp_stds.png`` (log-scale std per layer, all five configs, the lesson's printed
values as black-edged markers) and, with ``--weights both``, ``stds_lesson_weights.json``: the same
:func:`layer_stds` fed the lesson's *exact* weights and inputs (drawn with PyTorch's RNG after
``torch.manual_seed(1)``, in the lesson's order), which reproduces the lesson's printed numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm as jn
from experiments.common import lesson

CONFIGS = ("default", "normal", "kaiming", "bn_kaiming", "bn_default")
# Which initializer and whether BN is used, per config.
_INIT = {"default": "torch_default", "normal": "normal", "kaiming": "kaiming",
         "bn_kaiming": "kaiming", "bn_default": "torch_default"}
_BN = {"default": False, "normal": False, "kaiming": False, "bn_kaiming": True, "bn_default": True}

LAYERS, WIDTH, BATCH, SEED = 100, 256, 16, 1

LESSON_STDS, LESSON_FIRST_NAN = lesson.MLP_STDS, lesson.MLP_FIRST_NAN  # what the lesson printed

DENORMAL_NOTE = ("note: XLA on CPU flushes denormal floats (|x| < 1.2e-38) to zero, so `default` reaches std 0 "
                 "in the last layers where PyTorch prints ~1e-40.")


# ----------------------------------------------------------------------------------------------- the statistic
def _scaled_std(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""``(std(y, ddof=1), all_finite(y))``, safe for any finite float32 magnitude.

    ``std(y) = m * std(y / m)`` with ``m = max|y|``: the scaled values are in ``[-1, 1]`` so
    ``sum((s - mean(s))**2) <= n`` cannot overflow; dividing ``y`` by ``m`` (not multiplying by ``1/m``)
    stays exact-ish even when ``m`` is denormal on hardware that keeps denormals (``1/m`` would be inf).
    """
    finite = jnp.all(jnp.isfinite(y))
    m = jnp.max(jnp.abs(y))
    scale = jnp.where(finite & (m > 0), m, jnp.ones_like(m))  # all-zero or non-finite: avoid 0/0, inf/inf
    s = y / scale
    d = s - jnp.mean(s)  # two-pass: no E[s^2] - E[s]^2 cancellation
    std = scale * jnp.sqrt(jnp.sum(d * d) / (y.size - 1))
    return std, finite


@functools.partial(jax.jit, static_argnames="batch_norm")
def _layer_stds(weights: jax.Array, x: jax.Array, batch_norm: bool) -> jax.Array:
    # weight 1, bias 0; the running stats are updated but not used (training mode normalizes with batch stats).
    bn_params, bn_stats = jn.batch_norm_init(weights.shape[-1], dtype=weights.dtype)

    def layer(carry, w):
        h, bad = carry
        # HIGHEST: float32 matmul as PyTorch does it; GPU/TPU default precision (TF32/bf16 passes) would
        # change the very numbers this study is about.
        h = jnp.matmul(h, w, precision=jax.lax.Precision.HIGHEST)
        if batch_norm:
            h, _ = jn.batch_norm_1d(h, bn_params, bn_stats, train=True)
        h = jax.nn.relu(h)
        std, finite = _scaled_std(h)
        bad = bad | ~finite  # sticky: once the signal is gone, later layers are meaningless
        return (h, bad), jnp.where(bad, jnp.nan, std)

    _, stds = jax.lax.scan(layer, (x, jnp.zeros((), bool)), weights)
    return stds


def layer_stds(weights, x, *, batch_norm: bool = False) -> jax.Array:
    r"""Per-layer std of the activations of the MLP ``y_{l+1} = relu(bn(y_l @ W[l]))``, ``y_0 = x``.

    Args:
      weights: ``(L, n, n)`` array of kernels in Flax layout (``(n_in, n_out)``; a PyTorch ``nn.Linear``
        weight is the transpose). ``n_in == n_out`` since layer ``l``'s output is layer ``l+1``'s input.
      x: ``(batch, n)`` input.
      batch_norm: insert training-mode batch normalization (weight 1, bias 0, batch statistics,
        ``eps = 1e-5``) between the matmul and the ReLU, as the lesson's ``bn_*`` runs do.

    Returns:
      ``(L,)`` array ``s`` with ``s[l] = std(y_{l+1})`` over all ``batch * n`` entries with Bessel's
      correction (``torch.Tensor.std()``), computed as ``m * std(y / m)``, ``m = max|y|``, so it neither
      overflows nor underflows while the activations are finite. ``s[l]`` is NaN from the first layer whose
      activations are not all finite on. Jit-compiled; the layer loop is a ``jax.lax.scan``.

    Raises:
      ValueError: wrong ranks, non-square kernels, or ``x``'s width not matching ``n``.
      TypeError: non-floating input.
    """
    weights, x = jnp.asarray(weights), jnp.asarray(x)
    if weights.ndim != 3:
        raise ValueError(f"layer_stds: expected weights of shape (L, n_in, n_out), got shape {weights.shape}")
    if weights.shape[1] != weights.shape[2]:
        raise ValueError("layer_stds: expected square kernels (n_in == n_out, each layer feeds the next), "
                         f"got weights of shape {weights.shape}")
    if x.ndim != 2 or x.shape[1] != weights.shape[1]:
        raise ValueError(f"layer_stds: expected x of shape (batch, {weights.shape[1]}), got shape {x.shape}")
    if x.shape[0] * x.shape[1] < 2:
        raise ValueError(f"layer_stds: expected at least 2 activations per layer for a Bessel-corrected std, "
                         f"got x of shape {x.shape}")
    dtype = jnp.result_type(weights, x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"layer_stds: expected floating weights and x, got {weights.dtype} and {x.dtype}")
    return _layer_stds(weights.astype(dtype), x.astype(dtype), batch_norm=bool(batch_norm))


# --------------------------------------------------------------------------------------------- weights, inputs
def make_weights(config: str, key: jax.Array, *, layers: int = LAYERS, width: int = WIDTH) -> jax.Array:
    """``(layers, width, width)`` float32 kernels for ``config``, one independent key per layer."""
    if config not in CONFIGS:
        raise ValueError(f"make_weights: expected config in {CONFIGS}, got {config!r}")
    return _make_weights(config, key, layers, width)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _make_weights(config: str, key: jax.Array, layers: int, width: int) -> jax.Array:
    initializer = {"torch_default": jn.init.torch_default_kernel, "normal": jn.init.normal,
                   "kaiming": jn.init.kaiming_normal}[_INIT[config]]()
    keys = jax.random.split(key, layers)
    # vmap over per-layer keys, not one (L, n, n) draw: the initializers read fan_in from the shape.
    return jax.vmap(lambda k: initializer(k, (width, width), jnp.float32))(keys)


def jax_weights_and_input(config: str, *, seed: int = SEED, layers: int = LAYERS, width: int = WIDTH,
                          batch: int = BATCH) -> tuple[jax.Array, jax.Array]:
    """Weights and input from JAX's RNG. Same key for every config, so ``default``/``bn_default`` (and
    ``kaiming``/``bn_kaiming``) share weights, as the lesson's ``set_seed(1)`` runs do."""
    k_w, k_x = jax.random.split(jax.random.PRNGKey(seed))
    return make_weights(config, k_w, layers=layers, width=width), jax.random.normal(k_x, (batch, width))


def lesson_weights_and_input(config: str, *, seed: int = SEED, layers: int = LAYERS, width: int = WIDTH,
                             batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """The lesson's exact weights and input, drawn with PyTorch's RNG in the lesson's order.

    ``set_seed(1)``; build 100 ``nn.Linear(bias=False)`` (default init draws) and 100 ``BatchNorm1d`` (no
    draws); ``initialize()`` (``normal_`` or ``kaiming_normal_``, if the config has it); ``torch.randn``.
    Returns Flax-layout kernels (the transposes) and the input as NumPy. Needs torch.
    """
    import random

    import torch  # optional; only this function needs it

    if config not in CONFIGS:
        raise ValueError(f"lesson_weights_and_input: expected config in {CONFIGS}, got {config!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    linears = [torch.nn.Linear(width, width, bias=False) for _ in range(layers)]
    with torch.no_grad():
        for lin in linears:
            if _INIT[config] == "normal":
                torch.nn.init.normal_(lin.weight, std=1.0)
            elif _INIT[config] == "kaiming":
                torch.nn.init.kaiming_normal_(lin.weight)
    x = torch.randn((batch, width))
    w = np.stack([lin.weight.detach().numpy().T for lin in linears])
    return w.astype(np.float32), x.numpy().astype(np.float32)


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- summaries
def first_nan_layer(stds: Sequence[float]) -> int | None:
    """Index of the first NaN std (the lesson's "output is nan in N layers"), or None."""
    nan = np.flatnonzero(np.isnan(np.asarray(stds, dtype=np.float64)))
    return int(nan[0]) if nan.size else None


def summarize(stds: Sequence[float]) -> dict:
    """First NaN layer, first exactly-zero layer (flushed denormals) and the range of the finite, nonzero stds."""
    s = np.asarray(stds, dtype=np.float64)
    ok = np.isfinite(s) & (s > 0)
    zero = np.flatnonzero(s == 0)
    return {"first_nan": first_nan_layer(s), "first_zero": int(zero[0]) if zero.size else None,
            "min": float(s[ok].min()) if ok.any() else None, "max": float(s[ok].max()) if ok.any() else None,
            "last": None if math.isnan(s[-1]) else float(s[-1])}


def compare_to_lesson(config: str, stds: Sequence[float]) -> list[dict]:
    """``[{"layer", "lesson", "ours", "rel_diff"}]`` for every layer the lesson printed for ``config``.

    ``rel_diff = |ours / lesson - 1|`` (NaN when ours is NaN). The lesson's NaN layer is not in the list.
    """
    s = np.asarray([np.nan if v is None else v for v in stds], dtype=np.float64)
    return [{"layer": i, "lesson": v, "ours": None if np.isnan(s[i]) else float(s[i]),
             "rel_diff": float(abs(s[i] / v - 1))} for i, v in LESSON_STDS[config].items() if i < s.size]


def _to_json(stds: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in np.asarray(stds, dtype=np.float64)]


def print_lesson_style(config: str, stds: Sequence[float], *, file=None) -> None:
    """``layers:i, std:s`` per layer, and ``output is nan in N layers`` at the first NaN, as the lesson."""
    file = file or sys.stdout
    print(f"== {config} ==", file=file)
    for i, s in enumerate(np.asarray(stds, dtype=np.float64)):
        if math.isnan(s):
            print(f"output is nan in {i} layers", file=file)
            return
        print(f"layers:{i}, std:{float(np.float32(s))!r}", file=file)


# -------------------------------------------------------------------------------------------------- figure
def plot(results: dict[str, list], path: Path, *, lesson_weight_results: dict[str, list] | None = None) -> Path:
    """Std per layer for every config: log scale (top row) and a linear zoom on the stable configs (bottom row).

    The lesson's printed stds are black-edged markers. Zeros (flushed denormals) cannot sit on a log axis: they
    are triangles on the bottom edge. NaN ends a line; a cross marks the last finite layer before it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("JAX RNG weights (seed 1)", results)]
    if lesson_weight_results:
        panels.append(("lesson's exact weights (PyTorch RNG, seed 1)", lesson_weight_results))
    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 8.2), squeeze=False, sharey="row",
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = dict(zip(CONFIGS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    floor = 1e-45
    for col, (title, res) in enumerate(panels):
        log_ax, lin_ax = axes[0][col], axes[1][col]
        for config, stds in res.items():
            s = np.asarray([np.nan if v is None else v for v in stds], dtype=np.float64)
            layers = np.arange(s.size)
            c = colors.get(config)
            lesson = LESSON_STDS.get(config, {})
            log_ax.semilogy(layers, np.where(s > 0, s, np.nan), color=c, lw=1.6, label=config)
            log_ax.plot(list(lesson), list(lesson.values()), "o", mfc=c, mec="black", ms=4.5, lw=0)
            zeros = layers[s == 0]
            if zeros.size:
                log_ax.plot(zeros, np.full(zeros.size, floor * 3), "v", color=c, ms=5,
                            label=f"{config}: std = 0 from layer {zeros[0]} (flushed denormals)")
            nan_at = first_nan_layer(s)
            if nan_at is not None and nan_at > 0:
                log_ax.plot([nan_at - 1], [s[nan_at - 1]], "x", color=c, ms=10, mew=2.5)
                log_ax.annotate(f"NaN from layer {nan_at}", (nan_at - 1, s[nan_at - 1]), textcoords="offset points",
                                xytext=(8, -3), color=c, fontsize=9)
            if config in ("kaiming", "bn_kaiming", "bn_default"):
                lin_ax.plot(layers, s, color=c, lw=1.4, label=config)
                lin_ax.plot(list(lesson), list(lesson.values()), "o", mfc=c, mec="black", ms=4.5, lw=0)
        log_ax.plot([], [], "o", mfc="white", mec="black", ms=5, lw=0, label="lesson's printed std")
        log_ax.set_title(title, fontsize=11)
        log_ax.set_ylim(floor, 1e45)
        log_ax.set_yticks([10.0 ** k for k in range(-40, 41, 10)])
        log_ax.grid(True, which="major", alpha=0.3)
        log_ax.legend(fontsize=8, loc="lower left")
        lin_ax.axhline(np.sqrt(0.5 - 0.5 / np.pi), color="gray", ls=":", lw=1,
                       label="std of relu(N(0,1)) = 0.584")
        lin_ax.set_ylim(0, 1.2)
        lin_ax.set_xlabel("layer")
        lin_ax.grid(True, alpha=0.3)
        lin_ax.legend(fontsize=8, loc="lower left", ncol=2)
    axes[0][0].set_ylabel("std of activations (log scale)")
    axes[1][0].set_ylabel("std (linear, stable configs)")
    fig.suptitle("100-layer MLP, width 256, batch 16: activation std after each layer", fontsize=12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------- run
def seed_spread(config: str, seeds: Sequence[int], *, layers: int = LAYERS, width: int = WIDTH,
                batch: int = BATCH) -> list[float | None]:
    """Last-layer std of ``config`` for each JAX seed: how much one draw says about the init scheme."""
    out = []
    for s in seeds:
        w, x = jax_weights_and_input(config, seed=s, layers=layers, width=width, batch=batch)
        out.append(_to_json(layer_stds(w, x, batch_norm=_BN[config])[-1:])[0])
    return out


def run(out_dir, *, configs: Sequence[str] = CONFIGS, layers: int = LAYERS, width: int = WIDTH,
        batch: int = BATCH, seed: int = SEED, weights: str = "auto", spread_seeds: int = 20,
        verbose: bool = True) -> dict:
    """Run the study; write ``stds.json``, ``mlp_stds.png`` (and ``stds_lesson_weights.json``) into ``out_dir``.

    ``weights``: ``"jax"`` (JAX RNG), ``"both"`` (also the lesson's exact weights via PyTorch),
    ``"auto"`` (``"both"`` when torch is importable). ``spread_seeds``: also record the last-layer std of
    ``kaiming`` for seeds ``1..spread_seeds`` (0: skip). Returns ``{"stds", "summary", "lesson_weights" (or
    None), "lesson_weights_summary", "kaiming_seed_spread", "files", "backend", "settings"}``.
    """
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise ValueError(f"mlp_study: expected configs from {CONFIGS}, got {bad}")
    if weights not in ("auto", "jax", "both"):
        raise ValueError(f"mlp_study: expected weights in ('auto', 'jax', 'both'), got {weights!r}")
    dims = {"layers": layers, "width": width, "batch": batch, "seed": seed}
    stds = {c: _stds(c, jax_weights_and_input(c, **dims)) for c in configs}
    if verbose:
        for c, s in stds.items():
            print_lesson_style(c, s)
    exact = weights == "both" or (weights == "auto" and _torch_available())
    lesson_stds = {c: _stds(c, lesson_weights_and_input(c, **dims)) for c in configs} if exact else None
    # Kaiming keeps the *expected* variance per layer, but each layer multiplies it by a random factor, so the
    # std random-walks in log space; one seed's layer-99 value says little without the spread over seeds.
    spread = seed_spread("kaiming", range(1, spread_seeds + 1), layers=layers, width=width, batch=batch) \
        if spread_seeds > 0 and "kaiming" in configs else None
    files = _write(Path(out_dir), stds, lesson_stds)
    _print_summary(stds, lesson_stds, spread, layers)
    return {"stds": {c: _to_json(s) for c, s in stds.items()}, "summary": {c: summarize(s) for c, s in stds.items()},
            "lesson_weights": None if lesson_stds is None else {c: _to_json(s) for c, s in lesson_stds.items()},
            "lesson_weights_summary": None if lesson_stds is None else
            {c: summarize(s) for c, s in lesson_stds.items()},
            "kaiming_seed_spread": spread, "files": {k: str(v) for k, v in files.items()},
            "backend": jax.default_backend(), "settings": dims}


def _stds(config: str, weights_and_input) -> np.ndarray:
    w, x = weights_and_input
    return np.asarray(layer_stds(w, x, batch_norm=_BN[config]), dtype=np.float64)


def _write(out: Path, stds: dict, lesson_stds: dict | None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"stds": out / "stds.json"}
    files["stds"].write_text(json.dumps({c: _to_json(s) for c, s in stds.items()}, indent=1) + "\n")
    if lesson_stds is not None:
        files["stds_lesson_weights"] = out / "stds_lesson_weights.json"
        files["stds_lesson_weights"].write_text(
            json.dumps({c: _to_json(s) for c, s in lesson_stds.items()}, indent=1) + "\n")
    files["figure"] = plot({c: _to_json(s) for c, s in stds.items()}, out / "mlp_stds.png",
                           lesson_weight_results=None if lesson_stds is None else
                           {c: _to_json(s) for c, s in lesson_stds.items()})
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return files


def _print_summary(stds: dict, lesson_stds: dict | None, spread, layers: int) -> None:
    print("\nsummary (JAX RNG weights):")
    for c, s in ((c, summarize(v)) for c, v in stds.items()):
        print(f"  {c:<11} std range [{_fmt(s['min'])}, {_fmt(s['max'])}]  last {_fmt(s['last'])}  "
              f"first NaN layer {s['first_nan']}  first zero layer {s['first_zero']}")
    if lesson_stds is not None:
        print("lesson's exact weights (PyTorch RNG) vs the lesson's printed stds (max relative difference):")
        for c, s in lesson_stds.items():
            rows = compare_to_lesson(c, s)
            head = max(r["rel_diff"] for r in rows if r["layer"] < 50)
            tail = ", ".join("0 (flushed)" if r["ours"] == 0 else f"{r['rel_diff']:.1e}" for r in rows
                             if r["layer"] >= 50)
            print(f"  {c:<11} first printed layers: {head:.1e}" + (f"  later printed layers: {tail}" if tail else "")
                  + f"  first NaN layer {first_nan_layer(s)} (lesson: {LESSON_FIRST_NAN.get(c)})")
    if spread:
        v = np.asarray([np.nan if a is None else a for a in spread])
        print(f"kaiming, layer {layers - 1} std over JAX seeds 1..{len(spread)}: min {np.nanmin(v):.3g}, "
              f"median {np.nanmedian(v):.3g}, max {np.nanmax(v):.3g}")
    if jax.default_backend() == "cpu":
        print(DENORMAL_NOTE)


def _fmt(v) -> str:
    return "None" if v is None else f"{v:.4g}"


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.mlp_study", description=__doc__.split("\n\n")[0],
                                epilog="Writes stds.json (NaN as null), mlp_stds.png and, with lesson weights, "
                                       "stds_lesson_weights.json into --out.")
    p.add_argument("--out", type=Path, default=Path("results/mlp_study"), help="output folder (default %(default)s)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS, metavar="CONFIG",
                   help=f"configs to run, from {', '.join(CONFIGS)} (default: all)")
    p.add_argument("--layers", type=int, default=LAYERS, help="number of layers (default %(default)s)")
    p.add_argument("--width", type=int, default=WIDTH, help="layer width (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH, help="batch size (default %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="JAX PRNG seed / torch.manual_seed (default %(default)s)")
    p.add_argument("--weights", choices=("auto", "jax", "both"), default="auto",
                   help="jax: JAX RNG weights; both: also the lesson's exact weights drawn with PyTorch's "
                        "RNG; auto: both when torch is installed (default %(default)s)")
    p.add_argument("--spread-seeds", type=int, default=20,
                   help="also report kaiming's last-layer std for JAX seeds 1..N (0: skip; default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="do not print the per-layer lines")
    args = p.parse_args(argv)
    for name in ("layers", "width", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return run(args.out, configs=args.configs, layers=args.layers, width=args.width, batch=args.batch_size,
               seed=args.seed, weights=args.weights, spread_seeds=args.spread_seeds, verbose=not args.quiet)


if __name__ == "__main__":
    main()
