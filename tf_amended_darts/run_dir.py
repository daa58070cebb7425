"""The output directory of a run: ownership, run metadata, TensorBoard, console progress.

prepare(directory, config, kind, resume, overwrite)  claims `directory` for a run described
    by the JSON-able dict `config`: refuses a directory holding another run (different
    kind or config) unless overwrite, one holding this run unless resume or overwrite, one
    holding no run under resume, and one in use by another process (see claim).
claim(directory) / release(directory)           one process at a time owns a run directory.
holds_run(directory)                            whether run.json of this project is there.
write_metadata(directory, config, kind, flags)  run.json: config, flags, seed, versions.
summary_writer(directory, chief)                TensorBoard writer (a no-op off the chief);
write_scalar / write_text / write_image         summaries without the tensorboard package.
Progress(total_steps, images_per_step)          one-line progress bar with ETA and images/s.
"""

import contextlib
import fcntl
import glob
import json
import os
import platform
import shutil
import socket
import sys
import time

import tensorflow as tf

from tf_amended_darts import errors, io_utils

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"


class RunDirError(errors.InputError):
    """The output directory cannot be used for this run."""


def versions():
    import keras
    import numpy as np

    import tf_amended_darts

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_amended_darts": getattr(tf_amended_darts, "__version__", "unknown"),
    }


def read_metadata(directory):
    """The dict in `directory`/run.json, or None when there is no run.json."""
    path = os.path.join(directory, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RunDirError(
            f"{path} is unreadable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}): remove it or pass overwrite"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
        raise RunDirError(
            f"{path} is not a run description (a JSON object with kind and "
            f"config): remove it or pass overwrite"
        )
    return data


def holds_run(directory):
    """True when `directory` holds a run.json of this project (one naming its kind, or an
    unreadable one: on the safe side)."""
    try:
        meta = read_metadata(directory)
    except RunDirError:
        return True
    return meta is not None and "kind" in meta


def _check(directory, config, kind, resume, overwrite):
    """Reads only: RunDirError when `directory` cannot take this run; True when resuming."""
    if overwrite:
        return False
    previous = read_metadata(directory)
    if previous is None:
        if resume:
            raise RunDirError(
                f"resume: there is no run to continue in {directory} (no "
                f"{RUN_FILE}): check the path, or drop resume to start a run"
            )
        return False
    same = previous.get("kind") == kind and previous.get("config") == config
    if not same:
        changed = sorted(
            k
            for k in set(config) | set(previous.get("config", {}))
            if config.get(k) != previous.get("config", {}).get(k)
        )
        raise RunDirError(
            f"{directory} holds a different {previous.get('kind', 'run')} "
            f"(differs in: {', '.join(changed) or 'kind'}): choose another directory or "
            f"pass overwrite to replace it"
        )
    if not resume:
        raise RunDirError(
            f"{directory} already holds this run: pass resume to continue "
            f"it or overwrite to start over"
        )
    return True


def prepare(directory, config, kind, resume=False, overwrite=False, owned=()):
    """Makes `directory` ready and claims it for this process (release() when the run ends);
    returns True when it holds this run to resume from.

    `owned` names the files/folders (besides run.json, checkpoints/, tensorboard/) that such
    a run writes; --overwrite deletes exactly those, never anything else. A refusal changes
    nothing in `directory`.
    """
    _check(directory, config, kind, resume, overwrite)
    io_utils.make_directory(directory)
    claim(directory)
    try:  # again, now that no other process can write run.json
        resuming = _check(directory, config, kind, resume, overwrite)
    except RunDirError:
        release(directory)
        raise
    if overwrite:
        names = (RUN_FILE, CHECKPOINT_DIR, TENSORBOARD_DIR) + tuple(owned)
        for path in sorted({p for n in names for p in glob.glob(os.path.join(directory, n))}):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    return resuming


# -- ownership ---------------------------------------------------------------------------------
# run.lock names the owning process: {"pid", "host", "process_start", "since"}. It is read and
# written only under an fcntl lock held for those few instructions (the kernel drops it when a
# process dies, so it can never be left stale). A record whose process is gone on this host
# (no such pid, a zombie, or a pid reused by a later process) is stale and taken over, so a
# run killed with kill -9 never blocks its --resume. A record of another host is trusted.


def _process_start(pid):
    """(state letter, start time in clock ticks since boot) of `pid`, or None (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _this_process():
    start = _process_start(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": start[1] if start else None,
    }


def _is_this_process(owner):
    return {k: owner.get(k) for k in ("pid", "host", "process_start")} == _this_process()


def _owner_alive(owner):
    if owner.get("host") != socket.gethostname():
        return True  # cannot be checked from here
    pid = owner["pid"]
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    state = _process_start(pid)
    if state is None:
        return True
    recorded = owner.get("process_start")
    return state[0] != "Z" and (recorded is None or recorded == state[1])


@contextlib.contextmanager
def _locked_record(directory, create):
    """Yields (fd, owner dict or None) of `directory`/run.lock under an exclusive fcntl lock;
    yields (None, None) when there is no lock file and not `create`. An unreadable record, or
    one without pid and host, names no owner."""
    path = os.path.join(directory, LOCK_FILE)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            yield None, None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the file may have been removed by its releasing owner meanwhile: retry
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                continue
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            try:
                owner = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                owner = None
            valid = (
                isinstance(owner, dict)
                and isinstance(owner.get("pid"), int)
                and isinstance(owner.get("host"), str)
            )
            yield fd, owner if valid else None
            return
        finally:
            os.close(fd)


def claim(directory):
    """Records this process as the owner of `directory` (which must exist); RunDirError when
    a live process of this host, or any process of another host, owns it."""
    with _locked_record(directory, create=True) as (fd, owner):
        if owner and not _is_this_process(owner) and _owner_alive(owner):
            raise RunDirError(
                f"{directory} is in use by process {owner.get('pid')} on "
                f"{owner.get('host')} since {owner.get('since', '?')}: wait for it to end "
                f"(or, if that process is gone, delete {os.path.join(directory, LOCK_FILE)})"
            )
        record = dict(_this_process(), since=time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)


def release(directory):
    """Ends this process's ownership of `directory` (nothing when it does not own it)."""
    with _locked_record(directory, create=False) as (_, owner):
        if owner and _is_this_process(owner):
            os.remove(os.path.join(directory, LOCK_FILE))


def write_metadata(directory, config, kind, flags=None, extra=None):
    """run.json: what ran (kind, config with its seed), the flags given, the versions."""
    data = {
        "kind": kind,
        "config": config,
        "flags": flags or {},
        "versions": versions(),
        "command": " ".join(sys.argv),
        **(extra or {}),
    }
    io_utils.write_atomic(
        os.path.join(directory, RUN_FILE),
        json.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
    )


def summary_writer(directory, chief=True):
    if not chief:
        return tf.summary.create_noop_writer()
    return tf.summary.create_file_writer(os.path.join(directory, TENSORBOARD_DIR))


# TensorBoard summaries written with the core op tf.summary.write and the plugins' metadata, so
# that the `tensorboard` package (not a dependency) is needed only to view them.
def _metadata(plugin, content=b""):
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content)
    )


