"""SavedModel export: same outputs as the Keras network, metadata, TFSMLayer, saved_model_cli,
atomic, refusing to overwrite or to touch a run directory; a checkpoint of another genotype is
refused."""

import json
import os
import shutil
import subprocess
import sys

import file_tree
import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import checkpointing, data, export, genotypes, train

TINY = dict(
    genotype="DARTS_V2",
    channels=4,
    cells=3,
    batch_size=32,
    epochs=1,
    steps_per_epoch=2,
    validate=False,
)
CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rewired(genotype):
    """`genotype` with the inputs of its first node with two different inputs swapped: the same
    operations in the same order (the same variables), another network."""
    data_ = genotype.to_dict()
    for node in data_["normal"][0]["nodes"]:
        if node[0][1] != node[1][1]:
            node[0][1], node[1][1] = node[1][1], node[0][1]
            return genotypes.Genotype.from_dict(data_)
    raise AssertionError("no node with two different inputs")


class ExportTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = os.path.join(tf.compat.v1.test.get_temp_dir(), "export_test")
        cls.export_dir = os.path.join(cls.root, "model")
        config = train.TrainConfig(**TINY)
        with open(os.devnull, "w") as quiet:
            cls.result = train.train(
                config,
                os.path.join(cls.root, "run"),
                overwrite=True,
                export_dir=cls.export_dir,
                log_stream=quiet,
                progress_stream=quiet,
            )
        cls.info = train.run_dir.read_metadata(os.path.join(cls.root, "run"))["dataset_info"]
        cls.images = data.load_dataset("digits").test.batch(16).take(1).get_single_element()[0]

    def test_reloaded_model_matches_keras(self):
        loaded = tf.saved_model.load(self.export_dir)
        outputs = loaded.serving_default(self.images)
        x = data.normalize(self.images, self.info["mean"], self.info["std"])
        expected = tf.nn.softmax(self.result.model(x, training=False))
        self.assertLess(np.abs(outputs["probabilities"] - expected).max(), 1e-5)
        self.assertAllEqual(outputs["top_class"], np.argmax(expected, -1))
        self.assertAllEqual(
            outputs["top_class_name"], [str(c).encode() for c in np.argmax(expected, -1)]
        )
        genotype, class_names, description = export.read_metadata(loaded)
        self.assertEqual(json.loads(genotype), train.genotypes.PUBLISHED["DARTS_V2"].to_dict())
        self.assertEqual(class_names, [str(i) for i in range(10)])
        self.assertEqual(description["image_shape"], [8, 8, 1])
        # No auxiliary head in the SavedModel.
        names = [v.name for v in loaded.variables]
        self.assertFalse([n for n in names if "auxiliary" in n])
        with open(os.path.join(self.export_dir, "assets.extra", "class_names.txt")) as f:
            self.assertEqual(f.read().split(), class_names)

    def test_tfsm_layer(self):
        layer = keras.layers.TFSMLayer(self.export_dir, call_endpoint="serving_default")
        outputs = layer(self.images)
        self.assertEqual(outputs["probabilities"].shape, (16, 10))

    def test_saved_model_cli(self):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        show = subprocess.run(
            [CLI, "show", "--dir", self.export_dir, "--all"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(show.returncode, 0, show.stderr[-2000:])
        self.assertIn("signature_def['serving_default']", show.stdout)
        self.assertIn("inputs['images']", show.stdout)
        self.assertIn("outputs['probabilities']", show.stdout)
        run = subprocess.run(
            [
                CLI,
                "run",
                "--dir",
                self.export_dir,
                "--tag_set",
                "serve",
                "--signature_def",
                "serving_default",
                "--input_exprs",
                "images=" + str(np.full((2, 8, 8, 1), 7).tolist()),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        self.assertIn("top_class", run.stdout)
        self.assertIn("probabilities", run.stdout)

    def test_refuses_existing_directory_and_leaves_nothing_on_error(self):
        with self.assertRaisesRegex(export.ExportError, "already exists"):
            export.export_network(
                self.result.model, self.export_dir, self.result_config(), self.info
            )
        before = sorted(os.listdir(self.root))
        broken = dict(self.info, image_shape=[8, 8, 3])  # does not fit the network
        with self.assertRaises(Exception):  # noqa: B017 (any failure: nothing may be left)
            export.export_network(
                self.result.model, os.path.join(self.root, "broken"), self.result_config(), broken
            )
        self.assertEqual(sorted(os.listdir(self.root)), before)

    def test_refuses_export_dir_that_is_contains_or_lies_inside_a_run(self):
        run = os.path.join(self.root, "run")
        before = file_tree.snapshot(self.root)
        for target, where in (
            (run, "is"),
            (os.path.join(run, "model"), "lies inside"),
            (os.path.join(run, "checkpoints"), "lies inside"),
            (self.root, "contains"),
        ):
            with self.assertRaisesRegex(
                export.ExportError, rf"^export_dir {target} {where} the run directory"
            ):
                export.check_export_dir(target, overwrite=True)
        # A run about to start in the directory counts too (train --export_dir inside it).
        fresh = os.path.join(self.root, "fresh")
        for target in (fresh, os.path.join(fresh, "model"), self.root + "/x/.."):
            with self.assertRaises(export.ExportError):
                export.check_export_dir(target, overwrite=True, runs=(fresh,))
        export.check_export_dir(os.path.join(self.root, "beside"), runs=(fresh,))
        self.assertEqual(file_tree.snapshot(self.root), before)

    def test_export_binary_onto_its_run_changes_nothing(self):
        run = os.path.join(self.root, "run")
        before = file_tree.snapshot(run)
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "tf_amended_darts.bin.export",
                f"--run_dir={run}",
                f"--export_dir={run}",
                "--overwrite",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(refused.returncode, 2, refused.stderr[-2000:])
        last = refused.stderr.strip().splitlines()
        self.assertLen(last, 1, refused.stderr)
        self.assertRegex(last[0], r"^export: error: export_dir .* is the run directory")
        self.assertEqual(file_tree.snapshot(run), before)

    def test_checkpoint_of_another_genotype_is_refused(self):
        # A run of a rewired genotype (same variables) and the checkpoint of self's run.
        other = os.path.join(self.root, "rewired")
        meta = train.run_dir.read_metadata(os.path.join(self.root, "run"))
        config = dict(meta["config"], genotype=rewired(self.result_config().genotype).to_dict())
        train.run_dir.write_metadata(
            other, config, "train", extra={"dataset_info": meta["dataset_info"]}
        )
        checkpoint = checkpointing.checkpoint_paths(os.path.join(self.root, "run", "checkpoints"))[
            0
        ]
        with self.assertRaisesRegex(
            checkpointing.CheckpointError,
            r"ckpt-\d+ does not fit the network of .*rewired.*: it "
            r"was written with another genotype",
        ):
            train.restore_network(other, checkpoint=checkpoint)
        # The same checkpoint without its record (an older version's): restored, with notice.
        old = os.path.join(self.root, "old_run")
        shutil.copytree(
            os.path.join(self.root, "run"), old, ignore=shutil.ignore_patterns("checkpoints")
        )
        _, _, net, _ = train.restore_network(os.path.join(self.root, "run"))
        tf.train.Checkpoint(network=checkpointing.named_variables(net)).save(
            os.path.join(old, "checkpoints", "ckpt")
        )
        with self.assertLogs("tf_amended_darts.checkpointing", "WARNING") as logs:
            _, _, restored, path = train.restore_network(old)
        self.assertEqual(path, os.path.join(old, "checkpoints", "ckpt-1"))
        self.assertRegex(logs.output[0], "does not record its genotype")
        for a, b in zip(net.variables, restored.variables):
            self.assertAllEqual(a, b)

    def result_config(self):
        return train.TrainConfig(**TINY)


if __name__ == "__main__":
    tf.test.main()
