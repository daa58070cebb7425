"""Search spaces: presets, edge counts, cell slots, validation."""

import json

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

    def test_s1_gives_each_edge_of_each_cell_type_its_own_two_candidates(self):
        space = search_space.get_search_space("s1")
        self.assertEqual((space.nodes, space.num_edges, space.per_stage), (4, 14, False))
        for reduction in (False, True):
            edges = space.edge_candidates(reduction)
            self.assertLen(edges, 14)
            self.assertTrue(
                all(len(set(e)) == 2 and set(e) <= set(space.operations) for e in edges)
            )
        # Spot checks against the table of automl/RobustDARTS src/spaces.py.
        self.assertEqual(set(space.edge_candidates(False)[0]), {"skip_connect", "dil_conv_3x3"})
        self.assertEqual(set(space.edge_candidates(False)[13]), {"dil_conv_3x3", "dil_conv_5x5"})
        self.assertEqual(set(space.edge_candidates(True)[0]), {"max_pool_3x3", "avg_pool_3x3"})
        self.assertEqual(set(space.edge_candidates(True)[6]), {"max_pool_3x3", "sep_conv_3x3"})
        # Every operation of the space is some edge's candidate; the mask marks exactly them.
        self.assertCountEqual(
            {op for r in (False, True) for e in space.edge_candidates(r) for op in e},
            space.operations,
        )
        mask = space.candidate_mask(True)
        self.assertEqual(mask.shape, (14, 6))
        self.assertEqual(mask.sum(), 28)
        self.assertIsNone(search_space.get_search_space("darts").candidate_mask(False))

    def test_s1_supernet_parameter_count_is_its_candidates_closed_form(self):
        # 3 cells, C=4: cell 0 normal at C=4, cells 1 and 2 reduce at C=8 and 16 (edges from the
        # cell inputs at stride 2). Weights per candidate at C (no biases, non-affine BN):
        # sep_conv_3x3 2 (9C + C^2), dil_conv_k k^2 C + C^2, skip_connect 0 (stride 2: the
        # factorized reduce's two C x C/2 1x1 convolutions, C^2), pools 0.
        def per_op(op, c, stride):
            return {
                "sep_conv_3x3": 2 * (9 * c + c * c),
                "dil_conv_3x3": 9 * c + c * c,
                "dil_conv_5x5": 25 * c + c * c,
                "skip_connect": c * c if stride == 2 else 0,
            }.get(op, 0)

        def weights(space):
            network = search_model.SearchNetwork(space.replace(cells=3, channels=4), 10, seed=0)
            network.build((None, 8, 8, 1))
            return sum(int(np.prod(v.shape)) for v in network.weight_variables)

        s1 = search_space.get_search_space("s1")
        pools_only = s1.replace(edge_operations=((("max_pool_3x3",),) * 14,) * 2)
        strides = [2 if j < 2 else 1 for i in range(4) for j in range(2 + i)]
        expected = sum(per_op(op, 4, 1) for e in s1.edge_candidates(False) for op in e)
        for c in (8, 16):
            expected += sum(
                per_op(op, c, s) for e, s in zip(s1.edge_candidates(True), strides) for op in e
            )
        self.assertEqual(weights(s1) - weights(pools_only), expected)

    def test_s1_softmax_is_over_each_edges_candidates_and_excluded_alphas_get_no_gradient(self):
        space = search_space.get_search_space("s1").replace(cells=3, channels=4)
        network = search_model.SearchNetwork(space, 10, seed=0)
        network.build((None, 8, 8, 1))
        rng = np.random.default_rng(0)
        for a in network.arch_variables:
            a.assign(rng.normal(size=a.shape).astype("float32"))
        x = tf.constant(rng.normal(size=(2, 8, 8, 1)).astype("float32"))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(network(x, training=True) ** 2)
        grads = tape.gradient(loss, network.arch_variables)
        probabilities = network.alpha_probabilities()
        for a, p, g, reduction in zip(network.arch_variables, probabilities, grads, (False, True)):
            mask = space.candidate_mask(reduction)
            a = a.numpy()
            # Closed form for two candidates: sigmoid of the logits' difference.
            for e in range(14):
                i, j = np.flatnonzero(mask[e])
                self.assertAllClose(p[e, i], 1 / (1 + np.exp(a[e, j] - a[e, i])), rtol=1e-6)
            self.assertTrue(np.all(p[~mask] == 0))
            self.assertTrue(np.all(g.numpy()[~mask] == 0))
            self.assertTrue(np.all(g.numpy()[mask] != 0))
        genotype = network.genotype()
        for reduction, cell in (
            (False, genotype.normal_cells[0]),
            (True, genotype.reduce_cells[0]),
        ):
            edges = space.edge_candidates(reduction)
            for i, node in enumerate(cell.nodes):
                for op, j in node:
                    self.assertIn(op, edges[2 * i + i * (i - 1) // 2 + j])

    def test_s1_refuses_what_its_per_edge_candidates_do_not_fit(self):
        s1 = search_space.get_search_space("s1")
        with self.assertRaisesRegex(ValueError, "reduction cell has 13 edges, the space's 4-node"):
            s1.replace(edge_operations=(s1.edge_operations[0], s1.edge_operations[1][:13]))
        with self.assertRaisesRegex(ValueError, "has 14 edges, the space's 5-node cells have 20"):
            s1.replace(nodes=5)
        with self.assertRaisesRegex(
            ValueError, r"normal edge 0 \['skip_connect', 'dil_conv_3x3'\]"
        ):
            s1.replace(operations=("skip_connect", "sep_conv_3x3"))
        self.assertEqual(search_space.SearchSpace.from_dict(s1.to_dict()), s1)
        # From JSON (lists), as a run directory's space comes back.
        self.assertEqual(
            search_space.SearchSpace.from_dict(json.loads(json.dumps(s1.to_dict()))), s1
        )

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
