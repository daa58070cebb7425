"""The custom training loop that the search (search.py) and re-training (train.py) share.

  Runner                 one run in an output directory: run.json and log.txt, the loop
                         position (epoch, step in epoch, global step), checkpoints, resume and
                         stop, the epoch loop, per-step and per-epoch summaries, progress, and
                         the stop on divergence. A search or training supplies an EpochTask:
                         its step function and batches per epoch and its end-of-epoch work.
  RunControl, Schedule   how a run runs (resume, checkpoints, streams...); its epochs and steps
  sgd_weight_update      the SGD weight update of search, re-training and diagnostics' warm-up
  weight_gradients       its gradients from a tape (the search's come from its stateless pass)
  SGD, Adam              Keras' optimizers for gradients that are already global
  apply_if_finite        their apply_gradients, skipped when a step's numbers are not finite
  LossScale, step_outcome   float16's dynamic loss scale; how a step ended (skipped, diverged)
  DivergedError          a run whose loss, gradients or alphas became non-finite
  cosine_learning_rate   the per-epoch schedules, as the reference steps them
  exponential_learning_rate
  cross_entropy, correct_count, reduce_sum, evaluation_step, validate   step pieces

Step functions run under a tf.distribute strategy (`strategy.run` inside tf.function) on
global batches split over the replicas; they return a dict of per-replica values that
`reduce_sum` adds up, so global quantities (norms) are returned as their share 1/replicas.
"""

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, NamedTuple, Optional, Protocol, TextIO

import keras
import tensorflow as tf

from tf_amended_darts import checkpointing, data, distribute, errors, estimators, run_dir

POSITION = ("epoch", "step_in_epoch", "global_step")  # checkpoint keys of the loop position
DIVERGED = "diverged"  # the step metric that says a step's numbers diverged (update skipped)


class DivergedError(errors.InputError):
    """The run's loss, gradients or alphas stopped being finite (usually too large a learning
    rate): the run stops without saving; its last checkpoint and genotype stay as they were."""


class OutOfMemoryError(errors.InputError):
    """TensorFlow could not allocate a step's tensors (ResourceExhaustedError): the run stops;
    its directory resumes from the last checkpoint once the step is made smaller."""


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules. The reference calls scheduler.step() BEFORE each epoch, so epoch e
# (0-based) runs at the schedule's value for e + 1 and the last epoch at the minimum.


def cosine_learning_rate(epoch, epochs, maximum, minimum):
    """CosineAnnealingLR(T_max=epochs, eta_min=minimum) as the reference steps it."""
    return minimum + (maximum - minimum) * (1 + math.cos(math.pi * (epoch + 1) / epochs)) / 2


def exponential_learning_rate(epoch, initial, decay):
    """StepLR(step_size=1, gamma=decay) as the reference (train_imagenet.py) steps it."""
    return initial * decay ** (epoch + 1)


# ---------------------------------------------------------------------------------------------
# Step pieces (replica context unless said otherwise).


def cross_entropy(labels, logits):
    """Per-example sparse softmax cross-entropy on logits."""
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def correct_count(labels, logits):
    """Number of examples whose top logit is the label (float32)."""
    return tf.reduce_sum(
        tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64)), tf.float32)
    )


def all_finite(*tensors):
    """Scalar bool: every element of every tensor is finite."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


class _GlobalGradients:
    """A Keras optimizer that applies the gradients it is given as they are.

    Keras' TensorFlow optimizers sum the gradients over the replicas inside apply_gradients.
    The steps here all-reduce them once themselves (clipping needs the global norm), so that
    second all-reduce would only add the same sum again: it is skipped.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


