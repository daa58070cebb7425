"""The re-training loop: the loss falls, one trace, resume at the right step and learning rate,
checkpoints hold every variable, bad configs."""

import os

import numpy as np
import tensorflow as tf

from tf_amended_darts import checkpointing, data, distribute, genotypes, loop, train

TINY = dict(genotype="DARTS_V2", channels=4, cells=3, batch_size=32, cutout=0)


def _run(directory, **kwargs):
    options = {
        k: kwargs.pop(k)
        for k in (
            "resume",
            "overwrite",
            "stop_after_steps",
            "checkpoint_every",
            "export_dir",
            "strategy",
        )
        if k in kwargs
    }
    config = train.TrainConfig(**{**TINY, **kwargs})
    with open(os.devnull, "w") as quiet:
        return train.train(config, directory, log_stream=quiet, progress_stream=quiet, **options)


class TrainTest(tf.test.TestCase):
    def test_validation_split_validates_on_held_out_training_examples(self):
        result = _run(
            self.get_temp_dir() + "/split",
            epochs=1,
            steps_per_epoch=1,
            auxiliary=False,
            validation_split=0.5,
        )
        # Independently: the last half of the digits' training split, in the network.
        digits = np.load(data.DIGITS_PATH)
        images, labels = digits["train_images"], digits["train_labels"]
        held_out = slice(int(np.floor(0.5 * len(labels))), None)
        info = data.load_dataset("digits").info
        x = data.normalize(tf.constant(images[held_out]), info.mean, info.std)
        logits = result.model(x, training=False).numpy().astype(np.float64)
        log_p = logits - logits.max(-1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
        expected_loss = -log_p[np.arange(len(log_p)), labels[held_out]].mean()
        expected_acc = (logits.argmax(-1) == labels[held_out]).mean()
        self.assertAllClose(result.valid["valid_loss"], expected_loss, rtol=1e-5)
        self.assertAllClose(result.valid["valid_acc"], expected_acc, atol=1e-9)

    def test_loss_falls_with_one_trace(self):
        # Fixed batches (one step per epoch repeats the same batch) so the loss must fall.
        result = _run(
            self.get_temp_dir() + "/fall",
            epochs=1,
            steps_per_epoch=1,
            validate=False,
            drop_path=0.0,
            learning_rate=0.05,
            auxiliary=False,
        )
        first = result.train_loss
        result = _run(
            self.get_temp_dir() + "/fall2",
            epochs=8,
            steps_per_epoch=1,
            validate=False,
            drop_path=0.0,
            learning_rate=0.05,
            auxiliary=False,
            lr_schedule="exponential",
            lr_decay=1.0,
        )
        self.assertEqual(result.traces, {"train_step": 1})
        self.assertLess(result.train_loss, 0.8 * first)

    def test_float16_trains_with_its_loss_scale_and_exports_a_servable_model(self):
        export_dir = self.get_temp_dir() + "/mixed_model"
        result = _run(
            self.get_temp_dir() + "/mixed",
            mixed_precision="float16",
            epochs=1,
            steps_per_epoch=2,
            export_dir=export_dir,
        )
        self.assertEqual(result.model.compute_dtype, "float16")
        self.assertTrue(np.isfinite(result.train_loss))
        self.assertTrue(np.isfinite(result.valid["valid_loss"]))
        info = data.load_dataset("digits").info
        images = data.load_dataset("digits").test.batch(16).take(1).get_single_element()[0]
        loaded = tf.saved_model.load(export_dir)
        served = loaded.serving_default(images)["probabilities"]
        expected = tf.nn.softmax(result.model(data.normalize(images, info.mean, info.std)))
        self.assertEqual(served.dtype, tf.float32)
        # The same float16 kernels in the SavedModel: as close as export_test's float32.
        self.assertAllClose(served, expected, atol=1e-5)
        with open(os.path.join(self.get_temp_dir(), "mixed", "log.txt")) as f:
            self.assertIn(" overflow_steps=", f.read())  # the loss scale took part
        checkpoint = tf.train.latest_checkpoint(
            os.path.join(self.get_temp_dir(), "mixed", "checkpoints")
        )
        names = [name for name, _ in tf.train.list_variables(checkpoint)]
        self.assertTrue(any(name.startswith("loss_scale/scale") for name in names), names)
        for dtype in ("float16", "bfloat16"):
            config = train.TrainConfig(**TINY, mixed_precision=dtype)
            self.assertEqual(train.TrainConfig.from_dict(config.to_dict()), config)
        self.assertEqual(
            train.TrainConfig(**TINY, mixed_precision="bfloat16").to_dict()["mixed_precision"],
            "bfloat16",
        )

    def test_resume_continues_at_the_right_step_and_learning_rate(self):
        common = dict(epochs=3, steps_per_epoch=3, validate=False, drop_path=0.2)
        full = _run(self.get_temp_dir() + "/full", **common)
        part_dir = self.get_temp_dir() + "/part"
        stopped = _run(part_dir, stop_after_steps=4, **common)
        self.assertFalse(stopped.finished)
        self.assertEqual(stopped.global_step, 4)
        with self.assertRaisesRegex(ValueError, "pass resume"):
            _run(part_dir, **common)
        resumed = _run(part_dir, resume=True, **common)
        self.assertTrue(resumed.finished)
        self.assertEqual(resumed.global_step, 9)
        config = train.TrainConfig(**{**TINY, **common})
        # The resumed process starts in epoch 1 (step 1 of it), with epoch 1's rate.
        self.assertEqual(resumed.learning_rates, {e: config.learning_rate_at(e) for e in (1, 2)})
        self.assertAllClose(full.learning_rates[1], 0.25 * 0.025)  # (1 + cos(2 pi / 3)) / 2
        with open(os.path.join(part_dir, "log.txt")) as f:
            self.assertIn("epoch 1, step 1 of the epoch, global step 4", f.read())
        a, b = (checkpointing.named_variables(r.model) for r in (full, resumed))
        self.assertEqual(sorted(a), sorted(b))
        for name in a:  # BN moving statistics and drop-path seeds included
            self.assertAllClose(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)

    def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(self):
        directory = self.get_temp_dir() + "/diverge"
        # A checkpoint after every good step: the diverging step must not write one.
        with self.assertRaisesRegex(
            loop.DivergedError,
            r"^diverged at global step \d+: "
            r"(train_loss|weight_grad_norm) is (nan|inf).*"
            r"lower learning_rate$",
        ) as caught:
            _run(
                directory,
                epochs=10,
                steps_per_epoch=2,
                validate=False,
                auxiliary=False,
                learning_rate=1e6,
                lr_schedule="exponential",
                lr_decay=1.0,
                checkpoint_every=1,
            )
        step = int(str(caught.exception).split()[4].rstrip(":"))
        _, _, net, path = train.restore_network(directory)  # the last good checkpoint
        self.assertEqual(os.path.basename(path), f"ckpt-{step - 1}")
        for name, variable in checkpointing.named_variables(net).items():
            self.assertTrue(np.isfinite(variable.numpy()).all(), name)

    def test_mirrored_strategy_matches_one_device(self):
        common = dict(epochs=1, steps_per_epoch=2, validate=False, drop_path=0.0, auxiliary=False)
        one = _run(self.get_temp_dir() + "/one", **common)
        strategy = distribute.make_strategy("mirrored")
        two = _run(self.get_temp_dir() + "/two", strategy=strategy, **common)
        self.assertEqual(two.global_step, 2)
        self.assertAllClose(one.train_loss, two.train_loss, rtol=1e-3)

    def test_restore_network_and_mismatches(self):
        directory = self.get_temp_dir() + "/restore"
        result = _run(directory, epochs=1, steps_per_epoch=2, validate=False)
        config, info, net, path = train.restore_network(directory, genotype="DARTS_V2")
        self.assertEqual(config.genotype, genotypes.PUBLISHED["DARTS_V2"])
        self.assertFalse(net.auxiliary)
        x = np.random.RandomState(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
        self.assertAllClose(net(x, training=False), result.model(x, training=False), atol=1e-6)
        with self.assertRaisesRegex(ValueError, "was trained with genotype"):
            train.restore_network(directory, genotype="DARTS_V1")
        other = self.get_temp_dir() + "/other"
        _run(other, genotype="DARTS_V1", epochs=1, steps_per_epoch=1, validate=False)
        with self.assertRaisesRegex(checkpointing.CheckpointError, "does not fit"):
            train.restore_network(
                directory, checkpoint=tf.train.latest_checkpoint(os.path.join(other, "checkpoints"))
            )
        with self.assertRaisesRegex(ValueError, "holds no training run"):
            train.restore_network(self.get_temp_dir())

    def test_bad_configs(self):
        bad = (
            "Genotype(normal=[('bogus_op', 0), ('skip_connect', 1)], normal_concat=[2], "
            "reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])"
        )
        with self.assertRaisesRegex(genotypes.GenotypeError, "unknown operation 'bogus_op'"):
            train.TrainConfig(genotype=bad)
        for kwargs, message in (
            ({"drop_path": 1.0}, "drop_path"),
            ({"lr_schedule": "step"}, "lr_schedule"),
            ({"cells": 2}, "cells"),
            ({"genotype": None}, "genotype"),
        ):
            with self.assertRaisesRegex(ValueError, message):
                train.TrainConfig(**{**TINY, **kwargs})

    def test_schedules_as_the_reference_steps_them(self):
        # The reference calls scheduler.step() before each epoch: epoch e (from 0) runs at the
        # schedulers' closed forms for e + 1; the cosine's last epoch at the minimum.
        cosine = train.TrainConfig(**TINY, epochs=4, learning_rate=0.1, learning_rate_min=0.01)
        self.assertAllClose(
            [cosine.learning_rate_at(e) for e in range(4)],
            [0.01 + 0.09 * (1 + np.cos(np.pi * k / 4)) / 2 for k in (1, 2, 3, 4)],
            rtol=1e-12,
            atol=0,
        )
        self.assertEqual(cosine.learning_rate_at(3), 0.01)
        decay = train.TrainConfig(**TINY, learning_rate=0.1, lr_schedule="exponential")
        self.assertAllClose(
            [decay.learning_rate_at(e) for e in range(3)],
            [0.1 * 0.97, 0.1 * 0.97**2, 0.1 * 0.97**3],
            rtol=1e-12,
            atol=0,
        )
        self.assertAllClose(cosine.drop_path_at(2), 0.1)
        self.assertEqual(train.TrainConfig.from_dict(cosine.to_dict()), cosine)


if __name__ == "__main__":
    tf.test.main()
