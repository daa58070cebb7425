"""Search spaces: presets, edge counts, cell slots, validation."""

import tensorflow as tf

from tf_amended_darts import search_space


class SearchSpaceTest(tf.test.TestCase):

    def test_darts_preset(self):
        space = search_space.get_search_space("darts")
        self.assertEqual(len(space.operations), 8)
        self.assertEqual(space.num_edges, 14)
        self.assertEqual(space.reduction_layers, (2, 5))
        self.assertEqual([space.cell_slot(i) for i in range(8)],
                         [(False, 0)] * 2 + [(True, 0)] + [(False, 0)] * 2 + [(True, 0)]
                         + [(False, 0)] * 2)

    def test_enlarged_preset_has_more_ops_nodes_inputs_and_per_stage_cells(self):
        space = search_space.get_search_space("enlarged")
        darts = search_space.get_search_space("darts")
        self.assertGreater(len(space.operations), len(darts.operations))
        self.assertGreater(space.steps, darts.steps)
        self.assertGreater(space.inputs_per_node, darts.inputs_per_node)
        self.assertTrue(space.per_stage)
        self.assertEqual(space.num_edges, 2 + 3 + 4 + 5 + 6)
        self.assertEqual([space.cell_slot(i) for i in range(8)],
                         [(False, 0)] * 2 + [(True, 0)] + [(False, 1)] * 2 + [(True, 1)]
                         + [(False, 2)] * 2)

    def test_replace_and_dict_round_trip(self):
        space = search_space.get_search_space("darts").replace(layers=5, init_channels=4)
        self.assertEqual(search_space.SearchSpace.from_dict(space.to_dict()), space)

    def test_invalid(self):
        with self.assertRaisesRegex(ValueError, "unknown search space 'nope'"):
            search_space.get_search_space("nope")
        with self.assertRaisesRegex(ValueError, "unknown operation 'bogus'"):
            search_space.SearchSpace(operations=("none", "bogus"))
        with self.assertRaisesRegex(ValueError, "other than 'none'"):
            search_space.SearchSpace(operations=("none",))
        with self.assertRaisesRegex(ValueError, "steps must be at least 1"):
            search_space.SearchSpace(steps=0)
        with self.assertRaisesRegex(ValueError, "repeated"):
            search_space.SearchSpace(operations=("skip_connect", "skip_connect"))
        with self.assertRaisesRegex(ValueError, "layers must be at least 3"):
            search_space.SearchSpace(layers=2)


if __name__ == "__main__":
    tf.test.main()
