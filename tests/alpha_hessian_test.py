"""diagnostics.alpha_hessian_eigenvalue against a model whose alpha-Hessian is known in closed
form (float64); diagnostics.best_eta against constructed gradients with a known answer."""

from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import diagnostics, errors, loop, operations, search_model, search_space


class _QuadraticInAlpha(keras.Model):
    """Per-example loss 0.5 (x_i . a)^2 * s + w: the loss on a batch X has the alpha-Hessian
    s X^T X / n exactly, whatever the weight w. `a` is split into two variables (shapes (2, 3)
    and (4,)) to exercise the flattening over several cell slots."""

    def __init__(self, scale):
        super().__init__(dtype="float64")
        self.scale = scale
        self.first = self.add_weight(shape=(2, 3), initializer="random_normal", dtype="float64")
        self.second = self.add_weight(shape=(4,), initializer="random_normal", dtype="float64")
        self.offset = self.add_weight(shape=(), initializer="zeros", dtype="float64")

    @property
    def arch_variables(self):
        return [self.first, self.second]

    @property
    def weight_variables(self):
        return [self.offset]

    def call(self, x, training=False):
        a = tf.concat([tf.reshape(self.first, [-1]), self.second], axis=0)
        projection = tf.linalg.matvec(x, a)
        return (0.5 * self.scale * projection**2 + self.offset)[:, None]


def _per_example_loss(labels, logits):
    del labels
    return logits[:, 0]


def _known_problem(scale, seed=0):
    """(model, batch, exact Hessian) with a well separated top eigenvalue."""
    rng = np.random.default_rng(seed)
    # X^T X / n with eigenvalues 10, 4, 3, ... (ratio 0.4: power iteration converges fast).
    basis, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    spectrum = np.array([10.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.25, 0.1])
    n = 10
    x = np.sqrt(n) * np.diag(np.sqrt(spectrum)) @ basis.T  # X^T X / n = basis diag basis^T
    model = _QuadraticInAlpha(scale)
    model.build((None, 10))
    batch = (tf.constant(x), tf.zeros([n], tf.int64))
    return model, batch, scale * x.T @ x / n


class AlphaHessianEigenvalueTest(tf.test.TestCase):
    def test_matches_the_closed_form_top_eigenvalue(self):
        for scale in (1.0, -0.5):  # -0.5: the dominant eigenvalue is negative (-5)
            model, batch, hessian = _known_problem(scale)
            eigenvalues = np.linalg.eigvalsh(hessian)
            expected = eigenvalues[np.argmax(np.abs(eigenvalues))]
            self.assertAllClose(expected, 10.0 * scale, rtol=1e-12)
            value, change = diagnostics.alpha_hessian_eigenvalue(
                model, _per_example_loss, batch, iterations=30, seed=1
            )
            # error ~ 0.4^(2*30) ~ 1e-24 relative: float64 round-off is the limit.
            self.assertAllClose(value, expected, rtol=1e-10)
            self.assertLess(change, 1e-10)
            # A handful of iterations (what the study runs) is already within 1 %.
            few, _ = diagnostics.alpha_hessian_eigenvalue(
                model, _per_example_loss, batch, iterations=10, seed=1
            )
            self.assertAllClose(few, expected, rtol=1e-2)

    def test_nothing_assigned(self):
        model, batch, _ = _known_problem(1.0)
        before = [v.numpy().copy() for v in model.variables]
        diagnostics.alpha_hessian_eigenvalue(model, _per_example_loss, batch, iterations=2)
        for b, v in zip(before, model.variables):
            self.assertAllEqual(b, v.numpy())

    def test_refuses_zero_iterations(self):
        model, batch, _ = _known_problem(1.0)
        with self.assertRaisesRegex(errors.InputError, "iterations"):
            diagnostics.alpha_hessian_eigenvalue(model, _per_example_loss, batch, iterations=0)

    def test_float16_products_take_a_loss_scale(self):
        # A tiny supernet in float32 and mixed_float16 with the same weights, on a loss whose
        # alpha gradients are small (per-example losses x 1e-4). Measured: eigenvalue float32
        # 1.0953e-5, float16 with the scale 1.1092e-5 (1.3 %), without it -2.4e-6 (underflow);
        # another batch of 32 gives 1.24e-6 in float32. Bounds: 5 % with, 50 % without.
        space = search_space.get_search_space("darts").replace(cells=3, channels=4, nodes=2)
        nets = []
        for dtype in (None, "float16"):
            keras.utils.set_random_seed(0)
            net = search_model.SearchNetwork(
                space, 10, seed=1, dtype=operations.dtype_policy(dtype)
            )
            net.build((None, 8, 8, 1))
            nets.append(net)
        nets[1].set_weights(nets[0].get_weights())
        rng = np.random.default_rng(1)
        batch = (
            tf.constant(rng.normal(size=(32, 8, 8, 1)), tf.float32),
            tf.constant(rng.integers(0, 10, size=32), tf.int32),
        )

        def small(labels, logits):
            return 1e-4 * loop.cross_entropy(labels, logits)

        def eigenvalue(net):
            return diagnostics.alpha_hessian_eigenvalue(net, small, batch, iterations=10)[0]

        truth = eigenvalue(nets[0])
        self.assertAllClose(eigenvalue(nets[1]), truth, rtol=0.05)
        with mock.patch.object(diagnostics, "FLOAT16_LOSS_SCALE", None):
            self.assertNotAllClose(eigenvalue(nets[1]), truth, rtol=0.5)


class BestEtaTest(tf.test.TestCase):
    def test_recovers_the_scale_of_an_exactly_proportional_correction(self):
        rng = np.random.default_rng(0)
        g1, c = rng.standard_normal(7), rng.standard_normal(7)
        # Measured at eta 0.1, the implicit correction is 30x the amended one: eta* = 3.
        result = diagnostics.best_eta(g1, g1 + c, g1 + 30.0 * c, eta=0.1)
        self.assertAllClose(result["best_eta"], 3.0, rtol=1e-12)
        self.assertAllClose(result["cosine_to_implicit_at_best_eta"], 1.0, rtol=1e-12)

    def test_least_squares_with_an_orthogonal_part(self):
        # c_imp = 2c + d with d orthogonal to c: eta* = eta * 2 whatever d, and the cosine at
        # eta* is that of g1 + 2c against g1 + 2c + d (closed form below).
        g1 = np.array([1.0, 0.0, 0.0])
        c = np.array([0.0, 1.0, 0.0])
        d = np.array([0.0, 0.0, 0.5])
        result = diagnostics.best_eta(g1, g1 + c, g1 + 2 * c + d, eta=0.5)
        self.assertAllClose(result["best_eta"], 1.0, rtol=1e-12)
        a, b = g1 + 2 * c, g1 + 2 * c + d
        expected = a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # 5 / (sqrt 5 sqrt 5.25)
        self.assertAllClose(result["cosine_to_implicit_at_best_eta"], expected, rtol=1e-12)

    def test_zero_correction_is_nan_not_an_error(self):
        g1 = np.ones(3)
        self.assertTrue(np.isnan(diagnostics.best_eta(g1, g1, 2 * g1, eta=0.1)["best_eta"]))


if __name__ == "__main__":
    tf.test.main()
