"""End to end: the search binary on a tiny configuration for every estimator, deterministic
stop-and-resume (also after kill -9 and a corrupt checkpoint), and bad flags (non-zero exit,
one clear line)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from tf_amended_darts import diagnostics, loop, search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--cells=3",
    "--nodes=1",
    "--channels=4",
    "--batch_size=16",
    "--epochs=2",
    "--steps_per_epoch=2",
    "--operations=none,skip_connect,avg_pool_3x3,sep_conv_3x3",
    "--implicit_iterations=2",
    "--validate=false",
    "--render=false",
]


def _search(*args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "tf_amended_darts.bin.search", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _popen_search(*args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, "-m", "tf_amended_darts.bin.search", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(process, text):
    """Reads the process' stdout until a line holds `text` (fails if it ends first)."""
    for line in process.stdout:
        if text in line:
            return
    raise AssertionError(f"the search ended before printing {text!r}")


def _final_probabilities(directory):
    with open(os.path.join(directory, "alphas_history.json")) as f:
        return np.array(json.load(f)["records"][-1]["probabilities"])


class SearchBinaryTest(tf.test.TestCase):
    def test_every_estimator_end_to_end(self):
        for estimator in ("first_order", "second_order", "amended", "implicit"):
            directory = os.path.join(self.get_temp_dir(), estimator)
            run = _search(f"--output_dir={directory}", f"--arch_gradient={estimator}", *TINY)
            self.assertEqual(run.returncode, 0, run.stderr[-3000:])
            self.assertIn(f"estimator '{estimator}' runs", run.stdout)
            self.assertIn("search finished", run.stdout)
            for name in ("genotype.json", "alphas_history.json", "run.json", "log.txt"):
                self.assertTrue(os.path.exists(os.path.join(directory, name)), name)
            with open(os.path.join(directory, "run.json")) as f:
                meta = json.load(f)
            self.assertEqual(meta["flags"]["arch_gradient"], estimator)
            self.assertEqual(meta["config"]["seed"], 0)

    def test_deterministic_stop_and_resume(self):
        full, part = (os.path.join(self.get_temp_dir(), n) for n in ("full", "part"))
        common = ["--deterministic", "--seed=3", "--arch_gradient=amended", *TINY]
        self.assertEqual(_search(f"--output_dir={full}", *common).returncode, 0)
        stopped = _search(f"--output_dir={part}", "--stop_after_steps=3", *common)
        self.assertEqual(stopped.returncode, 0, stopped.stderr[-3000:])
        self.assertIn("stopped after global step 3", stopped.stdout)
        refused = _search(f"--output_dir={part}", *common)  # neither --resume nor --overwrite
        self.assertEqual(refused.returncode, 2)
        self.assertIn("pass resume", refused.stderr.strip().splitlines()[-1])
        resumed = _search(f"--output_dir={part}", "--resume", *common)
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        self.assertIn("resumed from", resumed.stdout)
        self.assertAllEqual(_final_probabilities(full), _final_probabilities(part))
        with (
            open(os.path.join(full, "genotype.json")) as a,
            open(os.path.join(part, "genotype.json")) as b,
        ):
            self.assertEqual(a.read(), b.read())

    def test_kill_9_then_corrupt_checkpoint_resumes_from_older_one_identically(self):
        # kill -9 once the second checkpoint is there, then damage the newest checkpoint, the
        # state file, and leave an interrupted write: the resume starts from the newest one
        # that restores, says so, and still ends with the uninterrupted run's alphas.
        full, part = (os.path.join(self.get_temp_dir(), n) for n in ("full_k", "part_k"))
        common = ["--deterministic", "--seed=5", "--arch_gradient=first_order", *TINY]
        self.assertEqual(_search(f"--output_dir={full}", *common).returncode, 0)
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        killed = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tf_amended_darts.bin.search",
                f"--output_dir={part}",
                "--checkpoint_every=1",
                *common,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        checkpoints = os.path.join(part, "checkpoints")
        deadline = time.time() + 600
        while (
            killed.poll() is None
            and time.time() < deadline
            and not os.path.exists(os.path.join(checkpoints, "ckpt-2.index"))
        ):
            time.sleep(0.05)
        killed.kill()
        killed.wait()
        newest = sorted(
            (
                int(n[5:-6])
                for n in os.listdir(checkpoints)
                if n.startswith("ckpt-") and n.endswith(".index")
            )
        )[-1]
        data = os.path.join(checkpoints, f"ckpt-{newest}.data-00000-of-00001")
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        with open(os.path.join(checkpoints, "checkpoint"), "w") as f:
            f.write("garbage")
        os.makedirs(os.path.join(checkpoints, "ckpt-7_temp"))
        resumed = _search(f"--output_dir={part}", "--resume", *common)
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        self.assertIn(f"newer one(s) cannot be restored (checkpoint {data[:-20]}", resumed.stdout)
        self.assertIn(
            f"resumed from {os.path.join(checkpoints, f'ckpt-{newest - 1}')}", resumed.stdout
        )
        self.assertAllEqual(_final_probabilities(full), _final_probabilities(part))
        self.assertFalse(os.path.exists(os.path.join(checkpoints, "ckpt-7_temp")))
        self.assertFalse(os.path.exists(os.path.join(part, "run.lock")))  # released at the end

    def test_hessian_eigenvalue_flag_logs_the_eigenvalue_of_every_epoch(self):
        directory = os.path.join(self.get_temp_dir(), "hessian")
        run = _search(
            f"--output_dir={directory}",
            "--arch_gradient=first_order",
            "--hessian_eigenvalue_iterations=3",
            "--hessian_eigenvalue_examples=16",
            *TINY,
        )
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        with open(os.path.join(directory, "log.txt")) as f:
            logged = re.findall(r"\] epoch \d/2 .*hessian_eigenvalue=(\S+)", f.read())
        self.assertLen(logged, 2)
        # The last epoch's value is the eigenvalue at the final checkpoint, on the first 16
        # images of the architecture part (logged to 4 significant digits).
        restored = search.restore_search_network(directory)
        eigenvalue, _ = diagnostics.alpha_hessian_eigenvalue(
            restored.network,
            loop.cross_entropy,
            search.architecture_batch(restored.config, 16),
            iterations=3,
        )
        self.assertAllClose(float(logged[-1]), eigenvalue, rtol=1e-3)

    def test_cosines_flag_logs_the_cosines_every_n_epochs(self):
        directory = os.path.join(self.get_temp_dir(), "cosines")
        run = _search(
            f"--output_dir={directory}",
            "--arch_gradient=first_order",
            "--amending_coefficient=0.5",
            "--cosines_every=2",
            "--cosines_damping=0.5",
            *TINY,
        )
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        with open(os.path.join(directory, "log.txt")) as f:
            lines = re.findall(r"\] epoch (\d)/2 (.*)", f.read())
        self.assertEqual([epoch for epoch, _ in lines], ["1", "2"])
        self.assertNotIn("cosine_to_implicit", lines[0][1])
        logged = dict(re.findall(r"(\S+/\w+)=(\S+)", lines[1][1]))
        # Measured at the epoch's end on the live supernet: the final checkpoint's values, as
        # bin/diagnose measures them there with the same settings (logged to 4 digits).
        config = diagnostics.DiagnoseConfig(
            search_dir=directory,
            batch_size=16,
            amending_coefficient=0.5,
            implicit_iterations=2,
            cosines_damping=0.5,
            repeats=1,
        )
        measured = diagnostics.diagnose(config)["estimators"]
        for name in ("first_order", "second_order", "amended"):
            self.assertAllClose(
                float(logged[f"cosine_to_implicit/{name}"]),
                measured[name]["cosine_to_implicit"],
                rtol=1e-3,
                atol=1e-4,
            )
        self.assertAllClose(
            float(logged["best_eta/amended"]), measured["amended"]["best_eta"], rtol=1e-3
        )
        self.assertAllClose(
            float(logged["relative_residual/implicit"]),
            measured["implicit"]["relative_residual"],
            rtol=1e-3,
        )
        self.assertNotIn("correction_cosine_to_implicit/first_order", logged)  # NaN: no line

    def test_bad_flags_exit_with_one_clear_line(self):
        out = os.path.join(self.get_temp_dir(), "bad")
        cases = [
            (["--dataset=no_such_dataset"], "unknown dataset 'no_such_dataset'"),
            (["--operations=none,bogus_op"], "unknown operation 'bogus_op'"),
            (
                ["--logical_cpus=2", "--strategy=mirrored", "--batch_size=15"],
                "global batch size 15 is not a positive multiple of the 2 replicas",
            ),
        ]
        # tensorflow-datasets warns through absl about a version folder without metadata.
        unprepared = os.path.join(self.get_temp_dir(), "tfds")
        os.makedirs(os.path.join(unprepared, "mnist", "3.0.1"))
        cases += [
            (
                ["--dataset=mnist", f"--data_dir={unprepared}"],
                f"tensorflow-datasets dataset 'mnist' is not prepared in {unprepared}",
            ),
            (["extra"], "unexpected arguments: extra"),  # not the flag help
        ]
        for extra, message in cases:
            with self.subTest(extra=extra):
                run = _search(f"--output_dir={out}", "--overwrite", *TINY, *extra)
                self.assertEqual(run.returncode, 2, run.stderr[-2000:])
                self.assertLen(run.stderr.strip().splitlines(), 1, run.stderr[-2000:])
                self.assertStartsWith(run.stderr, "search: error: ")
                self.assertIn(message, run.stderr)
                self.assertFalse(os.path.exists(out))

    def test_an_output_dir_that_is_or_lies_under_a_file_is_one_line(self):
        a_file = os.path.join(self.get_temp_dir(), "notes.txt")
        with open(a_file, "w") as f:
            f.write("a user's file\n")
        for out, why in (
            (a_file, "a file of that name is in the way"),
            (os.path.join(a_file, "run"), "a part of the path is a file, not a folder"),
        ):
            with self.subTest(out=out):
                run = _search(f"--output_dir={out}", *TINY)
                self.assertEqual(run.returncode, 2, run.stderr[-2000:])
                self.assertEqual(
                    run.stderr.strip().splitlines(),
                    [f"search: error: cannot make the folder {out}: {why}"],
                )
        with open(a_file) as f:
            self.assertEqual(f.read(), "a user's file\n")

    def test_sigterm_stops_with_a_checkpoint_and_the_resume_is_identical(self):
        full, part = (os.path.join(self.get_temp_dir(), n) for n in ("full_s", "part_s"))
        common = ["--deterministic", "--seed=6", "--arch_gradient=first_order", *TINY]
        common += ["--epochs=10"]  # long enough to be signalled in the middle
        self.assertEqual(_search(f"--output_dir={full}", *common).returncode, 0)
        stopped = _popen_search(f"--output_dir={part}", *common)
        _wait_for_line(stopped, "epoch 2/10")
        stopped.send_signal(signal.SIGTERM)
        _, stderr = stopped.communicate(timeout=600)
        self.assertEqual(stopped.returncode, 128 + signal.SIGTERM, stderr[-2000:])
        last = stderr.strip().splitlines()[-1]
        self.assertRegex(
            last,
            r"^search: stopped by SIGTERM after global step \d+ \(checkpoint saved\): run the "
            r"same command again with --resume to continue$",
        )
        step = int(last.split()[7])
        self.assertLess(step, 20)  # stopped before the end
        self.assertEqual(
            tf.train.latest_checkpoint(os.path.join(part, "checkpoints")),
            os.path.join(part, "checkpoints", f"ckpt-{step}"),
        )
        self.assertFalse(os.path.exists(os.path.join(part, "run.lock")))
        resumed = _search(f"--output_dir={part}", "--resume", *common)
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        self.assertAllEqual(_final_probabilities(full), _final_probabilities(part))

    def test_a_second_signal_stops_at_once(self):
        # Both signals reach the run while it builds its first step (seconds of tracing):
        # the first asks for a stop after that step, the second ends the process there.
        out = os.path.join(self.get_temp_dir(), "twice")
        run = _popen_search(f"--output_dir={out}", "--arch_gradient=first_order", *TINY)
        _wait_for_line(run, "architecture gradient:")  # the Runner's handlers are in place
        run.send_signal(signal.SIGINT)
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=600)
        self.assertEqual(run.returncode, -signal.SIGINT)  # killed by it, not 130 after a step
        self.assertFalse(os.path.exists(os.path.join(out, "checkpoints", "checkpoint")))

    def test_flags_out_of_range_are_refused_by_absl_before_anything_is_written(self):
        out = os.path.join(self.get_temp_dir(), "bad_flag")
        for flag, message in (
            ("--arch_gradient=zeroth_order", "must be one of first_order"),
            ("--learning_rate=-0.1", "must be a finite number >= 0"),
            ("--logical_cpus=0", "must be an integer >= 1"),
            ("--seed=-1", "must be an integer in [0, 4294967295]"),
            ("--hessian_eigenvalue_iterations=-1", "must be an integer >= 0"),
            ("--hessian_eigenvalue_examples=0", "must be an integer >= 1"),
        ):
            run = _search(f"--output_dir={out}", *TINY, flag)
            self.assertEqual(run.returncode, 1, run.stderr[-2000:])
            self.assertIn(f"flag {flag}: {message}", run.stderr.splitlines()[0])
            self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    tf.test.main()
