"""Training loop shared by the experiments: optax SGD + StepLR, one jitted train step, an epoch loop.

Optimizer (the lesson's)::

    optimizer = SGD(lr, momentum=0.9);  scheduler = StepLR(step_size=10, gamma=0.1)   # scheduler.step() per epoch

PyTorch's StepLR counts *epochs*; optax schedules count *updates*. With ``S`` updates per epoch the learning rate
of update ``t`` (0-based) is therefore ``lr * gamma ** floor(t / (step_size * S))``: update ``t = e * S + i`` of
epoch ``e`` gets ``lr * gamma ** floor(e / step_size)``, exactly StepLR's value for that epoch. optax's SGD
momentum (``v = 0.9 v + g; p -= lr v``) is PyTorch's.

Loss is the mean cross-entropy of the batch, ``L = -(1/B) sum_i log softmax(z_i)[y_i]`` (PyTorch's
``nn.CrossEntropyLoss()``). Everything random in an epoch derives from ``(seed, epoch)`` alone
(:func:`epoch_keys`), so any epoch can be recomputed from a checkpoint of the state before it -- which is what
makes ``--resume`` bit-exact.

Speed: see :class:`Trainer` -- compiled step, asynchronous dispatch, one host synchronisation per epoch,
compilation ahead of time (:meth:`Trainer.warmup`) so that it can overlap with other work.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.data import crop, crop_offsets

State = dict  # {"params": ..., "batch_stats": ..., "opt_state": ...}, a pytree


# ------------------------------------------------------------------------------------------------ optimizer
def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Updates per epoch with the last, smaller batch kept (DataLoader(drop_last=False))."""
    return math.ceil(num_examples / batch_size)


def updates_per_epoch(num_examples: int, batch_size: int, n_devices: int = 1) -> int:
    """Updates per epoch as :meth:`Trainer.train_epoch` does them: full batches, plus the last smaller batch
    cut to a multiple of ``n_devices`` (if anything is left)."""
    full, rest = divmod(num_examples, batch_size)
    return full + (1 if rest - rest % n_devices else 0)


def step_lr(lr: float, steps_per_epoch: int, step_size: int = 10, gamma: float = 0.1) -> optax.Schedule:
    """PyTorch StepLR(step_size, gamma), stepped per epoch, as an optax schedule over update counts."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return optax.exponential_decay(lr, transition_steps=step_size * steps_per_epoch, decay_rate=gamma,
                                   staircase=True)


def make_optimizer(lr: float, steps_per_epoch: int, momentum: float = 0.9, step_size: int = 10,
                   gamma: float = 0.1) -> optax.GradientTransformation:
    """The lesson's ``SGD(lr, momentum=0.9)`` with ``StepLR(step_size, gamma)``."""
    return optax.sgd(step_lr(lr, steps_per_epoch, step_size, gamma), momentum=momentum)


# ------------------------------------------------------------------------------------------------ keys
# XLA:CPU compile options. Compilation is most of a short LeNet run on CPU, so:
# * every program is compiled without XLA:CPU's new fusion emitters (measured: about half the compile time --
#   LeNet step 0.93 -> 0.55 s, LeNet_bn step 1.5 -> 0.85 s CPU -- for ~5-10% slower steps; the losses came out
#   bit-identical), and
# * programs that run only a few times (initialization, the last smaller batch, evaluation, the epoch's order)
#   also without backend optimizations (step compile 0.17 s instead of 0.55 s; it runs 2x slower, ten times a
#   run). The options are the same in every run, so compiled programs -- and results -- never depend on the
#   run's size. Other backends (GPU) get the defaults.
_HOT_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_FAST_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


@functools.cache
def compile_options(kind: str) -> dict[str, Any]:
    """``{}`` or the CPU compile options of ``kind`` ("hot" or "fast"), checked once on a tiny program."""
    options = {"hot": _HOT_OPTIONS, "fast": _FAST_OPTIONS}[kind]
    if jax.default_backend() != "cpu":
        return {}
    try:  # an XLA that does not know an option rejects it at compile time; fall back to its defaults then
        jax.jit(lambda v: v + 1, compiler_options=options).lower(np.float32(0)).compile()
    except Exception:  # noqa: BLE001 -- any rejection just means "use XLA's defaults"
        return {}
    return options


