"""Training for the experiments: the lesson's optimizer, one compiled step for every batch, the epoch loop.

Optimizer (the lesson's)::

    optimizer = SGD(lr, momentum=0.9);  scheduler = StepLR(step_size=10, gamma=0.1)   # scheduler.step() per epoch

PyTorch's StepLR counts *epochs*; optax schedules count *updates*. With ``S`` updates per epoch the learning rate
of update ``t`` (0-based) is therefore ``lr * gamma ** floor(t / (step_size * S))``, exactly StepLR's value for
that update's epoch. optax's SGD momentum (``v = 0.9 v + g; p -= lr v``) is PyTorch's.

Batches: an epoch visits the examples in the order of a permutation drawn from ``(seed, epoch)``; the last batch
is kept even if it is short, as PyTorch's DataLoader does — but padded to the full batch size with a mask, so that
one compiled step serves every batch on any number of devices. The loss is the mean cross-entropy over the real
examples, ``L = -(1/n) Σ_{i valid} log softmax(z_i)[y_i]`` (PyTorch's ``nn.CrossEntropyLoss()`` on the unpadded
batch), and BatchNorm's statistics are those of the real examples (``mask=``), so a padded batch computes exactly
what the short one would. Everything random in an epoch derives from ``(seed, epoch)`` alone, so any epoch can be
recomputed from a checkpoint of the state before it — which is what makes ``--resume`` bit-exact.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import devices
from experiments.common.compile import compile_options, jit_quick_compile
from experiments.common.images import Dataset, crop, crop_offsets

State = Any  # a pytree: {"params", "batch_stats", "opt_state"} (linen) or an NNX state


# ------------------------------------------------------------------------------------------------ optimizer
def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Updates per epoch with the last, smaller batch kept (DataLoader(drop_last=False))."""
    return math.ceil(num_examples / batch_size)


def step_lr(lr: float, updates_per_epoch: int, step_size: int = 10, gamma: float = 0.1) -> optax.Schedule:
    """PyTorch StepLR(step_size, gamma), stepped per epoch, as an optax schedule over update counts."""
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
    return optax.exponential_decay(lr, transition_steps=step_size * updates_per_epoch, decay_rate=gamma,
                                   staircase=True)


def make_optimizer(lr: float, updates_per_epoch: int, momentum: float = 0.9) -> optax.GradientTransformation:
    """The lesson's ``SGD(lr, momentum=0.9)`` with ``StepLR(10, 0.1)``."""
    return optax.sgd(step_lr(lr, updates_per_epoch), momentum=momentum)


def cross_entropy(logits, labels, mask):
    """``(mean cross-entropy over the real examples, number of correct real examples)``."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    count = jnp.maximum(jnp.sum(mask), 1).astype(losses.dtype)  # the int count as the losses' float: explicit
    return jnp.sum(jnp.where(mask, losses, 0.0)) / count, jnp.sum((jnp.argmax(logits, -1) == labels) & mask)


# ------------------------------------------------------------------------------------------------ randomness
def init_key(seed) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 0)  # stream 0: model init; stream 1: data


def epoch_keys(seed, epoch) -> tuple[jax.Array, jax.Array]:
    """``(permutation key, augmentation key)`` of one epoch: a function of ``(seed, epoch)`` only."""
    data_root = jax.random.fold_in(jax.random.key(seed), 1)
    perm_key, crop_key = jax.random.split(jax.random.fold_in(data_root, epoch))
    return perm_key, crop_key


def _order(seed, epoch, positions):
    perm_key, crop_key = epoch_keys(seed, epoch)
    return jax.random.permutation(perm_key, positions), crop_offsets(crop_key, positions.shape[0])


_order_compiled = jit_quick_compile(_order)  # integers only and a negligible run time: compile it quickly


def epoch_order(seed: int, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(permutation of range(n), (n, 2) crop offsets)`` of one epoch; offsets follow the epoch's order."""
    order, offsets = _order_compiled(np.int32(seed), np.int32(epoch), jnp.arange(n))
    return np.asarray(order), np.asarray(offsets)


