"""Forward equivalence with the reference DARTS code (quark0/darts) under PyTorch.

tests/testdata/reference_fixture.npz holds the reference's inputs, weights and outputs (eval
mode, random BN statistics), written by scripts/make_reference_fixture.py; PyTorch is needed
only to regenerate it. Our layers get the same weights and must give the same outputs within
1e-5: every operation at stride 1 and 2, the supernet's MixedOp (and each of its operations),
a normal and a reduction search cell, a small DARTS_V2 NetworkCIFAR, and NetworkImageNet's
stride-2 stems.
"""

import os

import numpy as np
import tensorflow as tf

from tf_amended_darts import genotypes, model, operations, search_model

FIXTURE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "testdata", "reference_fixture.npz"
)
ATOL = 1e-5

# Reference parameter name (last part) -> our variable name, for the same tensor.
_SAME_TENSOR = {
    ("weight", "kernel"),
    ("weight", "gamma"),
    ("bias", "beta"),
    ("bias", "bias"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
}
_OUR_NAMES = {ours for _, ours in _SAME_TENSOR}


def _to_keras_layout(value, variable):
    """PyTorch layouts to Keras': conv [O, I, kh, kw] -> [kh, kw, I, O]; depthwise conv
    [C, 1, kh, kw] -> [kh, kw, C, 1]; linear [out, in] -> [in, out]; vectors unchanged."""
    if value.ndim == 4:
        depthwise = "depthwise" in variable.path
        return value.transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))
    return value.T if value.ndim == 2 else value


def _model_variables(layer):
    """Weights and BN statistics in creation order (not drop-path rates or seed states)."""
    return [v for v in layer.variables if v.path.rsplit("/", 1)[-1] in _OUR_NAMES]


def transfer(fixture, prefix, layers):
    """Assigns the reference's parameters stored under `prefix` (its state_dict order, which
    follows module creation order) to the variables of `layers` (creation order too): the two
    orders agree, and each pair is checked by name and shape."""
    theirs = [(key[len(prefix) :], fixture[key]) for key in fixture.files if key.startswith(prefix)]
    ours = [v for layer in layers for v in _model_variables(layer)]
    assert len(theirs) == len(ours), f"{prefix}: {len(theirs)} reference tensors, {len(ours)} ours"
    for (name, value), variable in zip(theirs, ours):
        pair = (name.rsplit(".", 1)[-1], variable.path.rsplit("/", 1)[-1])
        assert pair in _SAME_TENSOR, f"{prefix}{name} would go to {variable.path}"
        value = _to_keras_layout(value, variable)
        assert value.shape == tuple(variable.shape), f"{prefix}{name} -> {variable.path}"
        variable.assign(value)


def nhwc(array):
    return tf.constant(array.transpose(0, 2, 3, 1), tf.float32)


class ReferenceEquivalenceTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fixture = np.load(FIXTURE)

    def assert_matches(self, ours, reference_nchw):
        expected = (
            reference_nchw.transpose(0, 2, 3, 1) if reference_nchw.ndim == 4 else reference_nchw
        )
        self.assertAllClose(ours, expected, atol=ATOL, rtol=0)

    def test_every_operation_at_stride_1_and_2(self):
        f = self.fixture
        x = nhwc(f["op/x"])
        for name in f["op/names"]:
            for stride in (1, 2):
                with self.subTest(op=name, stride=stride):
                    prefix = f"op/{name}/s{stride}/"
                    op = operations.make_operation(name, x.shape[-1], stride, affine=True)
                    op(x, training=False)
                    transfer(f, prefix + "param/", [op])
                    self.assert_matches(op(x, training=False), f[prefix + "out"])

    def test_mixed_op_and_each_of_its_operations(self):
        f = self.fixture
        primitives = [str(p) for p in f["mixed/primitives"]]
        for stride in (1, 2):
            prefix = f"mixed/s{stride}/"
            x, weights = nhwc(f[prefix + "x"]), tf.constant(f[prefix + "weights"], tf.float32)
            mixed = search_model.MixedOp(primitives, x.shape[-1], stride)
            mixed(x, weights, training=False)
            transfer(f, prefix + "param/", [mixed])
            for i, op in mixed.ops:
                with self.subTest(op=primitives[i], stride=stride):
                    self.assert_matches(op(x, training=False), f[f"{prefix}{primitives[i]}/out"])
            with self.subTest(op="mixed", stride=stride):
                self.assert_matches(mixed(x, weights, training=False), f[prefix + "out"])

    def test_search_cells(self):
        f = self.fixture
        primitives = [str(p) for p in f["mixed/primitives"]]
        for kind, reduction, reduction_prev in (("normal", False, True), ("reduce", True, False)):
            with self.subTest(cell=kind):
                prefix = f"cell/{kind}/"
                s0, s1 = nhwc(f[prefix + "s0"]), nhwc(f[prefix + "s1"])
                weights = tf.constant(f[prefix + "weights"], tf.float32)
                # 4 nodes, as the reference's default; channels from the reference's output.
                channels = f[prefix + "out"].shape[1] // 4
                cell = search_model.SearchCell(primitives, 4, channels, reduction, reduction_prev)
                cell(s0, s1, weights, training=False)
                transfer(f, prefix + "param/", [cell])
                self.assert_matches(cell(s0, s1, weights, training=False), f[prefix + "out"])

    def test_darts_v2_network(self):
        f = self.fixture
        x = nhwc(f["network/x"])
        net = model.NetworkCIFAR(
            genotypes.PUBLISHED["DARTS_V2"],
            int(f["network/channels"]),
            int(f["network/cells"]),
            f["network/logits"].shape[1],
        )
        net.build((None,) + tuple(x.shape[1:]))
        transfer(f, "network/param/stem.", net.stem_layers)
        for i, cell in enumerate(net.cells):
            transfer(f, f"network/param/cells.{i}.", [cell])
        transfer(f, "network/param/classifier.", [net.classifier])
        self.assert_matches(net(x, training=False), f["network/logits"])

    def test_imagenet_stems(self):
        f = self.fixture
        x = nhwc(f["imagenet_stem/x"])
        net = model.NetworkImageNet(
            genotypes.PUBLISHED["DARTS_V2"], int(f["imagenet_stem/channels"]), 3, 10
        )
        net.stem(x, training=False)  # builds the stems only
        transfer(f, "imagenet_stem/param/stem0.", net.stem0)
        transfer(f, "imagenet_stem/param/stem1.", net.stem1)
        s0, s1 = net.stem(x, training=False)
        self.assert_matches(s0, f["imagenet_stem/s0"])
        self.assert_matches(s1, f["imagenet_stem/s1"])


if __name__ == "__main__":
    tf.test.main()
