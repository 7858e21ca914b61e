"""Why LayerNorm, InstanceNorm and GroupNorm exist: BatchNorm when the batch is small.

    python -m experiments.small_batch            # the full study (about 20 minutes on 2 cores)
    python -m experiments.small_batch --norms bn gn --batch-sizes 2 32   # what separates them (about 2 minutes)
    python -m experiments.small_batch --quick    # a smoke test: one epoch on part of the data, every norm near chance

BatchNorm normalizes with the statistics of the batch, which become noisy when the batch is small, and then
differ from the running statistics used at test time; GroupNorm's paper (Wu & He 2018, Figure 1) shows BN's error
rising sharply below ~16 images per batch while GN's, which normalizes each example on its own, stays flat. This
study is that figure in miniature: LeNet on the cat/dog photos at batch sizes 2, 4, 8, 16 and 32, the learning
rate scaled linearly with the batch size from the lesson's 0.01 at 16 (the GN paper's rule), the same number of
epochs at every size, with

* ``none`` -- the lesson's LeNet; ``bn`` -- LeNet_bn; ``renorm`` -- Batch Renormalization in its place (clips
  relaxed from BN to r_max 3, d_max 5 during the run, as ``jaxnorm.renorm_clip_schedule`` does over the paper's
  steps, here scaled to the run's length);
* ``gn`` -- GroupNorm (2-3 channels per group), ``ln`` -- LayerNorm over each example's (H, W, C), ``in`` --
  InstanceNorm after the convolutions (fc1 has no spatial axes to normalize over, so it stays plain).

Every (norm, batch size) trains ``--seeds`` networks (seeds 1, 2, 3, ...: initial weights, data order and crops).
A drop from the largest to the smallest batch counts only when its 95 % confidence interval over the seeds (paired:
the same seed at both sizes) excludes 0; with 100 validation images one image is one point, and seed-to-seed
spreads of 1-5 points make a difference of a few points undecidable with 5 seeds.
batches smaller than 8 are padded to 8 and masked, so BatchNorm sees exactly the batch's real images and one
compiled step serves batch sizes 2, 4 and 8. Writes ``small_batch.json`` (final validation accuracy and training loss per norm, batch size and
seed) and ``small_batch.png`` (mean ± std over seeds against batch size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

import jaxnorm as jn
from experiments.common import images, models, plots, steps, training
from experiments.common.compile import compile_options

NORMS = models.NORMS
BATCH_SIZES = (2, 4, 8, 16, 32)
BASE_LR, BASE_BATCH, MOMENTUM = 0.01, 16, 0.9
MIN_CAPACITY = 8  # smaller batches are padded to 8 (masked): one compiled step for batch sizes 2, 4 and 8


@dataclasses.dataclass(frozen=True)
class Study:
    norms: tuple[str, ...] = NORMS
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    seeds: int = 5
    epochs: int = 10
    train_images: int | None = None  # a subset of the training set (--quick)
    data: str | None = None
    out: Path = Path("results/small_batch")


# ------------------------------------------------------------------------------------------------ 1. data
def load_data(study: Study) -> images.Dataset:
    data = images.load_dataset(study.data)
    if study.train_images:  # the first n of a random permutation: both classes, whatever the file's order
        keep = np.random.default_rng(0).permutation(len(data.train_y))[:study.train_images]
        data = dataclasses.replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep])
    return data


# ------------------------------------------------------------------------------------ 2. model and optimizer
def make_task(norm: str, data: images.Dataset) -> training.Task:
    """LeNet with ``norm``, SGD + momentum with the learning rate as a state entry (set per batch size), and for
    renorm the clip schedule read from the state (its step counts depend on the run's length)."""
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=BASE_LR, momentum=MOMENTUM)

    def clips(state):
        return {"clips": jn.renorm_clip_schedule(steps.update_count(state), warmup_steps=state["schedule"][0],
                                                 r_max_steps=state["schedule"][1], d_max_steps=state["schedule"][2])}

    return steps.linen_task(models.LeNet(len(data.classes), norm=norm), tx, data.train_x[:1],
                            call_options=clips if norm == "renorm" else None)


