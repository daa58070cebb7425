"""loop.Runner: when a step's metrics are read on the host (every --metrics_every steps, and
always before a checkpoint, a stop and the epoch's end), and what a divergence found at a
deferred read leaves behind. The steps here are Python functions, so nothing is traced."""

import dataclasses
import io
import math
import os
import signal
import sys
import types

import pytest
import tensorflow as tf

from tf_amended_darts import errors, loop


class _Value:
    """A step metric whose read on the host (float()) is recorded in `events`."""

    def __init__(self, value, step, events):
        self.value, self.step, self.events = value, step, events

    def __float__(self):
        self.events.append(("read", self.step))
        return float(self.value)


class _Task:
    """An EpochTask of `steps` steps per epoch; step `bad_step` (global) has a NaN loss."""

    def __init__(self, steps, events, bad_step=None):
        self.steps, self.events, self.bad_step = steps, events, bad_step
        self.global_step = 0

    def start_epoch(self, epoch, skip_batches):
        def step(batch):
            self.global_step += 1
            self.events.append(("step", self.global_step))
            loss = math.nan if self.global_step == self.bad_step else 1.0 / self.global_step
            values = {
                "train_loss": loss,
                "train_correct": 2.0,
                "weight_grad_norm": 0.5,
                loop.DIVERGED: float(self.global_step == self.bad_step),
            }
            return {k: _Value(v, self.global_step, self.events) for k, v in values.items()}

        return loop.Epoch(
            step=step, batches=range(skip_batches, self.steps), scalars={"lr": 0.1}, note=""
        )

    def end_epoch(self, epochs_done, global_step, line):
        self.events.append(("end_epoch", global_step))
        return ""


class _SignalledTask(_Task):
    """A _Task that sends its own process `signum` during global step `at_step`."""

    def __init__(self, steps, events, signum, at_step):
        super().__init__(steps, events)
        self.signum, self.at_step = signum, at_step

    def start_epoch(self, epoch, skip_batches):
        plan = super().start_epoch(epoch, skip_batches)
        step = plan.step

        def signalling_step(batch):
            if self.global_step + 1 == self.at_step:
                os.kill(os.getpid(), self.signum)
            return step(batch)

        return dataclasses.replace(plan, step=signalling_step)


class _ValidatedTask(_Task):
    """A _Task whose epoch end validates (loop.validate) on a model that returns NaN logits
    from epoch `bad_epoch` on, then writes an output (an "output" event)."""

    def __init__(self, steps, events, bad_epoch):
        super().__init__(steps, events)
        self.bad_epoch = bad_epoch
        images = tf.zeros([6, 2, 2, 1], tf.uint8)
        self.split = tf.data.Dataset.from_tensor_slices((images, tf.zeros([6], tf.int64)))

    def end_epoch(self, epochs_done, global_step, line):
        def eval_step(batch):
            _, labels = batch
            logits = tf.fill(
                [tf.shape(labels)[0], 3], math.nan if epochs_done >= self.bad_epoch else 0.0
            )
            return {
                "loss": tf.reduce_sum(loop.cross_entropy(labels, logits)),
                "correct": loop.correct_count(labels, logits),
                "count": tf.cast(tf.shape(labels)[0], tf.float32),
            }

        info = types.SimpleNamespace(mean=(0.0,), std=(1.0,))
        strategy = tf.distribute.get_strategy()
        line.update(loop.validate(eval_step, strategy, self.split, info, batch_size=4))
        self.events.append(("output", global_step))
        return ""


