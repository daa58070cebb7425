"""Smoke test: the package and TensorFlow import, and TensorFlow computes.

Runs under pytest (`python -m pytest -q -n 2 --dist loadscope tests`) and as a Bazel
py_test (//:smoke_test, tagged "bazel_ci"): Bazel executes the file as a script, so the
`__main__` block at the bottom hands it to pytest. Every tests/NAME_test.py keeps that block
(see BUILD).
"""

import sys

import tensorflow as tf

import tf_amended_darts


def test_version_is_a_non_empty_string():
    assert isinstance(tf_amended_darts.__version__, str)
    assert tf_amended_darts.__version__.strip()


def test_tiny_tensorflow_computation():
    a = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    b = tf.constant([[5.0], [6.0]])
    # [[1*5 + 2*6], [3*5 + 4*6]] = [[17], [39]]; their sum is 56.
    total = tf.reduce_sum(tf.matmul(a, b))
    assert float(total.numpy()) == 56.0


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
