"""The describe binary, run as a user runs it."""

import json
import os
import subprocess
import sys

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe(*flags):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "tf_amended_darts.bin.describe", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )


class DescribeTest(tf.test.TestCase):
    def test_json_for_darts_v2_with_auxiliary_head(self):
        out = describe(
            "--genotype=DARTS_V2",
            "--network=cifar",
            "--channels=36",
            "--cells=20",
            "--num_classes=10",
            "--auxiliary",
            "--format=json",
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        d = json.loads(out.stdout)
        self.assertEqual(d["trainable_params"], 3_825_768)
        self.assertGreater(d["mult_adds"], 0)

    def test_supernet_of_a_preset(self):
        out = describe("--search_space=darts", "--cells=5", "--channels=4", "--format=json")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["arch_params"], 2 * 14 * 8)

    def test_bad_input_is_one_line(self):
        deep = '{"normal": ' + "[" * 20_000 + "]" * 20_000 + ', "reduce": []}'  # < ARG_MAX
        for flags, message in (
            (
                [
                    "--genotype=Genotype(normal=[('conv_9x9', 0)], normal_concat=[2], "
                    "reduce=[('skip_connect', 0)], reduce_concat=[2])"
                ],
                "unknown operation",
            ),
            (["--genotype=missing.json"], "neither a published genotype"),
            (["--genotype=DARTS_V2", "--search_space=darts"], "exactly one of"),
            # Each crashed with a traceback before: TypeError, RecursionError, and a
            # reduction cell concatenating its input (twice the size of its nodes).
            (
                [
                    "--genotype=Genotype(normal=[('skip_connect', 0)], normal_concat=2.5, "
                    "reduce=[('skip_connect', 0)], reduce_concat=[2])"
                ],
                "genotype: normal: concat must be a list of node numbers, got 2.5",
            ),
            ([f"--genotype={deep}"], "genotype: malformed JSON: nested too deeply"),
            (
                [
                    "--genotype=Genotype(normal=[('skip_connect', 0)], normal_concat=[2], "
                    "reduce=[('skip_connect', 0)], reduce_concat=[0, 2])"
                ],
                "reduce: concat [0, 2] must be distinct intermediate nodes in 2..2",
            ),
        ):
            with self.subTest(flags=flags):
                out = describe(*flags)
                self.assertEqual(out.returncode, 2)
                self.assertEqual(out.stdout, "")
                lines = out.stderr.strip().splitlines()
                self.assertLen(lines, 1, out.stderr)
                self.assertIn(message, lines[0])

    def test_a_flag_out_of_range_is_refused_by_absl_naming_it(self):
        out = describe("--genotype=DARTS_V2", "--cells=0")
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stdout, "")
        self.assertIn("flag --cells=0: must be an integer >= 3", out.stderr)


if __name__ == "__main__":
    tf.test.main()
