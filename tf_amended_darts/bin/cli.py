"""What every binary shares: one clear line and a non-zero exit for bad input."""

import logging as python_logging
import os
import sys

from absl import app, flags, logging


class UserError(Exception):
    """Bad input found by a binary itself (an impossible flag combination, say)."""


def flag_values(namespace):
    """{name: value} of the FlagHolders defined in a binary's module (`globals()`), for
    recording next to a result; absl's own flags are left out."""
    return {h.name: h.value for h in namespace.values() if isinstance(h, flags.FlagHolder)}


def make_strategy(name, deterministic=False):
    """The tf.distribute strategy `name` (distribute.make_strategy), after enabling op
    determinism when `deterministic`; call it after distribute.configure_logical_cpus."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return distribute.make_strategy(name)


def run(main, expected=(ValueError, OSError, UserError)):
    """`app.run(main)`, with the expected errors printed as one line (exit status 2)."""
    def guarded(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:
            # TF logs routine INFO lines (checkpoint sharding...) through absl; -v=0 shows them.
            logging.set_verbosity(logging.WARNING)
            python_logging.getLogger("tensorflow").setLevel(python_logging.WARNING)
        try:
            return main(argv)
        except expected as e:
            name = os.path.basename(sys.argv[0]).removesuffix(".py")
            print(f"{name}: error: {e}", file=sys.stderr)
            sys.exit(2)
    app.run(guarded)
