"""evaluate.load_saved_model on damaged SavedModels: one ExportError line, no traceback."""

import os
import shutil

import tensorflow as tf

from tf_amended_darts import evaluate, export


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
        for name, keep in (("variables/variables.data-00000-of-00001", 0.5),
                           ("variables/variables.index", 0.5), ("saved_model.pb", 0.5),
                           ("saved_model.pb", 0.0), ("fingerprint.pb", 0.5)):
            with self.subTest(file=name, keep=keep):
                damaged = os.path.join(root, f"{name.replace('/', '_')}_{keep}")
                shutil.copytree(intact, damaged)
                path = os.path.join(damaged, name)
                with open(path, "r+b") as f:
                    f.truncate(int(os.path.getsize(path) * keep))
                with self.assertRaisesRegex(export.ExportError,
                                            f"^cannot load a SavedModel from {damaged}: ") as c:
                    evaluate.load_saved_model(damaged)
                self.assertNotIn("\n", str(c.exception))


if __name__ == "__main__":
    tf.test.main()
