"""diagnostics.alpha_hessian_eigenvalue against a model whose alpha-Hessian is known in closed
form (float64)."""

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import diagnostics, errors


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


if __name__ == "__main__":
    tf.test.main()