def start_state(task: training.Task, seed: int, batch_size: int, updates: int):
    """The seed's initial state with the learning rate for ``batch_size`` and the renorm schedule: plain BN for the
    first 5 % of the updates, r_max relaxed to 3 by 40 % and d_max to 5 by 25 % of them (the paper's 5k / 40k /
    25k steps of its run, scaled)."""
    state = task.init(seed)
    opt = state["opt_state"]
    lr = jnp.asarray(BASE_LR * batch_size / BASE_BATCH, jnp.float32)
    return {**state, "opt_state": opt._replace(hyperparams={**opt.hyperparams, "learning_rate": lr}),
            "schedule": jnp.asarray([0.05, 0.4, 0.25]) * updates}


# ------------------------------------------------------------------------------------------- 3. training
def compile_programs(task: training.Task):
    """``(step, evaluate)``, jitted; the training set stays on the device and each step gathers its batch by index
    (padded to at least 8 images and masked: one program serves batch sizes 2, 4 and 8, each compiles in ~2 s)."""

    def step(state, train_x, train_y, idx, mask, offsets):
        return training.make_step(task)(state, train_x[idx], train_y[idx], mask, offsets)

    def evaluate(state, x, y):
        return task.eval_step(state, x, y, jnp.ones(len(y), bool))

    return (jax.jit(step, donate_argnums=0, compiler_options=compile_options("step")),
            jax.jit(evaluate, compiler_options=compile_options("eval")))


def train(task, programs, data, study: Study, batch_size: int) -> dict[str, list[float]]:
    """Train ``study.seeds`` networks at ``batch_size`` for ``study.epochs``; final valid accuracy and train loss."""
    step, evaluate = programs
    n, capacity = len(data.train_y), max(MIN_CAPACITY, batch_size)
    updates = study.epochs * training.steps_per_epoch(n, batch_size)
    train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    out = {"valid_acc": [], "train_loss": []}
    for seed in range(1, study.seeds + 1):
        state = start_state(task, seed, batch_size, updates)
        for epoch in range(study.epochs):
            order, offsets = training.epoch_order(seed, epoch, n)
            offsets = np.resize(offsets, (len(offsets) + capacity, 2))  # rows for the padding
            losses = []
            for k, (idx, mask) in enumerate(training.padded_batches(order, batch_size)):
                pad = np.arange(capacity) < mask.sum()
                state, (loss, _) = step(state, train_x, train_y, np.resize(idx, capacity), pad,
                                        offsets[k * batch_size:k * batch_size + capacity])
                losses.append(loss)
        _, correct = evaluate(state, jnp.asarray(data.valid_x), jnp.asarray(data.valid_y))
        out["valid_acc"].append(int(correct) / len(data.valid_y))
        out["train_loss"].append(float(np.mean(jax.device_get(losses))))  # the last epoch's mean batch loss
    return out


def run_norm(norm: str, data, study: Study, log) -> dict[int, dict]:
    t0 = time.perf_counter()
    task = make_task(norm, data)
    programs = compile_programs(task)
    out = {b: train(task, programs, data, study, b) for b in study.batch_sizes}
    accs = ", ".join(f"{b}: {100 * np.mean(r['valid_acc']):.1f}%" for b, r in out.items())
    log(f"{norm:>6}: valid accuracy by batch size {accs} ({time.perf_counter() - t0:.0f} s)")
    return out


# ------------------------------------------------------------------------------------------ 4. summary, plot
CONFIDENCE = 0.95


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its two-sided Student-t confidence interval (NaN bounds for one value).

    Why a t-interval: the values are a few independent training runs (seeds), whose spread is unknown."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _drops(by_batch: dict[int, dict]) -> np.ndarray:
    """Per seed: the accuracy at the largest batch minus that at the smallest (the same seed's initial weights,
    order and crops at both: a paired difference)."""
    return np.asarray(by_batch[max(by_batch)]["valid_acc"]) - np.asarray(by_batch[min(by_batch)]["valid_acc"])