def padded_batches(order: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(indices, mask)]``: consecutive batches of ``order``, the last padded (with its first index) to full size."""
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        mask = np.arange(batch_size) < len(idx)
        batches.append((np.concatenate([idx, np.full(batch_size - len(idx), idx[0])]), mask))
    return batches


def train_batch(data: Dataset, idx: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> tuple:
    """``(images, labels, mask, crop offsets)`` of one padded batch (:func:`padded_batches`), as the step takes it."""
    return data.train_x[idx], data.train_y[idx], mask, offsets


# ------------------------------------------------------------------------------------------------ steps
@dataclasses.dataclass(frozen=True)
class Task:
    """A model and optimizer as pure functions of a state pytree (linen or NNX, see experiments.common.steps):
    ``init(seed) -> state``, ``train_step(state, x, y, mask) -> (state, (loss, correct))`` and ``eval_step(state,
    x, y, mask) -> (sum of losses, correct)``; :func:`make_step` and :func:`make_evaluate` build on them."""

    init: Callable[[int], State]
    train_step: Callable[[State, Any, Any, Any], tuple[State, tuple[Any, Any]]]  # (state, x, y, mask)
    eval_step: Callable[[State, Any, Any, Any], tuple[Any, Any]]  # -> (sum of losses, correct)
    shapes: Callable[[], State]  # the state's shapes and dtypes (jax.ShapeDtypeStruct leaves)
    initial: Callable[[Any], State] | None = None  # ``init`` as a traceable function, if it is one (linen's)


def initial_states(tasks: dict[str, Task], seed: int) -> dict[str, State]:
    """``{name: task.init(seed)}``, with every traceable ``initial`` in ONE quickly compiled program.

    Why: LeNet's three configs then cost one compilation instead of three, and the random draws they share (LeNet_bn's
    conv and fc layers are ``plain``'s) are computed once. The states are bit-identical to those of separate
    programs (tested).
    """
    traceable = {name: t.initial for name, t in tasks.items() if t.initial is not None}
    together = jit_quick_compile(lambda s: {name: f(s) for name, f in traceable.items()})(seed) if traceable else {}
    return {name: together[name] if name in together else t.init(seed) for name, t in tasks.items()}


def make_step(task: Task, *, augment: bool = True, padding: int = 4) -> Callable:
    """``step(state, x, y, mask, offsets) -> (state, (loss, correct))``: RandomCrop(32, padding) then the update."""

    def step(state, x, y, mask, offsets):
        if augment:
            x = crop(x, offsets, padding)
        return task.train_step(state, x, y, mask)

    return step


def make_evaluate(task: Task) -> Callable:
    """``evaluate(state, xs, ys, masks) -> (sum of losses, correct)`` over stacked chunks (a ``lax.scan``)."""

    def evaluate(state, xs, ys, masks):
        def body(total, chunk):
            loss, correct = task.eval_step(state, *chunk)
            return (total[0] + loss, total[1] + correct), None

        zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        return jax.lax.scan(body, zero, (xs, ys, masks))[0]

    return evaluate


def eval_chunks(x: np.ndarray, y: np.ndarray, n_devices: int = 1, chunk: int = 512):
    """``(xs, ys, masks)`` stacked as ``(k, chunk, ...)``, zero-padded, the padding masked out."""
    n = len(y)
    chunk = min(chunk, -(-n // n_devices) * n_devices)
    k = -(-n // chunk)
    pad = k * chunk - n
    mask = np.arange(k * chunk) < n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)])
    return tuple(a.reshape(k, chunk, *a.shape[1:]) for a in (xp, yp, mask))


# ------------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class Timer:
    """Wall seconds per phase of a run (printed, and written to timing.json)."""

    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    images: int = 0  # training images processed after compilation

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now


@dataclasses.dataclass
class Compiled:
    """The compiled programs of one task on one placement: the training step and the validation pass.

    Built ahead of time from the state's shapes alone (``Task.shapes``), so that compilation is timed on its own.
    """

    step: Any
    evaluate: Any
    mesh: Any
    valid: tuple

    @classmethod
    def build(cls, task: Task, data: Dataset, batch_size: int, mesh) -> Compiled:
        n_dev = 1 if mesh is None else mesh.size
        state = task.shapes()
        if mesh is not None:
            state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=devices.replicated(mesh)),
                                 state)
        if len(data.train_y) == 0 or len(data.valid_y) == 0:
            raise ValueError(f"Compiled.build needs at least 1 training and 1 validation example, got "
                             f"{len(data.train_y)} and {len(data.valid_y)} ({data.source})")
        # Compiled for the shape every epoch feeds it: a full, padded batch, even from fewer images than one batch.
        idx, mask = padded_batches(np.arange(len(data.train_y)), batch_size)[0]
        sample = devices.put_global_batch(mesh, train_batch(data, idx, mask, np.zeros((batch_size, 2), np.int32)))
        step = jax.jit(make_step(task), donate_argnums=0, compiler_options=compile_options("step")
                       ).lower(state, *sample).compile()
        valid = devices.put_global_batch(mesh, eval_chunks(data.valid_x, data.valid_y, n_dev), axis=1)
        evaluate = jax.jit(make_evaluate(task), compiler_options=compile_options("eval")).lower(state, *valid).compile()
        return cls(step, evaluate, mesh, valid)


@dataclasses.dataclass
class EpochResult:
    losses: np.ndarray  # (iterations,) batch-mean losses, in order
    correct: int
    seen: int

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses))

    @property
    def acc(self) -> float:
        return self.correct / self.seen

    def first_nonfinite(self) -> int | None:
        """1-based iteration of the first non-finite loss, or None."""
        bad = np.flatnonzero(~np.isfinite(self.losses))
        return int(bad[0]) + 1 if len(bad) else None


def train_epoch(compiled: Compiled, state: State, data: Dataset, *, seed: int, epoch: int, batch_size: int,
                timer: Timer) -> tuple[State, EpochResult]:
    """One pass over the training set in the order and with the crops of ``(seed, epoch)``.

    The loop dispatches asynchronously: losses stay on the device until the epoch ends (one host sync per epoch).
    On one device the batch goes to the compiled step as NumPy arrays, which the call transfers itself: placing
    them first (``jnp.asarray``, four calls) cost 80-95 us of host time per step, and LeNet's training phase took
    1/0.80 as long (10 alternating rounds on the shared 2-core VM, load 5-6; docs/performance.md, LeNet).
    """
    t0 = time.perf_counter()
    order, offsets = epoch_order(seed, epoch, len(data.train_y))
    offsets = np.concatenate([offsets, np.zeros((batch_size, 2), offsets.dtype)])  # for the padded rows
    losses, correct = [], []
    for k, (idx, mask) in enumerate(padded_batches(order, batch_size)):
        off = offsets[k * batch_size:(k + 1) * batch_size]  # offsets belong to positions in the epoch's order
        batch = train_batch(data, idx, mask, off)
        if compiled.mesh is not None:
            batch = devices.put_global_batch(compiled.mesh, batch)
        state, (loss, n_correct) = compiled.step(state, *batch)
        losses.append(loss)
        correct.append(n_correct)
    losses, correct = jax.device_get((losses, correct))
    timer.add("train", t0)
    timer.images += len(order)
    return state, EpochResult(np.asarray(losses, np.float64), int(np.sum(correct)), len(order))


def evaluate(compiled: Compiled, state: State, num_examples: int, timer: Timer) -> tuple[float, float]:
    """``(mean loss per example, accuracy)`` on the validation set, BN in eval mode."""
    t0 = time.perf_counter()
    loss, correct = jax.device_get(compiled.evaluate(state, *compiled.valid))
    timer.add("eval", t0)
    return float(loss) / num_examples, int(correct) / num_examples


def format_epoch_lines(epoch: int, epochs: int, train: EpochResult, valid_loss: float, valid_acc: float,
                       valid_iters: int) -> str:
    """The lesson's two log lines for one epoch (epoch 0-based, as the lesson prints it).

    Unlike the lesson (whose Valid line repeats the *training* accuracy), Acc on the Valid line is the
    validation accuracy.
    """
    it = len(train.losses)
    return (f"Training:Epoch[{epoch:0>3}/{epochs:0>3}] Iteration[{it:0>3}/{it:0>3}] "
            f"Loss: {train.loss:.4f} Acc:{train.acc:.2%}\n"
            f"Valid:   Epoch[{epoch:0>3}/{epochs:0>3}] Iteration[{valid_iters:0>3}/{valid_iters:0>3}] "
            f"Loss: {valid_loss:.4f} Acc:{valid_acc:.2%}")


@dataclasses.dataclass
class FitResult:
    state: State
    history: list[dict[str, Any]]
    nan_at: tuple[int, int] | None  # (epoch, 1-based iteration) where the training loss first was not finite


@dataclasses.dataclass
class Run:
    """One model's training as :func:`fit` drives it: its compiled programs, its state, where it starts (a resumed
    run: ``start_epoch``, ``history``, ``nan_at``), ``on_epoch_end(epoch, state, history, nan_at)`` (checkpointing),
    its name (``desc``) and where its lines go (``log``)."""

    compiled: Compiled
    state: State
    start_epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    nan_at: tuple[int, int] | None = None
    on_epoch_end: Callable | None = None
    desc: str = ""
    log: Callable[[str], None] = print


def _report_nan(desc, epoch, result: EpochResult, first: int, on_nan: str) -> str:
    before = ", ".join(f"{v:.4g}" for v in result.losses[max(0, first - 4):first - 1])
    return (f"{desc}: training loss became {result.losses[first - 1]} at epoch {epoch} iteration {first}/"
            f"{len(result.losses)}" + (f" (losses of the iterations before: {before})" if before else "")
            + (" -- stopping (--on-nan stop)" if on_nan == "stop" else " -- continuing (--on-nan continue)"))


def _train_epochs(pool, runs: list[Run], data: Dataset, *, seed: int, epoch: int, batch_size: int, timer: Timer
                  ) -> list[EpochResult]:
    """One epoch of every run in ``runs``, concurrently when there is a ``pool``; timed as one "train" phase."""
    t0 = time.perf_counter()

    def one(run):
        run.state, result = train_epoch(run.compiled, run.state, data, seed=seed, epoch=epoch,
                                        batch_size=batch_size, timer=Timer())  # the phase is timed here, once
        return result

    results = list(pool.map(one, runs)) if pool is not None else [one(run) for run in runs]
    timer.add("train", t0)
    timer.images += sum(r.seen for r in results)
    return results


def _finish_epoch(run: Run, epoch: int, epochs: int, result: EpochResult, data: Dataset, batch_size: int,
                  on_nan: str, timer: Timer) -> float:
    """Evaluate, log the lesson's two lines, record, report a first non-finite loss, checkpoint; the valid acc."""
    valid_loss, valid_acc = evaluate(run.compiled, run.state, len(data.valid_y), timer)
    run.log(format_epoch_lines(epoch, epochs, result, valid_loss, valid_acc,
                               steps_per_epoch(len(data.valid_y), batch_size)))
    run.history.append({"epoch": epoch, "train_loss": result.loss, "train_acc": result.acc,
                        "valid_loss": valid_loss, "valid_acc": valid_acc})
    first = result.first_nonfinite()
    if first is not None and run.nan_at is None:
        run.nan_at = (epoch, first)
        run.log(_report_nan(run.desc, epoch, result, first, on_nan))
    if run.on_epoch_end is not None:
        run.on_epoch_end(epoch, run.state, run.history, run.nan_at)
    return valid_acc


def fit(runs: dict[str, Run], data: Dataset, *, epochs: int, seed: int, batch_size: int, timer: Timer,
        on_nan: str = "continue", workers: int = 1) -> dict[str, FitResult]:
    """Train every run's epochs ``start_epoch .. epochs-1``, the runs in step: each epoch, the runs still training
    run that epoch together (on up to ``workers`` threads), then each in turn is evaluated, logs the lesson's two
    lines, appends a record to its history and calls its ``on_epoch_end``. A non-finite training loss is reported
    once with its epoch and iteration; ``on_nan="stop"`` then ends that run's training after that epoch.

    Why threads: a compiled step keeps about one core busy (XLA:CPU runs LeNet's small programs as a sequence),
    and it releases Python's lock while it runs, so independent models train side by side on a multi-core CPU.
    LeNet's three configs (three threads on the 2-core VM): training phase 0.69x (docs/performance.md, LeNet);
    one program stepping all three gained 2 %, and XLA ran it on one core too. Each run's arithmetic is the same
    either way: results are bit-identical (tested). Only for programs on one device of one process: concurrent
    programs on a mesh could issue their collectives in a different order on each device or host.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    for run in runs.values():
        run.history = list(run.history)
    first = min((r.start_epoch for r in runs.values()), default=epochs)
    bar = tqdm(total=epochs, initial=first, desc=", ".join(runs), unit="epoch", disable=None, leave=False)
    pool = ThreadPoolExecutor(min(workers, len(runs))) if workers > 1 and len(runs) > 1 else None
    try:
        for epoch in range(first, epochs):
            active = [r for r in runs.values() if r.start_epoch <= epoch and not (r.nan_at and on_nan == "stop")]
            if not active:
                break
            results = _train_epochs(pool if len(active) > 1 else None, active, data, seed=seed, epoch=epoch,
                                    batch_size=batch_size, timer=timer)
            for run, result in zip(active, results, strict=True):
                valid_acc = _finish_epoch(run, epoch, epochs, result, data, batch_size, on_nan, timer)
            bar.update(1)
            bar.set_postfix(loss=f"{results[-1].loss:.4f}", valid_acc=f"{valid_acc:.2%}")
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    return {name: FitResult(r.state, r.history, r.nan_at) for name, r in runs.items()}
