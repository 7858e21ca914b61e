r"""The lesson's BatchNorm1d/2d/3d demos: running statistics with momentum 0.3 over two iterations.

Run ``python -m experiments.bn_running_stats`` (``--help`` for flags). Each demo builds a batch of 3 identical
samples whose channel ``c`` (``c = 1..C``) is the constant ``c``: shapes ``(3, 5, 1)`` for 1d,
``(3, 6, 2, 2)`` for 2d and ``(3, 4, 2, 2, 3)`` for 3d. It calls jaxnorm's pure training-mode
``batch_norm_{1,2,3}d`` twice with ``momentum = 0.3`` and prints the running statistics next to the
hand-computed ones, as the lesson does. Channel ``c``'s batch mean is ``c`` and its unbiased batch variance
is 0, so with ``running_mean_0 = 0``, ``running_var_0 = 1`` and ``m = 0.3``:

.. math::
    \mathrm{rm}_{t+1} = (1 - m)\,\mathrm{rm}_t + m\,c, \qquad \mathrm{rv}_{t+1} = (1 - m)\,\mathrm{rv}_t + m \cdot 0,

i.e. ``rm = 0.3 c`` then ``0.51 c`` and ``rv = 0.7`` then ``0.49`` (lesson: ``[0.3, 0.6, 0.9, 1.2, 1.5]``,
``[0.51, 1.02, 1.53, 2.04, 2.55]``, ``0.7``, ``0.49``). It also prints the shapes of ``running_mean``,
``running_var``, ``weight`` and ``bias``: ``(C,)`` for 1d, 2d and 3d alike.

Writes ``bn_running_stats.json`` and ``bn_running_stats.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import jaxnorm as jn
from experiments.common import lesson

MOMENTUM = 0.3
BATCH = 3
ITERATIONS = 2
# name -> (num_features, per-channel feature shape), as in the lesson.
DEMOS = {"bn1d": (5, (1,)), "bn2d": (6, (2, 2)), "bn3d": (4, (2, 2, 3))}

LESSON = lesson.BN_RUNNING_STATS  # what the lesson printed


def demo_input(num_features: int, feature_shape: tuple[int, ...], batch: int = BATCH) -> np.ndarray:
    """``(batch, C, *feature_shape)`` float32 with channel ``c`` (0-based) equal to ``c + 1`` everywhere."""
    values = np.arange(1, num_features + 1, dtype=np.float32).reshape((1, num_features) + (1,) * len(feature_shape))
    return np.broadcast_to(values, (batch, num_features) + tuple(feature_shape)).copy()


def hand_running_stats(num_features: int, momentum: float = MOMENTUM,
                       iterations: int = ITERATIONS) -> list[dict[str, list[float]]]:
    """The lesson's hand computation for every channel, in float64: batch mean ``c``, unbiased batch var 0."""
    mean_t = np.arange(1, num_features + 1, dtype=np.float64)
    var_t = np.zeros(num_features)
    rm, rv = np.zeros(num_features), np.ones(num_features)
    out = []
    for _ in range(iterations):
        rm = (1 - momentum) * rm + momentum * mean_t
        rv = (1 - momentum) * rv + momentum * var_t
        out.append({"running_mean": rm.tolist(), "running_var": rv.tolist()})
    return out


def run_demo(name: str, *, momentum: float = MOMENTUM, iterations: int = ITERATIONS, verbose: bool = True) -> dict:
    """One demo with jaxnorm's pure functions; returns inputs' shape, per-iteration stats, shapes and hand values."""
    num_features, feature_shape = DEMOS[name]
    fn = {"bn1d": jn.batch_norm_1d, "bn2d": jn.batch_norm_2d, "bn3d": jn.batch_norm_3d}[name]
    x = demo_input(num_features, feature_shape)
    params, stats = jn.batch_norm_init(num_features)
    hand = hand_running_stats(num_features, momentum, iterations)
    if verbose:
        print(f"\n======== {name}: nn.BatchNorm{name[2:]}(num_features={num_features}, momentum={momentum})")
        if name == "bn1d":
            print(f"input data:\n{x}")
        print(f"input data shape is {x.shape}")
    iters = []
    for i in range(iterations):
        _, stats = fn(x, params, stats, train=True, momentum=momentum)
        rm, rv = np.asarray(stats["running_mean"]), np.asarray(stats["running_var"])
        shapes = {"running_mean": list(rm.shape), "running_var": list(rv.shape),
                  "weight": list(np.shape(params["weight"])), "bias": list(np.shape(params["bias"]))}
        iters.append({"iteration": i, "running_mean": rm.tolist(), "running_var": rv.tolist(),
                      "num_batches_tracked": int(stats["num_batches_tracked"]),
                      "hand_running_mean": hand[i]["running_mean"], "hand_running_var": hand[i]["running_var"],
                      "shapes": shapes})
        if verbose:
            _print_iteration(name, iters[-1])
    return {"input_shape": list(x.shape), "num_features": num_features, "momentum": momentum,
            "iterations": iters,
            "max_abs_diff_vs_hand": max(float(np.max(np.abs(np.subtract(it[k], it["hand_" + k]))))
                                        for it in iters for k in ("running_mean", "running_var"))}


