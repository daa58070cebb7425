"""Checkpointer: save / restore, resume from the newest checkpoint that restores (corrupt
state file, truncated or interrupted writes), records compared on restore; named_variables."""

import os

import file_tree
import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import checkpointing


def truncate(directory, prefix):
    """Cuts every file of checkpoint `prefix` (data and index) to half its size."""
    for name in os.listdir(directory):
        if name.startswith(prefix + "."):
            path = os.path.join(directory, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


class CheckpointerTest(tf.test.TestCase):
    def _checkpointer(self, directory, value=0.0, records=None):
        self.variable = tf.Variable([value, value], name="w")
        self.step = tf.Variable(0, dtype=tf.int64)
        return checkpointing.Checkpointer(
            directory, max_to_keep=3, records=records, w=self.variable, step=self.step
        )

    def _saved(self, directory, numbers, records=None):
        saver = self._checkpointer(directory, records=records)
        for number in numbers:
            self.variable.assign([number, number])
            self.step.assign(number)
            saver.save(number)

    def _resume(self, directory, records=None):
        """(path restored, notices reported, restored w) of a fresh Checkpointer."""
        notices = []
        restorer = self._checkpointer(directory, records=records)
        path = restorer.restore(report=notices.append)
        return path, notices, self.variable.numpy()

    def test_save_and_restore_latest(self):
        directory = self.get_temp_dir() + "/a"
        self._saved(directory, (5, 10))
        path, notices, w = self._resume(directory)
        self.assertEqual(path, os.path.join(directory, "ckpt-10"))
        self.assertAllEqual(w, [10.0, 10.0])
        self.assertEqual(int(self.step.numpy()), 10)
        self.assertEmpty(notices)

    def test_no_checkpoint_restores_nothing(self):
        self.assertIsNone(self._checkpointer(self.get_temp_dir() + "/empty").restore())

    def test_interrupted_write_resumes_from_previous_checkpoint_and_says_so(self):
        directory = self.get_temp_dir() + "/b"
        self._saved(directory, (1,))
        # A save killed half-way: files of ckpt-2 exist but are garbage, its sharded temp
        # folder is left behind, the state file still names ckpt-1.
        for suffix in (".index", ".data-00000-of-00001"):
            with open(os.path.join(directory, "ckpt-2" + suffix), "wb") as f:
                f.write(b"\x00garbage")
        os.makedirs(os.path.join(directory, "ckpt-2_temp"))
        path, notices, w = self._resume(directory)
        self.assertEqual(path, os.path.join(directory, "ckpt-1"))
        self.assertAllEqual(w, [1.0, 1.0])
        self.assertLen(notices, 1)
        self.assertRegex(notices[0], r"older checkpoint .*ckpt-1: 1 newer .*ckpt-2")
        self.assertFalse(os.path.exists(os.path.join(directory, "ckpt-2_temp")))

    def test_truncated_newest_checkpoint_falls_back_to_older(self):
        directory = self.get_temp_dir() + "/c"
        self._saved(directory, (1, 2, 3))
        truncate(directory, "ckpt-3")
        path, notices, w = self._resume(directory)
        self.assertEqual(path, os.path.join(directory, "ckpt-2"))
        self.assertAllEqual(w, [2.0, 2.0])
        self.assertEqual(int(self.step.numpy()), 2)
        self.assertLen(notices, 1)

    def test_truncated_data_file_alone_falls_back(self):
        directory = self.get_temp_dir() + "/c2"
        self._saved(directory, (1, 2))
        data = os.path.join(directory, "ckpt-2.data-00000-of-00001")
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        path, notices, w = self._resume(directory)
        self.assertEqual(path, os.path.join(directory, "ckpt-1"))
        self.assertAllEqual(w, [1.0, 1.0])
        self.assertLen(notices, 1)

    def test_garbage_or_dangling_state_file_does_not_start_over(self):
        for state in (
            "\x00\x01 not a checkpoint state {{",
            'model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n',
        ):
            directory = os.path.join(self.get_temp_dir(), f"state{len(state)}")
            self._saved(directory, (1, 2))
            with open(os.path.join(directory, "checkpoint"), "w") as f:
                f.write(state)
            path, notices, w = self._resume(directory)
            self.assertEqual(path, os.path.join(directory, "ckpt-2"))
            self.assertAllEqual(w, [2.0, 2.0])
            self.assertEmpty(notices)

    def test_refuses_when_no_checkpoint_restores_and_changes_nothing(self):
        directory = self.get_temp_dir() + "/none"
        self._saved(directory, (1, 2))
        truncate(directory, "ckpt-1")
        truncate(directory, "ckpt-2")
        before = file_tree.snapshot(directory)
        with self.assertRaisesRegex(
            checkpointing.CheckpointError,
            r"^none of the 2 checkpoints in .* can be restored.*ckpt-2"
            r".*: start over with overwrite$",
        ) as caught:
            self._checkpointer(directory).restore()
        self.assertNotIn("\n", str(caught.exception))
        self.assertEqual(file_tree.snapshot(directory), before)

    def test_state_file_without_checkpoints_is_refused(self):
        directory = self.get_temp_dir() + "/gone"
        self._saved(directory, (1,))
        for name in os.listdir(directory):
            if name.startswith("ckpt-"):
                os.remove(os.path.join(directory, name))
        with self.assertRaisesRegex(checkpointing.CheckpointError, "holds no checkpoint"):
            self._checkpointer(directory).restore()

    def test_checkpoint_of_other_variables_is_a_clear_error(self):
        directory = self.get_temp_dir() + "/d"
        checkpointing.Checkpointer(directory, other=tf.Variable(1.0)).save(1)
        with self.assertRaisesRegex(checkpointing.CheckpointError, "different configuration"):
            self._checkpointer(directory).restore()

    def test_fallback_restores_every_value_of_the_older_checkpoint(self):
        # A failed restore of the newest checkpoint may assign some variables; the older one
        # must then set every variable (weights and optimizer slots) to its saved values.
        directory = self.get_temp_dir() + "/exact"

        def build():
            keras.utils.set_random_seed(1)
            layer = keras.layers.Dense(3)
            layer.build((None, 4))
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
            optimizer.build(layer.trainable_variables)
            return (
                layer,
                optimizer,
                checkpointing.Checkpointer(
                    directory, layer=checkpointing.named_variables(layer), optimizer=optimizer
                ),
            )

        layer, optimizer, saver = build()
        saved = {}
        for number in (1, 2):
            grads = [tf.fill(v.shape, float(number)) for v in layer.trainable_variables]
            optimizer.apply_gradients(zip(grads, layer.trainable_variables))
            saver.save(number)
            saved[number] = [v.numpy().copy() for v in layer.variables + optimizer.variables]
        data = os.path.join(directory, "ckpt-2.data-00000-of-00001")
        with open(data, "r+b") as f:  # the tail of the data file lost
            f.truncate(os.path.getsize(data) - 8)
        layer, optimizer, restorer = build()
        self.assertEqual(restorer.restore(report=lambda _: None), os.path.join(directory, "ckpt-1"))
        restored = [v.numpy() for v in layer.variables + optimizer.variables]
        self.assertLen(restored, len(saved[1]))
        for value, expected in zip(restored, saved[1]):
            np.testing.assert_array_equal(value, expected)


class RecordsTest(tf.test.TestCase):
    """A record (the genotype of a network) travels inside each checkpoint."""

    def _checkpointer(self, directory, record):
        self.variable = tf.Variable([0.0, 0.0], name="w")
        return checkpointing.Checkpointer(
            directory, records=None if record is None else {"genotype": record}, w=self.variable
        )

    def _save(self, directory, record, number):
        saver = self._checkpointer(directory, record)
        self.variable.assign([number, number])
        saver.save(number)

    def test_other_record_is_refused_and_json_formatting_does_not_matter(self):
        directory = self.get_temp_dir() + "/rec"
        self._save(directory, '{"nodes": [1, 2]}', 1)
        with self.assertRaisesRegex(
            checkpointing.CheckpointError, r"ckpt-1 does not fit .* written with another genotype"
        ):
            self._checkpointer(directory, '{"nodes": [2, 1]}').restore(
                os.path.join(directory, "ckpt-1")
            )
        self._checkpointer(directory, '{\n "nodes": [1,  2]}').restore()
        self.assertAllEqual(self.variable.numpy(), [1.0, 1.0])

    def test_record_survives_fallback(self):
        # The newest checkpoint is of another genotype: resuming skips it (and says so).
        directory = self.get_temp_dir() + "/fallback"
        self._save(directory, "A", 1)
        self._save(directory, "B", 2)
        notices = []
        path = self._checkpointer(directory, "A").restore(report=notices.append)
        self.assertEqual(path, os.path.join(directory, "ckpt-1"))
        self.assertAllEqual(self.variable.numpy(), [1.0, 1.0])
        self.assertRegex(notices[0], "ckpt-2 does not fit .* written with another genotype")

    def test_checkpoint_without_record_restores_with_a_notice(self):
        directory = self.get_temp_dir() + "/old"
        self._save(directory, None, 1)
        notices = []
        path = checkpointing.restore_checkpoint(
            os.path.dirname(directory),
            "the network",
            os.path.join(directory, "ckpt-1"),
            records={"genotype": "A"},
            report=notices.append,
            w=tf.Variable([5.0, 5.0]),
        )
        self.assertEqual(path, os.path.join(directory, "ckpt-1"))
        self.assertLen(notices, 1)
        self.assertRegex(notices[0], "does not record its genotype")


class NamedVariablesTest(tf.test.TestCase):
    def test_copy_weights_between_instances(self):
        keras.utils.set_random_seed(0)
        a, b = keras.layers.Dense(2), keras.layers.Dense(2)
        a.build((None, 3))
        b.build((None, 3))
        self.assertNotAllEqual(a.kernel.numpy(), b.kernel.numpy())
        checkpointing.copy_weights(a, b)
        for x, y in zip(a.variables, b.variables):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
        self.assertEqual(sorted(checkpointing.named_variables(a)), ["_kernel", "bias"])


if __name__ == "__main__":
    tf.test.main()
