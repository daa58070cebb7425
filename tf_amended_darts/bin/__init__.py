"""absl binaries.

Importing this package imports TensorFlow with its C++ start-up chatter (oneDNN and CPU-feature
notices, printed before any log level applies) sent to /dev/null, so that a user's error is
the one line they read. Set TF_AMENDED_DARTS_VERBOSE_IMPORT=1 to see it.
"""

import os


def _import_tensorflow_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("TF_AMENDED_DARTS_VERBOSE_IMPORT"):
        import tensorflow  # noqa: F401

        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()
