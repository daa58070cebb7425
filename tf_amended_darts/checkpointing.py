"""Training-state checkpoints: save every N steps / every epoch, resume, refuse corrupt files.

`Checkpointer(directory, strategy, **trackables)` saves `tf.train.Checkpoint(**trackables)`
(models, optimizers, counters as int64 tf.Variables) with a `tf.train.CheckpointManager`.
Safety of interrupted writes: the manager writes the new checkpoint's files first and then
replaces the small `checkpoint` state file atomically (write + rename), so a crash half-way
through a save leaves the state file pointing at the previous, complete checkpoint.

Multi-worker: every worker must take part in a save (variables may be read collectively);
only the chief writes into `directory`, the others into a private temporary folder that is
deleted again. Every worker restores from `directory` (a shared file system).
"""

import os
import shutil
import tempfile

import tensorflow as tf

from tf_amended_darts import distribute, errors


class CheckpointError(errors.InputError, OSError):
    """A checkpoint cannot be read or does not fit the objects to restore."""


class Checkpointer:

    def __init__(self, directory, strategy=None, max_to_keep=3, **trackables):
        self.directory = directory
        self._checkpoint = tf.train.Checkpoint(**trackables)
        chief = strategy is None or distribute.is_chief(strategy)
        self._scratch = None if chief else tempfile.mkdtemp(prefix="checkpoint-worker-")
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self._scratch or directory, max_to_keep=max_to_keep)

    @property
    def latest(self):
        """Path prefix of the newest complete checkpoint in `directory`, or None."""
        return tf.train.latest_checkpoint(self.directory) if os.path.isdir(self.directory) else None

    def save(self, number):
        """Writes checkpoint `number` (e.g. the global step); returns its path prefix."""
        path = self._manager.save(checkpoint_number=int(number))
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            os.makedirs(self._scratch, exist_ok=True)
        return path

    def restore(self, path=None):
        """Restores `path` (default: the latest); returns the path, or None if there is none.

        Raises CheckpointError when the files are unreadable (truncated, corrupt) or hold
        different variables (another model, search space or optimizer).
        """
        path = path or self.latest
        if path is None:
            return None
        try:
            status = self._checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            first = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"checkpoint {path} cannot be restored ({first[:300]}); it is corrupt or "
                f"belongs to a different configuration: delete it (older ones: "
                f"{', '.join(self.all_checkpoints()[:-1]) or 'none'}) or start over with "
                f"--overwrite") from None
        return path

    def all_checkpoints(self):
        if not os.path.isdir(self.directory):
            return []
        state = tf.train.get_checkpoint_state(self.directory)
        return list(state.all_model_checkpoint_paths) if state else []

    def close(self):
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
