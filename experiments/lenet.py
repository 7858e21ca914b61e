"""LeNet vs LeNet_bn: the lesson's training comparison, in JAX.

    python -m experiments.lenet                          # the embedded cat/dog photos (data/cats_dogs_32.npz)
    python -m experiments.lenet --data ../shared/data/cats_dogs --out results/lenet

Three configs, each trained from the same seed (the lesson's settings: SGD lr 0.01 momentum 0.9, StepLR(10, 0.1),
batch 16 with the last, smaller batch kept, 10 epochs, seed 1, RandomCrop(32, padding=4) on training images):

* ``plain`` -- LeNet with PyTorch's default initialization,
* ``init``  -- LeNet with the lesson's ``initialize_weights`` (xavier_normal conv, N(0, 1) linear, zero bias),
* ``bn``    -- LeNet_bn (BatchNorm after conv1, conv2 and fc1; jaxnorm.linen, jaxnorm.nnx with ``--api nnx``, or
  jaxnorm.equinox with ``--api equinox``).

Writes into ``--out``: ``metrics.json`` (``{config: [{"epoch", "train_loss", "train_acc", "valid_loss",
"valid_acc"}, ...]}``, NaN as ``null``), ``curves.png``, ``timing.json`` (wall seconds split into data,
compilation, training and evaluation, and the training throughput), ``run.json`` (the settings and the data
used) and, when ``bn`` ran, ``bn_extras.json``
(precise BN; the folded model's error with ``--export-folded``). ``--data synthetic`` trains on a generated
two-class set instead (clearly labelled). Bad data, a checkpoint of another run, or flags that cannot work end
with one ``lenet: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import jax

from experiments.common import bn_extras, checkpoint, compile, devices, images, models, plots, steps, training
from experiments.common.checkpoint import CheckpointError, CheckpointWarning
from experiments.common.images import DataError, DataWarning

CONFIGS = models.CONFIGS
APIS = ("linen", "nnx", "equinox")


class UsageError(ValueError):
    """Flags that cannot work together (reported like a data error: one line, exit status 2)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, parsed once from the command line."""

    configs: tuple[str, ...] = CONFIGS
    data: str | None = None
    out: Path = Path("results/lenet")
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.01
    seed: int = 1
    api: str = "linen"
    devices: int = 1
    checkpoint_dir: Path | None = None
    resume: bool = False
    on_nan: str = "continue"
    export_folded: Path | None = None
    inspect: bool = False
    compile_cache: str | None = None  # a folder, "off", or None: the configured or default folder


# ------------------------------------------------------------------------------------------------ 1. data
def load_data(cfg: RunConfig, log) -> images.Dataset:
    """The photos (or the set named by ``--data``), resized to 32x32 and normalized once."""
    data = images.load_dataset(cfg.data, cfg.seed)
    log(f"data: {data.describe()}" + (f"; skipped {len(data.skipped)} unreadable" if data.skipped else ""))
    return data


# ------------------------------------------------------------------------------ 2. model, 3. loss and optimizer
def make_task(config: str, cfg: RunConfig, data: images.Dataset) -> training.Task:
    """The config's model with the lesson's loss (cross-entropy) and optimizer (SGD + momentum, StepLR)."""
    tx = training.make_optimizer(cfg.lr, training.steps_per_epoch(len(data.train_y), cfg.batch_size))
    sample = data.train_x[:1]
    if cfg.api == "nnx":  # imported only here: a linen run never loads flax.nnx
        from experiments.common import steps_nnx

        return steps_nnx.nnx_task(config, len(data.classes), tx, sample)
    if cfg.api == "equinox":  # optional: imported only here (parse_config checked that Equinox is installed)
        from experiments.common import steps_equinox

        return steps_equinox.equinox_task(config, len(data.classes), tx, sample)
    architecture = models.make_model("bn" if config == "bn" else "plain", len(data.classes))
    return steps.linen_task(architecture, tx, sample, init_model=models.make_model(config, len(data.classes)))


# ------------------------------------------------------------------------------------------ 4. training loop
def arch_of(config: str) -> str:
    return "bn" if config == "bn" else "lenet"


def prepare_run(config: str, state, cfg: RunConfig, data, mesh, compiled: training.Compiled, log) -> training.Run:
    """One config's training with its architecture's compiled programs, from its initial ``state`` or from its newest
    checkpoint (``--resume``)."""
    meta = {"config": config, "seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size, "api": cfg.api,
            "data": images.fingerprint(data), "classes": list(data.classes)}
    ckdir = None if cfg.checkpoint_dir is None else cfg.checkpoint_dir / config
    found = checkpoint.resume(ckdir, jax.eval_shape(lambda: state), meta, cfg.seed) if cfg.resume else None
    start, history, nan_at = 0, [], None
    if found is not None:
        state, start, history, nan_at, path = found
        log(f"[{config}] resumed from {path} (next epoch {start})")
    if cfg.inspect:
        log(bn_extras.activation_table(config, state, data.train_x[:cfg.batch_size], cfg.api, len(data.classes)))

    def on_epoch_end(epoch, st, hist, nan):
        if ckdir is not None and jax.process_index() == 0:  # one writer when several hosts train together
            checkpoint.save_epoch(ckdir, epoch, st, hist, nan, meta, cfg.seed)

    log(f"[{config}] {cfg.api} LeNet{'_bn' if config == 'bn' else f' (init={config})'}, {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}")
    return training.Run(compiled, devices.replicate(mesh, state), start, history, nan_at, on_epoch_end, config, log)


def train(cfg: RunConfig, initial: dict, data, mesh, programs: dict, timer: training.Timer, log
          ) -> dict[str, training.FitResult]:
    """Every config from its initial state (or checkpoint), side by side (:func:`training.fit`: one thread per
    config on one device; in turn on a mesh). Each config's lines stay together, in config order: the first
    config's as they come, the others' after it."""
    kept = {c: [] for c in cfg.configs[1:]}
    runs = {c: prepare_run(c, initial[c], cfg, data, mesh, programs[arch_of(c)], kept[c].append if c in kept else log)
            for c in cfg.configs}
    try:
        return training.fit(runs, data, epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size, timer=timer,
                            on_nan=cfg.on_nan, workers=len(runs) if mesh is None else 1)
    finally:
        for lines in kept.values():
            for line in lines:
                log(line)


# ------------------------------------------------------------------------------------------------ 5. plot
def write_outputs(cfg: RunConfig, data, results: dict, timer: training.Timer, wall: float, log) -> dict:
    """metrics.json, curves.png and timing.json; returns the metrics (NaN as float('nan'))."""
    metrics = {c: r.history for c, r in results.items()}
    nan_at = {c: r.nan_at for c, r in results.items() if r.nan_at}
    (cfg.out / "metrics.json").write_text(json.dumps(plots.nan_to_none(metrics), indent=1))
    plots.plot_curves(plots.nan_to_none(metrics), cfg.out / "curves.png",
                      f"LeNet on {data.source}: SGD lr {cfg.lr} momentum 0.9, batch {cfg.batch_size}, seed "
                      f"{cfg.seed}", nan_at)
    seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
    timing = {"wall": round(wall, 3), **seconds, "other": round(wall - sum(timer.seconds.values()), 3),
              "train_images": timer.images,
              "train_images_per_s": round(timer.images / max(timer.seconds.get("train", 0), 1e-9), 1)}
    (cfg.out / "timing.json").write_text(json.dumps(timing, indent=1))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    (cfg.out / "run.json").write_text(json.dumps({**settings, "data_source": data.source}, indent=1))
    plots.print_summary(metrics, nan_at, log)
    log(f"wrote {cfg.out / 'metrics.json'}, curves.png, timing.json, run.json; wall {wall:.1f} s: data {seconds.get('data')}, "
        f"compile {seconds.get('compile')}, train {seconds.get('train')}, eval {seconds.get('eval')} s; "
        f"{timing['train_images_per_s']:.0f} training images/s")
    return metrics


# ------------------------------------------------------------------------------------------------ main
def run(cfg: RunConfig, log=print) -> dict[str, list[dict]]:
    """Everything :func:`main` does, raising DataError/CheckpointError/UsageError instead of exiting."""
    with compile.persistent_cache(cfg.compile_cache) as folder:
        log(f"compilation cache: {folder or 'off'}")
        return _run(cfg, log)


def _run(cfg: RunConfig, log) -> dict[str, list[dict]]:
    t0 = time.perf_counter()
    timer = training.Timer()
    data = load_data(cfg, log)
    if cfg.inspect and "bn" in cfg.configs and len(data.train_y) < 2:  # training itself masks such a batch
        raise UsageError(f"--inspect needs at least 2 training images for LeNet_bn (its train-mode BatchNorm1d has "
                         f"no variance over 1 image), got {len(data.train_y)}")
    timer.add("data", t0)
    mesh = _mesh(cfg.devices)
    cfg.out.mkdir(parents=True, exist_ok=True)
    tasks = {config: make_task(config, cfg, data) for config in cfg.configs}
    t = time.perf_counter()
    programs = {}  # compiled ahead of time, once per architecture: plain and init share LeNet's
    for config, task in tasks.items():
        if arch_of(config) not in programs:
            programs[arch_of(config)] = training.Compiled.build(task, data, cfg.batch_size, mesh)
    initial = training.initial_states(tasks, cfg.seed)  # every config's initialization is compiled, then run once
    timer.add("compile", t)
    results = train(cfg, initial, data, mesh, programs, timer, log)
    extras = {}
    if "bn" in results and cfg.epochs > 0:
        bn = results["bn"]
        t = time.perf_counter()
        extras = bn_extras.precise_bn(bn, programs["bn"], data, cfg.batch_size, cfg.api, log)
        if cfg.export_folded:
            extras["folded_max_logit_diff"] = bn_extras.export_folded(bn.state, data, cfg.export_folded, cfg.api,
                                                                      log)
        timer.add("bn_extras", t)
        (cfg.out / "bn_extras.json").write_text(json.dumps(extras, indent=1))
    return write_outputs(cfg, data, results, timer, time.perf_counter() - t0, log)


def _mesh(n: int):
    if n == 1 and jax.process_count() == 1:
        return None
    try:
        return devices.make_mesh(n)
    except ValueError as e:  # e.g. more devices asked for than exist
        raise UsageError(f"--devices {n}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.lenet", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="default: the embedded photos; 'synthetic'; a folder DIR/train/"
                   "<class>/*, DIR/valid/<class>/* (or Kaggle flat cat.N.jpg), CIFAR-10 batches, or a .npz file")
    p.add_argument("--out", type=Path, default=Path("results/lenet"), help="output directory")
    p.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    p.add_argument("--api", choices=APIS, default="linen",
                   help="the models' front-end: Flax linen or NNX modules, or Equinox modules (jaxnorm.equinox, vmapped "
                   "over the batch; needs the optional Equinox: pip install 'jaxnorm[equinox]'); the same initial "
                   "weights and, to float32 rounding, the same metrics")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--devices", type=int, default=1, help="data-parallel over N devices (1-D mesh 'data')")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="an atomic checkpoint after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--on-nan", choices=("stop", "continue"), default="continue",
                   help="when the training loss becomes NaN/Inf: stop that config or keep training")
    p.add_argument("--export-folded", type=Path, metavar="FILE", default=None,
                   help="after training 'bn', fold its BN layers into conv/fc and write LeNet params (msgpack)")
    p.add_argument("--inspect", action="store_true", help="print per-layer activation statistics at initialization")
    p.add_argument("--compile-cache", metavar="DIR|off", default=None,
                   help="JAX's persistent compilation cache: a run loads the programs an earlier run compiled "
                   "instead of compiling them again; 'off' compiles everything (default: $JAX_COMPILATION_CACHE_DIR "
                   f"if set, none if JAX_ENABLE_COMPILATION_CACHE=false, else {compile.default_cache_dir()})")
    return devices.add_distributed_args(p)  # multi-host: --coordinator-address, --num-processes, --process-id


def parse_config(argv) -> tuple[RunConfig, argparse.Namespace]:
    """The run's settings, or UsageError for flags (or JAX_* environment variables) that cannot work."""
    try:
        args = build_parser().parse_args(argv)
        devices.distributed_kwargs(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir")
    if args.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {args.epochs}")
    if args.devices < 1 or args.batch_size < 1 or args.batch_size % args.devices:
        raise UsageError(f"--batch-size ({args.batch_size}) must be a positive multiple of --devices "
                         f"({args.devices})")
    if args.api == "equinox":
        _require_equinox()
    configs = CONFIGS if args.config == "all" else (args.config,)
    if args.export_folded and "bn" not in configs:
        raise UsageError("--export-folded needs the 'bn' config (use --config bn or all)")
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"configs"}
    return RunConfig(configs=configs, **{k: v for k, v in vars(args).items() if k in fields}), args


def _require_equinox() -> None:
    try:
        import equinox  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--api equinox needs Equinox, which is not installed ({e}); pip install "
                         "'jaxnorm[equinox]'") from None


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """CLI entry point; returns ``{config: [epoch records]}`` (NaN as float('nan'))."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"lenet: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        for category in (DataWarning, CheckpointWarning):
            warnings.simplefilter("always", category)
        warnings.showwarning = show
        try:
            cfg, args = parse_config(argv)
            if devices.maybe_initialize(args):  # before any other JAX call; a no-op for one process
                print(f"jax.distributed: process {args.process_id} of {args.num_processes}")
            return run(cfg)
        except (DataError, CheckpointError, UsageError) as e:  # the user's input, not a bug: no traceback
            print(f"lenet: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
