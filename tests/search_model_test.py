"""Supernet: MixedOp weighted sum, alphas, derivation on hand-set alphas, serialization."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import operations, search_model, search_space
from tf_amended_darts.search_model import MixedOp, SearchCell, SearchNetwork, derive_genotype

TINY = search_space.get_search_space("darts").replace(cells=3, channels=4, nodes=2)
OPS = search_space.get_search_space("darts").operations


def _one_hot_alphas(space, choice):
    """choice[edge] = (op index, strength): logits with one strong op per edge."""
    a = np.zeros((space.num_edges, len(space.operations)))
    for edge, (op, strength) in choice.items():
        a[edge, op] = strength
    return a


class MixedOpTest(tf.test.TestCase):
    def test_weighted_sum_by_hand(self):
        x = tf.random.normal((2, 6, 6, 4), seed=0)
        for stride in (1, 2):
            mixed = MixedOp(OPS, 4, stride)
            w = tf.nn.softmax(tf.random.normal((len(OPS),), seed=1))
            y = mixed(x, w, training=False)
            by_op = {OPS[i]: op(x, training=False) for i, op in mixed.ops}
            expected = sum(w[i] * by_op[name] for i, name in enumerate(OPS) if name != "none")
            self.assertAllClose(y, expected, atol=1e-6)
            self.assertEqual(sorted(by_op), sorted(set(OPS) - {"none"}))

    def test_none_weight_still_scales_the_others(self):
        mixed = MixedOp(("none", "skip_connect"), 3, 1)
        x = tf.ones((1, 4, 4, 3))
        y = mixed(x, tf.constant([0.75, 0.25]), training=False)
        self.assertAllClose(y, 0.25 * x)


class EdgeBundlesTest(tf.test.TestCase):
    """The cells' bundled training pass (edge_bundles) against MixedOp's edge by edge, float64:
    same outputs, gradients, Hessian-vector products and moving statistics, to rounding."""

    def _check(self, candidates, reduction, reduction_prev, space=None):
        """`space`: a search space with per-edge candidates, whose 4-node cell is checked."""
        rng = np.random.default_rng(0)
        num_nodes, edge_candidates, mask = 3, None, None
        if space is not None:
            num_nodes, edge_candidates = space.nodes, space.edge_candidates(reduction)
            mask = space.candidate_mask(reduction)
        cell = SearchCell(
            candidates, num_nodes, 4, reduction, reduction_prev, edge_candidates, dtype="float64"
        )
        s0 = tf.constant(rng.normal(size=(2, 12, 12, 5) if reduction_prev else (2, 6, 6, 5)))
        s1 = tf.constant(rng.normal(size=(2, 6, 6, 3)))
        alphas = tf.Variable(rng.normal(size=(len(cell.edges), len(candidates))))

        def softmax(a):
            return search_model.masked_softmax(a, mask)

        cell(s0, s1, softmax(alphas), training=False)  # builds every edge
        weights = cell.trainable_variables
        target = tf.constant(rng.normal(size=cell(s0, s1, softmax(alphas)).shape))
        vector = [tf.constant(rng.normal(size=w.shape)) for w in weights]

        def derivatives(bundled):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    y = cell(s0, s1, softmax(alphas), training=True, bundled=bundled)
                    loss = tf.reduce_sum(tf.sin(y) * target)
                grads = inner.gradient(loss, weights + [alphas])
                product = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
            return [y] + grads + outer.gradient(product, weights + [alphas])

        statistics = cell.non_trainable_variables
        before = [v.numpy() for v in statistics]
        results, moved = {}, {}
        for bundled in (True, False):
            for v, value in zip(statistics, before):
                v.assign(value)
            results[bundled] = derivatives(bundled)
            moved[bundled] = [v.numpy() for v in statistics]
        # Measured: outputs equal, derivatives and statistics within 3e-13 (|values| <= 330).
        self.assertLen(results[True], 1 + 2 * (len(weights) + 1))
        for a, b in zip(results[True], results[False]):
            self.assertAllClose(a, b, rtol=1e-10, atol=1e-10)
        for a, b, old in zip(moved[True], moved[False], before):
            self.assertAllClose(a, b, rtol=1e-12, atol=1e-14)
            self.assertFalse(np.array_equal(a, old))  # every layer took its update

        def nodes(bundled):
            call = tf.function(
                lambda: cell(s0, s1, softmax(alphas), training=True, bundled=bundled)
            )
            return len(call.get_concrete_function().graph.as_graph_def().node)

        # The shared path is taken: a pool that two or more edges leaving one state compute is
        # computed once (nothing else is shared). Node i takes edge offset(i) + j from state j.
        offsets = [2 * i + i * (i - 1) // 2 for i in range(num_nodes)]
        computed = edge_candidates or [candidates] * len(cell.edges)
        shared = any(
            sum(name in computed[offsets[i] + j] for i in range(max(0, j - 1), num_nodes)) >= 2
            for j in range(num_nodes + 1)
            for name in candidates
            if name.endswith("pool_3x3")
        )
        (self.assertLess if shared else self.assertEqual)(nodes(True), nodes(False))

    def test_reduction_cell(self):
        # Stride-2 bundles: FactorizedReduce skips, strided and subsampled convolutions, pools.
        self._check(operations.DARTS_OPS, reduction=True, reduction_prev=False)

    def test_normal_cell_with_a_candidate_without_bundle(self):
        self._check(operations.DARTS_OPS + ("conv_3x3",), reduction=False, reduction_prev=True)

    def test_reduction_cell_with_noise(self):
        # S4's candidates: noise runs edge by edge (each edge's layer draws from its own state,
        # which the bundled pass advances once, as MixedOp's does).
        self._check(("none", "noise", "sep_conv_3x3"), reduction=True, reduction_prev=False)

    def test_per_edge_candidates(self):
        # S1: the edges leaving a state compute different candidates (normal: skip_connect
        # against one convolution; reduction: pools against skip_connect or convolutions), so
        # what is shared is found by alpha column, not by position in MixedOp.ops.
        space = search_space.get_search_space("s1")
        for reduction in (False, True):
            with self.subTest(reduction=reduction):
                self._check(space.operations, reduction, reduction_prev=not reduction, space=space)


class SearchNetworkTest(tf.test.TestCase):
    def test_alphas_are_separate_from_weights(self):
        net = SearchNetwork(TINY, 10, seed=3)
        net.build((None, 8, 8, 1))
        self.assertEqual([tuple(a.shape) for a in net.arch_variables], [(5, 8), (5, 8)])
        arch = {id(v) for v in net.arch_variables}
        self.assertFalse(arch & {id(v) for v in net.weight_variables})
        self.assertEqual(len(net.weight_variables) + 2, len(net.trainable_variables))
        values = np.concatenate([a.numpy().ravel() for a in net.arch_variables])
        self.assertLess(np.abs(values).max(), 1e-2)  # 1e-3 * N(0, 1)
        self.assertGreater(values.std(), 2e-4)
        self.assertFalse(np.allclose(net.arch_variables[0], net.arch_variables[1]))
        self.assertEqual(tuple(net(tf.zeros((3, 8, 8, 1)), training=True).shape), (3, 10))

    def test_seeded_alphas_repeat(self):
        a = SearchNetwork(TINY, 10, seed=5).arch_variables[0].numpy()
        b = SearchNetwork(TINY, 10, seed=5).arch_variables[0].numpy()
        self.assertAllEqual(a, b)

    def test_per_stage_slots(self):
        space = TINY.replace(per_stage=True)
        net = SearchNetwork(space, 10)
        self.assertLen(net.arch_variables, 5)

    def test_float64_network(self):
        net = SearchNetwork(TINY, 10, seed=3, dtype="float64")
        net.build((None, 8, 8, 1))
        self.assertEqual({v.dtype for v in net.variables}, {"float64"})
        self.assertLen(net.arch_variables, 2)
        self.assertNotEmpty([v for v in net.non_trainable_variables if "moving_mean" in v.path])
        # Same seed, same initial alphas as float32 (drawn in float32, then cast).
        self.assertAllEqual(
            net.arch_variables[0], SearchNetwork(TINY, 10, seed=3).arch_variables[0].numpy()
        )
        logits = net(tf.zeros((3, 8, 8, 1)), training=True)
        self.assertEqual(logits.dtype, tf.float64)
        self.assertEqual(tuple(logits.shape), (3, 10))

    def test_float64_and_float32_agree_to_float32_precision(self):
        # Ground truth: the float64 network computes the float32 network's function. With the
        # same weights (float32 values, exact in float64) and strong random alphas, logits and
        # the gradients of the loss agree to float32 round-off: |d| <= 1e-5 + 1e-4 |ref|.
        # Measured: training mode 2.4e-6 (logits, |logits| <= 1.4) and 2.9e-6 (gradients,
        # BatchNorm over 4 examples amplifies round-off); inference 5e-8 (bound 1e-6).
        nets = [SearchNetwork(TINY, 10, seed=3, dtype=d) for d in ("float32", "float64")]
        for net in nets:
            net.build((None, 8, 8, 1))
        net32, net64 = nets
        self.assertEqual(
            [tuple(v.shape) for v in net32.variables], [tuple(v.shape) for v in net64.variables]
        )
        rng = np.random.default_rng(0)
        for a in net32.arch_variables:
            a.assign(rng.normal(size=a.shape).astype(np.float32))
        for v32, v64 in zip(net32.variables, net64.variables):
            v64.assign(tf.cast(v32, tf.float64))
        x = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
        y = np.arange(4) % 10

        def logits_and_grads(net):
            with tf.GradientTape() as tape:
                logits = net(x, training=True)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                )
            return logits, tape.gradient(loss, net.trainable_variables)

        (l32, g32), (l64, g64) = logits_and_grads(net32), logits_and_grads(net64)
        self.assertEqual((l32.dtype, l64.dtype), (tf.float32, tf.float64))
        self.assertAllClose(l32, l64, rtol=1e-4, atol=1e-5)
        self.assertGreater(np.abs(l64).max(), 1e-2)  # not trivially zero
        for a, b in zip(g32, g64):
            self.assertAllClose(a, b, rtol=1e-4, atol=1e-5)
        self.assertAllClose(net32(x, training=False), net64(x, training=False), atol=1e-6)

    def test_mixed_precision_computes_in_bfloat16_with_float32_alphas_and_logits(self):
        net = SearchNetwork(TINY, 10, seed=3, dtype=operations.dtype_policy("bfloat16"))
        net.build((None, 8, 8, 1))
        # Every sublayer takes the policy (Keras does not pass it down by itself).
        sublayers = list(net._flatten_layers(include_self=False))
        self.assertGreater(len(sublayers), 50)
        self.assertEqual({layer.dtype_policy.name for layer in sublayers}, {"mixed_bfloat16"})
        # The alphas are not cast to bfloat16 when read: their softmax is float32 (Keras 3.15
        # keeps the constructor's `autocast` as `_autocast`).
        self.assertFalse(any(a._autocast for a in net.arch_variables))
        self.assertEqual(net(tf.zeros((2, 8, 8, 1)), training=True).dtype, tf.float32)

    def test_keras_round_trip_gives_identical_outputs(self):
        # S1 too: its per-edge candidates are in the configs (edge by edge).
        s1 = search_space.get_search_space("s1").replace(cells=3, channels=4)
        for space in (TINY, s1):
            net = SearchNetwork(space, 7, seed=1)
            x = tf.random.normal((2, 8, 8, 3), seed=4)
            y = net(x, training=False)
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "supernet.keras")
                net.save(path)
                loaded = keras.models.load_model(path)
            self.assertAllEqual(loaded(x, training=False), y)
            self.assertEqual(loaded.genotype(), net.genotype())
            self.assertEqual(loaded.search_space, space)
            self.assertEqual(
                [len(m.ops) for c in loaded.cells for m in c.edges],
                [len(m.ops) for c in net.cells for m in c.edges],
            )


class DeriveGenotypeTest(tf.test.TestCase):
    def test_none_is_excluded_even_when_strongest(self):
        space = TINY
        a = _one_hot_alphas(space, {e: (0, 10.0) for e in range(space.num_edges)})
        a[:, OPS.index("sep_conv_5x5")] = 1.0
        g = derive_genotype(space, [a, a])
        self.assertEqual({op for op, _ in g.normal}, {"sep_conv_5x5"})

    def test_top_k_edges_by_strongest_non_none_op(self):
        space = search_space.get_search_space("darts")
        sep, skip, dil = (
            OPS.index("sep_conv_3x3"),
            OPS.index("skip_connect"),
            OPS.index("dil_conv_5x5"),
        )
        # Node 2 (edges 0,1), node 3 (2..4), node 4 (5..8), node 5 (9..13).
        choice = {
            0: (sep, 1.0),
            1: (skip, 2.0),
            2: (dil, 0.5),
            3: (sep, 3.0),
            4: (skip, 2.5),
            5: (sep, 4.0),
            8: (dil, 5.0),
            9: (skip, 1.0),
            12: (sep, 0.1),
            13: (dil, 2.0),
        }
        g = derive_genotype(space, [_one_hot_alphas(space, choice)] * 2)
        self.assertEqual(
            g.normal_cells[0].nodes,
            (
                (("skip_connect", 1), ("sep_conv_3x3", 0)),
                (("sep_conv_3x3", 1), ("skip_connect", 2)),
                (("dil_conv_5x5", 3), ("sep_conv_3x3", 0)),
                (("dil_conv_5x5", 4), ("skip_connect", 0)),
            ),
        )
        self.assertEqual(g.normal_concat, [2, 3, 4, 5])
        # Three inputs per node: node 3 keeps all of 1, 2 and 0, strongest first.
        k3 = derive_genotype(space.replace(inputs_per_node=3), [_one_hot_alphas(space, choice)] * 2)
        self.assertEqual([len(n) for n in k3.normal_cells[0].nodes], [2, 3, 3, 3])
        self.assertEqual([j for _, j in k3.normal_cells[0].nodes[1]], [1, 2, 0])

    def test_per_stage_cells_follow_their_own_alphas(self):
        space = TINY.replace(per_stage=True)
        alphas = [
            _one_hot_alphas(space, {e: (op, 3.0) for e in range(space.num_edges)})
            for op in (4, 5, 6, 1, 2)
        ]
        g = derive_genotype(space, alphas)
        self.assertTrue(g.per_stage)
        self.assertEqual(
            [c.edges[0][0] for c in g.cells()], [OPS[4], OPS[5], OPS[6], OPS[1], OPS[2]]
        )
        net = SearchNetwork(space, 10)
        for v, a in zip(net.arch_variables, alphas):
            v.assign(a)
        self.assertEqual(net.genotype(), g)

    def test_wrong_alpha_shapes(self):
        with self.assertRaisesRegex(ValueError, "alphas do not fit the search space"):
            derive_genotype(TINY, [np.zeros((5, 8))])
        with self.assertRaisesRegex(ValueError, "alphas do not fit the search space"):
            derive_genotype(TINY, [np.zeros((5, 7))] * 2)


if __name__ == "__main__":
    tf.test.main()
