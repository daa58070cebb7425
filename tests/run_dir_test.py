"""run_dir: ownership of an output folder (other runs, --resume, one process at a time, stale
locks of killed processes), run.json, progress line, summaries."""

import io
import json
import os
import signal
import socket
import subprocess
import sys

import file_tree
import tensorflow as tf

from tf_amended_darts import run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line(error):
    text = str(error)
    assert "\n" not in text, text
    return text


class RunDirTest(tf.test.TestCase):
    def _run(self, name, config=None):
        """A directory holding a search run with `config` (and a user's file)."""
        directory = os.path.join(self.get_temp_dir(), name)
        run_dir.prepare(directory, config or {"a": 1}, "search")
        run_dir.write_metadata(directory, config or {"a": 1}, "search", flags={"a": 1})
        run_dir.release(directory)
        with open(os.path.join(directory, "notes.txt"), "w") as f:
            f.write("user file")
        return directory

    def test_refuses_other_run_unless_overwrite(self):
        directory = self._run("run")
        with open(os.path.join(directory, "genotype.json"), "w") as f:
            f.write("{}")
        before = file_tree.snapshot(directory)
        with self.assertRaisesRegex(run_dir.RunDirError, "different search.*differs in: a"):
            run_dir.prepare(directory, {"a": 2}, "search", resume=True)
        with self.assertRaisesRegex(run_dir.RunDirError, "pass resume"):
            run_dir.prepare(directory, {"a": 1}, "search")
        self.assertEqual(file_tree.snapshot(directory), before)
        self.assertTrue(run_dir.prepare(directory, {"a": 1}, "search", resume=True))
        run_dir.release(directory)
        self.assertFalse(
            run_dir.prepare(directory, {"a": 2}, "search", overwrite=True, owned=("genotype*",))
        )
        run_dir.release(directory)
        self.assertEqual(os.listdir(directory), ["notes.txt"])  # only owned files removed

    def test_resume_where_no_run_is_refused_and_creates_nothing(self):
        missing = os.path.join(self.get_temp_dir(), "misspelt")
        with self.assertRaisesRegex(run_dir.RunDirError, r"^resume: there is no run .*misspelt"):
            run_dir.prepare(missing, {"a": 1}, "search", resume=True)
        self.assertFalse(os.path.exists(missing))
        empty = os.path.join(self.get_temp_dir(), "empty")
        os.makedirs(empty)
        before = file_tree.snapshot(empty)
        with self.assertRaisesRegex(run_dir.RunDirError, "no run to continue") as caught:
            run_dir.prepare(empty, {"a": 1}, "search", resume=True)
        one_line(caught.exception)
        self.assertEqual(file_tree.snapshot(empty), before)

    def test_corrupt_run_json_is_one_line_and_changes_nothing(self):
        for name, text in (
            ("list", "[1, 2]"),
            ("garbage", "{not json"),
            ("binary", "\xff\xfe"),
            ("config_list", '{"kind": "x", "config": []}'),
        ):
            directory = os.path.join(self.get_temp_dir(), "corrupt_" + name)
            os.makedirs(directory)
            with open(os.path.join(directory, run_dir.RUN_FILE), "w", encoding="latin-1") as f:
                f.write(text)
            before = file_tree.snapshot(directory)
            for resume in (False, True):
                with self.assertRaisesRegex(run_dir.RunDirError, "run.json") as caught:
                    run_dir.prepare(directory, {"a": 1}, "search", resume=resume)
                one_line(caught.exception)
            self.assertEqual(file_tree.snapshot(directory), before)
            self.assertTrue(run_dir.holds_run(directory))

    def test_second_process_is_refused_until_the_owner_is_killed(self):
        directory = self._run("owned")
        # Another process claims the directory (as a search starting there would).
        script = (
            "import sys; from tf_amended_darts import run_dir; "
            "run_dir.claim(sys.argv[1]); print('claimed', flush=True); sys.stdin.read()"
        )
        owner = subprocess.Popen(
            [sys.executable, "-c", script, directory],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertEqual(owner.stdout.readline().strip(), "claimed")
            before = file_tree.snapshot(directory)
            with self.assertRaisesRegex(
                run_dir.RunDirError,
                rf"owned is in use by process {owner.pid} on {socket.gethostname()}",
            ) as c:
                run_dir.prepare(directory, {"a": 1}, "search", resume=True)
            one_line(c.exception)
            with self.assertRaisesRegex(run_dir.RunDirError, "in use"):
                run_dir.prepare(directory, {"a": 2}, "search", overwrite=True)
            self.assertEqual(file_tree.snapshot(directory), before)
        finally:
            owner.send_signal(signal.SIGKILL)
            owner.wait()
        # kill -9 left its record behind: it is stale and taken over by the resume.
        self.assertTrue(os.path.exists(os.path.join(directory, run_dir.LOCK_FILE)))
        self.assertTrue(run_dir.prepare(directory, {"a": 1}, "search", resume=True))
        with open(os.path.join(directory, run_dir.LOCK_FILE)) as f:
            self.assertEqual(json.load(f)["pid"], os.getpid())
        run_dir.release(directory)
        self.assertFalse(os.path.exists(os.path.join(directory, run_dir.LOCK_FILE)))

    def _lock(self, directory, **record):
        with open(os.path.join(directory, run_dir.LOCK_FILE), "w") as f:
            json.dump(record, f)

    def test_lock_records_that_name_no_live_process_are_taken_over(self):
        directory = self._run("stale")
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            start = run_dir._process_start(sleeper.pid)[1]
            host = socket.gethostname()
            self._lock(directory, pid=sleeper.pid, host=host, process_start=start)
            with self.assertRaisesRegex(run_dir.RunDirError, f"process {sleeper.pid}"):
                run_dir.claim(directory)
            # The same pid, but another process than the one recorded (the pid was reused).
            self._lock(directory, pid=sleeper.pid, host=host, process_start=start + 1)
            run_dir.claim(directory)
            run_dir.release(directory)
        finally:
            sleeper.kill()
            sleeper.wait()
        for record in ({"pid": sleeper.pid, "host": socket.gethostname()}, {"pid": "x"}):
            self._lock(directory, **record)
            run_dir.claim(directory)
            run_dir.release(directory)
        with open(os.path.join(directory, run_dir.LOCK_FILE), "w") as f:
            f.write("\x00garbage")
        run_dir.claim(directory)
        run_dir.release(directory)

    def test_lock_of_another_host_is_respected(self):
        directory = self._run("remote")
        self._lock(directory, pid=os.getpid(), host="elsewhere.example", since="then")
        with self.assertRaisesRegex(
            run_dir.RunDirError, f"process {os.getpid()} on elsewhere.example since then"
        ):
            run_dir.prepare(directory, {"a": 1}, "search", resume=True)
        run_dir.release(directory)  # not ours: stays
        self.assertTrue(os.path.exists(os.path.join(directory, run_dir.LOCK_FILE)))

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