def _vec(v) -> str:
    return "[" + ", ".join(f"{float(a):.4f}" for a in v) + "]"


def _print_iteration(name: str, it: dict) -> None:
    i = it["iteration"]
    if name == "bn1d":  # the lesson's 1d demo prints values and the second feature's hand computation
        print(f"\niteration:{i}, running mean: {_vec(it['running_mean'])} ")
        print(f"iteration:{i}, running var:{_vec(it['running_var'])} ")
        print(f"iteration:{i}, second feature's running mean (by hand): {it['hand_running_mean'][1]!r} ")
        print(f"iteration:{i}, second feature's running var (by hand):{it['hand_running_var'][1]!r}")
        return
    print()  # the 2d/3d demos print shapes; the values are printed too (not in the lesson) to check them
    for key in ("running_mean", "running_var", "weight", "bias"):
        print(f"iter:{i}, {key}.shape: {tuple(it['shapes'][key])}")
    print(f"iter:{i}, running mean: {_vec(it['running_mean'])}  (by hand: {_vec(it['hand_running_mean'])})")
    print(f"iter:{i}, running var:  {_vec(it['running_var'])}  (by hand: {_vec(it['hand_running_var'])})")


def plot(results: dict, path: Path) -> Path:
    """Per-channel running mean after each iteration (bars) vs the hand computation (crosses), per demo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.3 * len(results), 3.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        channels = np.arange(1, res["num_features"] + 1)
        width = 0.38
        for k, it in enumerate(res["iterations"]):
            offset = (k - (len(res["iterations"]) - 1) / 2) * width
            ax.bar(channels + offset, it["running_mean"], width, label=f"running_mean, iter {k}", alpha=0.8)
            ax.plot(channels + offset, it["hand_running_mean"], "kx", ms=7)
            ax.axhline(it["running_var"][0], ls="--", lw=1, color=f"C{k}",
                       label=f"running_var, iter {k} = {it['running_var'][0]:.2f}")
        ax.plot([], [], "kx", label="by hand")
        ax.set_title(f"{name}: input {tuple(res['input_shape'])}", fontsize=10)
        ax.set_xlabel("channel (constant value c)")
        ax.set_xticks(channels)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("running statistic")
    fig.suptitle(f"BatchNorm running statistics, momentum {MOMENTUM}, two iterations (jaxnorm)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run(out_dir, *, verbose: bool = True) -> dict:
    """Run the three demos; write ``bn_running_stats.json`` and ``bn_running_stats.png`` into ``out_dir``.

    Returns ``{"bn1d", "bn2d", "bn3d": demo results, "lesson": LESSON, "files": {...}}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_demo(name, verbose=verbose) for name in DEMOS}
    files = {"json": out / "bn_running_stats.json", "figure": out / "bn_running_stats.png"}
    files["json"].write_text(json.dumps({**results, "lesson": LESSON}, indent=1) + "\n")
    plot(results, files["figure"])
    worst = max(r["max_abs_diff_vs_hand"] for r in results.values())
    print(f"\nmax |jaxnorm - hand computation| over all demos: {worst:.2e}")
    print(f"wrote {files['json']}, {files['figure']}")
    return {**results, "lesson": LESSON, "files": {k: str(v) for k, v in files.items()}}


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.bn_running_stats", description=__doc__.split("\n\n")[0],
                                epilog="Writes bn_running_stats.json and bn_running_stats.png into --out.")
    p.add_argument("--out", type=Path, default=Path("results/bn_running_stats"),
                   help="output folder (default %(default)s)")
    args = p.parse_args(argv)
    return run(args.out)


if __name__ == "__main__":
    main()
