"""The project's error class for bad input.

A binary prints an `InputError` as one line and exits with status 2 (bin/cli.py); any other
exception is a bug in the project and shows its traceback. Library code raises InputError (or
a subclass naming the area: GenotypeError, CheckpointError, ...) for anything the user gave
that cannot be used: a flag value, a file, a genotype, a directory.
"""


class InputError(ValueError):
    """Bad input, described in one line for the user who gave it."""


class Interrupted(BaseException):
    """A run stopped by SIGINT or SIGTERM after writing a checkpoint (loop.Runner): the
    binaries print it as one line and exit with status 128 + `signum`. A BaseException, as
    KeyboardInterrupt: code that handles errors (keras-tuner's failed trials) must not
    swallow it."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum
