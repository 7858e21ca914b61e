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

Numerics: the per-layer std is computed so that it never overflows or underflows while the network's
activations are finite (:mod:`experiments.common.deep_mlp`).

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
from experiments.common import lesson, plots
from experiments.common.deep_mlp import layer_stds  # DESIGN.md: experiments.mlp_study.layer_stds
from experiments.common.lesson_weights import lesson_weights_and_input, torch_available

CONFIGS = ("default", "normal", "kaiming", "bn_kaiming", "bn_default")
# Which initializer and whether BN is used, per config.
_INIT = {"default": "torch_default", "normal": "normal", "kaiming": "kaiming",
         "bn_kaiming": "kaiming", "bn_default": "torch_default"}
_BN = {"default": False, "normal": False, "kaiming": False, "bn_kaiming": True, "bn_default": True}

LAYERS, WIDTH, BATCH, SEED = 100, 256, 16, 1

LESSON_STDS, LESSON_FIRST_NAN = lesson.MLP_STDS, lesson.MLP_FIRST_NAN  # what the lesson printed

DENORMAL_NOTE = ("note: XLA on CPU flushes denormal floats (|x| < 1.2e-38) to zero, so `default` reaches std 0 "
                 "in the last layers where PyTorch prints ~1e-40.")


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
    exact = weights == "both" or (weights == "auto" and torch_available())
    lesson_stds = {c: _stds(c, lesson_weights_and_input(_INIT[c], **dims)) for c in configs} if exact else None
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
    files["figure"] = plots.plot_mlp_stds({c: _to_json(s) for c, s in stds.items()}, out / "mlp_stds.png",
                                          lesson_stds=LESSON_STDS, lesson_weight_results=None if lesson_stds is None
                                          else {c: _to_json(s) for c, s in lesson_stds.items()})
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