class SGD(_GlobalGradients, keras.optimizers.SGD):
    """keras.optimizers.SGD for global gradients (the same on every replica), its momentum
    update one kernel per variable.

    Keras builds m = momentum m - lr g; w += m from a dozen graph operations per variable,
    each through a distribution update, which made up a tenth of a search step's tracing time
    (a supernet has 500 to 1,500 weight variables). ResourceApplyKerasMomentum is the same
    update in one kernel, on the same variables and slots; on several replicas every replica
    applies the same global gradient to its own copies, as Keras' update does.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self.momentum or self.nesterov:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        for grad, variable in zip(grads, trainable_variables):
            dtype = variable.dtype
            momentum = self.momentums[self._get_variable_index(variable)]
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.value.handle,
                accum=momentum.value.handle,
                lr=tf.cast(learning_rate, dtype),
                grad=tf.cast(grad, dtype),
                momentum=tf.cast(self.momentum, dtype),
            )


class Adam(_GlobalGradients, keras.optimizers.Adam):
    """keras.optimizers.Adam for global gradients (the same on every replica)."""


def apply_if_finite(optimizer, grads, variables, finite):
    """optimizer.apply_gradients(grads) of GLOBAL gradients (the same on every replica),
    skipped entirely (no variable, slot or iteration count changes) unless `finite`.

    `optimizer` is a loop.SGD or loop.Adam. The skip is a cond in cross-replica context: a
    cond in replica context may not contain the merge_call that apply_gradients makes
    (Keras' LossScaleOptimizer does the same).
    """
    if not isinstance(optimizer, _GlobalGradients):
        raise TypeError(
            f"{type(optimizer).__name__} would sum global gradients over the "
            "replicas again: use loop.SGD or loop.Adam"
        )

    def cross_replica(strategy, finite, grads):
        def apply():
            strategy.extended.call_for_each_replica(
                lambda g, v: optimizer.apply_gradients(zip(g, v)), args=(grads, variables)
            )

        # `finite` is computed from all-reduced values: every replica holds the same.
        tf.cond(strategy.experimental_local_results(finite)[0], apply, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))


class LossScale(tf.Module):
    """Dynamic loss scaling for float16 steps (Keras LossScaleOptimizer's rule, kept for a whole
    step: its weight and architecture updates and the estimators' nested gradients).

    float16 gradients underflow below 6e-8 and overflow above 65504. Every loss a step
    differentiates is seeded with `scale` instead of 1 (tape.gradient's output_gradients) and
    every gradient divided by it. A step whose gradients are not finite while its losses are
    (an overflow) is skipped and the scale halved; after `growth_steps` finite steps in a row
    it doubles. An overflow at a scale of 1 or less is no longer the scale's doing: the step
    diverged. Make it under the strategy's scope; checkpoint it with the run (resuming then
    continues with the same scale).
    """

    def __init__(self, initial=2.0**15, growth_steps=2000, name="loss_scale"):
        super().__init__(name=name)
        self.growth_steps = growth_steps
        # Every replica computes the same update (from all-reduced values): keep the first.
        kwargs = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.scale = tf.Variable(initial, dtype=tf.float32, name="scale", **kwargs)
        self.finite_steps = tf.Variable(0, dtype=tf.int64, name="finite_steps", **kwargs)

    def outcome(self, finite, values):
        """The step metrics of a step whose updates were applied iff `finite`, and the scale's
        update (replica context): DIVERGED (not an overflow), `overflow` (1 when skipped for
        one) and `loss_scale` (the step's scale), each as this replica's share. `values`: the
        step's global losses and whatever else a scale cannot make non-finite (the alphas after
        their update): if one is not finite, the step diverged."""
        scale = self.scale.read_value()
        overflow = tf.logical_and(
            tf.logical_not(finite), tf.logical_and(all_finite(*values), scale > 1.0)
        )
        grow = tf.logical_and(finite, self.finite_steps + 1 >= self.growth_steps)
        self.scale.assign(tf.where(finite, tf.where(grow, 2.0 * scale, scale), 0.5 * scale))
        self.finite_steps.assign(
            tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.finite_steps + 1, 0)
        )
        replicas = distribute.replicas_in_context()
        return {
            DIVERGED: diverged_metric(tf.logical_or(finite, overflow)),
            "overflow": tf.cast(overflow, tf.float32) / replicas,
            "loss_scale": scale / replicas,
        }


def step_outcome(finite, values=(), loss_scale=None):
    """The step metrics that say how a step ended (DIVERGED, and with a LossScale its overflow
    and scale); `finite`: its updates were applied; `values`: see LossScale.outcome."""
    if loss_scale is None:
        return {DIVERGED: diverged_metric(finite)}
    return loss_scale.outcome(finite, values)


def weight_gradients(tape, loss, weights, loss_scale=None):
    """d loss / d weights recorded on `tape`; under a LossScale, of the scaled loss, unscaled."""
    scale = None if loss_scale is None else loss_scale.scale.read_value()
    return estimators.gradients(tape, loss, weights, scale)


def sgd_weight_update(
    optimizer,
    grads,
    loss,
    weights,
    *,
    grad_clip,
    weight_decay,
    proceed=True,
    loss_scale=None,
    values=(),
):
    """The weight update of the DARTS protocol (search, re-training, warm-ups), as the
    reference: the global gradient (the sum over replicas of `grads`, this replica's gradient
    of its `loss`, a share of the mean over the global batch; `weight_gradients`) is clipped
    to norm `grad_clip` (0: no clipping), `weight_decay * w` is added (coupled L2, as PyTorch's
    SGD weight_decay), then `optimizer` (Keras SGD with momentum) applies it. Gradients and
    loss are all-reduced once, together.

    Nothing is applied unless the loss and the gradient norm are finite and `proceed` (a
    scalar bool of the caller's own checks). `loss_scale`: a LossScale (float16), updated by
    the step's outcome; `values`: the step's other values that must be finite for a skipped
    step to be an overflow (LossScale.outcome). Returns
    the step metrics: "weight_grad_norm" (the global norm before clipping) and step_outcome's,
    each as this replica's share.
    """
    *grads, global_loss = distribute.all_reduce_sum(list(grads) + [loss])
    norm = tf.linalg.global_norm(grads)
    if grad_clip:
        grads, _ = tf.clip_by_global_norm(grads, grad_clip, use_norm=norm)
    grads = [g + weight_decay * w for g, w in zip(grads, weights)]
    finite = tf.logical_and(proceed, all_finite(global_loss, norm))
    apply_if_finite(optimizer, grads, weights, finite)
    metrics = {"weight_grad_norm": norm / distribute.replicas_in_context()}
    metrics.update(step_outcome(finite, (global_loss,) + tuple(values), loss_scale))
    return metrics


def diverged_metric(finite):
    """The step metric DIVERGED (this replica's share of 1 when the step was skipped)."""
    return (1.0 - tf.cast(finite, tf.float32)) / distribute.replicas_in_context()


def reduce_sum(strategy, per_replica):
    """{name: sum over the replicas} of the dict a `strategy.run` returned."""
    return {
        k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()
    }


def step_function(fn, **kwargs):
    """tf.function of a step. Without AutoGraph: the steps' control flow is plain Python on
    Python values (tf.cond where a tensor decides), and converting every layer's `call` on the
    way cost seconds of each first call."""
    return tf.function(fn, autograph=False, **kwargs)


def evaluation_step(model, strategy):
    """batch -> {loss, correct, count} summed over the batch and the replicas (inference
    mode); wrap it in tf.function. `validate` turns the sums into means over a split."""

    def replica(batch):
        x, y = batch
        logits = model(x, training=False)
        return {
            "loss": tf.reduce_sum(cross_entropy(y, logits)),
            "correct": correct_count(y, logits),
            "count": tf.cast(tf.shape(y)[0], tf.float32),
        }

    return lambda batch: reduce_sum(strategy, strategy.run(replica, args=(batch,)))


def validate(eval_step, strategy, dataset, info, batch_size):
    """Mean loss and accuracy of `eval_step` (returning summed loss, correct, count) on a split."""
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    batches = data.eval_batches(dataset, batch_size, mean=info.mean, std=info.std)
    for batch in distribute.distribute_dataset(strategy, batches):
        for k, v in eval_step(batch).items():
            totals[k] += float(v)
    count = max(totals["count"], 1.0)
    loss = totals["loss"] / count
    if not math.isfinite(loss):
        # Training losses can stay finite while the weights explode (clipped gradients,
        # BatchNorm); the moving statistics then give non-finite inference outputs.
        raise DivergedError(f"the validation loss is {loss}")
    return {"valid_loss": loss, "valid_acc": totals["correct"] / count}


# ---------------------------------------------------------------------------------------------
# The run loop.


@dataclasses.dataclass(frozen=True)
class RunControl:
    """How a run runs, not what it computes (not in its identity): search.search's and
    train.train's keyword arguments of that name, handed to the Runner as one."""

    resume: bool = False  # continue the run in the output directory
    overwrite: bool = False  # replace another run there
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: epoch ends only)
    stop_after_steps: Optional[int] = None  # stop (with a checkpoint) at this global step
    # Read the steps' metrics on the host every this many steps (progress, summaries, the
    # divergence check; always before a checkpoint): between reads the host queues steps
    # without waiting for the device.
    metrics_every: int = 1
    download: bool = False  # tensorflow-datasets: build the dataset when it is missing
    flags: Optional[dict] = None  # the command-line flags, recorded in run.json
    log_stream: Optional[TextIO] = None  # log lines (default stdout)
    progress_stream: Optional[TextIO] = None  # the progress line (default stderr)


class Schedule(NamedTuple):
    """The loop Runner.run goes through."""

    epochs: int
    steps_per_epoch: int
    batch_size: int  # global


@dataclasses.dataclass
class Epoch:
    """What a task runs in one epoch (EpochTask.start_epoch)."""

    step: Callable  # batch -> dict of global metrics (train_loss, train_correct, ...)
    batches: Iterable  # the rest of the epoch's batches (already skipping the done ones)
    scalars: dict  # logged and summarised with the epoch (must hold "lr")
    note: str = ""  # appended to the epoch's log line label
    # Step metrics whose mean, min and max over the epoch's steps join the epoch's summary,
    # as <name>, <name>_min, <name>_max without the "arch/" prefix.
    ranges: tuple = ()


@dataclasses.dataclass
class Outcome:
    """What Runner.run ends with."""

    stopped: bool  # by stop_after_steps
    line: dict  # the last completed epoch's summary (empty if none ran)
    epoch: int  # epochs completed
    global_step: int
    images_per_second: float


class EpochTask(Protocol):
    """What a search or a training supplies to Runner.run."""

    def start_epoch(self, epoch: int, skip_batches: int) -> Epoch:
        """Sets the epoch's hyperparameters (learning rate...) and returns its Epoch."""

    def end_epoch(self, epochs_done: int, global_step: int, line: dict) -> str:
        """End-of-epoch work (validation into `line`, then outputs); returns a log-line
        suffix. `validate` raises DivergedError on a non-finite loss, before the outputs."""


class _StopSignals:
    """While installed (the main thread only): the first SIGINT or SIGTERM (Ctrl-C, a batch
    scheduler, a preempted cloud machine) is noted in `signum` for the run loop to stop at
    its next step boundary with a checkpoint; the signals' default actions come back at once,
    so a second one stops the process where it is."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self._previous = None, None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self):
        if self._previous:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous = None

    def _handle(self, signum, frame):
        del frame
        self.signum = signum
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)

    @property
    def name(self):
        return signal.Signals(self.signum).name


class Runner:
    """One run (search or training) in `output_dir`; see the module docstring.

    Use: runner = Runner(...); with runner: runner.start(trackables, extra); log lines;
    runner.run(task, schedule). The directory is prepared (run_dir.prepare: refuses another
    run, `control.resume` continues this one) when the Runner is made; `config` (a dict) and
    `kind` are the run's identity there and in run.json.
    """

    def __init__(self, output_dir, strategy, control, *, kind, config, owned):
        self.output_dir, self.strategy, self.control = output_dir, strategy, control
        self.kind, self.config = kind, config
        self.chief = distribute.is_chief(strategy)
        self.resuming = (
            run_dir.prepare(
                output_dir, config, kind, control.resume, control.overwrite, owned=owned
            )
            if self.chief
            else control.resume and os.path.isdir(output_dir)
        )
        self._log_file = open(os.path.join(output_dir, "log.txt"), "a") if self.chief else None
        self.position = {
            name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name) for name in POSITION
        }
        self.checkpointer = None
        self.writer = None
        self.progress = None
        self._signals = _StopSignals()

    def __enter__(self):
        self._signals.install()
        return self

    def __exit__(self, *exc):
        self._signals.restore()
        if self.writer is not None:
            self.writer.flush()
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        if self.chief:
            run_dir.release(self.output_dir)

    def log(self, message, echo=True):
        """A time-stamped line in log.txt (chief) and, with `echo`, on the log stream."""
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        if echo:
            print(line, file=self.control.log_stream or sys.stdout, flush=True)
        if self._log_file:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    @property
    def epoch(self):
        return int(self.position["epoch"].numpy())

    @property
    def step_in_epoch(self):
        return int(self.position["step_in_epoch"].numpy())

    @property
    def global_step(self):
        return int(self.position["global_step"].numpy())

    def start(self, trackables, extra, records=None):
        """Checkpoints `trackables` (None values left out: what a run does not have, e.g. a
        loss scale; plus the position, and `records`: strings kept with each checkpoint and
        compared on restore) from now on, restores the newest checkpoint that
        restores when resuming, writes run.json (config, kind, flags + `extra`) and opens the
        summaries; returns the restored checkpoint path or None."""
        self.checkpointer = checkpointing.Checkpointer(
            os.path.join(self.output_dir, run_dir.CHECKPOINT_DIR),
            self.strategy,
            records=records,
            **{name: value for name, value in trackables.items() if value is not None},
            **self.position,
        )
        restored = self.checkpointer.restore(report=self.log) if self.resuming else None
        self.writer = run_dir.summary_writer(self.output_dir, self.chief)
        if self.chief:
            run_dir.write_metadata(
                self.output_dir, self.config, self.kind, flags=self.control.flags, extra=extra
            )
        return restored

    def log_resumed(self, restored):
        self.log(
            f"resumed from {restored}: epoch {self.epoch}, step {self.step_in_epoch} of "
            f"the epoch, global step {self.global_step}"
        )

    def save(self, epoch, step_in_epoch, global_step):
        """Records the loop position (the data pipeline resumes from it) and checkpoints."""
        for name, value in zip(POSITION, (epoch, step_in_epoch, global_step)):
            self.position[name].assign(value)
        self.checkpointer.save(global_step)

    def run(self, task, schedule, *, divergence_hint="", memory_hint=""):
        """Runs the epochs of `schedule` left: per epoch task.start_epoch, the steps (progress,
        per-step summaries, a checkpoint every `control.checkpoint_every` steps and when the
        global step reaches `control.stop_after_steps`), task.end_epoch, epoch summaries, a
        checkpoint and the epoch's log line.

        The steps' metrics are read on the host every `control.metrics_every` steps (a read
        waits for the device; between reads the host queues the next steps), and always before
        a checkpoint, a stop and the epoch's end; every step's metrics are summarised.

        A SIGINT or SIGTERM (the first; a second one ends the process at once) stops the run
        after the step it arrived in (at an epoch's last step, after the epoch's end) with a
        checkpoint, and raises errors.Interrupted; a resume continues bit-identically.

        Returns an Outcome (`line`: the last completed epoch's summary). Raises
        DivergedError (message + `divergence_hint`) at the first step whose numbers are not
        finite, before anything is saved after it: that step's update was skipped; the
        steps queued after it before the read are discarded with the run. Likewise when
        task.end_epoch raises it (`validate`: a non-finite validation loss), before the
        epoch's checkpoint. Raises OutOfMemoryError (+ `memory_hint`: what the run's step
        is and how to make it smaller) when TensorFlow runs out of memory.
        """
        if self.control.metrics_every < 1:
            raise ValueError(f"metrics_every must be at least 1, got {self.control.metrics_every}")
        self._schedule, self._divergence_hint = schedule, divergence_hint
        epoch, step_in_epoch, global_step = self.epoch, self.step_in_epoch, self.global_step
        self.progress = run_dir.Progress(
            schedule.epochs * schedule.steps_per_epoch,
            schedule.batch_size,
            stream=self.control.progress_stream,
            enabled=self.chief,
        )
        stopped, line = False, {}
        with self.writer.as_default(), _out_of_memory_as_input_error(memory_hint):
            while epoch < schedule.epochs and not stopped:
                plan = task.start_epoch(epoch, step_in_epoch)
                summary, step_in_epoch, global_step, stopped = self._run_epoch(
                    plan, epoch, step_in_epoch, global_step
                )
                if stopped and step_in_epoch < schedule.steps_per_epoch:
                    break
                epoch, step_in_epoch = epoch + 1, 0
                line = self._end_epoch(task, plan, summary, epoch, global_step)
                stopped = stopped or self._signals.signum is not None  # one during the epoch end
        return Outcome(
            stopped=self._stopped(stopped, epoch, global_step),
            line=line,
            epoch=epoch,
            global_step=global_step,
            images_per_second=self.progress.images_per_second(global_step),
        )

    def _run_epoch(self, plan, epoch, step_in_epoch, global_step):
        """The steps of the rest of an epoch; returns (summary, step_in_epoch, global_step,
        stopped: by stop_after_steps or a signal); summary: _EpochMetrics.summary."""
        control, steps_per_epoch = self.control, self._schedule.steps_per_epoch
        metrics = _EpochMetrics(
            plan, self._schedule.batch_size, self._diverged, self._read_step(plan, epoch)
        )
        stopped = False
        for batch in plan.batches:
            step_in_epoch, global_step = step_in_epoch + 1, global_step + 1
            metrics.queue(global_step, plan.step(batch))
            stopped = self._signals.signum is not None or (
                control.stop_after_steps is not None and global_step >= control.stop_after_steps
            )
            save = step_in_epoch < steps_per_epoch and (
                stopped
                or (control.checkpoint_every and global_step % control.checkpoint_every == 0)
            )
            if save or stopped or metrics.unread >= control.metrics_every:
                metrics.read()
            if save:
                self.save(epoch, step_in_epoch, global_step)
            if stopped:
                break
        metrics.read()
        return metrics.summary(), step_in_epoch, global_step, stopped

    def _read_step(self, plan, epoch):
        """Where a step's metrics, read on the host, go: the progress line and the step's
        summaries."""

        def read(step, metrics):
            self.progress.update(step, epoch=epoch, loss=metrics["train_loss"])
            _step_summaries(metrics, plan.scalars["lr"], self._schedule.batch_size, step)

        return read

    def _end_epoch(self, task, plan, summary, epochs_done, global_step):
        """task.end_epoch, the epoch's summaries, its checkpoint and log line; returns the
        epoch's line (its scalars and metrics)."""
        line = {**plan.scalars, **summary}
        try:
            suffix = task.end_epoch(epochs_done, global_step, line)
        except DivergedError as e:  # loop.validate's, before the epoch's outputs
            self._stop_diverged(f"at the end of epoch {epochs_done}: {e}")
        for k, v in line.items():
            run_dir.write_scalar(f"epoch/{k}", v, step=global_step)
        self.save(epochs_done, 0, global_step)
        self.log(
            f"epoch {epochs_done}/{self._schedule.epochs}{plan.note} "
            + " ".join(f"{k}={v:.4g}" for k, v in line.items())
            + suffix
        )
        return line

    def _stopped(self, stopped, epoch, global_step):
        """Whether the run stopped early (by stop_after_steps); errors.Interrupted when a
        signal stopped it before its last epoch's end."""
        if self._signals.signum is not None:
            if epoch < self._schedule.epochs:
                message = (
                    f"stopped by {self._signals.name} after global step {global_step} "
                    "(checkpoint saved)"
                )
                self.log(message, echo=False)
                raise errors.Interrupted(message, self._signals.signum)
            return False  # it came as the last epoch ended: the run is complete
        if stopped:  # by stop_after_steps (the run diverging raises instead)
            self.log(
                f"stopped after global step {global_step} (checkpoint saved; resume continues)"
            )
        return stopped

    def _diverged(self, metrics, step):
        """Logs and raises DivergedError naming the first non-finite quantity of the step."""
        what = _non_finite(metrics)
        self._stop_diverged(f"at global step {step}: {what}; the step was not applied")

    def _stop_diverged(self, where):
        hint = self._divergence_hint
        message = (
            f"diverged {where}; the run stops: its last checkpoint and genotype are the last "
            "good ones" + (f"; try a {hint}" if hint else "")
        )
        self.log(message, echo=False)
        raise DivergedError(message)


class _EpochMetrics:
    """The step metrics of an epoch: queued as the steps return them (device values), read on
    the host together (`read`) and summed. A read step's metrics go to `on_diverged(metrics,
    step)` when the step diverged (it raises), then to `on_read(step, metrics)`."""

    def __init__(self, plan, batch_size, on_diverged, on_read):
        self.batch_size, self.on_diverged, self.on_read = batch_size, on_diverged, on_read
        self.sums, self.ran, self._unread = {}, 0, []
        self.seen = {k: [] for k in plan.ranges}

    @property
    def unread(self):
        return len(self._unread)

    def queue(self, step, values):
        self._unread.append((step, values))
        self.ran += 1

    def read(self):
        for step, values in self._unread:
            metrics = {k: float(v) for k, v in values.items()}
            if metrics.pop(DIVERGED, 0.0) > 0:
                self.on_diverged(metrics, step)
            for k, v in metrics.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
            for k, values_of_k in self.seen.items():
                values_of_k.append(metrics[k])
            self.on_read(step, metrics)
        self._unread.clear()

    def summary(self):
        """Mean train_loss and train_acc of the steps run, float16's overflow_steps, and the
        plan's ranges (mean, min, max)."""
        ran, sums = max(self.ran, 1), self.sums
        summary = {
            "train_loss": sums.get("train_loss", 0.0) / ran,
            "train_acc": sums.get("train_correct", 0.0) / (ran * self.batch_size),
        }
        if "overflow" in sums:  # float16 (LossScale): the steps skipped for an overflow
            summary["overflow_steps"] = sums["overflow"]
        for k, values in self.seen.items():
            if values:
                name = k.removeprefix("arch/")
                summary.update(
                    {
                        name: sum(values) / len(values),
                        f"{name}_min": min(values),
                        f"{name}_max": max(values),
                    }
                )
        return summary


@contextlib.contextmanager
def _out_of_memory_as_input_error(hint):
    try:
        yield
    except tf.errors.ResourceExhaustedError as e:
        tf_says = (e.message.strip().splitlines() or ["ResourceExhaustedError"])[0][:160]
        raise OutOfMemoryError(
            f"out of memory ({tf_says}); " + (f"{hint}; " if hint else "") + "the run "
            "directory resumes from its last checkpoint"
        ) from None


# The quantities a divergence shows first in, named first when several are non-finite.
_FIRST_SUSPECTS = ("train_loss", "arch/val_loss", "weight_grad_norm", "arch/grad_norm")


def _non_finite(metrics):
    """What is not finite in a diverged step's `metrics`, the first suspect first."""
    bad = sorted(
        (k for k, v in metrics.items() if not math.isfinite(v)),
        key=lambda k: (
            k not in _FIRST_SUSPECTS,
            _FIRST_SUSPECTS.index(k) if k in _FIRST_SUSPECTS else 0,
            k,
        ),
    )
    if not bad:
        return "the alphas are not finite"
    return f"{bad[0]} is {metrics[bad[0]]}" + (f" (and {', '.join(bad[1:])})" if bad[1:] else "")


def _step_summaries(metrics, lr, batch_size, step):
    run_dir.write_scalar("train/loss", metrics["train_loss"], step)
    run_dir.write_scalar("train/accuracy", metrics["train_correct"] / batch_size, step)
    run_dir.write_scalar("train/weight_grad_norm", metrics["weight_grad_norm"], step)
    run_dir.write_scalar("train/learning_rate", lr, step)
    for k in ("loss_scale", "overflow"):  # float16 (LossScale)
        if k in metrics:
            run_dir.write_scalar(f"train/{k}", metrics[k], step)
    for k, v in metrics.items():
        if k.startswith("arch/"):  # estimator diagnostics: val_loss, g1_norm, correction_norm..
            run_dir.write_scalar(k, v, step)
