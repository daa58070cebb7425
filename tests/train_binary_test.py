"""End to end: the train, evaluate and export binaries on a tiny network, and their refusals
(unknown operation, checkpoint/genotype mismatch: exit 2, one line, nothing written)."""

import json
import os
import subprocess
import sys

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--genotype=DARTS_V2",
    "--cells=3",
    "--channels=4",
    "--batch_size=32",
    "--epochs=2",
    "--steps_per_epoch=3",
    "--cutout=0",
    "--validate=false",
]


def _run(binary, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", f"tf_amended_darts.bin.{binary}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


class TrainBinaryTest(tf.test.TestCase):
    def test_train_evaluate_export(self):
        root = self.get_temp_dir()
        run_dir, model_dir = os.path.join(root, "run"), os.path.join(root, "model")
        trained = _run("train", f"--output_dir={run_dir}", f"--export_dir={model_dir}", *TINY)
        self.assertEqual(trained.returncode, 0, trained.stderr[-3000:])
        self.assertIn("training finished", trained.stdout)
        self.assertTrue(os.path.exists(os.path.join(model_dir, "saved_model.pb")))
        with open(os.path.join(run_dir, "run.json")) as f:
            meta = json.load(f)
        self.assertEqual(meta["kind"], "train")
        self.assertEqual(meta["flags"]["genotype"], "DARTS_V2")
        self.assertEqual(meta["dataset_info"]["image_shape"], [8, 8, 1])

        results = {}
        for source in (f"--run_dir={run_dir}", f"--saved_model={model_dir}"):
            run = _run("evaluate", source, "--dataset=digits", "--format=json")
            self.assertEqual(run.returncode, 0, run.stderr[-3000:])
            results[source] = json.loads(run.stdout)
        a, b = results.values()
        for key in ("top1", "top5", "examples", "trainable_params", "mult_adds", "genotype"):
            self.assertEqual(a[key], b[key], key)
        self.assertAllClose(a["loss"], b["loss"], atol=1e-5)
        self.assertEqual(a["examples"], 360)
        self.assertGreater(a["examples_per_second"], 0)

        again = os.path.join(root, "model2")
        exported = _run(
            "export", f"--run_dir={run_dir}", f"--export_dir={again}", "--genotype=DARTS_V2"
        )
        self.assertEqual(exported.returncode, 0, exported.stderr[-3000:])
        self.assertTrue(os.path.exists(os.path.join(again, "saved_model.pb")))

        wrong = os.path.join(root, "wrong")
        refused = _run(
            "export", f"--run_dir={run_dir}", f"--export_dir={wrong}", "--genotype=DARTS_V1"
        )
        self.assertEqual(refused.returncode, 2)
        last = refused.stderr.strip().splitlines()[-1]
        self.assertStartsWith(last, "export: error: ")
        self.assertIn("was trained with genotype", last)
        self.assertFalse(os.path.exists(wrong))
        self.assertEqual(sorted(os.listdir(root)), ["model", "model2", "run"])

    def test_unknown_operation_exits_with_one_line_and_writes_nothing(self):
        out = os.path.join(self.get_temp_dir(), "bad")
        bad = (
            "--genotype=Genotype(normal=[('bogus_op', 0), ('skip_connect', 1)], "
            "normal_concat=[2], reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], "
            "reduce_concat=[2])"
        )
        run = _run("train", f"--output_dir={out}", *TINY, bad)
        self.assertEqual(run.returncode, 2, run.stderr[-2000:])
        last = run.stderr.strip().splitlines()[-1]
        self.assertStartsWith(last, "train: error: ")
        self.assertIn("unknown operation 'bogus_op'", last)
        self.assertFalse(os.path.exists(out))

    def test_genotype_that_crashed_the_build_is_refused_before_the_run_directory(self):
        # A reduction cell concatenating its input (twice its nodes' size) used to fail in
        # the network build, with a traceback, after run.json and log.txt were written.
        out = os.path.join(self.get_temp_dir(), "bad_concat")
        bad = (
            "--genotype=Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], "
            "normal_concat=[2], reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], "
            "reduce_concat=[0, 2])"
        )
        run = _run("train", f"--output_dir={out}", *TINY, bad)
        self.assertEqual(run.returncode, 2, run.stderr[-2000:])
        self.assertLen(run.stderr.strip().splitlines(), 1, run.stderr[-2000:])
        self.assertIn(
            "train: error: genotype: reduce: concat [0, 2] must be distinct intermediate nodes",
            run.stderr,
        )
        self.assertFalse(os.path.exists(out))

    def test_genotype_values_the_validator_let_through_are_one_line(self):
        good = {"nodes": [[["sep_conv_3x3", 0], ["skip_connect", 1]]], "concat": [2]}
        huge = {"nodes": [[["sep_conv_3x3", "HUGE"]]], "concat": [2]}
        cases = (
            ({"normal": [{"nodes": [[]], "concat": [2]}], "reduce": [good]}, "no incoming edge"),
            ({"normal": [good], "reduce": [huge]}, "a number too long to be an input index"),
        )
        for genotype, message in cases:
            with self.subTest(message=message):
                out = os.path.join(self.get_temp_dir(), "bad_genotype")
                path = os.path.join(self.get_temp_dir(), "genotype.json")
                with open(path, "w") as f:
                    f.write(json.dumps(genotype).replace('"HUGE"', "9" * 5000))
                run = _run("train", f"--output_dir={out}", *TINY, f"--genotype={path}")
                self.assertEqual(run.returncode, 2, run.stderr[-2000:])
                self.assertLen(run.stderr.strip().splitlines(), 1, run.stderr[-2000:])
                self.assertStartsWith(run.stderr, f"train: error: genotype file {path}: ")
                self.assertIn(message, run.stderr)
                self.assertFalse(os.path.exists(out))

    def test_an_output_dir_under_a_file_is_one_line(self):
        a_file = os.path.join(self.get_temp_dir(), "notes.txt")
        with open(a_file, "w") as f:
            f.write("a user's file\n")
        out = os.path.join(a_file, "run")
        run = _run("train", f"--output_dir={out}", *TINY)
        self.assertEqual(run.returncode, 2, run.stderr[-2000:])
        self.assertEqual(
            run.stderr.strip().splitlines(),
            [
                f"train: error: cannot make the folder {out}: a part of the path is a file, not a "
                "folder"
            ],
        )


if __name__ == "__main__":
    tf.test.main()