def summarize(results: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Per norm: mean and std over seeds at each batch size, and the accuracy lost from the largest to the smallest
    batch (what the GN paper's figure is about) with its confidence interval over seeds."""
    table = {}
    for norm, by_batch in results.items():
        rows = {b: {k: (float(np.mean(v)), float(np.std(v))) for k, v in r.items()} for b, r in by_batch.items()}
        table[norm] = {"rows": rows, "drop_small_vs_large": mean_interval(_drops(by_batch))}
    return table


def _interval(low: float, high: float) -> str:
    return "no interval from one seed" if math.isnan(low) else f"{CONFIDENCE:.0%} CI {100 * low:.1f} to {100 * high:.1f}"


def _verdict(low: float, high: float, positive: str, negative: str) -> str:
    if math.isnan(low) or low <= 0 <= high:
        return "not distinguishable from seed-to-seed noise at this size"
    return positive if low > 0 else negative


def conclusions(results: dict[str, dict[int, dict]], seeds: int) -> list[str]:
    """Statements derived from the numbers (whatever they are), each with its interval: a norm's drop from the
    largest to the smallest batch, and BatchNorm's drop against each per-example norm's (paired by seed)."""
    small, large = min(next(iter(results.values()))), max(next(iter(results.values())))
    lines = []
    for norm, by_batch in results.items():
        mean, low, high = mean_interval(_drops(by_batch))
        lines.append(f"{norm}: accuracy at batch {large} minus batch {small}: {100 * mean:+.1f} points "
                     f"({_interval(low, high)}, {seeds} seeds): "
                     + _verdict(low, high, "a drop at small batches", "a gain at small batches"))
    for other in (n for n in results if n not in ("bn", "none") and "bn" in results):
        mean, low, high = mean_interval(_drops(results["bn"]) - _drops(results[other]))
        lines.append(f"bn loses {100 * mean:+.1f} points more than {other} ({_interval(low, high)}): "
                     + _verdict(low, high, f"bn suffers more from small batches than {other}",
                                f"{other} suffers more from small batches than bn"))
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.small_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Study.out, help="output folder (default %(default)s)")
    p.add_argument("--data", default=None, help="as experiments.lenet's --data (default: the embedded photos)")
    p.add_argument("--quick", action="store_true", help="one epoch on 192 training images: the full run's shape")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (default {Study.epochs}, 1 with --quick)")
    p.add_argument("--seeds", type=int, default=Study.seeds, help="networks per point (default %(default)s)")
    p.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS), help="norms to compare")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES),
                   help="batch sizes (default %(default)s); the drop is from the largest to the smallest")
    args = p.parse_args(argv)
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1):
        p.error("--seeds and --epochs must be >= 1")
    if len(set(args.batch_sizes)) < 2 or min(args.batch_sizes) < 1:
        p.error(f"--batch-sizes needs at least two different sizes >= 1, got {args.batch_sizes}")
    study = Study(norms=tuple(args.norms), batch_sizes=tuple(sorted(set(args.batch_sizes))), seeds=args.seeds,
                  data=args.data, out=args.out,
                  epochs=args.epochs or (1 if args.quick else Study.epochs), train_images=192 if args.quick else None)
    return run(study)


def run(study: Study, log=print) -> dict:
    """The study; writes small_batch.json and small_batch.png into ``study.out`` and returns what it wrote."""
    t0 = time.perf_counter()
    data = load_data(study)
    log(f"data: {data.describe()}; batch sizes {study.batch_sizes}, {study.epochs} epochs, {study.seeds} seeds")
    results = {norm: run_norm(norm, data, study, log) for norm in study.norms}
    table = summarize(results)
    report = {"settings": {**{k: v for k, v in dataclasses.asdict(study).items() if k != "out"},
                           "data_source": data.source, "base_lr": BASE_LR, "base_batch": BASE_BATCH},
              "results": {n: {str(b): r for b, r in by.items()} for n, by in results.items()},
              "summary": {n: {"rows": {str(b): r for b, r in t["rows"].items()},
                              "drop_small_vs_large": t["drop_small_vs_large"]} for n, t in table.items()},
              "conclusions": conclusions(results, study.seeds), "seconds": round(time.perf_counter() - t0, 1)}
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "small_batch.json").write_text(json.dumps(report, indent=1))
    plots.plot_small_batch(table, study.out / "small_batch.png",
                           f"LeNet on {data.source}: {study.epochs} epochs, lr 0.01 x batch/16, mean ± std over "
                           f"{study.seeds} seeds")
    for line in report["conclusions"]:
        log(line)
    log(f"wrote {study.out / 'small_batch.json'} and small_batch.png in {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
