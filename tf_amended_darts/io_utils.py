"""Atomic file output: a reader (or a crash) never sees a half-written result."""

import os
import tempfile

from tf_amended_darts import errors


def make_directory(path):
    """os.makedirs(path, exist_ok=True); a path that cannot be a folder (a file in the way,
    permission denied, disk full) raises errors.InputError naming it: the user chose it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise errors.InputError(f"cannot make the folder {path}: {_reason(e)}") from None


def _reason(e):
    if isinstance(e, FileExistsError):  # makedirs' word for "a file is in the way"
        return "a file of that name is in the way"
    if isinstance(e, NotADirectoryError):
        return "a part of the path is a file, not a folder"
    return e.strerror or str(e)


def write_atomic(path, data):
    """Writes str or bytes to `path` via a temporary file in the same folder and a rename.

    A folder that cannot be created or written (permission denied, a file in the way, disk
    full) raises errors.InputError naming the path: the user chose it."""
    folder = os.path.dirname(os.path.abspath(path))
    make_directory(folder)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    except OSError as e:
        raise errors.InputError(f"cannot write {path}: {_reason(e)}") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results owner-only
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise errors.InputError(f"cannot write {path}: {_reason(e)}") from None
        raise
