"""Evaluation networks: shapes, auxiliary head, drop-path, per-stage genotypes, round trips."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import genotypes, model, operations, search_model, search_space

V2 = genotypes.PUBLISHED["DARTS_V2"]


class NetworkTest(tf.test.TestCase):
    def test_cifar_outputs_and_auxiliary_head(self):
        net = model.NetworkCIFAR(V2, 8, 5, 10, auxiliary=True)
        x = tf.random.normal((2, 32, 32, 3), seed=0)
        logits, aux = net(x, training=True, return_aux=True)
        self.assertEqual((tuple(logits.shape), tuple(aux.shape)), ((2, 10), (2, 10)))
        self.assertEqual(tuple(net(x).shape), (2, 10))
        with self.assertRaisesRegex(ValueError, "auxiliary=True"):
            model.NetworkCIFAR(V2, 8, 5, 10)(x, return_aux=True)

    def test_small_inputs_work_with_auxiliary_head(self):
        net = model.NetworkCIFAR(V2, 4, 3, 10, auxiliary=True)
        logits, aux = net(tf.zeros((2, 8, 8, 1)), training=True, return_aux=True)
        self.assertEqual(tuple(aux.shape), (2, 10))

    def test_imagenet_stems_reduce_by_eight(self):
        net = model.NetworkImageNet(V2, 8, 5, 20, auxiliary=True)
        logits, aux = net(tf.zeros((1, 64, 64, 3)), training=True, return_aux=True)
        self.assertEqual((tuple(logits.shape), tuple(aux.shape)), ((1, 20), (1, 20)))

    def test_per_stage_genotype_builds_distinct_stages(self):
        space = search_space.get_search_space("enlarged").replace(cells=5, channels=4)
        net = search_model.SearchNetwork(space, 10, seed=0)
        g = net.genotype()
        self.assertTrue(g.per_stage)
        ev = model.NetworkCIFAR(g, 4, 5, 10)
        self.assertEqual(tuple(ev(tf.zeros((1, 16, 16, 3))).shape), (1, 10))
        # cells 0 and 3 are normal cells of stages 0 and 1; cell 1 and 4 reductions 0 and 1
        self.assertEqual(
            [c.cell_genotype for c in ev.cells], [g.cell(*space.cell_slot(i)) for i in range(5)]
        )

    def test_drop_path(self):
        net = model.NetworkCIFAR(V2, 4, 3, 10)
        x = tf.random.normal((4, 16, 16, 3), seed=1)
        self.assertAllEqual(net(x, training=True), net(x, training=True))  # rate 0
        net.drop_path_rate.assign(0.5)
        self.assertNotAllClose(net(x, training=True), net(x, training=True))
        self.assertAllEqual(net(x, training=False), net(x, training=False))

    def test_drop_path_drops_whole_examples_and_keeps_the_mean(self):
        layer = model.DropPath(seed=3)
        y = layer(tf.ones((20000, 2, 2, 1)), tf.constant(0.25), training=True).numpy()
        per_example = y.reshape(20000, -1)
        self.assertTrue(np.all(per_example.min(1) == per_example.max(1)))
        self.assertAllClose(np.unique(y), [0.0, 1.0 / 0.75])
        self.assertAllClose(y.mean(), 1.0, atol=0.02)  # 4 sigma of the Bernoulli mean

    def test_keras_round_trip_gives_identical_outputs(self):
        for cls, size in ((model.NetworkCIFAR, 16), (model.NetworkImageNet, 32)):
            net = cls(V2, 4, 3, 10, auxiliary=True)
            net.drop_path_rate.assign(0.1)
            x = tf.random.normal((2, size, size, 3), seed=2)
            y = net(x, training=False)
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "net.keras")
                net.save(path)
                loaded = keras.models.load_model(path)
            self.assertAllEqual(loaded(x, training=False), y)
            self.assertEqual(loaded.genotype, V2)
            self.assertAllClose(loaded.drop_path_rate, 0.1)

    def test_mixed_precision_reaches_every_layer_and_round_trips(self):
        policy = operations.dtype_policy("bfloat16")
        for cls, size in ((model.NetworkCIFAR, 16), (model.NetworkImageNet, 32)):
            net = cls(V2, 4, 3, 10, auxiliary=True, dtype=policy)
            x = tf.random.normal((2, size, size, 3), seed=2)
            logits, aux = net(x, training=True, return_aux=True)
            self.assertEqual((logits.dtype, aux.dtype), (tf.float32, tf.float32))
            sublayers = list(net._flatten_layers(include_self=False))
            self.assertEqual({layer.dtype_policy.name for layer in sublayers}, {policy})
            y = net(x, training=False)
            with tempfile.TemporaryDirectory() as d:
                net.save(os.path.join(d, "net.keras"))
                loaded = keras.models.load_model(os.path.join(d, "net.keras"))
            self.assertEqual(loaded.dtype_policy.name, policy)
            self.assertAllEqual(loaded(x, training=False), y)

    def test_genotype_given_as_text(self):
        net = model.NetworkCIFAR("DARTS_V1", 4, 3, 10)
        self.assertEqual(net.genotype, genotypes.PUBLISHED["DARTS_V1"])


if __name__ == "__main__":
    tf.test.main()