def jit(fn: Callable, kind: str = "hot", **kwargs) -> Callable:
    """``jax.jit`` with :func:`compile_options` ``(kind)``, resolved at the first call (not at import)."""
    compiled: list[Callable] = []
    lock = threading.Lock()  # warm-up threads and the main thread may make the first call together

    def call(*args, **kw):
        if not compiled:
            with lock:
                if not compiled:
                    compiled.append(jax.jit(fn, compiler_options=compile_options(kind) or None, **kwargs))
        return compiled[0](*args, **kw)

    return call


def epoch_keys(seed, epoch) -> tuple[jax.Array, jax.Array]:
    """``(permutation key, augmentation key)`` of one epoch: a function of ``(seed, epoch)`` only."""
    data_root = jax.random.fold_in(jax.random.key(seed), 1)  # stream 1: data; stream 0: model init
    perm_key, crop_key = jax.random.split(jax.random.fold_in(data_root, epoch))
    return perm_key, crop_key


def _epoch_order(seed, epoch, n: int) -> tuple[jax.Array, jax.Array]:
    """``(permutation of range(n), (n, 2) crop offsets)`` of one epoch, from ``(seed, epoch)`` only.

    ``offsets[k]`` belongs to the k-th example *in the epoch's order*. One small compiled program shared by all
    Trainers.
    """
    perm_key, crop_key = epoch_keys(seed, epoch)
    return jax.random.permutation(perm_key, n), crop_offsets(crop_key, n)


epoch_order = jit(_epoch_order, "fast", static_argnums=2)


def init_key(seed) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 0)


def _initial_state(model, tx, seed, x) -> State:
    variables = model.init(init_key(seed), x, train=False)
    params = variables["params"]
    return {"params": params, "batch_stats": variables.get("batch_stats", {}), "opt_state": tx.init(params)}


def init_state(model, tx: optax.GradientTransformation, seed: int, sample_x) -> State:
    """Initial params/batch_stats from ``model.init`` with :func:`init_key` ``(seed)``, and the optimizer state.

    One compiled call (op-by-op initialization would compile every random op separately, which is slower).
    """
    init = jit(lambda s, x: _initial_state(model, tx, s, x), "fast")
    return init(np.int32(seed), sample_x)


def make_init_fn(models: dict, tx: optax.GradientTransformation) -> Callable:
    """``init(seed, sample_x) -> {name: State}``: :func:`init_state` of several models in ONE compiled call.

    Identical random draws -- e.g. the same default-initialized conv1 in LeNet and LeNet_bn -- are computed
    once, which halves the compile time of three separate inits.
    """
    init = jit(lambda s, x: {k: _initial_state(m, tx, s, x) for k, m in models.items()}, "fast")
    return lambda seed, sample_x: init(np.int32(seed), sample_x)


def init_states(models: dict, tx: optax.GradientTransformation, seed: int, sample_x) -> dict[str, State]:
    """:func:`make_init_fn` called once."""
    return make_init_fn(models, tx)(seed, sample_x)


def state_shapes(model, tx: optax.GradientTransformation, sample_x) -> State:
    """The pytree of ``jax.ShapeDtypeStruct`` that :func:`init_state` returns (traced only, not compiled)."""
    return jax.eval_shape(lambda s, x: _initial_state(model, tx, s, x), np.int32(0), sample_x)


# ------------------------------------------------------------------------------------------------ steps
def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model, tx, *, augment: bool = True, padding: int = 4,
                    batch_sharding: NamedSharding | None = None) -> Callable:
    """``step(state, x, y, aug) -> (state, (loss, correct))``: crop, forward (BN in train mode), SGD update.

    ``aug`` is either a PRNG key (crop offsets are drawn from it) or the ``(N, 2)`` int32 offsets themselves
    (:func:`experiments.data.crop_offsets`); the Trainer passes offsets drawn once per epoch, which keeps the
    random-number code out of the hot compiled step. With ``batch_sharding`` the batch is constrained to be split
    over the mesh; params stay replicated and XLA makes BN statistics and gradients global.
    """

    def step(state, x, y, aug):
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
        if augment:
            is_key = jax.dtypes.issubdtype(aug.dtype, jax.dtypes.prng_key)
            x = crop(x, crop_offsets(aug, x.shape[0], padding) if is_key else aug, padding)

        def loss_fn(params):
            logits, updates = model.apply(_variables(params, state["batch_stats"]), x, train=True,
                                          mutable=["batch_stats"])
            return cross_entropy(logits, y), (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
               "opt_state": opt_state}
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return new, (loss, correct)

    return step