class RunnerTest(tf.test.TestCase):
    def _run(self, events, *, epochs=1, steps=7, bad_step=None, task=None, **kwargs):
        directory = os.path.join(self.get_temp_dir(), "run")
        control = loop.RunControl(
            overwrite=True, log_stream=io.StringIO(), progress_stream=io.StringIO(), **kwargs
        )
        runner = loop.Runner(
            directory,
            tf.distribute.get_strategy(),
            control,
            kind="search",
            config={"a": 1},
            owned=(),
        )
        saved = []
        with runner:
            runner.start({}, {})

            def save(step):
                saved.append(step)
                events.append(("save", step))

            runner.checkpointer.save = save
            outcome = runner.run(
                task or _Task(steps, events, bad_step), loop.Schedule(epochs, steps, batch_size=4)
            )
        return outcome, saved

    @staticmethod
    def _reads_after(events):
        """{global step: the last step queued when that step's metrics were first read}."""
        queued, first_read = 0, {}
        for kind, step in events:
            if kind == "step":
                queued = step
            elif kind == "read":
                first_read.setdefault(step, queued)
        return first_read

    def test_every_step_is_read_before_the_next_by_default(self):
        events = []
        outcome, _ = self._run(events)
        self.assertEqual(self._reads_after(events), {s: s for s in range(1, 8)})
        self.assertEqual(outcome.global_step, 7)

    def test_reads_every_n_steps_and_at_the_epoch_end(self):
        events = []
        outcome, _ = self._run(events, metrics_every=3)
        # Steps 1-3 read after step 3 ran, 4-6 after 6, step 7 at the epoch's end.
        self.assertEqual(self._reads_after(events), {1: 3, 2: 3, 3: 3, 4: 6, 5: 6, 6: 6, 7: 7})
        # The epoch's means still cover every step: losses 1/1 .. 1/7, 2 correct of 4 each.
        expected_loss = sum(1.0 / s for s in range(1, 8)) / 7
        self.assertAlmostEqual(outcome.line["train_loss"], expected_loss, places=12)
        self.assertAlmostEqual(outcome.line["train_acc"], 0.5, places=12)

    def test_reads_before_every_checkpoint_and_stop(self):
        events = []
        outcome, saved = self._run(events, metrics_every=5, checkpoint_every=2, stop_after_steps=5)
        self.assertEqual(self._reads_after(events), {1: 2, 2: 2, 3: 4, 4: 4, 5: 5})
        self.assertEqual(saved, [2, 4, 5])
        for step in saved:  # every step up to a checkpoint was read before it was saved
            save_at = events.index(("save", step))
            for s in range(1, step + 1):
                self.assertLess(events.index(("read", s)), save_at)
        self.assertTrue(outcome.stopped)

    def test_divergence_found_at_a_deferred_read_saves_nothing_after_it(self):
        events = []
        with self.assertRaisesRegex(
            loop.DivergedError, r"diverged at global step 5: train_loss is nan"
        ):
            self._run(events, epochs=2, steps=4, bad_step=5, metrics_every=2)
        saves = [step for kind, step in events if kind == "save"]
        self.assertEqual(saves, [4])  # the first epoch's end only
        # Step 6 was queued before the read that found step 5; step 7 never ran.
        self.assertEqual(max(step for kind, step in events if kind == "step"), 6)

    def test_a_non_finite_validation_loss_stops_before_the_epochs_outputs(self):
        # The training losses stay finite (a search at --learning_rate=1e6 does that while its
        # weights explode); the validation loss of epoch 2 is NaN.
        events = []
        task = _ValidatedTask(3, events, bad_epoch=2)
        with self.assertRaisesRegex(
            loop.DivergedError, r"^diverged at the end of epoch 2: the validation loss is nan;"
        ):
            self._run(events, epochs=3, steps=3, task=task)
        self.assertEqual(
            [e for e in events if e[0] in ("save", "output")], [("output", 3), ("save", 3)]
        )  # epoch 1's only

    def test_a_signal_stops_after_its_step_with_a_checkpoint(self):
        for signum, at_step, saves in (
            (signal.SIGTERM, 5, [3, 5]),  # mid-epoch: a checkpoint at the step
            (signal.SIGINT, 6, [3, 6]),  # an epoch's last step: the epoch ends first
        ):
            with self.subTest(signal=signum.name):
                events = []
                previous = signal.getsignal(signum)
                task = _SignalledTask(3, events, signum, at_step)
                with self.assertRaises(errors.Interrupted) as c:
                    self._run(events, epochs=4, steps=3, task=task, metrics_every=4)
                self.assertEqual(c.exception.signum, signum)
                self.assertEqual(
                    str(c.exception),
                    f"stopped by {signum.name} after global step {at_step} (checkpoint saved)",
                )
                self.assertEqual([s for kind, s in events if kind == "save"], saves)
                self.assertEqual(max(s for kind, s in events if kind == "step"), at_step)
                self.assertIs(signal.getsignal(signum), previous)  # handlers restored

    def test_a_signal_as_the_last_epoch_ends_lets_the_run_complete(self):
        events = []
        task = _SignalledTask(3, events, signal.SIGTERM, at_step=6)
        outcome, saved = self._run(events, epochs=2, steps=3, task=task)
        self.assertEqual((outcome.stopped, outcome.epoch, saved), (False, 2, [3, 6]))

    def test_an_epochs_ranges_give_mean_min_and_max_of_a_step_metric(self):
        events = []

        class Ranged(_Task):
            def start_epoch(self, epoch, skip_batches):
                plan = super().start_epoch(epoch, skip_batches)
                step = plan.step

                def with_eta(batch):
                    metrics = step(batch)
                    eta = {1: 0.5, 2: 0.1, 3: 0.3}[self.global_step]
                    return {**metrics, "arch/amending_coefficient": _Value(eta, 0, events)}

                return dataclasses.replace(
                    plan, step=with_eta, ranges=("arch/amending_coefficient",)
                )

        outcome, _ = self._run(events, steps=3, task=Ranged(3, events), metrics_every=2)
        self.assertAlmostEqual(outcome.line["amending_coefficient"], 0.3, places=12)
        self.assertEqual(outcome.line["amending_coefficient_min"], 0.1)
        self.assertEqual(outcome.line["amending_coefficient_max"], 0.5)

    def test_refuses_metrics_every_below_one(self):
        with self.assertRaisesRegex(ValueError, "metrics_every must be at least 1"):
            self._run([], metrics_every=0)


