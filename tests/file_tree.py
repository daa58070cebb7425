"""A snapshot of a directory tree, to assert that a refused command changed nothing in it."""

import os


def snapshot(directory):
    """{relative path: (size, mtime_ns)} of `directory` itself and everything under it."""
    found = {".": os.stat(directory).st_mtime_ns}
    for root, folders, files in os.walk(directory):
        for name in folders + files:
            path = os.path.join(root, name)
            status = os.stat(path)
            found[os.path.relpath(path, directory)] = (status.st_size, status.st_mtime_ns)
    return found
