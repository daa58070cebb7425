"""The project's error class for bad input.

A binary prints an `InputError` as one line and exits with status 2 (bin/cli.py); any other
exception is a bug in the project and shows its traceback. Library code raises InputError (or
a subclass naming the area: GenotypeError, CheckpointError, ...) for anything the user gave
that cannot be used: a flag value, a file, a genotype, a directory.
"""


class InputError(ValueError):
    """Bad input, described in one line for the user who gave it."""
