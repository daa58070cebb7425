"""Operations: shapes at stride 1 and 2, reference semantics, registry."""

import numpy as np
import tensorflow as tf
from keras import layers

from tf_amended_darts import distribute, operations, search_space

if __name__ == "__main__":  # pytest: tests/conftest.py splits the CPU
    distribute.configure_logical_cpus(2)

BUILT_IN = operations.DARTS_OPS + ("sep_conv_7x7", "conv_7x1_1x7", "conv_1x1", "conv_3x3")


# Per operation, per spatial axis: its windows as (tap offsets around the centre, stride of
# the op or 1). A k x k window with dilation d, padded symmetrically as the reference pads,
# reads offsets d * (-(k-1)/2 .. (k-1)/2) around input pixel stride * output_index.
def _taps(k, d=1):
    return tuple(range(-d * (k - 1) // 2, d * (k - 1) // 2 + 1, d))


_WINDOWS = {
    "none": None,
    "max_pool_3x3": [(_taps(3), "s")],
    "avg_pool_3x3": [(_taps(3), "s")],
    "skip_connect": [(_taps(1), 1)],
    "skip_connect/2": [((0, 1), 2)],  # factorized reduce: 1x1 grids at offsets 0 and 1
    "sep_conv_3x3": [(_taps(3), "s"), (_taps(3), 1)],
    "sep_conv_5x5": [(_taps(5), "s"), (_taps(5), 1)],
    "sep_conv_7x7": [(_taps(7), "s"), (_taps(7), 1)],
    "dil_conv_3x3": [(_taps(3, 2), "s")],
    "dil_conv_5x5": [(_taps(5, 2), "s")],
    "conv_7x1_1x7": [(_taps(7), "s")],  # the other factor is 1 x 1 along this axis
    "conv_1x1": [(_taps(1), "s")],
    "conv_3x3": [(_taps(3), "s")],
}


def _expected_reach(windows, pixel, size, stride):
    """Output indices (one axis) whose receptive field contains input `pixel`."""
    if windows is None:
        return set()
    reached = {pixel}
    for taps, step in windows:
        step = stride if step == "s" else step
        size = -(-size // step)
        reached = {o for o in range(size) if any(step * o + t in reached for t in taps)}
    return reached


class OperationsTest(tf.test.TestCase):
    def test_impulse_reaches_the_reference_windows_at_every_stride(self):
        # Positive weights and an impulse: an output pixel is non-zero exactly when its
        # receptive field contains the impulse, so this compares window placement. TF's
        # padding="SAME" at stride 2 on even sizes reaches e.g. {1, 2} for avg_pool_3x3 at
        # pixel 4 of 8 (symmetric windows: {2}).
        rng = np.random.default_rng(4)
        for name in BUILT_IN:
            for stride in (1, 2):
                windows = _WINDOWS.get(f"{name}/{stride}", _WINDOWS[name])
                # Sizes 16: the 5x5 and 7x7 reaches do not fill the whole output there.
                for size, pixel in ((8, 4), (8, 3), (7, 3), (16, 8), (16, 7)):
                    with self.subTest(name=name, stride=stride, size=size, pixel=pixel):
                        x = np.zeros((1, size, size, 4), np.float32)
                        x[0, pixel, pixel, :] = 1.0
                        op = operations.make_operation(name, 4, stride, affine=True)
                        op(tf.constant(x), training=False)
                        for v in op.trainable_variables:  # kernels; BN stays mean 0, beta 0
                            if "kernel" in v.path:
                                v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
                        y = op(tf.constant(x), training=False).numpy()
                        reached = np.nonzero(np.abs(y).sum(axis=(0, 3)) > 1e-6)
                        expected = _expected_reach(windows, pixel, size, stride)
                        self.assertEqual(set(reached[0].tolist()), expected)
                        self.assertEqual(set(reached[1].tolist()), expected)

    def test_every_operation_shape_at_stride_1_and_2(self):
        for size in (8, 7):  # odd sizes must halve to ceil(size / 2) too
            x = tf.random.normal((2, size, size, 6), seed=1)
            for name in operations.OPS:
                for affine in (True, False):
                    for stride, out in ((1, size), (2, (size + 1) // 2)):
                        with self.subTest(name=name, stride=stride, affine=affine, size=size):
                            op = operations.make_operation(name, 6, stride, affine)
                            y = op(x, training=True)
                            self.assertEqual(tuple(y.shape), (2, out, out, 6))

    def test_operations_honour_dtype(self):
        x = tf.random.normal((2, 7, 7, 4), dtype=tf.float64, seed=1)
        for name in BUILT_IN:
            for stride in (1, 2):
                with self.subTest(name=name, stride=stride):
                    op = operations.make_operation(name, 4, stride, False, dtype="float64")
                    self.assertEqual(op(x, training=True).dtype, tf.float64)
                    self.assertEqual({v.dtype for v in op.variables} - {"float64"}, set())

    def test_zero_is_zero_at_output_resolution(self):
        y = operations.make_operation("none", 3, 2, False)(tf.ones((1, 6, 6, 3)))
        self.assertAllEqual(y, tf.zeros((1, 3, 3, 3)))

    def test_stride_two_dilated_conv_equals_strided_reference(self):
        # Reference: depthwise conv, dilation 2, stride 1, symmetric padding, then every other
        # pixel = PyTorch's Conv2d(stride=2, dilation=2, padding=d*(k-1)/2) on the same input.
        for k in (3, 5):
            op = operations.DilConv(5, k, stride=2, dilation=2, affine=True)
            x = tf.random.normal((2, 9, 9, 5), seed=2)
            y = op(x, training=False)
            h = tf.nn.depthwise_conv2d(
                tf.nn.relu(x), op.depthwise.kernel, [1, 1, 1, 1], "SAME", dilations=[2, 2]
            )[:, ::2, ::2, :]
            expected = op.bn(op.pointwise(h), training=False)
            self.assertAllClose(y, expected, atol=1e-5)

    def test_sep_conv_applies_two_blocks_and_has_reference_parameter_count(self):
        op = operations.make_operation("sep_conv_3x3", 4, 1, affine=True)
        op(tf.zeros((1, 8, 8, 4)))
        # per block: depthwise 3*3*4 + pointwise 4*4 + BN gamma/beta 2*4; two blocks.
        self.assertEqual(
            sum(int(np.prod(v.shape)) for v in op.trainable_variables), 2 * (36 + 16 + 8)
        )

    def test_factorized_reduce_concatenates_offset_grids(self):
        op = operations.FactorizedReduce(4, affine=False)
        x = tf.random.normal((1, 6, 6, 3), seed=3)
        y = op(x, training=False)
        r = tf.nn.relu(x)
        a = tf.nn.conv2d(r[:, ::2, ::2], op.conv_1.kernel, 1, "VALID")
        b = tf.nn.conv2d(r[:, 1::2, 1::2], op.conv_2.kernel, 1, "VALID")
        self.assertAllClose(y, op.bn(tf.concat([a, b], -1), training=False), atol=1e-5)

    def test_max_pool_values_and_second_derivatives_in_tf_function(self):
        rng = np.random.default_rng(0)
        # The case where TF's padding="SAME" max-pool gets d/ds <dL/dx, u> wrong when traced
        # (eager and finite differences: -44.60, tf.function: -9.59).
        x, c, u = (tf.constant(rng.normal(size=(4, 6, 6, 3))) for _ in range(3))

        def directional(pool, s):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.sin(pool(x * s)) * c)
            return tf.reduce_sum(tape.gradient(loss, x) * u)

        def mixed(pool, s):
            with tf.GradientTape() as tape:
                tape.watch(s)
                d = directional(pool, s)
            return tape.gradient(d, s)

        s, h = tf.constant(1.3, tf.float64), 1e-6

        def ours(z):
            return operations.max_pool_3x3(z, 1)

        def same(z):
            return tf.nn.max_pool2d(z, 3, 1, "SAME")

        fd = (directional(ours, s + h) - directional(ours, s - h)) / (2 * h)
        self.assertAllClose(fd, -44.5956, atol=1e-3)
        self.assertAllClose(tf.function(lambda s: mixed(ours, s))(s), fd, rtol=1e-6)
        self.assertAllClose(ours(x), same(x))  # same values as SAME at stride 1

        # Stride 2 (even and odd sizes) reads the reference's windows [2i - 1, 2i + 1].
        for size in (6, 7):
            z = rng.normal(size=(2, size, size, 3))
            out = (size + 1) // 2
            padded = np.pad(z, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
            expected = np.stack(
                [
                    np.stack(
                        [
                            padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((1, 2))
                            for j in range(out)
                        ],
                        1,
                    )
                    for i in range(out)
                ],
                1,
            )
            self.assertAllClose(operations.max_pool_3x3(tf.constant(z), 2), expected)

    def test_batch_norm_matches_the_formula_to_second_derivatives(self):
        # BatchNorm's one-replica training pass is normalize_batch: the fused kernel (float32)
        # or the formula (float64) forward, closed-form first and second derivatives. Ground
        # truth: the formula (x - mean) / sqrt(biased var + eps) * gamma + beta, differentiated
        # by TF in float64. Tolerances: float32 against float64 1e-4; float64 1e-10 (measured
        # ~1e-15).
        rng = np.random.default_rng(1)
        x, c, u = (rng.normal(size=(4, 5, 5, 3)) for _ in range(3))
        gamma, beta = rng.uniform(0.5, 1.5, size=3), rng.normal(size=3)

        def formula(x, gamma, beta):
            mean = tf.reduce_mean(x, [0, 1, 2])
            var = tf.reduce_mean(tf.square(x - mean), [0, 1, 2])
            return (x - mean) * tf.math.rsqrt(var + 1e-5) * gamma + beta, mean, var

        def derivatives(normalize, x, gamma, beta, c, u):
            # loss, dL/dx, d/dgamma <dL/dx, u> and d/dx <dL/dx, u> (Hessian times u); the
            # sine makes dL/dy depend on x, so both second derivatives of the layer count.
            with tf.GradientTape(persistent=True) as outer:
                outer.watch([x, gamma])
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    loss = tf.reduce_sum(tf.sin(normalize(x, gamma, beta)) * c)
                grad = inner.gradient(loss, x)
                dot = tf.reduce_sum(grad * u)
            return [loss, grad, *outer.gradient(dot, [gamma, x])]

        args64 = [tf.constant(a, tf.float64) for a in (x, gamma, beta, c, u)]
        expected = derivatives(lambda *a: formula(*a)[0], *args64)
        for dtype, tolerance in (("float32", 1e-4), ("float64", 1e-10)):
            layer = operations.batch_norm(affine=True, dtype=dtype)
            layer.build((None, 5, 5, 3))
            statistics = [v.value for v in layer.non_trainable_variables]

            def layer_call(x, gamma, beta, layer=layer, statistics=statistics):
                # As the estimators call it: variables as tensors.
                return layer.stateless_call([gamma, beta], statistics, x, training=True)[0]

            args = [tf.constant(a, dtype) for a in (x, gamma, beta, c, u)]
            traced = tf.function(lambda *a: derivatives(layer_call, *a))
            got = traced(*args)
            graph = traced.get_concrete_function(*args).graph
            ops_used = [op.type for op in graph.get_operations()]
            if dtype == "float32":  # the kernels did run (forward, first derivatives)
                self.assertIn("FusedBatchNormV3", ops_used)
                self.assertIn("FusedBatchNormGradV3", ops_used)
            # The closed-form second derivatives did: TF's own (its gradient kernel rebuilt
            # from elementwise operations, then differentiated) would bring RsqrtGrad.
            self.assertNotIn("RsqrtGrad", ops_used)
            # Also eagerly, and traced for any batch size (the count of values per channel is
            # then a tensor: sub-batch loops, retracing-reduced functions).
            spec = tf.TensorSpec([None, 5, 5, 3], dtype)
            any_batch = tf.function(
                lambda x, *a: derivatives(layer_call, x, *a),
                input_signature=[spec, *(tf.TensorSpec([3], dtype),) * 2, spec, spec],
            )
            for mode, values in (
                ("traced", got),
                ("eager", derivatives(layer_call, *args)),
                ("any batch", any_batch(*args)),
            ):
                for name, g, e in zip(("loss", "grad", "mixed", "hvp"), values, expected):
                    self.assertAllClose(
                        g, e, rtol=tolerance, atol=tolerance, msg=f"{name} {dtype} {mode}"
                    )
            # Moving statistics: momentum 0.9 over the biased batch variance, as Keras' path.
            layer.moving_mean.assign(np.zeros(3, dtype))
            layer.moving_variance.assign(np.ones(3, dtype))
            layer(args[0], training=True)
            _, mean, var = formula(*args64[:3])
            self.assertAllClose(layer.moving_mean, 0.1 * mean, rtol=1e-5, atol=1e-6)
            self.assertAllClose(layer.moving_variance, 0.9 + 0.1 * var, rtol=1e-5)

    def test_batch_norm_refuses_third_derivatives(self):
        # Its second derivatives are closed forms that TF cannot differentiate correctly.
        x = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 3, 2)))
        with tf.GradientTape() as third:
            third.watch(x)
            with tf.GradientTape() as second:
                second.watch(x)
                with tf.GradientTape() as first:
                    first.watch(x)
                    loss = tf.reduce_sum(tf.sin(operations.normalize_batch(x, 1e-5)[0]))
                dot = tf.reduce_sum(first.gradient(loss, x))
            hvp = tf.reduce_sum(second.gradient(dot, x))
        with self.assertRaisesRegex(NotImplementedError, "third derivatives"):
            third.gradient(hvp, x)

    def test_batch_norm_over_two_replicas_matches_the_formula_to_second_derivatives(self):
        # Under MirroredStrategy BatchNorm normalises with the global batch's moments
        # (distribute.all_reduce_sum). Each replica differentiates its own half's loss; the
        # sums over the replicas must be the full batch's derivatives (float64 formula).
        rng = np.random.default_rng(2)
        x, c, u = (rng.normal(size=(4, 3, 3, 2)) for _ in range(3))
        gamma, beta = rng.uniform(0.5, 1.5, size=2), rng.normal(size=2)
        layer = operations.batch_norm(affine=True, dtype="float64")
        layer.build((None, 3, 3, 2))
        statistics = [v.value for v in layer.non_trainable_variables]
        mirrored = distribute.make_strategy("mirrored")
        self.assertEqual(mirrored.num_replicas_in_sync, 2)

        def derivatives(normalize, x, gamma, c, u):
            with tf.GradientTape(persistent=True) as outer:
                outer.watch([x, gamma])
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    loss = tf.reduce_sum(tf.sin(normalize(x, gamma)) * c)
                grad = inner.gradient(loss, x)
                dot = tf.reduce_sum(grad * u)
            return [loss, grad, *outer.gradient(dot, [gamma, x])]

        def replica():
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            half = [tf.constant(a, tf.float64)[2 * r : 2 * r + 2] for a in (x, c, u)]
            return derivatives(
                lambda x, g: layer.stateless_call([g, beta], statistics, x, training=True)[0],
                half[0],
                tf.constant(gamma, tf.float64),
                *half[1:],
            )

        per_replica = tf.function(lambda: mirrored.run(replica), autograph=False)()
        loss, grad, mixed, hvp = (mirrored.experimental_local_results(v) for v in per_replica)
        got = [sum(loss), tf.concat(grad, 0), sum(mixed), tf.concat(hvp, 0)]

        def formula(x, gamma):
            mean = tf.reduce_mean(x, [0, 1, 2])
            var = tf.reduce_mean(tf.square(x - mean), [0, 1, 2])
            return (x - mean) * tf.math.rsqrt(var + 1e-5) * gamma + beta

        args = [tf.constant(a, tf.float64) for a in (x, gamma, c, u)]
        expected = derivatives(formula, *args)
        for name, g, e in zip(("loss", "grad", "mixed", "hvp"), got, expected):
            self.assertAllClose(g, e, rtol=1e-10, atol=1e-10, msg=name)

    def test_batch_norm_statistics_take_finite_updates_only(self):
        # A poisoned or exploding batch must not leave NaN/inf moving statistics behind, on the
        # fused path (float32) and on Keras' path (float64).
        for dtype in ("float32", "float64"):
            layer = operations.batch_norm(affine=False, dtype=dtype)
            x = np.random.default_rng(0).normal(size=(2, 3, 3, 2))
            layer(tf.constant(x, dtype), training=True)
            good = [v.numpy().copy() for v in (layer.moving_mean, layer.moving_variance)]
            x[0, 0, 0, 0] = np.nan  # channel 0 poisoned, channel 1 sound
            x[1, 0, 0, 1] = 3.0
            layer(tf.constant(x, dtype), training=True)
            for variable, before in zip((layer.moving_mean, layer.moving_variance), good):
                value = variable.numpy()
                self.assertTrue(np.isfinite(value).all(), dtype)
                self.assertEqual(value[0], before[0])  # the poisoned channel kept its value
                self.assertNotEqual(value[1], before[1])  # the sound one was updated

    def test_average_pool_excludes_padding(self):
        y = operations.make_operation("avg_pool_3x3", 2, 1, affine=True)(tf.ones((1, 4, 4, 2)))
        self.assertAllClose(y, tf.ones((1, 4, 4, 2)))

    def test_pooling_has_bn_only_in_supernet(self):
        self.assertIsNotNone(operations.make_operation("max_pool_3x3", 2, 1, affine=False).bn)
        self.assertIsNone(operations.make_operation("max_pool_3x3", 2, 1, affine=True).bn)

    def test_supernet_bn_has_no_affine_parameters(self):
        op = operations.make_operation("sep_conv_3x3", 4, 1, affine=False)
        op(tf.zeros((1, 8, 8, 4)))
        self.assertFalse(
            [v for v in op.trainable_variables if "gamma" in v.path or "beta" in v.path]
        )

    def test_noise_is_standard_normal_of_the_strided_shape_without_weights_or_input_gradient(
        self,
    ):
        for dtype, stride, size, out in (
            ("float32", 1, 8, 8),
            ("float64", 2, 7, 4),
            ("bfloat16", 2, 8, 4),
        ):
            with self.subTest(dtype=dtype, stride=stride):
                op = operations.make_operation("noise", 3, stride, False, dtype=dtype)
                x = tf.random.normal((2, size, size, 3), dtype=dtype, seed=1)
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = op(x, training=True)
                self.assertEqual((tuple(y.shape), y.dtype), ((2, out, out, 3), tf.as_dtype(dtype)))
                self.assertIsNone(tape.gradient(y, x))
                self.assertEqual(op.trainable_variables, [])
        # Standard normal: 2e5 draws put the sample mean within 4.5 standard errors (0.01) of
        # 0 and the standard deviation within 0.01 of 1.
        y = operations.make_operation("noise", 50, 1, False)(tf.zeros((20, 20, 10, 50)))
        self.assertAllClose([np.mean(y), np.std(y)], [0.0, 1.0], atol=0.01)
        self.assertIn("noise", operations.PARAMETER_FREE_OPS)

    def test_noise_depends_on_its_state_only_advancing_once_per_training_pass(self):
        op = operations.make_operation("noise", 2, 1, False)
        x = tf.zeros((1, 4, 4, 2))
        first = op(x, training=True)
        # Other input values, same state: the same noise; the state moved on: other noise.
        op.state.assign(op.state - [0, 1])
        self.assertAllEqual(op(x + 5.0, training=True), first)
        self.assertNotAllClose(op(x, training=True), first)
        # Inference reads the state and leaves it.
        state = op.state.numpy()
        self.assertAllEqual(op(x, training=False), op(x, training=False))
        self.assertAllEqual(op.state, state)
        # Stateless calls from one state (the estimators' passes of a step) draw the same
        # noise and return the state advanced once.
        (a, new_a), (b, new_b) = [op.stateless_call([], [state], x, training=True) for _ in "ab"]
        self.assertAllEqual(a, b)
        self.assertAllEqual(new_a, new_b)
        self.assertAllEqual(new_a[0], state + [0, 1])
        # Two layers built after one seeding draw different noise.
        other = operations.make_operation("noise", 2, 1, False)
        self.assertNotAllClose(other(x, training=False), op(x, training=False))

    def test_unknown_operation(self):
        with self.assertRaisesRegex(ValueError, "unknown operation 'conv_9x9'"):
            operations.make_operation("conv_9x9", 4, 1, True)

    def test_register_operation_extends_search_spaces(self):
        name = "test_relu_conv_5x5"
        operations.register_operation(
            name, lambda c, stride, affine: operations.ReLUConvBN(c, 5, stride, affine)
        )
        space = search_space.SearchSpace(operations=("none", "skip_connect", name))
        self.assertIn(name, space.operations)
        y = operations.make_operation(name, 4, 2, False)(tf.zeros((1, 8, 8, 4)))
        self.assertEqual(tuple(y.shape), (1, 4, 4, 4))
        # A factory without `dtype` still serves networks of the default dtype.
        operations.make_operation(name, 4, 1, False, dtype="float32")
        with self.assertRaisesRegex(ValueError, "already registered"):
            operations.register_operation(name, lambda c, s, a: layers.Identity())


if __name__ == "__main__":
    tf.test.main()
