"""The search loop: outputs, one trace per step function, schedule, bad configs.

Stop-and-resume (deterministic) is tested through the binary in search_binary_test.py."""

import json
import os
from unittest import mock

import numpy as np
import tensorflow as tf

from tf_amended_darts import (
    checkpointing,
    distribute,
    errors,
    genotypes,
    loop,
    search,
    search_model,
)

# A tiny supernet on 8x8 digits: 3 cells, 1 node, 4 operations, C=4.
TINY = dict(
    cells=3,
    nodes=1,
    channels=4,
    batch_size=16,
    operations=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"),
)


def assert_checkpoints_finite(test, directory):
    for path in tf.train.get_checkpoint_state(directory).all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = np.asarray(reader.get_tensor(name))
            if value.dtype.kind == "f":
                test.assertTrue(np.isfinite(value).all(), f"{path}: {name}")


def tensorboard_scalars(directory, tag):
    """{step: value} of the scalar `tag` in a run's TensorBoard logs."""
    values = {}
    for root, _, files in os.walk(os.path.join(directory, "tensorboard")):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for value in event.summary.value:
                    if value.tag == tag:
                        values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def _run(directory, **kwargs):
    options = {
        k: kwargs.pop(k)
        for k in ("resume", "overwrite", "stop_after_steps", "checkpoint_every", "epoch_callback")
        if k in kwargs
    }
    config = search.SearchConfig(**{**TINY, **kwargs})
    with open(os.devnull, "w") as quiet:
        return search.search(
            config, directory, render=False, log_stream=quiet, progress_stream=quiet, **options
        )


