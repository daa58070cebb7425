"""Genotypes: DARTS string form, JSON, per-stage cells, validation, published registry."""

import dataclasses
import json
import os
import tempfile

import tensorflow as tf

from tf_amended_darts import genotypes, operations
from tf_amended_darts.genotypes import Genotype, GenotypeError

V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def _cell(k_edges, ops=("sep_conv_3x3",)):
    return [(ops[e % len(ops)], e % (2 + node)) for node, n in enumerate(k_edges) for e in range(n)]


class GenotypesTest(tf.test.TestCase):
    def test_darts_string_round_trip(self):
        g = Genotype.parse(V2)
        self.assertEqual(g.to_string(), V2)
        self.assertEqual(g, genotypes.PUBLISHED["DARTS_V2"])
        self.assertEqual(g.normal[7], ("dil_conv_3x3", 2))
        self.assertEqual(g.normal_cells[0].nodes[3], (("skip_connect", 0), ("dil_conv_3x3", 2)))
        self.assertEqual(g.reduce_concat, [2, 3, 4, 5])
        self.assertFalse(g.per_stage)

    def test_range_concat_as_in_published_sources(self):
        g = Genotype.parse(V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)"))
        self.assertEqual(g, genotypes.PUBLISHED["DARTS_V2"])

    def test_json_round_trip(self):
        g = genotypes.PUBLISHED["DARTS_V1"]
        self.assertEqual(Genotype.from_json(g.to_json()), g)
        flat = json.dumps(
            {
                "normal": g.normal,
                "normal_concat": g.normal_concat,
                "reduce": g.reduce,
                "reduce_concat": g.reduce_concat,
            }
        )
        self.assertEqual(Genotype.from_json(flat), g)

    def test_per_stage_and_three_inputs(self):
        cell = genotypes.CellGenotype.from_edges(_cell([2, 3, 3, 3, 3]), range(2, 7))
        self.assertEqual(cell.inputs_per_node, 3)
        self.assertEqual([len(n) for n in cell.nodes], [2, 3, 3, 3, 3])
        other = genotypes.CellGenotype.from_edges(
            _cell([2, 3, 3, 3, 3], ("conv_1x1",)), range(2, 7)
        )
        g = Genotype((cell, other, cell), (other, cell))
        self.assertTrue(g.per_stage)
        self.assertEqual(Genotype.parse(g.to_string()), g)
        self.assertEqual(Genotype.from_json(g.to_json()), g)
        self.assertEqual(g.cell(False, 1), other)
        self.assertEqual(g.cell(True, 1), cell)
        self.assertEqual(
            genotypes.PUBLISHED["DARTS_V2"].cell(True, 1),
            genotypes.PUBLISHED["DARTS_V2"].reduce_cells[0],
        )

    def test_count_ops(self):
        g = genotypes.PUBLISHED["DARTS_V2"]
        self.assertEqual(g.count_ops({"skip_connect"}), 2 + 3)

    def test_noise_genotypes_round_trip_and_count_as_parameter_free(self):
        cell = genotypes.CellGenotype.from_edges(
            [("noise", 0), ("sep_conv_3x3", 1)] * 2 + [("noise", 2), ("noise", 3)] * 2,
            range(2, 6),
        )
        g = Genotype((cell,), (cell,))
        self.assertEqual(Genotype.parse(g.to_string()), g)
        self.assertEqual(Genotype.from_json(g.to_json()), g)
        self.assertEqual(g.count_ops(operations.PARAMETER_FREE_OPS), 2 * 6)

    def test_each_malformed_genotype_gives_its_error(self):
        cases = {
            "unknown operation 'conv_9x9'": V2.replace("'dil_conv_3x3', 2", "'conv_9x9', 2"),
            "node 5 takes input 7, which is out of range 0..4": V2.replace(
                "'dil_conv_3x3', 2", "'dil_conv_3x3', 7"
            ),
            "wrong number of edges: 7 edges": V2.replace("('dil_conv_3x3', 2)]", "]"),
            "wrong number of edges per node \\[2, 2, 3\\]": json.dumps(
                {
                    "normal": [
                        {
                            "nodes": [[["skip_connect", 0]] * 2] * 2 + [[["skip_connect", 0]] * 3],
                            "concat": [2, 3, 4],
                        }
                    ],
                    "reduce": [{"nodes": [[["skip_connect", 0]]], "concat": [2]}],
                }
            ),
            "malformed DARTS text": V2[:-5],
            "expected Genotype\\(normal": "Genotype([], [], [], [])",
            "fields \\['normal', 'normal_concat', 'reduce'\\]": V2.replace(
                ", reduce_concat=[2, 3, 4, 5]", ""
            ),
            "is not an \\(operation, input\\) pair": V2.replace(
                "('dil_conv_3x3', 2)", "('dil_conv_3x3', '2')"
            ),
            "malformed JSON": '{"normal": [',
            "concat \\[2, 9\\]": json.dumps(
                {
                    "normal": [{"nodes": [[["skip_connect", 0]]], "concat": [2, 9]}],
                    "reduce": [{"nodes": [[["skip_connect", 0]]], "concat": [2]}],
                }
            ),
        }
        for message, text in cases.items():
            with self.subTest(message=message):
                with self.assertRaisesRegex(GenotypeError, message):
                    genotypes.load_genotype(text)

    def test_wrong_types_and_ranges_are_refused_in_both_text_forms(self):
        nodes = [[["skip_connect", 0], ["skip_connect", 1]]]

        def as_json(concat=(2,), cell_nodes=nodes, deep=""):
            text = json.dumps(
                {
                    "normal": [{"nodes": cell_nodes, "concat": concat}],
                    "reduce": [{"nodes": nodes, "concat": [2]}],
                }
            )
            return text.replace('"concat": [2]}]}', '"concat": [2]}]' + deep + "}")

        def as_text(concat):
            return V2.replace("normal_concat=[2, 3, 4, 5]", f"normal_concat={concat}")

        cases = {
            "concat must be a list of node numbers, got 2.5": [as_text("2.5"), as_json(2.5)],
            "concat must be a list of node numbers, got 5": [as_text("5"), as_json(5)],
            "concat \\['2', '3'\\] holds '2', not a node number": [
                as_text("['2', '3']"),
                as_json(["2", "3"]),
            ],
            "holds 3.0, not a node number": [as_text("[2, 3.0, 4, 5]")],
            "holds True, not a node number": [as_text("[True, 3, 4, 5]")],
            "holds inf, not a node number": [
                as_text("[2, 3, 4, 1e999]"),
                as_json().replace("[2]", "[1e999]", 1),
            ],
            "normal: no intermediate nodes": [as_json(cell_nodes=[])],
            "concat \\[0, 2, 3, 4, 5\\] must be distinct intermediate nodes in 2..5": [
                as_text("[0, 2, 3, 4, 5]")
            ],
            "concat \\[1, 2\\] must be distinct intermediate nodes in 2..2": [as_json([1, 2])],
            "concat \\[2, 3, 4\\] leaves out the last node 5": [
                json.dumps(Genotype.parse(V2).to_dict()).replace("[2, 3, 4, 5]", "[2, 3, 4]", 1)
            ],
            "malformed JSON: nested too deeply": [
                as_json(deep=', "x": ' + "[" * 100_000 + "]" * 100_000)
            ],
            "malformed JSON: NaN is not a number": [as_json().replace("[2]", "[NaN]", 1)],
            "keys \\['normal', 'reduce', 'x'\\]": [as_json(deep=', "x": 1')],
            "normal_concat= given twice": [as_text("[2, 3, 4, 5], normal_concat=[2]")],
            "'range\\(2, 10000000000\\)' is too long": [as_text("range(2, 10000000000)")],
            "is not range\\(start, stop\\) of integers": [as_text("range(2, '6')")],
        }
        for message, texts in cases.items():
            for text in texts:
                with self.subTest(message=message, text=text[:80]):
                    with self.assertRaisesRegex(GenotypeError, "^genotype: .*" + message) as c:
                        genotypes.load_genotype(text)
                    self.assertNotIn("\n", str(c.exception))
                    self.assertLess(len(str(c.exception)), 400)

    def test_a_huge_genotype_gives_a_short_line(self):
        edges = [["sep_conv_3x3" + "x" * 100, "9"]] * 10_000
        text = json.dumps(
            {"normal": edges, "normal_concat": [2], "reduce": edges, "reduce_concat": [2]}
        )
        with self.assertRaisesRegex(GenotypeError, "and [0-9]+ more$") as c:
            genotypes.load_genotype(text)
        self.assertLess(len(str(c.exception)), 4000)  # the problems alone: 2 MB

    def test_an_input_index_of_thousands_of_digits_gives_one_short_line(self):
        for digits in (4000, 5000):  # below and above int()'s 4300-digit string limit
            index = "9" * digits
            cell = '{"nodes": [[["sep_conv_3x3", %s]]], "concat": [2]}' % index
            texts = (
                '{"normal": [%s], "reduce": [%s]}' % (cell, cell),
                f"Genotype(normal=[('sep_conv_3x3', {index})], normal_concat=[2], "
                f"reduce=[('sep_conv_3x3', {index})], reduce_concat=[2])",
            )
            for text in texts:
                with self.subTest(digits=digits, form=text[0]):
                    with self.assertRaises(GenotypeError) as c:
                        genotypes.load_genotype(text)
                    self.assertNotIn("\n", str(c.exception))
                    self.assertLess(len(str(c.exception)), 400)

    def test_a_node_without_edges_is_refused(self):
        empty_first = {"nodes": [[], [["sep_conv_3x3", 0]]], "concat": [2, 3]}
        empty_only = {"nodes": [[]], "concat": [2]}
        good = {"nodes": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]], "concat": [2]}
        for cell in (empty_first, empty_only):
            with self.subTest(cell=cell):
                text = json.dumps({"normal": [cell], "reduce": [good]})
                with self.assertRaisesRegex(GenotypeError, "normal: node 2 has no incoming edge"):
                    genotypes.load_genotype(text)

    def test_cells_built_in_code_are_checked_too(self):
        with self.assertRaisesRegex(GenotypeError, "concat must be a list of node numbers"):
            genotypes.CellGenotype(((("skip_connect", 0),),), 2)
        with self.assertRaisesRegex(GenotypeError, "node 2: \\('skip_connect', 0.5\\) is not"):
            genotypes.CellGenotype(((("skip_connect", 0.5),),), (2,))
        cell = genotypes.CellGenotype(((("skip_connect", 0),),), (2,))
        with self.assertRaisesRegex(GenotypeError, "reduce: expected a CellGenotype"):
            Genotype((cell,), ("cell",))

    def test_problems_are_all_listed(self):
        text = V2.replace("'dil_conv_3x3', 2", "'conv_9x9', 2").replace(
            "('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2)",
            "('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 3)",
        )
        with self.assertRaises(GenotypeError) as ctx:
            Genotype.parse(text)
        self.assertIn("normal: unknown operation 'conv_9x9'", str(ctx.exception))
        self.assertIn("reduce: node 3 takes input 3", str(ctx.exception))

    def test_load_from_files_and_names(self):
        g = genotypes.PUBLISHED["DARTS_V2"]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "genotype.json")
            genotypes.write_genotype(g, path)
            self.assertEqual(genotypes.load_genotype(path), g)
            self.assertEqual(os.listdir(d), ["genotype.json"])
            text = os.path.join(d, "g.txt")
            with open(text, "w") as f:
                f.write(V2 + "\n")
            self.assertEqual(genotypes.load_genotype(text), g)
            empty = os.path.join(d, "empty.json")
            open(empty, "w").close()
            with self.assertRaisesRegex(GenotypeError, "is empty"):
                genotypes.load_genotype(empty)
        self.assertEqual(genotypes.load_genotype("DARTS_V1"), genotypes.PUBLISHED["DARTS_V1"])
        with self.assertRaisesRegex(GenotypeError, "neither a published genotype"):
            genotypes.load_genotype("DARTS_V9")

    def test_immutable(self):
        g = genotypes.PUBLISHED["DARTS_V2"]
        with self.assertRaises(dataclasses.FrozenInstanceError):
            g.normal_cells = ()
        self.assertIsInstance(g.normal_cells[0].nodes, tuple)


if __name__ == "__main__":
    tf.test.main()
