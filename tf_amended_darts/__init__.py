"""Differentiable architecture search (DARTS) for TensorFlow/Keras with the amended
architecture gradient of Bi et al. (arXiv:1910.11831)."""

__version__ = "0.1.0"

# keras-tuner is an optional dependency (the `tuner` extra): its classes load on first use.
_LAZY = {
    "DartsOracle": "tuner",
    "GenotypeHyperModel": "tuner",
    "ArchitectureTuner": "tuner",
    "SearchTuner": "tuner",
}


def __getattr__(name):
    """`tf_amended_darts.DartsOracle` etc. import their module on first use only."""
    if name in _LAZY:
        import importlib  # pylint: disable=g-import-not-at-top

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
