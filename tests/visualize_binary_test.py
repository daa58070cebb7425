"""The visualize binary, run as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DARTS_V2_NORMAL = [
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("skip_connect", 0),
    ("dil_conv_3x3", 2),
]
DARTS_V2_REDUCE = [
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
]
OPS = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


def genotype_json(normal, reduce):
    """The genotype.json a search writes (canonical JSON: nodes of 2 edges each)."""

    def cell(edges):
        return {
            "nodes": [[list(e) for e in edges[i : i + 2]] for i in range(0, len(edges), 2)],
            "concat": [2, 3, 4, 5],
        }

    return json.dumps({"normal": [cell(normal)], "reduce": [cell(reduce)]})


def alphas_history(num_records=3):
    rng = np.random.default_rng(1)
    records = []
    for e in range(num_records):
        slots = []
        for _ in range(2):
            a = rng.normal(size=(14, len(OPS))) * e
            p = np.exp(a - a.max(axis=1, keepdims=True))
            slots.append((p / p.sum(axis=1, keepdims=True)).tolist())
        records.append({"epoch": e, "step": 100 * (e + 1), "probabilities": slots})
    return {"operations": OPS, "slots": ["normal_0", "reduce_0"], "records": records}


def visualize(*flags, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "tf_amended_darts.bin.visualize", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )


class VisualizeBinaryTest(absltest.TestCase):
    def tempdir(self):
        folder = tempfile.mkdtemp(prefix="visualize_binary_test_")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        return folder

    def write(self, folder, name, text):
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_darts_v2_and_history(self):
        run_dir, out = self.tempdir(), self.tempdir()
        self.write(run_dir, "alphas_history.json", json.dumps(alphas_history()))
        # No --output_dir: the pictures go to the current directory.
        result = visualize(
            "--genotype=DARTS_V2", f"--run_dir={run_dir}", "--prefix=darts_v2", cwd=out
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        written = result.stdout.split()
        self.assertEqual(
            written,
            ["./alphas_history.png", "./alphas_history.svg"]
            + [
                f"./darts_v2_{cell}.{ext}"
                for cell in ("normal", "reduce")
                for ext in ("dot", "png", "svg")
            ],
        )
        self.assertCountEqual(os.listdir(out), [os.path.basename(p) for p in written])
        for name in os.listdir(out):
            with open(os.path.join(out, name), "rb") as f:
                content = f.read()
            if name.endswith(".png"):
                self.assertEqual(content[:8], PNG_MAGIC, name)
            elif name.endswith(".svg"):
                self.assertIn(b"<svg", content, name)
        with open(os.path.join(out, "darts_v2_normal.dot"), encoding="utf-8") as f:
            self.assertEqual(f.read().count('" [label="'), 8)

    def test_bad_genotype_is_one_line(self):
        folder = self.tempdir()
        result = visualize(
            "--genotype=Genotype(normal=[('conv_9x9', 0)], normal_concat=[2], "
            "reduce=[('skip_connect', 0)], reduce_concat=[2])",
            f"--output_dir={folder}",
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.strip().splitlines()
        self.assertLen(lines, 1, result.stderr)
        self.assertStartsWith(lines[0], "visualize: error: ")
        self.assertIn("unknown operation 'conv_9x9'", lines[0])
        self.assertEmpty(os.listdir(folder))


class VisualizeFunctionTest(absltest.TestCase):
    """The binary's work in-process (each binary run imports TensorFlow: ~5 s)."""

    tempdir = VisualizeBinaryTest.tempdir
    write = VisualizeBinaryTest.write

    def test_run_dir_genotype_json(self):
        from tf_amended_darts.bin import visualize as binary

        run_dir, out = self.tempdir(), self.tempdir()
        self.write(run_dir, "genotype.json", genotype_json(DARTS_V2_NORMAL, DARTS_V2_REDUCE))
        written = binary.visualize(run_dir=run_dir, output_dir=out, formats=["svg"])
        self.assertEqual(
            [os.path.basename(p) for p in written],
            [
                "genotype_normal.dot",
                "genotype_normal.svg",
                "genotype_reduce.dot",
                "genotype_reduce.svg",
            ],
        )
        self.assertCountEqual(os.listdir(out), [os.path.basename(p) for p in written])

    def test_bad_input(self):
        from tf_amended_darts import errors
        from tf_amended_darts.bin import visualize as binary

        folder = self.tempdir()
        history = alphas_history(2)
        history["records"][1]["probabilities"].pop()
        bad_history = self.write(folder, "alphas_history.json", json.dumps(history))
        self.write(folder, "empty.json", json.dumps(alphas_history(0)))
        for kwargs, message in (
            ({"alphas_history": bad_history}, r"records\[1\]\.probabilities must"),
            ({"alphas_history": bad_history + ".missing"}, "No such file"),
            ({"alphas_history": os.path.join(folder, "empty.json")}, "no records yet"),
            ({"run_dir": self.tempdir()}, "neither genotype.json nor"),
            ({"run_dir": bad_history}, "is not a directory"),
            ({}, "give --genotype, --alphas_history or --run_dir"),
            ({"genotype": "DARTS_V2", "prefix": "a/b"}, "plain file name prefix"),
            ({"genotype": "DARTS_V2", "formats": ["png", "bmp"]}, "expected some of"),
        ):
            with self.subTest(kwargs=kwargs):
                with self.assertRaisesRegex(errors.InputError, message) as raised:
                    binary.visualize(output_dir=folder, **kwargs)
                self.assertNotIn("\n", str(raised.exception))
        self.assertCountEqual(os.listdir(folder), ["alphas_history.json", "empty.json"])


if __name__ == "__main__":
    absltest.main()
