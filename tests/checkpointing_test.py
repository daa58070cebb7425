"""Checkpointer (save / restore / corrupt and interrupted files) and run_dir (output folder
ownership, progress line)."""

import io
import json
import os

import tensorflow as tf

from tf_amended_darts import checkpointing, run_dir


class CheckpointerTest(tf.test.TestCase):

    def _checkpointer(self, directory, value=0.0):
        self.variable = tf.Variable([value, value], name="w")
        self.step = tf.Variable(0, dtype=tf.int64)
        return checkpointing.Checkpointer(directory, max_to_keep=3, w=self.variable,
                                          step=self.step)

    def test_save_and_restore_latest(self):
        directory = self.get_temp_dir() + "/a"
        saver = self._checkpointer(directory, 1.0)
        for number in (5, 10):
            self.variable.assign([number, number])
            self.step.assign(number)
            saver.save(number)
        restorer = self._checkpointer(directory)
        self.assertEqual(restorer.restore(), os.path.join(directory, "ckpt-10"))
        self.assertAllEqual(self.variable.numpy(), [10.0, 10.0])
        self.assertEqual(int(self.step.numpy()), 10)

    def test_no_checkpoint_restores_nothing(self):
        self.assertIsNone(self._checkpointer(self.get_temp_dir() + "/empty").restore())

    def test_interrupted_write_keeps_previous_checkpoint(self):
        directory = self.get_temp_dir() + "/b"
        saver = self._checkpointer(directory, 3.0)
        saver.save(1)
        # A save killed half-way: the data files of ckpt-2 exist (truncated), the state file
        # (replaced atomically as the last act of a save) still names ckpt-1.
        for suffix in (".index", ".data-00000-of-00001"):
            with open(os.path.join(directory, "ckpt-2" + suffix), "wb") as f:
                f.write(b"\x00garbage")
        restorer = self._checkpointer(directory)
        self.assertEqual(restorer.restore(), os.path.join(directory, "ckpt-1"))
        self.assertAllEqual(self.variable.numpy(), [3.0, 3.0])

    def test_truncated_checkpoint_is_a_clear_error(self):
        directory = self.get_temp_dir() + "/c"
        saver = self._checkpointer(directory, 3.0)
        saver.save(1)
        saver.save(2)
        for name in os.listdir(directory):
            if name.startswith("ckpt-2."):
                path = os.path.join(directory, name)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
        with self.assertRaisesRegex(checkpointing.CheckpointError,
                                    r"ckpt-2 cannot be restored.*ckpt-1"):
            self._checkpointer(directory).restore()

    def test_checkpoint_of_other_variables_is_a_clear_error(self):
        directory = self.get_temp_dir() + "/d"
        checkpointing.Checkpointer(directory, other=tf.Variable(1.0)).save(1)
        with self.assertRaisesRegex(checkpointing.CheckpointError, "different configuration"):
            self._checkpointer(directory).restore()


class RunDirTest(tf.test.TestCase):

    def test_refuses_other_run_unless_overwrite(self):
        directory = self.get_temp_dir() + "/run"
        self.assertFalse(run_dir.prepare(directory, {"a": 1}, "search"))
        run_dir.write_metadata(directory, {"a": 1}, "search", flags={"a": 1})
        with open(os.path.join(directory, "genotype.json"), "w") as f:
            f.write("{}")
        with open(os.path.join(directory, "notes.txt"), "w") as f:
            f.write("user file")
        with self.assertRaisesRegex(run_dir.RunDirError, "different search.*differs in: a"):
            run_dir.prepare(directory, {"a": 2}, "search", resume=True)
        with self.assertRaisesRegex(run_dir.RunDirError, "--resume"):
            run_dir.prepare(directory, {"a": 1}, "search")
        self.assertTrue(run_dir.prepare(directory, {"a": 1}, "search", resume=True))
        self.assertFalse(run_dir.prepare(directory, {"a": 2}, "search", overwrite=True,
                                         owned=("genotype*",)))
        self.assertEqual(os.listdir(directory), ["notes.txt"])  # only owned files removed

    def test_metadata_has_versions_and_flags(self):
        directory = self.get_temp_dir() + "/meta"
        run_dir.write_metadata(directory, {"seed": 7}, "search", flags={"seed": 7})
        with open(os.path.join(directory, run_dir.RUN_FILE)) as f:
            meta = json.load(f)
        self.assertEqual(meta["config"]["seed"], 7)
        self.assertIn("tensorflow", meta["versions"])

    def test_progress_line_has_rate_and_eta(self):
        stream = io.StringIO()
        progress = run_dir.Progress(10, 32, stream=stream, interval=0.0)
        for step in range(1, 11):
            progress.update(step, loss=1.5)
        last = stream.getvalue().strip().splitlines()[-1]
        self.assertRegex(last, r"10/10 100% [\d.]+ img/s ETA 00:00 loss=1.5")

    def test_summaries_need_no_tensorboard_package(self):
        directory = self.get_temp_dir() + "/tb"
        with run_dir.summary_writer(directory).as_default():
            run_dir.write_scalar("x", 1.0, 0)
            run_dir.write_text("t", "hello", 0)
            run_dir.write_image("i", tf.zeros([4, 5, 3], tf.uint8), 0)
        self.assertNotEmpty(os.listdir(os.path.join(directory, run_dir.TENSORBOARD_DIR)))


if __name__ == "__main__":
    tf.test.main()