class LossScaleTest(tf.test.TestCase):
    """The dynamic loss scale's rule (Keras LossScaleOptimizer's), step by step, eagerly."""

    def _end_step(self, scale, finite, loss=1.0):
        metrics = scale.outcome(tf.constant(finite), (tf.constant(loss),))
        return {k: float(v) for k, v in metrics.items()}

    def test_halves_on_an_overflow_doubles_after_growth_steps_and_tells_divergence(self):
        scale = loop.LossScale(initial=8.0, growth_steps=3)
        # Overflow: gradients not finite, losses finite, scale above 1: skipped, not diverged.
        self.assertEqual(
            self._end_step(scale, False), {loop.DIVERGED: 0.0, "overflow": 1.0, "loss_scale": 8.0}
        )
        self.assertEqual(float(scale.scale), 4.0)
        for _ in range(2):  # two finite steps: not yet growth_steps in a row
            self.assertEqual(self._end_step(scale, True)["overflow"], 0.0)
        self.assertEqual(float(scale.scale), 4.0)
        self._end_step(scale, True)  # the third doubles and starts the count again
        self.assertEqual((float(scale.scale), int(scale.finite_steps)), (8.0, 0))
        self._end_step(scale, True)
        self._end_step(scale, False)  # an overflow resets the count
        self.assertEqual((float(scale.scale), int(scale.finite_steps)), (4.0, 0))
        # A non-finite loss is the run diverging, whatever the scale (which still halves).
        self.assertEqual(self._end_step(scale, False, loss=math.nan)[loop.DIVERGED], 1.0)
        self.assertEqual(float(scale.scale), 2.0)
        # At a scale of 1 an overflow is not the scale's doing: diverged.
        scale.scale.assign(1.0)
        self.assertEqual(
            self._end_step(scale, False), {loop.DIVERGED: 1.0, "overflow": 0.0, "loss_scale": 1.0}
        )

    def test_without_a_loss_scale_a_skipped_step_diverged(self):
        metrics = loop.step_outcome(tf.constant(False), (tf.constant(1.0),))
        self.assertEqual({k: float(v) for k, v in metrics.items()}, {loop.DIVERGED: 1.0})


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
