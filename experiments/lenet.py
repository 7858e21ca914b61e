"""LeNet vs LeNet_bn: the lesson's training comparison, on photos, CIFAR-10 cat/dog, or a synthetic set.

    python -m experiments.lenet --data ../shared/data/cats_dogs --out results/lenet

Configs (all trained from the same seed):

* ``plain`` -- LeNet with PyTorch's default initialization,
* ``init``  -- LeNet with the lesson's ``initialize_weights`` (xavier_normal conv, N(0, 1) linear, zero bias),
* ``bn``    -- LeNet_bn (BatchNorm after conv1, conv2, fc1; jaxnorm.linen).

SGD(lr 0.01, momentum 0.9), StepLR(10, 0.1) per epoch, batch 16 (the last, smaller batch of an epoch is kept,
as PyTorch's DataLoader does), 10 epochs, seed 1, RandomCrop(32, padding=4) on training images -- the
lesson's settings. Models are NHWC (see experiments.models). Outputs in ``--out``:

* ``metrics.json`` -- ``{config: [{"epoch", "train_loss", "train_acc", "valid_loss", "valid_acc"}, ...]}``.
  ``epoch`` is 0-based, as printed; ``train_loss`` is the mean of the epoch's batch losses (the lesson's
  ``loss_mean``), ``train_acc`` correct/seen over the epoch, ``valid_loss`` the mean loss per validation
  example, ``valid_acc`` the validation accuracy (the lesson's script printed the *training* accuracy on its
  Valid line; this one does not). A non-finite value is written as ``null`` (strict JSON); ``main()`` returns
  the same dict with ``float('nan')`` there.
* ``curves.png`` -- loss (log scale) and accuracy per epoch, train solid, valid dashed; a config whose loss
  became NaN is drawn up to its last finite epoch and named in the title.
* ``bn_extras.json`` (when ``bn`` ran) -- the valid accuracy/loss before and after precise-BN recalibration
  (``jaxnorm.linen.recalibrate_batch_stats`` over the training batches) and, with ``--export-folded FILE``,
  the largest logit difference of the folded model. FILE holds ``{"params": ...}`` for
  ``experiments.models.LeNet`` (``flax.serialization.msgpack_restore``): LeNet_bn with bn1/bn2/bn3 folded into
  conv1/conv2/fc1 by ``jaxnorm.fold_batch_norm``.

Without ``--data`` a SYNTHETIC two-class set generated in code is used (clearly labelled in the output).
Exit status 2 with a one-line ``lenet: error: ...`` for bad data (missing/empty folder, one class, no valid
split, too many unreadable images), a checkpoint directory from a different run, or flags that cannot work.

Speed (CPU): images are decoded once and shared by the configs; every compiled program is built up front in
a thread pool, next to image decoding and the first config's training; an epoch syncs with the host once.
Compilation is most of a 3 x 10-epoch run; set ``JAX_COMPILATION_CACHE_DIR`` (jax's persistent cache) to reuse
it across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = ("plain", "init", "bn")


class UsageError(ValueError):
    """Flags that cannot work together (reported like a data error: one line, exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.lenet",
        description="Train LeNet (plain / init) and LeNet_bn (bn) as in the lesson; write metrics.json and "
                    "curves.png. Without --data, a synthetic two-class image set generated in code is used.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="DIR/train/<class>/*, DIR/valid/<class>/* (or Kaggle flat "
                   "cat.N.jpg / dog.N.jpg in DIR/train and DIR/valid), or CIFAR-10 python batches (cat vs dog)")
    p.add_argument("--out", default="results/lenet", help="output directory")
    p.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None,
                   help="write an atomic checkpoint after every epoch (one subfolder per config)")
    p.add_argument("--resume", action="store_true",
                   help="continue each config from the last complete checkpoint in --checkpoint-dir")
    p.add_argument("--devices", type=int, default=1,
                   help="data-parallel over N devices (1-D mesh 'data'); --batch-size must divide by N")
    p.add_argument("--on-nan", choices=("stop", "continue"), default="continue",
                   help="when the training loss becomes NaN/Inf: stop that config or keep training")
    p.add_argument("--export-folded", metavar="FILE", default=None,
                   help="after training 'bn', fold its BN layers into conv/fc and write LeNet params (msgpack)")
    p.add_argument("--inspect", action="store_true",
                   help="print per-layer activation statistics of each config at initialization")
    from experiments.distributed import add_distributed_args
    add_distributed_args(p)  # multi-host: --coordinator-address / --num-processes / --process-id (or JAX_* env)
    return p


# ------------------------------------------------------------------------------------------------ helpers
def _data_fingerprint(ds) -> str:
    h = hashlib.sha256()
    for a in (ds.train_x, ds.train_y, ds.valid_x, ds.valid_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _nan_to_none(history):
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in history]


def _make_mesh(n: int):
    if n < 1:
        raise UsageError(f"--devices must be >= 1, got {n}")
    if n == 1:
        return None
    from experiments.distributed import make_mesh
    try:
        return make_mesh(n)
    except ValueError as e:  # e.g. more devices asked for than exist
        raise UsageError(f"--devices {n}: {e}") from None


def _arch(config: str) -> str:
    return "bn" if config == "bn" else "lenet"


# Compiled programs survive across main() calls in one process (reproduce, tests): keyed by everything they
# close over, so a second run with the same shapes and hyperparameters compiles nothing.
_COMPILED: dict[tuple, dict[str, Any]] = {}


class _Run:
    """Shared state of one invocation: data, compiled trainers (one per architecture), background compiles.

    Compilation dominates a short run on CPU, so every program is compiled up front in a small thread pool
    (XLA compiles without holding the GIL): the first config starts as soon as its own programs are ready,
    while the others' compile next to its training.
    """

    def __init__(self, args, ds, mesh, pool):
        import jax.numpy as jnp

        from experiments import train

        self.args, self.ds, self.mesh, self.pool = args, ds, mesh, pool
        self.n_dev = 1 if mesh is None else mesh.size
        spe = train.updates_per_epoch(len(ds.train_y), args.batch_size, self.n_dev)
        mesh_key = None if mesh is None else tuple(d.id for d in mesh.devices.flat)
        key = (args.lr, spe, args.batch_size, len(ds.classes), mesh_key)
        if key not in _COMPILED:
            _COMPILED[key] = {"tx": train.make_optimizer(args.lr, spe), "trainers": {}, "init": {}}
        self.compiled = _COMPILED[key]
        self.tx = self.compiled["tx"]
        self.sample = jnp.zeros((1, 32, 32, 3), jnp.float32)
        self.fingerprint = _data_fingerprint(ds)
        self.initial: dict[str, Any] = {}   # config -> Future of the initial states
        self.warm: dict[str, list] = {}     # architecture -> Futures of its warm-up compiles

    def trainer(self, config):
        """plain and init share one Trainer (same architecture => same compiled programs)."""
        from experiments import models, train

        arch, trainers = _arch(config), self.compiled["trainers"]
        if arch not in trainers:
            apply_model = models.make_model("bn" if arch == "bn" else "plain", len(self.ds.classes))
            trainers[arch] = train.Trainer(apply_model, self.tx, self.args.batch_size, self.mesh)
        return trainers[arch]

    def shapes(self, config):
        """Shapes/dtypes of a config's training state (traced, not compiled)."""
        from experiments import models, train

        return train.state_shapes(models.make_model(config, len(self.ds.classes)), self.tx, self.sample)

    def start_compiles(self, configs) -> None:
        """Queue every compilation in the order the run needs it.

        The first config needs the epoch-order program, its initial state and its step first; its last-batch
        step and evaluation only at the end of its first epoch; the other configs' programs later. Two
        workers take them in that order while the main thread trains as soon as what it needs is ready.
        """
        if not configs:
            return
        first, rest = configs[:1], configs[1:]
        queue = [("init", first)]
        for config in configs:
            queue.append(("arch", config))
            if config == first[0] and rest:
                queue.append(("init", rest))
        for kind, what in queue:
            if kind == "init":
                future = self.pool.submit(self._init_fn(tuple(what)), self.args.seed, self.sample)
                self.initial.update({c: future for c in what})
                continue
            arch = _arch(what)
            if arch in self.warm:
                continue
            trainer = self.trainer(what)
            jobs = trainer.warmup_jobs(self.shapes(what), len(self.ds.train_y), (self.ds.valid_x, self.ds.valid_y))
            futures = {name: self.pool.submit(job) for name, job in jobs.items()}
            trainer.expect(futures)
            self.warm[arch] = list(futures.values())

    def _init_fn(self, configs: tuple[str, ...]):
        from experiments import models, train

        if configs not in self.compiled["init"]:
            inits = {c: models.make_model(c, len(self.ds.classes)) for c in configs}
            self.compiled["init"][configs] = train.make_init_fn(inits, self.tx)
        return self.compiled["init"][configs]

    def initial_state(self, config):
        """The config's initial state (its compiled programs are awaited by the Trainer as it needs them)."""
        return self.initial[config].result()[config]

    def meta(self, config) -> dict[str, Any]:
        a = self.args
        return {"config": config, "seed": a.seed, "lr": a.lr, "batch_size": a.batch_size,
                "data": self.fingerprint, "classes": list(self.ds.classes)}


def _checkpoint_payload(state, epoch, history, nan_at, meta, seed):
    import jax

    from experiments.train import epoch_keys

    data_key = jax.random.key_data(epoch_keys(seed, epoch + 1)[0])  # PRNG state of the next epoch
    return {"state": jax.device_get(state), "epoch": epoch, "rng_next_epoch": np.asarray(data_key),
            "history": json.dumps(history), "nan_at": json.dumps(nan_at), "meta": json.dumps(meta)}


def _resume(ckdir: Path, template, meta, seed):
    """``(state, start_epoch, history, nan_at)`` from the newest usable checkpoint, or None."""
    import jax

    from experiments.checkpoint import CheckpointError, load_latest, restore
    from experiments.train import epoch_keys

    found = load_latest(ckdir)
    if found is None:
        return None
    raw, path = found
    try:
        got = json.loads(raw["meta"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} has no readable run settings") from None
    diff = {k: (got.get(k), v) for k, v in meta.items() if got.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{path} is from a different run ({what}); use another --checkpoint-dir")
    epoch = int(raw["epoch"])
    want_key = np.asarray(jax.random.key_data(epoch_keys(seed, epoch + 1)[0]))
    if not np.array_equal(np.asarray(raw["rng_next_epoch"]), want_key):
        raise CheckpointError(f"{path}: saved PRNG state does not match seed {seed}")
    state = restore(template, raw["state"])
    nan_at = json.loads(raw["nan_at"])
    return state, epoch + 1, json.loads(raw["history"]), (tuple(nan_at) if nan_at else None), path


def _inspect(model, variables, x, config, log):
    """Print jaxnorm.inspect's per-layer table for one config at initialization (train-mode forward)."""
    try:
        from jaxnorm.inspect import activation_stats, format_table
    except ImportError:
        log("--inspect: jaxnorm.inspect.activation_stats is not available in this jaxnorm; skipped")
        return
    stats = activation_stats(model, variables, x, train=True)
    log(f"[{config}] activation statistics at initialization (train-mode forward of {x.shape[0]} training "
        f"images):\n{format_table(stats)}")


def train_config(run: _Run, config: str, log, resumed=None):
    """Train one config from scratch, or from ``resumed`` (what :func:`_resume` found); returns the fit result."""
    import jax

    from experiments import models, train

    args, ds = run.args, run.ds
    trainer = run.trainer(config)
    init_model = models.make_model(config, len(ds.classes))
    state = run.initial_state(config)
    if args.inspect:
        _inspect(init_model, {"params": state["params"], **({"batch_stats": state["batch_stats"]}
                                                           if state["batch_stats"] else {})},
                 jax.numpy.asarray(ds.train_x[: args.batch_size]), config, log)
    start, history, nan_at = 0, [], None
    ckdir = Path(args.checkpoint_dir) / config if args.checkpoint_dir else None
    meta = run.meta(config)
    if resumed is not None:
        state, start, history, nan_at, path = resumed
        log(f"[{config}] resumed from {path} (next epoch {start})")
    state = trainer.replicate(state)

    def on_epoch_end(epoch, st, hist, nan):
        if ckdir is not None and jax.process_index() == 0:  # one writer when several hosts train together
            from experiments.checkpoint import save_checkpoint
            save_checkpoint(ckdir, epoch, _checkpoint_payload(st, epoch, hist, nan, meta, args.seed))

    log(f"[{config}] {type(init_model).__name__}"
        + (f" (init={init_model.init_scheme})" if config != "bn" else "")
        + f", {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}")
    return train.fit(trainer, state, ds, epochs=args.epochs, seed=args.seed, start_epoch=start,
                     history=history, nan_at=nan_at, on_nan=args.on_nan, on_epoch_end=on_epoch_end,
                     desc=config, log=log)


# ------------------------------------------------------------------------------------------------ BN extras
def export_folded(run: _Run, state, path: str, log) -> float:
    """Fold bn1/bn2/bn3 of a trained LeNet_bn into conv1/conv2/fc1; write ``{"params": ...}`` for LeNet.

    Returns the largest |logit difference| (eval mode) between the folded LeNet and LeNet_bn on the valid set.
    """
    import jax
    import jax.numpy as jnp
    from flax import serialization

    import jaxnorm as jn
    from experiments import models

    params, stats = jax.device_get(state["params"]), jax.device_get(state["batch_stats"])
    folded = {k: dict(params[k]) for k in ("conv1", "conv2", "fc1", "fc2", "fc3")}
    for layer, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("fc1", "bn3")):
        k, b = jn.fold_batch_norm(params[layer]["kernel"], params[layer]["bias"], params[bn], stats[bn],
                                  eps=1e-5, out_axis=-1)
        folded[layer] = {"kernel": np.asarray(k), "bias": np.asarray(b)}
    x = jnp.asarray(run.ds.valid_x)
    ref = models.LeNetBN(len(run.ds.classes)).apply({"params": params, "batch_stats": stats}, x, train=False)
    got = models.LeNet(len(run.ds.classes)).apply({"params": folded}, x)
    err = float(jnp.max(jnp.abs(ref - got)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(serialization.msgpack_serialize({"params": jax.tree.map(np.asarray, folded)}))
    log(f"[bn] folded LeNet_bn -> LeNet params written to {path}; max |logit difference| on valid: {err:.2e}")
    return err


def recalibrate(run: _Run, state) -> tuple[dict[str, float] | None, str]:
    """Precise BN: recompute the bn running statistics over the (un-augmented) training batches.

    Returns ``(numbers for bn_extras.json or None, a line for the log)``: valid accuracy/loss before and after.
    """
    try:
        from jaxnorm import recalibrate_batch_stats
    except ImportError:
        return None, "[bn] precise-BN recalibration skipped: jaxnorm.linen.recalibrate_batch_stats is not available"
    import jax
    import jax.numpy as jnp

    from experiments import models

    ds, b = run.ds, run.args.batch_size
    model = models.LeNetBN(len(ds.classes))
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    batches = [jnp.asarray(ds.train_x[i: i + b]) for i in range(0, len(ds.train_y) - b + 1, b)]
    if not batches:
        return None, "[bn] precise-BN recalibration skipped: fewer training images than one batch"
    new_vars = recalibrate_batch_stats(model, variables, batches, train=True)
    trainer = run.trainer("bn")
    before = trainer.evaluate(state, ds.valid_x, ds.valid_y)
    after = trainer.evaluate({"params": state["params"], "batch_stats": jax.device_get(new_vars["batch_stats"])},
                             ds.valid_x, ds.valid_y)
    message = (f"[bn] precise BN (running stats recomputed over {len(batches)} training batches): valid acc "
               f"{before[1]:.2%} -> {after[1]:.2%}, valid loss {before[0]:.4f} -> {after[0]:.4f}")
    return ({"valid_acc_before": before[1], "valid_acc_after": after[1], "valid_loss_before": before[0],
             "valid_loss_after": after[0], "batches": len(batches)}, message)


# ------------------------------------------------------------------------------------------------ outputs
def _import_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def plot_curves(metrics: dict[str, list[dict]], path: Path, title: str,
                nan_at: dict[str, tuple[int, int]] | None = None) -> None:
    """Loss (log scale) and accuracy per epoch; train solid, valid dashed, one colour per config.

    A config whose training loss stopped being finite is drawn only up to its last finite epoch (an x marks the
    end) and named in a note; its accuracies after that are not drawn either (argmax of NaN logits is not a
    prediction), though metrics.json keeps every measured number.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan_at = nan_at or {}
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"plain": "tab:blue", "init": "tab:red", "bn": "tab:green"}
    notes = []
    for config, hist in metrics.items():
        ep = np.array([r["epoch"] for r in hist])
        finite = np.array([r["train_loss"] is not None and math.isfinite(r["train_loss"]) for r in hist], bool)
        upto = len(hist) if finite.all() else int(np.argmin(finite))  # epochs before the first non-finite one
        c = colors.get(config)
        for key, ax, style in (("train_loss", ax_l, "-"), ("valid_loss", ax_l, "--"),
                               ("train_acc", ax_a, "-"), ("valid_acc", ax_a, "--")):
            v = np.array([np.nan if r[key] is None else r[key] for r in hist[:upto]], float)
            ax.plot(ep[:upto], v, style, color=c, marker=".", label=f"{config} {key.split('_')[0]}")
            if upto < len(hist) and upto > 0:
                ax.plot(ep[upto - 1], v[-1], "x", color=c, markersize=10)
        if upto < len(hist):
            e, it = nan_at.get(config, (int(ep[upto]), None))
            notes.append(f"{config}: training loss NaN/Inf from epoch {e}" + (f" iteration {it}" if it else "")
                         + (" (no finite epoch to draw)" if upto == 0 else " (curve stops at x)"))
    ax_l.set(yscale="log", xlabel="epoch", ylabel="cross-entropy loss", title="loss (solid train, dashed valid)")
    ax_a.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy (solid train, dashed valid)")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(metrics, nan_info, log):
    log(f"{'config':<7} {'train_loss':>10} {'train_acc':>9} {'valid_loss':>10} {'valid_acc':>9}  diverged")
    for config, hist in metrics.items():
        if not hist:
            continue
        r = hist[-1]
        nan = nan_info.get(config)
        log(f"{config:<7} {r['train_loss']:>10.4f} {r['train_acc']:>9.2%} {r['valid_loss']:>10.4f} "
            f"{r['valid_acc']:>9.2%}  " + (f"yes (epoch {nan[0]}, iteration {nan[1]})" if nan else "no"))


# ------------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace, log=print) -> dict[str, list[dict]]:
    """Everything :func:`main` does, raising DataError/CheckpointError/ValueError instead of exiting."""
    t0 = time.perf_counter()
    from experiments.data import SYNTHETIC_LABEL, load_dataset

    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir")
    if args.epochs < 0:
        raise UsageError(f"--epochs must be >= 0, got {args.epochs}")
    if args.devices < 1 or args.batch_size < 1 or args.batch_size % args.devices:
        raise UsageError(f"--batch-size ({args.batch_size}) must be a positive multiple of --devices "
                         f"({args.devices})")
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    if args.export_folded and "bn" not in configs:
        raise UsageError("--export-folded needs the 'bn' config (use --config bn or all)")
    from experiments.distributed import maybe_initialize
    try:
        if maybe_initialize(args):  # before any other JAX call; a no-op for one process
            log(f"jax.distributed: process {args.process_id} of {args.num_processes}")
    except ValueError as e:
        raise UsageError(str(e)) from None
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lenet")
    try:
        # decode images (Pillow, GIL released) and import matplotlib while jax/flax import and compile
        data_future = pool.submit(load_dataset, args.data, args.seed)
        pool.submit(_import_pyplot)
        mesh = _make_mesh(args.devices)
        ds = data_future.result()
        if args.data is None:
            log(f"NOTE: no --data given: using {SYNTHETIC_LABEL}")
        log(f"data: {ds.describe()}" + (f"; skipped {len(ds.skipped)} unreadable" if ds.skipped else ""))
        t_data = time.perf_counter() - t0
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        metrics, nan_info, extras, bn_state = {}, {}, {}, None
        run_ = _Run(args, ds, mesh, pool)
        rest = len(ds.train_y) % args.batch_size
        if rest % args.devices:
            log(f"note: the last batch of each epoch ({rest} examples) is cut to {rest - rest % args.devices} so "
                f"that it splits over {args.devices} devices")
        resumed = {}
        if args.resume:  # before compiling anything: a checkpoint from another run is an immediate error
            for config in configs:
                resumed[config] = _resume(Path(args.checkpoint_dir) / config, run_.shapes(config),
                                          run_.meta(config), args.seed)
        run_.start_compiles(configs)
        for config in configs:
            result = train_config(run_, config, log, resumed.get(config))
            metrics[config] = [{k: (float("nan") if v is None else v) for k, v in r.items()}
                               for r in result.history]
            if result.nan_at:
                nan_info[config] = result.nan_at
            if config == "bn" and args.epochs > 0:
                if args.export_folded:
                    extras["folded_max_logit_diff"] = export_folded(run_, result.state, args.export_folded, log)
                bn_state = result.state
        (out / "metrics.json").write_text(json.dumps({c: _nan_to_none(h) for c, h in metrics.items()}, indent=1))
        # precise BN (a compile and 1 + len(train) / batch forward passes) runs next to the plotting
        recal = pool.submit(recalibrate, run_, bn_state) if bn_state is not None else None
        src = "SYNTHETIC data" if args.data is None else str(args.data)
        plot_curves({c: _nan_to_none(h) for c, h in metrics.items()}, out / "curves.png",
                    f"LeNet on {src}: SGD lr {args.lr} momentum 0.9, batch {args.batch_size}, seed {args.seed}",
                    nan_info)
        if recal is not None:
            precise, message = recal.result()
            log(message)
            if precise:
                extras["precise_bn"] = precise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if extras:
        (out / "bn_extras.json").write_text(json.dumps(extras, indent=1))
    _summary(metrics, nan_info, log)
    log(f"wrote {out / 'metrics.json'} and {out / 'curves.png'}; wall time {time.perf_counter() - t0:.1f} s "
        f"(data {t_data:.1f} s)")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """CLI entry point; returns ``{config: [epoch records]}`` (NaN as float('nan')).

    Bad data or an unusable checkpoint: one line ``lenet: error: ...`` on stderr and ``SystemExit(2)``
    (argparse's convention); warnings (skipped images/checkpoints) print as ``lenet: warning: ...``.
    """
    from experiments.checkpoint import CheckpointError, CheckpointWarning
    from experiments.data import DataError, DataWarning

    args = build_parser().parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"lenet: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.simplefilter("always", CheckpointWarning)
        warnings.showwarning = show
        try:
            return run(args)
        except (DataError, CheckpointError, UsageError) as e:  # the user's input, not a bug: no traceback
            print(f"lenet: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
    sys.exit(0)