class SearchTest(tf.test.TestCase):
    def test_outputs_and_single_trace(self):
        directory = self.get_temp_dir() + "/out"
        # amending_coefficient=auto: its per-step eta reaches TensorBoard (checked below);
        # sub_batches=2: the products' while loop inside the traced search step.
        result = _run(
            directory,
            arch_gradient="amended",
            amending_coefficient="auto",
            sub_batches=2,
            epochs=3,
            warmup_epochs=1,
            steps_per_epoch=2,
        )
        self.assertTrue(result.finished)
        self.assertEqual(result.global_step, 6)
        # Each step function traced once, across epochs with fresh datasets.
        self.assertEqual(result.traces, {"search_step": 1, "weight_step": 1})
        with open(os.path.join(directory, search.HISTORY_FILE)) as f:
            history = json.load(f)
        self.assertEqual(history["operations"], list(TINY["operations"]))
        self.assertEqual(history["slots"], ["normal_0", "reduce_0"])
        self.assertEqual(
            [(r["epoch"], r["step"]) for r in history["records"]], [(0, 0), (1, 2), (2, 4), (3, 6)]
        )
        last = np.array(history["records"][-1]["probabilities"])
        self.assertEqual(last.shape, (2, 2, 4))
        self.assertAllClose(last.sum(-1), np.ones((2, 2)))
        # Warm-up epoch: alphas unchanged; afterwards they move.
        first, warm = (np.array(history["records"][i]["probabilities"]) for i in (0, 1))
        self.assertAllClose(first, warm, atol=0, rtol=0)
        self.assertNotAllClose(warm, last)
        self.assertEqual(
            genotypes.load_genotype(os.path.join(directory, "genotype.json")), result.genotype
        )
        with open(os.path.join(directory, "run.json")) as f:
            self.assertIn("sub_batches=2", json.load(f)["estimator"])
        with open(os.path.join(directory, "log.txt")) as f:
            log = f.read()
        self.assertIn("estimator 'amended' runs", log)
        self.assertIn("parameter_free_ops=", log)
        etas = tensorboard_scalars(directory, "arch/amending_coefficient")
        # One eta per architecture step (none in the warm-up epoch), each finite and > 0.
        self.assertEqual(sorted(etas), [3, 4, 5, 6])
        self.assertTrue(all(np.isfinite(e) and e > 0 for e in etas.values()), etas)
        # The checkpoint holds every model variable, BatchNorm moving statistics included
        # (Keras 3 keeps cells in lists that tf.train.Checkpoint(model=...) does not follow).
        reader = tf.train.load_checkpoint(os.path.join(directory, "checkpoints"))
        saved = [k for k in reader.get_variable_to_shape_map() if k.startswith("network/")]
        model = search_model.SearchNetwork(search.SearchConfig(**TINY).space(), 10)
        model.build((None, 8, 8, 1))
        self.assertLen(saved, len(model.variables))
        self.assertLen(
            [k for k in saved if "moving_mean" in k],
            len([v for v in model.variables if "moving_mean" in v.path]),
        )

    def test_epoch_callback_sees_the_live_search_and_its_metrics_reach_log_and_tensorboard(self):
        directory = self.get_temp_dir() + "/callback"
        calls = []

        def callback(epoch, run, line):
            norm = float(tf.linalg.global_norm(run.network.arch_variables))
            saved = checkpointing.checkpoint_paths(os.path.join(directory, "checkpoints"))
            calls.append((epoch, run.global_step, sorted(line), len(saved), norm))
            return {"alpha_norm": norm}

        result = _run(
            directory,
            arch_gradient="first_order",
            epochs=2,
            steps_per_epoch=2,
            epoch_callback=callback,
        )
        self.assertEqual([c[:2] for c in calls], [(1, 2), (2, 4)])
        # After validation (the line holds it), before the epoch's checkpoint is saved.
        self.assertContainsSubset(["lr", "train_loss", "valid_acc", "valid_loss"], calls[0][2])
        self.assertEqual([c[3] for c in calls], [0, 1])
        # The live supernet: its alphas at the last epoch's end are the search's result.
        self.assertAllClose(calls[-1][4], np.sqrt(sum(np.sum(a**2) for a in result.alphas)))
        self.assertEqual(result.metrics["alpha_norm"], calls[-1][4])
        with open(os.path.join(directory, "log.txt")) as f:
            epoch_lines = [line for line in f if "] epoch " in line]
        for line, call in zip(epoch_lines, calls, strict=True):
            self.assertIn(f"alpha_norm={call[4]:.4g} ", line)
        logged = tensorboard_scalars(directory, "epoch/alpha_norm")
        self.assertEqual(sorted(logged), [2, 4])
        self.assertAllClose([logged[2], logged[4]], [c[4] for c in calls])

    def test_a_noise_space_search_advances_the_noise_once_per_step_and_resumes_identically(self):
        # S4's noise: the estimator's passes of a step share it, the weight step advances it,
        # the checkpoint keeps it; so a stopped and resumed search equals the straight one.
        kwargs = dict(
            operations=("noise", "sep_conv_3x3"),
            arch_gradient="amended",
            epochs=2,
            steps_per_epoch=2,
        )
        straight, stopped = self.get_temp_dir() + "/straight", self.get_temp_dir() + "/stopped"
        _run(straight, **kwargs)
        self.assertFalse(_run(stopped, stop_after_steps=3, **kwargs).finished)
        _run(stopped, resume=True, **kwargs)

        def saved(directory):
            reader = tf.train.load_checkpoint(os.path.join(directory, "checkpoints"))
            names = set(reader.get_variable_to_shape_map())
            # The object graph names the layers (numbered per process); save_counter differs.
            names -= {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"}
            return {k: reader.get_tensor(k) for k in names}

        a, b = saved(straight), saved(stopped)
        self.assertEqual(sorted(a), sorted(b))
        for name in a:
            self.assertAllEqual(a[name], b[name], msg=name)
        states = [a[k] for k in a if k.endswith(".state/.ATTRIBUTES/VARIABLE_VALUE")]
        # TINY: 3 cells of 1 node, 2 edges each, one noise layer per edge.
        self.assertLen(states, 3 * 2)
        self.assertEqual({int(s[1]) for s in states}, {4})  # 4 weight steps
        self.assertLen({int(s[0]) for s in states}, len(states))  # a key of its own each

    def test_resume_reads_checkpoints_that_still_hold_the_former_seed_entry(self):
        # Checkpoints of earlier versions also held the config's seed (never read back); the
        # loop's restore must take them without it.
        directory = self.get_temp_dir() + "/old"
        saved = tf.Variable([1.0, 2.0])
        checkpointing.Checkpointer(
            directory,
            network={"w": saved},
            global_step=tf.Variable(7, dtype=tf.int64),
            seed=tf.Variable(3, dtype=tf.int64),
        ).save(7)
        restored, step = tf.Variable([0.0, 0.0]), tf.Variable(0, dtype=tf.int64)
        checkpointer = checkpointing.Checkpointer(
            directory, network={"w": restored}, global_step=step
        )
        self.assertEqual(checkpointer.restore(), os.path.join(directory, "ckpt-7"))
        self.assertAllEqual(restored, [1.0, 2.0])
        self.assertEqual(int(step), 7)

    def test_refuses_directory_of_another_run(self):
        directory = self.get_temp_dir() + "/taken"
        _run(directory, arch_gradient="first_order", epochs=1, steps_per_epoch=1, validate=False)
        with self.assertRaisesRegex(ValueError, "different search.*differs in: seed"):
            _run(
                directory,
                arch_gradient="first_order",
                epochs=1,
                steps_per_epoch=1,
                validate=False,
                seed=1,
                resume=True,
            )

    def test_divergence_stops_at_once_and_keeps_the_last_good_outputs(self):
        directory = self.get_temp_dir() + "/diverge"
        # A constant weight learning rate of 1e6: the weights explode within a few steps. A
        # checkpoint after every good step: the diverging step must not write one. Which
        # quantity turns non-finite first depends on the kernels (BatchNorm normalises the
        # exploding activations, so the loss may stay finite while a gradient does not).
        with self.assertRaisesRegex(
            loop.DivergedError,
            r"^diverged at global step (\d+): "
            r"(train_loss|weight_grad_norm|arch/\w+) is (nan|inf).*lower learning_rate",
        ) as caught:
            _run(
                directory,
                arch_gradient="first_order",
                epochs=8,
                steps_per_epoch=2,
                validate=False,
                learning_rate=1e6,
                learning_rate_min=1e6,
                checkpoint_every=1,
            )
        self.assertIsInstance(caught.exception, errors.InputError)  # one line, exit 2
        step = int(str(caught.exception).split()[4].rstrip(":"))
        checkpoints = os.path.join(directory, "checkpoints")
        self.assertEqual(
            tf.train.latest_checkpoint(checkpoints), os.path.join(checkpoints, f"ckpt-{step - 1}")
        )
        assert_checkpoints_finite(self, checkpoints)
        with open(os.path.join(directory, search.HISTORY_FILE)) as f:
            records = json.load(f, parse_constant=self.fail)["records"]  # strict JSON
        self.assertLess(records[-1]["step"], step)
        if os.path.exists(os.path.join(directory, "genotype.json")):  # an epoch ended
            genotypes.load_genotype(os.path.join(directory, "genotype.json"))
        with open(os.path.join(directory, "log.txt")) as f:
            self.assertEqual(
                f.read().strip().splitlines()[-1].split("] ", 1)[1], str(caught.exception)
            )

    def test_out_of_memory_is_one_line_naming_the_step_and_the_run_resumes(self):
        directory = self.get_temp_dir() + "/oom"
        real = loop.step_function

        def third_search_step_runs_out_of_memory(fn, **kwargs):
            traced = real(fn, **kwargs)
            if fn.__name__ != "_search_step":
                return traced
            calls = []

            def step(*args):
                calls.append(len(calls) + 1)
                if calls[-1] == 3:
                    raise tf.errors.ResourceExhaustedError(
                        None, None, "OOM when allocating tensor with shape[16,4,8,8]\nmore"
                    )
                return traced(*args)

            return step

        run = dict(arch_gradient="first_order", epochs=2, steps_per_epoch=2, validate=False)
        with mock.patch.object(loop, "step_function", third_search_step_runs_out_of_memory):
            with self.assertRaises(loop.OutOfMemoryError) as caught:
                _run(directory, **run)
        message = str(caught.exception)
        self.assertIsInstance(caught.exception, errors.InputError)  # one line, exit 2
        self.assertEqual(
            message,
            "out of memory (OOM when allocating tensor with shape[16,4,8,8]); the first_order "
            "search step at batch_size 16, sub_batches 1: lower batch_size; the run directory "
            "resumes from its last checkpoint",
        )
        resumed = _run(directory, resume=True, **run)  # the lock is released, epoch 1 kept
        self.assertTrue(resumed.finished)
        amended = search.SearchConfig(batch_size=64, sub_batches=2)
        self.assertEqual(
            search._memory_hint(amended, amended.estimator()),  # pylint: disable=protected-access
            "the amended search step at batch_size 64, sub_batches 2: raise sub_batches "
            "(a divisor of batch_size) or lower batch_size",
        )

    def test_cosine_schedule_per_epoch_as_the_reference_steps_it(self):
        # The reference calls scheduler.step() before each epoch: epoch e (from 0) runs at
        # CosineAnnealingLR's closed form for e + 1, the last epoch at the minimum.
        config = search.SearchConfig(epochs=50)
        closed_form = [0.001 + 0.024 * (1 + np.cos(np.pi * (e + 1) / 50)) / 2 for e in range(50)]
        self.assertAllClose(
            [config.learning_rate_at(e) for e in range(50)], closed_form, rtol=1e-12, atol=0
        )
        self.assertAlmostEqual(config.learning_rate_at(24), 0.013, places=12)
        self.assertAlmostEqual(config.learning_rate_at(49), 0.001, places=12)

    def test_bad_configs(self):
        for kwargs, message in [
            ({"learning_rate": -0.1}, "learning_rate"),
            ({"batch_size": 0}, "batch_size"),
            ({"train_portion": 1.0}, "train_portion"),
            ({"amending_coefficient": -1.0}, "amending_coefficient must be auto or"),
            ({"amending_coefficient": "automatic"}, "amending_coefficient must be auto or"),
            ({"amending_coefficient": float("nan")}, "amending_coefficient must be auto or"),
            ({"sub_batches": 0}, "sub_batches must be at least 1"),
            ({"batch_size": 64, "sub_batches": 3}, "sub_batches 3 does not divide batch_size 64"),
        ]:
            with self.assertRaisesRegex(ValueError, message):
                search.SearchConfig(**kwargs)
        with self.assertRaisesRegex(ValueError, "unknown operation"):
            search.SearchConfig(operations=("none", "bogus")).space()
        with self.assertRaisesRegex(ValueError, "unknown estimator"):
            search.SearchConfig(arch_gradient="zeroth").estimator()

    def test_amending_coefficient_number_string_or_auto(self):
        # bin/search passes its flag's string: a number becomes a float, auto stays auto.
        config = search.SearchConfig(amending_coefficient="0.3")
        self.assertEqual(config.amending_coefficient, 0.3)
        self.assertEqual(config.estimator().amending_coefficient, 0.3)
        auto = search.SearchConfig(amending_coefficient="auto")
        self.assertEqual(auto.estimator().amending_coefficient, "auto")
        self.assertEqual(search.SearchConfig(**auto.to_dict()), auto)  # run.json round trip

    def test_sub_batches_reach_the_estimator_and_the_record(self):
        config = search.SearchConfig(batch_size=64, sub_batches=4)
        self.assertEqual(config.estimator().sub_batches, 4)
        self.assertEqual(search.SearchConfig(**config.to_dict()), config)

    def test_mixed_precision_needs_exact_products_and_is_recorded_by_its_name(self):
        for dtype in ("float16", "bfloat16"):
            with self.assertRaisesRegex(errors.InputError, "mixed precision needs products=exact"):
                search.SearchConfig(mixed_precision=dtype, products="finite_difference")
            config = search.SearchConfig(mixed_precision=dtype)
            self.assertEqual(search.SearchConfig(**config.to_dict()), config)
        with self.assertRaisesRegex(errors.InputError, "mixed_precision must be one of"):
            search.SearchConfig(mixed_precision="float8")
        for value in (True, False):
            with self.assertRaisesRegex(errors.InputError, "mixed_precision must be"):
                search.SearchConfig(mixed_precision=value)
        self.assertEqual(
            search.SearchConfig(mixed_precision="bfloat16").to_dict()["mixed_precision"],
            "bfloat16",
        )

    def test_float16_search_ends_with_a_valid_genotype_and_keeps_its_loss_scale(self):
        directory = self.get_temp_dir() + "/mixed"
        result = _run(directory, mixed_precision="float16", epochs=2, steps_per_epoch=2)
        self.assertTrue(result.finished)
        self.assertEqual(result.traces, {"search_step": 1, "weight_step": 0})  # no warm-up
        self.assertTrue(np.isfinite(result.metrics["valid_loss"]))
        start = search.SearchConfig(**TINY).build_network(10, (8, 8, 1)).arch_variables
        for alpha, initial in zip(result.alphas, start):
            self.assertTrue(np.isfinite(alpha).all())
            self.assertNotAllClose(alpha, initial)  # the architecture steps moved them
        self.assertEqual(
            genotypes.load_genotype(os.path.join(directory, "genotype.json")), result.genotype
        )
        with open(os.path.join(directory, "run.json")) as f:
            self.assertEqual(json.load(f)["config"]["mixed_precision"], "float16")
        run = search.restore_search_network(directory)
        self.assertEqual(run.network.compute_dtype, "float16")
        self.assertAllEqual(run.network.arch_variables, result.alphas)
        # The loss scale is checkpointed (a resume continues with it); the epochs' log lines
        # count the steps skipped for an overflow.
        names = [name for name, _ in tf.train.list_variables(run.checkpoint)]
        self.assertTrue(any(name.startswith("loss_scale/scale") for name in names), names)
        with open(os.path.join(directory, "log.txt")) as f:
            self.assertEqual(f.read().count(" overflow_steps="), 2)


def _numpy(values):
    return [np.asarray(v, np.float64) for v in values]


class StepArithmeticTest(tf.test.TestCase):
    """One step's updates against a numpy computation of the documented protocol.

    Gradients come from a separate tape over `model.stateless_call` at the pre-step values (it
    assigns nothing); everything after them (global-norm clipping, coupled weight decay, SGD
    with momentum, Adam) is recomputed in float64 numpy and compared with every variable the
    step changed. Keras' Adam puts epsilon outside the bias correction of v ("epsilon hat",
    Kingma & Ba section 2): alpha -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps).
    """

    CONFIG = dict(
        TINY,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=0.1,
        arch_learning_rate=0.01,
        arch_weight_decay=0.05,
        arch_gradient="first_order",
    )

    def _setup(self, **kwargs):
        config = search.SearchConfig(**{**self.CONFIG, **kwargs})
        searcher = search._Searcher(config, tf.distribute.get_strategy(), (8, 8, 1), 10)
        rng = np.random.default_rng(1)

        def batch():
            return (
                tf.constant(rng.normal(size=(16, 8, 8, 1)), tf.float32),
                tf.constant(rng.integers(0, 10, 16), tf.int64),
            )

        return config, searcher, batch(), batch()

    @staticmethod
    def _grads(model, batch, alphas=None):
        """(grad_w, grad_alpha, new non-trainable values) of the mean cross-entropy."""
        values = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        for a, value in zip(model.arch_variables, alphas or []):
            values[index[id(a)]] = tf.constant(value, a.dtype)
        x, y = batch
        with tf.GradientTape() as tape:
            tape.watch(values)
            logits, non_trainable = model.stateless_call(
                values, [v.value for v in model.non_trainable_variables], x, training=True
            )
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = _numpy(tape.gradient(loss, values))
        return (
            [grads[index[id(w)]] for w in model.weight_variables],
            [grads[index[id(a)]] for a in model.arch_variables],
            _numpy(non_trainable),
        )

    @staticmethod
    def _sgd(config, weights, grads, momenta, lr):
        """clip global norm (unless grad_clip is 0) -> + wd * w -> m = mu m - lr d; w += m.
        Returns (w, m, norm)."""
        norm = np.sqrt(sum((g * g).sum() for g in grads))
        scale = config.grad_clip / max(norm, config.grad_clip) if config.grad_clip else 1.0
        mu = float(np.float32(config.momentum))  # Keras keeps momentum as float32
        momenta = [
            mu * m - lr * (scale * g + config.weight_decay * w)
            for g, w, m in zip(grads, weights, momenta)
        ]
        return [w + m for w, m in zip(weights, momenta)], momenta, norm

    def _check(self, model, weights, non_trainable, alphas, rtol=1e-5, atol=1e-6):
        for v, expected in zip(model.weight_variables, weights):
            self.assertAllClose(v.numpy(), expected, rtol=rtol, atol=atol, msg=v.path)
        for v, expected in zip(model.non_trainable_variables, non_trainable):
            self.assertAllClose(v.numpy(), expected, rtol=rtol, atol=atol, msg=v.path)
        for v, expected in zip(model.arch_variables, alphas):
            self.assertAllClose(v.numpy(), expected, rtol=rtol, atol=atol, msg=v.path)

    def test_two_weight_steps_with_and_without_clipping(self):
        for grad_clip, clipped in ((100.0, False), (1e-3, True), (0.0, False)):  # 0: no clip
            with self.subTest(grad_clip=grad_clip):
                config, searcher, batch, other = self._setup(grad_clip=grad_clip)
                model, lr = searcher.model, config.learning_rate
                weights = _numpy(model.weight_variables)
                alphas = _numpy(model.arch_variables)
                momenta = [np.zeros_like(w) for w in weights]
                for b in (batch, other):  # the second step uses the first's momentum
                    grads, _, non_trainable = self._grads(model, b)
                    weights, momenta, norm = self._sgd(config, weights, grads, momenta, lr)
                    self.assertEqual(grad_clip > 0 and norm > grad_clip, clipped)
                    metrics = searcher.weight_step(b)
                    self.assertAllClose(metrics["weight_grad_norm"], norm, rtol=1e-5)
                    self._check(model, weights, non_trainable, alphas)
                self.assertEqual(searcher.traces["weight_step"], 1)

    def test_weight_grad_norm_is_the_global_norm_under_two_replicas(self):
        # The 2 logical CPUs of conftest.py; synchronized BatchNorm makes the global batch's
        # gradient that of one device.
        strategy = distribute.make_strategy("mirrored")
        self.assertEqual(strategy.num_replicas_in_sync, 2)
        config = search.SearchConfig(**{**self.CONFIG, "grad_clip": 100.0})
        searcher = search._Searcher(config, strategy, (8, 8, 1), 10)
        _, _, batch, _ = self._setup()
        model = searcher.model
        weights, alphas = _numpy(model.weight_variables), _numpy(model.arch_variables)
        grads, _, non_trainable = self._grads(model, batch)
        weights, _, norm = self._sgd(
            config, weights, grads, [0 * w for w in weights], config.learning_rate
        )
        batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        metrics = searcher.weight_step(next(iter(batches)))
        self.assertAllClose(metrics["weight_grad_norm"], norm, rtol=1e-5)
        self._check(model, weights, non_trainable, alphas)  # the gradient summed once

    def test_a_non_finite_step_changes_no_weight_alpha_or_optimizer_state(self):
        config, searcher, train_batch, val_batch = self._setup()
        model = searcher.model

        def state():
            return _numpy(
                model.weight_variables
                + searcher.weight_optimizer.variables
                + model.arch_variables
                + searcher.arch_optimizer.variables
            )

        weight_state = len(model.weight_variables + searcher.weight_optimizer.variables)

        def poison(batch):
            return (
                tf.tensor_scatter_nd_update(batch[0], [[0, 0, 0, 0]], [np.nan]),
                batch[1],
            )

        # A non-finite architecture step (first order: L_val) skips the weight step too; a
        # non-finite weight step alone skips the weight update (the alphas' step was sound).
        for train, val, unchanged in (
            (train_batch, poison(val_batch), None),
            (poison(train_batch), val_batch, weight_state),
        ):
            before = state()
            metrics = searcher.search_step(train, val)
            self.assertGreater(float(metrics[loop.DIVERGED]), 0)
            for a, b in list(zip(before, state()))[:unchanged]:
                self.assertAllEqual(a, b)
        before = state()
        metrics = searcher.search_step(train_batch, val_batch)  # a good step still applies
        self.assertEqual(float(metrics[loop.DIVERGED]), 0)
        self.assertNotAllClose(state()[0], before[0])
        self.assertEqual(searcher.traces["search_step"], 1)

    def test_float16_overflow_skips_the_step_halves_the_scale_and_is_no_divergence(self):
        # One device and 2 logical CPUs (the scale is a variable every replica updates alike).
        for strategy in (tf.distribute.get_strategy(), distribute.make_strategy("mirrored")):
            with self.subTest(replicas=strategy.num_replicas_in_sync):
                config = search.SearchConfig(**{**self.CONFIG, "mixed_precision": "float16"})
                searcher = search._Searcher(config, strategy, (8, 8, 1), 10)
                _, _, train_batch, val_batch = self._setup()
                if strategy.num_replicas_in_sync > 1:
                    train_batch, val_batch = (
                        next(
                            iter(
                                strategy.experimental_distribute_dataset(
                                    tf.data.Dataset.from_tensors(b)
                                )
                            )
                        )
                        for b in (train_batch, val_batch)
                    )
                variables = (
                    searcher.model.weight_variables
                    + searcher.weight_optimizer.variables
                    + searcher.model.arch_variables
                    + searcher.arch_optimizer.variables
                )
                before = _numpy(variables)
                # 2^60 times a loss of ~2.3: float16 (largest 65504) overflows at once.
                searcher.loss_scale.scale.assign(2.0**60)
                metrics = {
                    k: float(v) for k, v in searcher.search_step(train_batch, val_batch).items()
                }
                self.assertEqual(metrics[loop.DIVERGED], 0)
                self.assertEqual(metrics["overflow"], 1)
                self.assertEqual(metrics["loss_scale"], 2.0**60)
                self.assertEqual(  # every replica's copy
                    strategy.experimental_local_results(searcher.loss_scale.scale),
                    (2.0**59,) * strategy.num_replicas_in_sync,
                )
                for a, b in zip(before, _numpy(variables)):
                    self.assertAllEqual(a, b)  # nothing applied
                searcher.loss_scale.scale.assign(2.0**10)  # a scale that fits: the step applies
                metrics = {
                    k: float(v) for k, v in searcher.search_step(train_batch, val_batch).items()
                }
                self.assertEqual((metrics[loop.DIVERGED], metrics["overflow"]), (0, 0))
                self.assertEqual(float(searcher.loss_scale.scale.read_value()), 2.0**10)
                self.assertNotAllClose(_numpy(variables)[0], before[0])
                self.assertEqual(searcher.traces["search_step"], 1)

    def test_first_order_search_step(self):
        config, searcher, train_batch, val_batch = self._setup(grad_clip=1e-3)
        model = searcher.model
        weights, alphas = _numpy(model.weight_variables), _numpy(model.arch_variables)
        # Architecture step first (gradient of L_val at the current weights), Adam, t = 1.
        _, arch_grads, _ = self._grads(model, val_batch)
        lr, b1, b2, eps = config.arch_learning_rate, config.arch_beta_1, config.arch_beta_2, 1e-8
        new_alphas, tolerances = [], []
        for a, g in zip(alphas, arch_grads):
            g = g + config.arch_weight_decay * a
            m, v = (1 - b1) * g, (1 - b2) * g * g
            new_alphas.append(a - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps))
            # The first Adam step is lr g / (|g| + e), e = eps / sqrt(1 - b2): near |g| ~ e it
            # amplifies the gradient's float32 round-off (tf.function vs eager: <= 3e-8 here;
            # allow 1e-7) by lr e / (|g| + e)^2.
            e = eps / np.sqrt(1 - b2)
            tolerances.append(1e-6 + lr * e / (np.abs(g) + e) ** 2 * 1e-7)
        # Then the weight step on the train batch, at the updated alphas.
        grads, _, non_trainable = self._grads(model, train_batch, new_alphas)
        new_weights, _, norm = self._sgd(
            config, weights, grads, [0 * w for w in weights], config.learning_rate
        )
        self.assertGreater(norm, config.grad_clip)
        metrics = searcher.search_step(train_batch, val_batch)
        self.assertAllClose(metrics["weight_grad_norm"], norm, rtol=1e-5)
        self._check(model, new_weights, non_trainable, [])
        for v, expected, tolerance, a0 in zip(model.arch_variables, new_alphas, tolerances, alphas):
            self.assertAllLessEqual(np.abs(v.numpy() - expected) - tolerance, 0.0)
            self.assertGreater(np.abs(v.numpy() - a0).max(), 0.5 * lr)  # Adam: ~ lr sign(g)

    def test_search_step_holds_one_forward_backward(self):
        # The weight step is a call of the estimators' traced pass (StatelessLosses), so a
        # first-order or finite-difference search step's graph holds the supernet's
        # forward/backward once; the weight step's own tape on model(x) held a second copy.
        for arch_gradient, products, passes in (
            ("first_order", "exact", 1),
            ("amended", "finite_difference", 1),
            ("amended", "exact", 2),  # the pass and the products' double backward
        ):
            with self.subTest(arch_gradient=arch_gradient, products=products):
                _, searcher, train_batch, val_batch = self._setup(
                    arch_gradient=arch_gradient, products=products
                )
                graph = searcher.search_step.get_concrete_function(train_batch, val_batch).graph
                definition = graph.as_graph_def()
                bodies = [definition.node] + [f.node_def for f in definition.library.function]
                losses = sum(
                    n.op == "SparseSoftmaxCrossEntropyWithLogits" for b in bodies for n in b
                )
                self.assertEqual(losses, passes)


if __name__ == "__main__":
    tf.test.main()