def make_eval_step(model) -> Callable:
    """``eval(params, batch_stats, x, y, mask) -> (sum of losses, correct)`` over the rows where mask is True.

    BN uses its running statistics (eval mode), so padding a chunk with masked rows changes nothing.
    """

    def evaluate(params, batch_stats, x, y, mask):
        logits = model.apply(_variables(params, batch_stats), x, train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum((jnp.argmax(logits, -1) == y) & mask)

    return evaluate


# ------------------------------------------------------------------------------------------------ trainer
@dataclass
class EpochResult:
    losses: np.ndarray        # (iterations,) batch-mean losses, in order
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


class Trainer:
    """Compiled train/eval programs for one (model architecture, optimizer, batch size, mesh).

    An epoch is a Python loop over the jitted train step with asynchronous dispatch: losses and correct counts
    stay on the device until the epoch ends, so there is one host synchronisation per epoch. (A ``lax.scan``
    over the epoch was measured ~4x slower per step on XLA:CPU -- convolutions inside a while loop lose their
    fast path -- so the loop stays in Python.) Build one Trainer per architecture and reuse it across configs
    that share it (``plain`` and ``init`` differ only in their initial parameters): they share compiled programs.
    :meth:`warmup` compiles everything an epoch needs up front, so it can run in a thread next to other work.
    """

    def __init__(self, model, tx, batch_size: int, mesh: Mesh | None = None, augment: bool = True,
                 eval_chunk: int = 512):
        n_dev = 1 if mesh is None else mesh.size
        if batch_size < 1 or batch_size % n_dev:
            raise ValueError(f"batch size must be a positive multiple of the number of devices ({n_dev}), "
                             f"got {batch_size}")
        self.model, self.tx, self.batch_size, self.mesh = model, tx, batch_size, mesh
        self.n_dev = n_dev
        self.eval_chunk = max(n_dev, eval_chunk // n_dev * n_dev)
        batch_sh = None if mesh is None else NamedSharding(mesh, P("data"))
        step = make_train_step(model, tx, augment=augment, batch_sharding=batch_sh)
        evaluate = make_eval_step(model)


        def eval_chunks(params, batch_stats, xs, ys, masks):
            def body(acc, chunk):
                loss, correct = evaluate(params, batch_stats, *chunk)
                return (acc[0] + loss, acc[1] + correct), None

            zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
            return jax.lax.scan(body, zero, (xs, ys, masks))[0]

        self._step = jit(step, "hot", donate_argnums=0)
        # the last, smaller batch runs once per epoch: a second, cheaply compiled program (compile_options)
        self._step_small = jit(step, "fast", donate_argnums=0)
        self._eval = jit(eval_chunks, "fast")
        self._order = epoch_order
        self._valid_cache: tuple | None = None
        self._pending: dict[str, Any] = {}  # program name -> Future of its compilation (see expect)

    # -- placement
    def _put(self, x, spec=P("data")):
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = NamedSharding(self.mesh, spec)
        if jax.process_count() > 1:  # each process holds its slice of the batch axis of this global array
            from experiments.distributed import process_slice
            axis = list(spec).index("data")
            sl = process_slice(x.shape[axis], jax.process_index(), jax.process_count())
            local = x[(slice(None),) * axis + (sl,)]
            return jax.make_array_from_process_local_data(sharding, local, x.shape)
        return jax.device_put(x, sharding)

    def replicate(self, tree):
        """Place a state pytree on the mesh, replicated (plain device arrays without a mesh)."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        sharding = NamedSharding(self.mesh, P())
        if jax.process_count() > 1:
            # Every process computed the same state from the same seed; build the global array from the local copy.
            # (device_put would first cross-check every leaf between processes with a collective of its own.)
            def put(leaf):
                local = np.asarray(leaf)
                return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])
            return jax.tree.map(put, tree)
        return jax.device_put(tree, sharding)

    def _valid_chunks(self, x: np.ndarray, y: np.ndarray):
        """``(x, y, mask)`` as (chunks, chunk, ...) device arrays, zero-padded with the padding masked out.

        Cached for the last (x, y) seen: the validation set is placed on the device once, not every epoch.
        """
        if self._valid_cache is not None and self._valid_cache[0] is x and self._valid_cache[1] is y:
            return self._valid_cache[2]
        n = len(y)
        chunk = max(self.n_dev, min(self.eval_chunk, -(-n // self.n_dev) * self.n_dev))
        k = max(1, -(-n // chunk))
        pad = k * chunk - n
        mask = np.arange(k * chunk) < n
        xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        yp = np.concatenate([y, np.zeros((pad,), y.dtype)]) if pad else y
        chunks = tuple(self._put(a.reshape(k, chunk, *a.shape[1:]), P(None, "data")) for a in (xp, yp, mask))
        self._valid_cache = (x, y, chunks)
        return chunks

    def batch_sizes(self, num_examples: int) -> tuple[int, int]:
        """``(full batches, size of the last smaller batch or 0)`` per epoch (see :meth:`train_epoch`)."""
        full, rest = divmod(num_examples, self.batch_size)
        return full, rest - rest % self.n_dev

    # -- compile ahead
    def warmup_jobs(self, shapes: State, num_train: int, valid: tuple[np.ndarray, np.ndarray]
                    ) -> dict[str, Callable]:
        """``{program: zero-argument job}`` that compile (and run once, on zeros) every program an epoch uses.

        Programs: ``order`` (the epoch's permutation and crops), ``step`` (full batch), ``step_small`` (the
        last, smaller batch, if any), ``eval``, in the order an epoch first needs them. ``shapes`` is
        :func:`state_shapes` of the model: the jobs need no real parameters, so they can run in threads while
        data is decoded or another config trains (XLA compiles without holding the GIL). Hand the futures of
        jobs submitted to an executor to :meth:`expect` so that the epoch loop waits for each program instead of
        compiling it a second time.
        """
        full, rest = self.batch_sizes(num_train)

        def zeros_state():
            return self.replicate(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))

        def step_job(fn, size):
            def job():
                x, y, off = (np.zeros((size, 32, 32, 3), np.float32), np.zeros(size, np.int32),
                             np.zeros((size, 2), np.int32))
                jax.block_until_ready(fn(zeros_state(), self._put(x), self._put(y), self._put(off)))
            return job

        def eval_job():
            st = zeros_state()
            jax.block_until_ready(self._eval(st["params"], st["batch_stats"], *self._valid_chunks(*valid)))

        jobs = {"order": lambda: jax.block_until_ready(self._order(0, 0, num_train))}
        if full:
            jobs["step"] = step_job(self._step, self.batch_size)
        if rest:
            jobs["step_small"] = step_job(self._step_small, rest)
        jobs["eval"] = eval_job
        return jobs

    def expect(self, futures: dict[str, Any]) -> None:
        """Register futures of :meth:`warmup_jobs` running elsewhere; each program waits for its own."""
        self._pending.update(futures)

    def _ready(self, name: str) -> None:
        future = self._pending.pop(name, None)
        if future is not None:
            future.result()  # also re-raises a compile error here

    def warmup(self, shapes: State, num_train: int, valid: tuple[np.ndarray, np.ndarray]) -> None:
        """Run :meth:`warmup_jobs` one after the other."""
        for job in self.warmup_jobs(shapes, num_train, valid).values():
            job()

    # -- one epoch
    def train_epoch(self, state: State, x: np.ndarray, y: np.ndarray, seed: int, epoch: int,
                    valid: tuple[np.ndarray, np.ndarray]) -> tuple[State, EpochResult, float, float]:
        """One pass over ``(x, y)`` in the order and with the crops of ``(seed, epoch)``, then evaluation.

        Returns ``(state, train result, valid mean loss per example, valid accuracy)``. A last batch smaller
        than the batch size is kept (as PyTorch's DataLoader does); when it does not split evenly over the
        devices it is cut to the largest multiple that does.
        """
        b = self.batch_size
        full, rest = self.batch_sizes(len(y))
        self._ready("order")
        order, offsets = jax.device_get(self._order(seed, epoch, len(y)))
        batches = [order[i * b:(i + 1) * b] for i in range(full)] + ([order[full * b:full * b + rest]]
                                                                      if rest else [])
        losses, correct = [], []
        start = 0
        for idx in batches:
            self._ready("step" if len(idx) == b else "step_small")
            step = self._step if len(idx) == b else self._step_small
            off = offsets[start:start + len(idx)]  # offsets belong to positions in the epoch's order
            state, (loss, n_correct) = step(state, self._put(x[idx]), self._put(y[idx]), self._put(off))
            start += len(idx)
            losses.append(loss)
            correct.append(n_correct)
        self._ready("eval")
        vloss, vcorrect = self._eval(state["params"], state["batch_stats"], *self._valid_chunks(*valid))
        losses, correct, vloss, vcorrect = jax.device_get((losses, correct, vloss, vcorrect))  # the one sync
        n_valid = len(valid[1])
        result = EpochResult(np.asarray(losses, np.float64), int(np.sum(correct)), sum(len(i) for i in batches))
        return state, result, float(vloss) / n_valid, int(vcorrect) / n_valid

    # -- evaluation alone
    def evaluate(self, state: State, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """``(mean loss per example, accuracy)`` in eval mode."""
        self._ready("eval")
        loss, correct = self._eval(state["params"], state["batch_stats"], *self._valid_chunks(x, y))
        return float(loss) / len(y), int(correct) / len(y)


# ------------------------------------------------------------------------------------------------ logging
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


def epoch_record(epoch: int, train: EpochResult, valid_loss: float, valid_acc: float) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": train.loss, "train_acc": train.acc, "valid_loss": valid_loss,
            "valid_acc": valid_acc}


@dataclass
class FitResult:
    state: State
    history: list[dict[str, Any]]
    nan_at: tuple[int, int] | None   # (epoch, 1-based iteration) where the training loss first was not finite
    stopped: bool                    # True when --on-nan stop ended the run early


def fit(trainer: Trainer, state: State, data, *, epochs: int, seed: int, start_epoch: int = 0,
        history: list[dict[str, Any]] | None = None, nan_at: tuple[int, int] | None = None,
        on_nan: str = "continue", on_epoch_end: Callable[[int, State, list, Any], None] | None = None,
        desc: str = "", log: Callable[[str], None] | None = None) -> FitResult:
    """Train epochs ``start_epoch .. epochs-1`` on ``data`` (a :class:`experiments.data.Dataset`).

    After each epoch: evaluate, log the lesson's two lines, append a record to ``history``, call
    ``on_epoch_end(epoch, state, history, nan_at)`` (checkpointing). A non-finite training loss is reported
    once with its epoch and iteration; ``on_nan="stop"`` then ends the run after that epoch's record,
    ``"continue"`` keeps training (the lesson's behaviour: NaN stays NaN).
    """
    from tqdm.auto import tqdm

    if on_nan not in ("stop", "continue"):
        raise ValueError(f"on_nan must be 'stop' or 'continue', got {on_nan!r}")
    history = list(history or [])
    log = log or tqdm.write
    if nan_at is not None and on_nan == "stop":
        return FitResult(state, history, nan_at, True)
    valid_iters = steps_per_epoch(len(data.valid_y), trainer.batch_size)
    bar = tqdm(total=epochs, initial=start_epoch, desc=desc, unit="epoch", disable=None, leave=False)
    try:
        for epoch in range(start_epoch, epochs):
            state, result, valid_loss, valid_acc = trainer.train_epoch(
                state, data.train_x, data.train_y, seed, epoch, (data.valid_x, data.valid_y))
            log(format_epoch_lines(epoch, epochs, result, valid_loss, valid_acc, valid_iters))
            history.append(epoch_record(epoch, result, valid_loss, valid_acc))
            first = result.first_nonfinite()
            if first is not None and nan_at is None:
                nan_at = (epoch, first)
                before = ", ".join(f"{v:.4g}" for v in result.losses[max(0, first - 4):first - 1])
                log(f"{desc}: training loss became {result.losses[first - 1]} at epoch {epoch} iteration {first}/"
                    f"{len(result.losses)}" + (f" (losses of the iterations before: {before})" if before else "")
                    + (" -- stopping (--on-nan stop)" if on_nan == "stop" else " -- continuing (--on-nan continue)"))
            if on_epoch_end is not None:
                on_epoch_end(epoch, state, history, nan_at)
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}", valid_acc=f"{valid_acc:.2%}")
            if nan_at is not None and on_nan == "stop":
                return FitResult(state, history, nan_at, True)
    finally:
        bar.close()
    return FitResult(state, history, nan_at, False)
