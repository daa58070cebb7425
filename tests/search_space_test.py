"""Search spaces: presets, edge counts, cell slots, validation."""

import numpy as np
import tensorflow as tf

from tf_amended_darts import search_model, search_space


class SearchSpaceTest(tf.test.TestCase):
    def test_darts_preset(self):
        space = search_space.get_search_space("darts")
        self.assertEqual(len(space.operations), 8)
        self.assertEqual(space.num_edges, 14)
        self.assertEqual(space.reduction_cells, (2, 5))
        self.assertEqual(
            [space.cell_slot(i) for i in range(8)],
            [(False, 0)] * 2 + [(True, 0)] + [(False, 0)] * 2 + [(True, 0)] + [(False, 0)] * 2,
        )

    def test_enlarged_preset_has_more_ops_nodes_inputs_and_per_stage_cells(self):
        space = search_space.get_search_space("enlarged")
        darts = search_space.get_search_space("darts")
        self.assertGreater(len(space.operations), len(darts.operations))
        self.assertGreater(space.nodes, darts.nodes)
        self.assertGreater(space.inputs_per_node, darts.inputs_per_node)
        self.assertTrue(space.per_stage)
        self.assertEqual(space.num_edges, 2 + 3 + 4 + 5 + 6)
        self.assertEqual(
            [space.cell_slot(i) for i in range(8)],
            [(False, 0)] * 2 + [(True, 0)] + [(False, 1)] * 2 + [(True, 1)] + [(False, 2)] * 2,
        )

    def test_robust_darts_presets_put_the_same_candidates_on_every_edge_of_4_nodes(self):
        for name, ops in (
            ("s2", ("skip_connect", "sep_conv_3x3")),
            ("s3", ("none", "skip_connect", "sep_conv_3x3")),
            ("s4", ("noise", "sep_conv_3x3")),
        ):
            space = search_space.get_search_space(name)
            self.assertEqual((space.operations, space.nodes, space.num_edges), (ops, 4, 14))
            self.assertEqual((space.inputs_per_node, space.per_stage), (2, False))

    def test_robust_darts_supernets_parameter_counts(self):
        # Closed form: parameter-free candidates add no weights, so S4 (noise, sep_conv_3x3)
        # has the weights of a sep_conv_3x3-only supernet, and S3 (none added) those of S2;
        # S2 adds skip_connect's factorized reduce on each reduction cell's 2 x 4 strided edges.
        def weights(space):
            network = search_model.SearchNetwork(space.replace(cells=3, channels=4), 10, seed=0)
            network.build((None, 8, 8, 1))
            return sum(int(np.prod(v.shape)) for v in network.weight_variables)

        get = search_space.get_search_space
        sep_only = weights(get("s2").replace(operations=("sep_conv_3x3",)))
        self.assertEqual(weights(get("s4")), sep_only)
        self.assertEqual(weights(get("s3")), weights(get("s2")))
        # At 3 cells both cells after the first reduce, at C_r = 8 and 16; each FactorizedReduce
        # is two C_r -> C_r / 2 1x1 convolutions: C_r^2 weights on each of 8 strided edges.
        self.assertEqual(weights(get("s2")) - sep_only, 8 * (8**2 + 16**2))

    def test_replace_and_dict_round_trip(self):
        space = search_space.get_search_space("darts").replace(cells=5, channels=4)
        self.assertEqual(search_space.SearchSpace.from_dict(space.to_dict()), space)

    def test_invalid(self):
        with self.assertRaisesRegex(ValueError, "unknown search space 'nope'"):
            search_space.get_search_space("nope")
        with self.assertRaisesRegex(ValueError, "unknown operation 'bogus'"):
            search_space.SearchSpace(operations=("none", "bogus"))
        with self.assertRaisesRegex(ValueError, "other than 'none'"):
            search_space.SearchSpace(operations=("none",))
        with self.assertRaisesRegex(ValueError, "nodes must be at least 1"):
            search_space.SearchSpace(nodes=0)
        with self.assertRaisesRegex(ValueError, "repeated"):
            search_space.SearchSpace(operations=("skip_connect", "skip_connect"))
        with self.assertRaisesRegex(ValueError, "cells must be at least 3"):
            search_space.SearchSpace(cells=2)


if __name__ == "__main__":
    tf.test.main()
