"""Parameter and mult-add counts: the reference implementation's figures, and closed forms."""

import keras
import tensorflow as tf

from tf_amended_darts import genotypes, model, profiling, search_model, search_space


class ReferenceParityTest(tf.test.TestCase):
    """Counts of the published DARTS reference implementation (quark0/darts; docs/USAGE.md,
    "Reference parameter counts")."""

    def _cifar(self, name, auxiliary):
        net = model.NetworkCIFAR(genotypes.PUBLISHED[name], 36, 20, 10, auxiliary=auxiliary)
        net.build((None, 32, 32, 3))
        return net

    def test_darts_v2_cifar(self):
        net = self._cifar("DARTS_V2", auxiliary=True)
        self.assertEqual(profiling.trainable_params(net, include_auxiliary=False), 3_349_342)
        self.assertEqual(profiling.trainable_params(net), 3_825_768)

    def test_darts_v1_cifar(self):
        net = self._cifar("DARTS_V1", auxiliary=True)
        self.assertEqual(profiling.trainable_params(net, include_auxiliary=False), 3_169_414)
        self.assertEqual(profiling.trainable_params(net), 3_645_840)

    def test_darts_v2_imagenet_under_600m_mult_adds(self):
        net = model.NetworkImageNet(genotypes.PUBLISHED["DARTS_V2"], 48, 14, 1000)
        net.build((None, 224, 224, 3))
        self.assertEqual(profiling.trainable_params(net), 4_718_752)
        self.assertLess(profiling.mult_adds(net, (224, 224, 3)), 600_000_000)

    def test_darts_supernet(self):
        net = search_model.SearchNetwork(search_space.get_search_space("darts"), 10)
        net.build((None, 32, 32, 3))
        self.assertEqual(profiling.trainable_params(net), 1_930_618)
        self.assertEqual(profiling.count_params(net.arch_variables), 2 * 14 * 8)


class MultAddsTest(tf.test.TestCase):
    def test_closed_form(self):
        inputs = keras.Input((10, 10, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)  # 5x5
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = keras.layers.Conv2D(4, 1, use_bias=False)(x)
        x = keras.layers.Dense(6)(keras.layers.Flatten()(x))
        net = keras.Model(inputs, x)
        expected = (5 * 5 * 8 * 3 * 3 * 3) + (5 * 5 * 8 * 3 * 3) + (5 * 5 * 4 * 8) + (100 * 6)
        self.assertEqual(profiling.mult_adds(net, (10, 10, 3)), expected)


if __name__ == "__main__":
    tf.test.main()
