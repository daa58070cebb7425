"""SavedModel export: same outputs as the Keras network, metadata, TFSMLayer, saved_model_cli,
atomic and refusing to overwrite."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import data, export, train

TINY = dict(genotype="DARTS_V2", channels=4, cells=3, batch_size=32, epochs=1,
            steps_per_epoch=2, validate=False)
CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


class ExportTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = os.path.join(tf.compat.v1.test.get_temp_dir(), "export_test")
        cls.export_dir = os.path.join(cls.root, "model")
        config = train.TrainConfig(**TINY)
        with open(os.devnull, "w") as quiet:
            cls.result = train.train(config, os.path.join(cls.root, "run"), overwrite=True,
                                     export_dir=cls.export_dir, log_stream=quiet,
                                     progress_stream=quiet)
        cls.info = train.run_dir.read_metadata(os.path.join(cls.root, "run"))["dataset_info"]
        cls.images = data.load_dataset("digits").test.batch(16).take(1).get_single_element()[0]

    def test_reloaded_model_matches_keras(self):
        loaded = tf.saved_model.load(self.export_dir)
        outputs = loaded.serving_default(self.images)
        x = data.normalize(self.images, self.info["mean"], self.info["std"])
        expected = tf.nn.softmax(self.result.model(x, training=False))
        self.assertLess(np.abs(outputs["probabilities"] - expected).max(), 1e-5)
        self.assertAllEqual(outputs["top_class"], np.argmax(expected, -1))
        self.assertAllEqual(outputs["top_class_name"],
                            [str(c).encode() for c in np.argmax(expected, -1)])
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
        show = subprocess.run([CLI, "show", "--dir", self.export_dir, "--all"], env=env,
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(show.returncode, 0, show.stderr[-2000:])
        self.assertIn("signature_def['serving_default']", show.stdout)
        self.assertIn("inputs['images']", show.stdout)
        self.assertIn("outputs['probabilities']", show.stdout)
        run = subprocess.run([CLI, "run", "--dir", self.export_dir, "--tag_set", "serve",
                              "--signature_def", "serving_default", "--input_exprs",
                              "images=" + str(np.full((2, 8, 8, 1), 7).tolist())], env=env,
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        self.assertIn("top_class", run.stdout)
        self.assertIn("probabilities", run.stdout)

    def test_refuses_existing_directory_and_leaves_nothing_on_error(self):
        with self.assertRaisesRegex(export.ExportError, "already exists"):
            export.export_network(self.result.model, self.export_dir, self.result_config(),
                                  self.info)
        before = sorted(os.listdir(self.root))
        broken = dict(self.info, image_shape=[8, 8, 3])  # does not fit the network
        with self.assertRaises(Exception):
            export.export_network(self.result.model, os.path.join(self.root, "broken"),
                                  self.result_config(), broken)
        self.assertEqual(sorted(os.listdir(self.root)), before)

    def result_config(self):
        return train.TrainConfig(**TINY)


if __name__ == "__main__":
    tf.test.main()
