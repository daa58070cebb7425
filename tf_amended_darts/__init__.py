"""Differentiable architecture search (DARTS) for TensorFlow/Keras with the amended
architecture gradient of Bi et al. (arXiv:1910.11831)."""

__version__ = "0.1.0"