def write_scalar(name, value, step):
    tf.summary.write(name, tf.cast(value, tf.float32), step=step, metadata=_metadata("scalars"))


def write_text(name, text, step):
    tf.summary.write(name, tf.constant(str(text)), step=step, metadata=_metadata("text"))


def write_image(name, image, step):
    """`image`: uint8 [H, W, 3] (one image)."""
    image = tf.convert_to_tensor(image, tf.uint8)
    encoded = tf.stack(
        [
            tf.as_string(tf.shape(image)[1]),
            tf.as_string(tf.shape(image)[0]),
            tf.io.encode_png(image),
        ]
    )
    tf.summary.write(name, encoded, step=step, metadata=_metadata("images"))


def _duration(seconds):
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`[#####.....] 120/400 30% 12.3 img/s ETA 01:02 loss=...` on one console line.

    On a terminal the line is redrawn in place; otherwise a line is printed every
    `interval` seconds. The rate counts only steps run by this process (resumes included).
    """

    def __init__(
        self, total_steps, images_per_step, stream=None, interval=10.0, width=24, enabled=True
    ):
        self.total, self.images_per_step = total_steps, images_per_step
        self.stream = stream or sys.stderr
        self.interval, self.width, self.enabled = interval, width, enabled
        self._start = self._last_print = None
        self._first_step = None
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def images_per_second(self, step):
        if self._start is None or step <= self._first_step:
            return 0.0
        return (step - self._first_step) * self.images_per_step / (time.time() - self._start)

    def update(self, step, **metrics):
        now = time.time()
        if self._start is None:  # the first step includes tracing: measure from its end
            self._start, self._first_step, self._last_print = now, step, now
            return
        if not self.enabled or (
            not self._tty and now - self._last_print < self.interval and step < self.total
        ):
            return
        self._last_print = now
        rate = self.images_per_second(step)
        eta = (self.total - step) * self.images_per_step / rate if rate else 0
        done = int(self.width * step / max(self.total, 1))
        text = (
            f"[{'#' * done}{'.' * (self.width - done)}] {step}/{self.total} "
            f"{100 * step // max(self.total, 1)}% {rate:.1f} img/s ETA {_duration(eta)} "
            + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        )
        self.stream.write(("\r" + text + "\033[K") if self._tty else text + "\n")
        if self._tty and step >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def elapsed(self):
        return 0.0 if self._start is None else time.time() - self._start
