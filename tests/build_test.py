"""BUILD declares a target for every module, binary, script and test: a file without one would
be left out of the Bazel build and its sandboxed dependency check."""

import glob
import os
import re

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BuildFileTest(tf.test.TestCase):
    def test_every_python_file_is_declared(self):
        with open(os.path.join(ROOT, "BUILD")) as f:
            declared = set(re.findall(r'"([\w/]+\.py)"', f.read()))
        files = {
            os.path.relpath(p, ROOT)
            for pattern in (
                "tf_amended_darts/*.py",
                "tf_amended_darts/bin/*.py",
                "tests/*.py",
                "scripts/*.py",
                "benchmarks/*.py",
            )
            for p in glob.glob(os.path.join(ROOT, pattern))
        }
        self.assertTrue(files)
        self.assertEqual(sorted(files - declared), [], "files without a BUILD target")
        self.assertEqual(sorted(declared - files), [], "BUILD names files that do not exist")


if __name__ == "__main__":
    tf.test.main()
