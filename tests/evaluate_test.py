"""evaluate: damaged SavedModels are one ExportError line; an ImageNet run is evaluated on the
ImageNet protocol's test images (256/224 resize + centre crop)."""

import os
import shutil
from unittest import mock

import numpy as np
import tensorflow as tf

from tf_amended_darts import data, evaluate, export, run_dir


class _Tiny(tf.Module):
    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(tf.ones([64, 4]))

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.kernel)


class LoadSavedModelTest(tf.test.TestCase):
    def test_damaged_saved_models_are_refused_in_one_line(self):
        root = self.get_temp_dir()
        intact = os.path.join(root, "intact")
        tf.saved_model.save(_Tiny(), intact)
        # Intact, but not an export: refused by its missing metadata endpoint.
        with self.assertRaisesRegex(export.ExportError, "not written by tf_amended_darts"):
            evaluate.load_saved_model(intact)
        for name, keep in (
            ("variables/variables.data-00000-of-00001", 0.5),
            ("variables/variables.index", 0.5),
            ("saved_model.pb", 0.5),
            ("saved_model.pb", 0.0),
            ("fingerprint.pb", 0.5),
        ):
            with self.subTest(file=name, keep=keep):
                damaged = os.path.join(root, f"{name.replace('/', '_')}_{keep}")
                shutil.copytree(intact, damaged)
                path = os.path.join(damaged, name)
                with open(path, "r+b") as f:
                    f.truncate(int(os.path.getsize(path) * keep))
                with self.assertRaisesRegex(
                    export.ExportError, f"^cannot load a SavedModel from {damaged}: "
                ) as c:
                    evaluate.load_saved_model(damaged)
                self.assertNotIn("\n", str(c.exception))


if __name__ == "__main__":
    tf.test.main()


class ImagenetRunTest(tf.test.TestCase):
    def test_an_imagenet_run_is_evaluated_on_centre_crops(self):
        # Odd-sized test images: a squash to 12x12 and the centre crop give other pixels.
        root, size = self.get_temp_dir(), 12
        rng = np.random.default_rng(0)
        written = []
        for split, shapes in (("train", ((37, 53), (30, 41))), ("test", ((40, 31), (27, 58)))):
            for i, shape in enumerate(shapes):
                folder = os.path.join(root, "images", split, f"class{i}")
                os.makedirs(folder)
                image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
                tf.io.write_file(os.path.join(folder, "0.png"), tf.io.encode_png(image))
                if split == "test":
                    written.append(image)
        run = os.path.join(root, "run")
        os.makedirs(run)
        run_dir.write_metadata(
            run,
            {
                "network": "imagenet",
                "dataset": "image_folder",
                "data_dir": os.path.join(root, "images"),
                "image_size": size,
            },
            "train",
        )
        seen = []

        def predict(images):
            seen.extend(images.numpy())
            return tf.fill([images.shape[0], 2], 0.5)

        description = {"image_shape": [size, size, 3], "num_classes": 2}
        with mock.patch.object(
            evaluate, "load_checkpoint", return_value=(predict, description, None)
        ):
            result = evaluate.evaluate(run_dir=run)
        self.assertEqual(result["examples"], 2)
        expected = [data.center_crop(tf.constant(image), size).numpy() for image in written]
        self.assertCountEqual([e.tobytes() for e in expected], [s.tobytes() for s in seen])
