"""tf_amended_darts.visualize: cell drawings, heat maps, the alpha history plot."""

import json
import os
import re
import shutil
import stat
import tempfile
from fractions import Fraction
from unittest import mock

import numpy as np
from absl.testing import absltest

from tf_amended_darts import genotypes, visualize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)"(?: \[label="([^"]*)")?', re.MULTILINE)
NODE = re.compile(r'^\s*"([^"]+)" \[fillcolor=(\w+)\];$', re.MULTILINE)

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def per_stage_genotype():
    def cell(first, second):
        return genotypes.CellGenotype(
            (((first, 0), ("skip_connect", 1)), ((second, 2), ("max_pool_3x3", 0))), (2, 3)
        )

    return genotypes.Genotype(
        (
            cell("sep_conv_3x3", "dil_conv_3x3"),
            cell("sep_conv_5x5", "skip_connect"),
            cell("dil_conv_5x5", "sep_conv_3x3"),
        ),
        (cell("max_pool_3x3", "avg_pool_3x3"), cell("avg_pool_3x3", "skip_connect")),
    )


def softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def history(num_records=3, slots=("normal_0", "reduce_0"), num_edges=5):
    rng = np.random.default_rng(0)
    return {
        "operations": list(OPS),
        "slots": list(slots),
        "records": [
            {
                "epoch": e,
                "step": 10 * (e + 1),
                "probabilities": [
                    softmax(rng.normal(size=(num_edges, len(OPS))) * e).round(6).tolist()
                    for _ in slots
                ],
            }
            for e in range(num_records)
        ],
    }


def is_svg(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return "<svg" in text and text.rstrip().endswith("</svg>")


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


class TestCase(absltest.TestCase):
    """Temporary folders that also work under pytest (absl's need parsed flags)."""

    def tempdir(self):
        folder = tempfile.mkdtemp(prefix="visualize_test_")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        return folder

    def tempfile(self, name, content):
        path = os.path.join(self.tempdir(), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        return path


class CellDotTest(TestCase):
    def test_darts_v2_normal_cell(self):
        source = visualize.cell_dot(
            genotypes.PUBLISHED["DARTS_V2"].normal_cells[0], "DARTS_V2 normal"
        )
        self.assertIn("rankdir=LR", source)
        self.assertIn('label="DARTS_V2 normal"', source)
        self.assertEqual(
            dict(NODE.findall(source)),
            {
                "c_{k-2}": "darkseagreen2",
                "c_{k-1}": "darkseagreen2",
                "0": "lightblue",
                "1": "lightblue",
                "2": "lightblue",
                "3": "lightblue",
                "c_{k}": "palegoldenrod",
            },
        )
        edges = EDGE.findall(source)
        labelled = sorted((op, u, v) for u, v, op in edges if op)
        self.assertEqual(
            labelled,
            sorted(
                [
                    ("sep_conv_3x3", "c_{k-2}", "0"),
                    ("sep_conv_3x3", "c_{k-1}", "0"),
                    ("sep_conv_3x3", "c_{k-2}", "1"),
                    ("sep_conv_3x3", "c_{k-1}", "1"),
                    ("sep_conv_3x3", "c_{k-1}", "2"),
                    ("skip_connect", "c_{k-2}", "2"),
                    ("skip_connect", "c_{k-2}", "3"),
                    ("dil_conv_3x3", "0", "3"),
                ]
            ),
        )
        self.assertEqual(
            sorted((u, v) for u, v, op in edges if not op), [(str(i), "c_{k}") for i in range(4)]
        )

    def test_concatenated_cell_input_is_drawn(self):
        cell = genotypes.CellGenotype(((("skip_connect", 0), ("none", 1)),), (1, 2))
        edges = EDGE.findall(visualize.cell_dot(cell, 'a "quoted" title'))
        self.assertIn(("c_{k-1}", "c_{k}", ""), edges)

    def test_edge_labels(self):
        self.assertEqual(visualize.edge_labels(5), ["2<-0", "2<-1", "3<-0", "3<-1", "3<-2"])
        self.assertLen(visualize.edge_labels(14), 14)
        self.assertEqual(visualize.edge_labels(14)[-1], "5<-4")
        self.assertEqual(visualize.edge_labels(4), ["e0", "e1", "e2", "e3"])


class RenderTest(TestCase):
    def test_shared_genotype(self):
        out = self.tempdir()
        paths = visualize.render_genotype(
            genotypes.PUBLISHED["DARTS_V2"], os.path.join(out, "darts")
        )
        self.assertEqual(
            [os.path.basename(p) for p in paths],
            [
                "darts_normal.dot",
                "darts_normal.png",
                "darts_normal.svg",
                "darts_reduce.dot",
                "darts_reduce.png",
                "darts_reduce.svg",
            ],
        )
        for path in paths:
            if path.endswith(".png"):
                self.assertTrue(is_png(path), path)
            elif path.endswith(".svg"):
                self.assertTrue(is_svg(path), path)
                with open(path, encoding="utf-8") as f:
                    self.assertIn("max_pool_3x3" if "reduce" in path else "dil_conv_3x3", f.read())
        self.assertCountEqual(os.listdir(out), [os.path.basename(p) for p in paths])

    def test_per_stage_genotype(self):
        out = self.tempdir()
        paths = visualize.render_genotype(
            per_stage_genotype(), os.path.join(out, "g"), formats=["svg"]
        )
        names = ["normal_0", "normal_1", "normal_2", "reduce_0", "reduce_1"]
        self.assertEqual(
            [os.path.basename(p) for p in paths],
            [f"g_{n}.{ext}" for n in names for ext in ("dot", "svg")],
        )
        self.assertTrue(all(is_svg(p) for p in paths if p.endswith(".svg")))

    def test_unknown_format(self):
        with self.assertRaisesRegex(ValueError, "expected some of png, svg, pdf"):
            visualize.render_genotype(
                genotypes.PUBLISHED["DARTS_V2"], os.path.join(self.tempdir(), "g"), formats=["bmp"]
            )

    def test_missing_dot(self):
        out = self.tempdir()
        empty = self.tempdir()
        with mock.patch.dict(os.environ, {"PATH": empty}):
            with self.assertRaisesRegex(
                visualize.VisualizeError, "apt-get install graphviz"
            ) as raised:
                visualize.render_genotype(genotypes.PUBLISHED["DARTS_V2"], os.path.join(out, "g"))
        self.assertIsInstance(raised.exception, OSError)
        self.assertNotIn("\n", str(raised.exception))
        self.assertCountEqual(os.listdir(out), ["g_normal.dot", "g_reduce.dot"])

    def test_failing_dot_leaves_no_half_picture(self):
        out = self.tempdir()
        fake = self.tempdir()
        dot = os.path.join(fake, "dot")
        with open(dot, "w", encoding="utf-8") as f:
            f.write("#!/bin/sh\nprintf 'half a picture'\necho 'Error: out of memory' >&2\nexit 1\n")
        os.chmod(dot, os.stat(dot).st_mode | stat.S_IXUSR)
        with mock.patch.dict(os.environ, {"PATH": fake}):
            with self.assertRaisesRegex(visualize.VisualizeError, "out of memory"):
                visualize.render_genotype(genotypes.PUBLISHED["DARTS_V2"], os.path.join(out, "g"))
        self.assertCountEqual(os.listdir(out), ["g_normal.dot", "g_reduce.dot"])


class HeatmapTest(TestCase):
    def test_image(self):
        uniform = np.full((5, len(OPS)), 1 / len(OPS))
        image = visualize.alpha_heatmap(uniform, OPS, "normal_0")
        self.assertEqual(image.dtype, np.uint8)
        self.assertLen(image.shape, 3)
        self.assertEqual(image.shape[2], 3)
        self.assertGreater(image.shape[0], 100)
        self.assertGreater(image.shape[1], 100)

        peaked = uniform.copy()
        peaked[0] = [0, 0, 1, 0]
        peaked_image = visualize.alpha_heatmap(peaked, OPS, "normal_0")
        self.assertEqual(peaked_image.shape, image.shape)
        cmap = visualize.heatmap_colormap()

        def count(img, p):
            rgb = np.round(np.array(cmap(p)[:3]) * 255).astype(np.uint8)
            return int(np.all(np.abs(img.astype(int) - rgb) <= 1, axis=-1).sum())

        # The cell with probability 1 is drawn in the colour of 1 (the colour bar holds a
        # thin band of it in both images), the uniform cells in another.
        self.assertGreater(count(peaked_image, 1.0), count(image, 1.0) + 200)
        self.assertGreater(count(image, 0.25), count(peaked_image, 0.25) + 200)

    def test_bad_shape(self):
        with self.assertRaisesRegex(ValueError, "one column per operation"):
            visualize.alpha_heatmap(np.ones((3, 2)) / 2, OPS)


class AlphaHistoryTest(TestCase):
    def test_plot_png_and_svg(self):
        out = self.tempdir()
        h = history()
        png = visualize.plot_alpha_history(h, os.path.join(out, "alphas.png"))
        self.assertTrue(is_png(png))
        svg = visualize.plot_alpha_history(h, os.path.join(out, "alphas.svg"))
        self.assertTrue(is_svg(svg))
        self.assertCountEqual(os.listdir(out), ["alphas.png", "alphas.svg"])

    def test_uniform_shares_by_hand(self):
        # Every edge takes every operation: 1/4 each.
        self.assertEqual(visualize.uniform_shares(np.ones((5, 4), bool)), [Fraction(1, 4)] * 4)
        # Per-edge candidates (RobustDARTS' S1): edge 0 {skip, sep}, edge 1 {pool, skip},
        # edge 2 {none, pool, skip}: skip (1/2 + 1/2 + 1/3) / 3 = 4/9, pool (1/2 + 1/3) / 3 =
        # 5/18, sep 1/6, none 1/9; they sum to 1.
        candidates = [[0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 0]]
        shares = visualize.uniform_shares(candidates)
        self.assertEqual(shares, [Fraction(1, 9), Fraction(5, 18), Fraction(4, 9), Fraction(1, 6)])
        self.assertEqual(sum(shares), 1)

    def test_plot_draws_each_operations_uniform_share_when_edges_differ(self):
        # Slot 0 with per-edge candidates (masked columns exactly 0, as masked_softmax gives):
        # one dotted line per operation; slot 1, every edge every operation: one gray line.
        h = history(2)
        for record in h["records"]:
            masked = np.asarray(record["probabilities"][0])
            masked[:, 0] = 0
            masked[1:3, 1] = 0
            record["probabilities"][0] = (masked / masked.sum(axis=1, keepdims=True)).tolist()
        path = visualize.plot_alpha_history(h, os.path.join(self.tempdir(), "a.svg"))
        with open(path, encoding="utf-8") as f:
            dotted = f.read().count("stroke-dasharray")
        self.assertEqual(dotted, len(OPS) + 1)

    def test_plot_per_stage_several_records_per_epoch(self):
        h = history(4, slots=("normal_0", "normal_1", "normal_2", "reduce_0", "reduce_1"))
        for r, record in enumerate(h["records"]):
            record["epoch"] = r // 2
        path = os.path.join(self.tempdir(), "a.png")
        visualize.plot_alpha_history(h, path)
        self.assertTrue(is_png(path))

    def test_plot_refuses_unknown_extension_and_empty_history(self):
        folder = self.tempdir()
        with self.assertRaisesRegex(ValueError, "one of .png, .svg, .pdf"):
            visualize.plot_alpha_history(history(), os.path.join(folder, "a.gif"))
        with self.assertRaisesRegex(ValueError, "no records"):
            visualize.plot_alpha_history(history(0), os.path.join(folder, "a.png"))
        self.assertEmpty(os.listdir(folder))

    def test_load(self):
        path = self.tempfile("alphas_history.json", json.dumps(history()))
        self.assertEqual(visualize.load_alpha_history(path), history())

    def test_malformed(self):
        def mutated(change):
            h = history()
            change(h)
            return h

        def set_probabilities(h, value, slot=1):
            h["records"][1]["probabilities"][slot] = value

        cases = [
            ([1, 2], "expected a JSON object"),
            (mutated(lambda h: h.pop("slots")), "missing key.*slots"),
            (mutated(lambda h: h.update(operations=[])), "operations must be a non-empty"),
            (mutated(lambda h: h.update(slots=["a", "a"])), "duplicate"),
            (mutated(lambda h: h.update(records={})), "records must be a list"),
            (
                mutated(lambda h: h["records"][2].update(epoch=True)),
                r"records\[2\]\.epoch must be a non-negative integer",
            ),
            (mutated(lambda h: h["records"][0].pop("step")), r"records\[0\]\.step"),
            (
                mutated(lambda h: h["records"][1]["probabilities"].pop()),
                r"one \[num_edges x 4\] matrix per slot \(2\), got 1",
            ),
            (
                mutated(lambda h: set_probabilities(h, [[0.5, 0.5]] * 5)),
                r"records\[1\]\.probabilities\[1\] \(reduce_0\) has shape \[5, 2\]",
            ),
            (
                mutated(lambda h: set_probabilities(h, [[1, 0, 0, 0], [1, 0]])),
                "not a rectangular matrix",
            ),
            (
                mutated(lambda h: set_probabilities(h, [[0.25] * 4] * 6)),
                "has 6 edges, earlier records 5",
            ),
            (
                mutated(lambda h: set_probabilities(h, [[2.0, -1.0, 0.5, -0.5]] * 5)),
                "not alpha logits",
            ),
            (mutated(lambda h: set_probabilities(h, [[0.5] * 4] * 5)), "a row sums to 2"),
        ]
        for value, message in cases:
            with self.subTest(message=message):
                with self.assertRaisesRegex(visualize.AlphaHistoryError, message) as raised:
                    visualize.validate_alpha_history(value)
                self.assertIsInstance(raised.exception, ValueError)
                self.assertNotIn("\n", str(raised.exception))

    def test_load_malformed_file(self):
        path = self.tempfile("h.json", '{"operations": [')
        with self.assertRaisesRegex(ValueError, "h.json: not valid JSON"):
            visualize.load_alpha_history(path)
        path = self.tempfile("g.json", json.dumps({"operations": ["a"]}))
        with self.assertRaisesRegex(ValueError, "g.json: missing key"):
            visualize.load_alpha_history(path)
        with self.assertRaisesRegex(
            visualize.AlphaHistoryError, "cannot read .*g.json.missing: No such file"
        ):
            visualize.load_alpha_history(path + ".missing")
        with self.assertRaisesRegex(visualize.AlphaHistoryError, "cannot read .*: Is a directory"):
            visualize.load_alpha_history(os.path.dirname(path))


if __name__ == "__main__":
    absltest.main()
