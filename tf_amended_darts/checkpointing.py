"""Training-state checkpoints: save, resume from the newest one that restores, refuse the rest.

`Checkpointer(directory, strategy, records=None, **trackables)` saves
`tf.train.Checkpoint(**trackables)` (models, optimizers, counters as int64 tf.Variables) with a
`tf.train.CheckpointManager`. `records` ({name: str}, e.g. the genotype a network was built
from) are saved inside each checkpoint and compared whenever it is restored, so a checkpoint
of another wiring of the same variables is refused even when it was reached by fallback.

Safety of interrupted writes: the manager writes the new checkpoint's files first and then
replaces the small `checkpoint` state file atomically (write + rename), so a crash half-way
through a save leaves the previous checkpoints complete. A resume does not trust the state file
(it may be garbage or name a missing checkpoint): it tries the ckpt-N.index files, newest N
first, reports every one it had to skip, and refuses when checkpoints exist but none restores.

Keras 3 keeps sub-layers held in Python lists (`self.cells = [...]`, `self.node_ops`,
`self.stem_layers`) in its own TrackedList, which is NOT a TensorFlow trackable: a
`tf.train.Checkpoint(model=model)` silently omits every variable reachable only through such
a list (BatchNorm moving statistics, DropPath seed states...). `named_variables(model)` walks
the model by attribute names (lists and tuples by index) and returns
{"cells.3.node_ops.1.0.convs.2.gamma": variable, ...}: stable names that do not depend on
Keras' auto-numbered layer names and are the same in a network with or without its auxiliary
head. Pass the dict as a trackable (`Checkpointer(..., network=named_variables(model))`), use
it to copy weights between two instances (`copy_weights`) and to restore part of a run's
checkpoint (`restore_checkpoint`).

Multi-worker: every worker must take part in a save (variables may be read collectively);
only the chief writes into `directory`, the others into a private temporary folder that is
deleted again. Every worker restores from `directory` (a shared file system).
"""

import json
import logging
import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf

from tf_amended_darts import distribute, errors, run_dir

RECORDS = "records"  # the checkpoint child holding the records
_NUMBERED = re.compile(r"ckpt-(\d+)\.index$")
_TEMPORARY = re.compile(r"ckpt-\d+_temp$")  # what an interrupted sharded save leaves behind


class CheckpointError(errors.InputError, OSError):
    """A checkpoint cannot be read or does not fit the objects to restore."""


_THIS_RUN = "this run (the checkpoint is corrupt or of a different configuration)"


def _warn(message):
    logging.getLogger(__name__).warning("%s", message)


class Checkpointer:
    def __init__(self, directory, strategy=None, max_to_keep=3, records=None, **trackables):
        self.directory = directory
        self._chief = strategy is None or distribute.is_chief(strategy)
        self._records = dict(records or {})
        # Restoring uses a root without the records: a checkpoint written before records
        # existed still restores (the records are compared, not loaded).
        self._restorable = tf.train.Checkpoint(**trackables)
        stored = {
            name: tf.Variable(value, dtype=tf.string, trainable=False)
            for name, value in self._records.items()
        }
        self._checkpoint = tf.train.Checkpoint(
            **trackables, **({RECORDS: stored} if stored else {})
        )
        self._scratch = None if self._chief else tempfile.mkdtemp(prefix="checkpoint-worker-")
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self._scratch or directory, max_to_keep=max_to_keep
        )

    def save(self, number):
        """Writes checkpoint `number` (e.g. the global step); returns its path prefix."""
        path = self._manager.save(checkpoint_number=int(number))
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            os.makedirs(self._scratch, exist_ok=True)
        return path

    def restore(self, path=None, report=_warn):
        """Restores `path`, or else the newest checkpoint of `directory` that restores; returns
        the path restored, None when `directory` holds no checkpoint at all.

        Every newer checkpoint skipped (unreadable, truncated, of other variables or records)
        is reported as one line through `report`. Raises CheckpointError when `path` does not
        restore, or when checkpoints exist and none does (a resume never starts over).
        """
        if path is not None:
            return restore_path(self._restorable, path, _THIS_RUN, self._records, report)
        if self._chief:
            self._remove_temporaries()
        candidates = checkpoint_paths(self.directory)
        if not candidates:
            state = os.path.join(self.directory, "checkpoint")
            if os.path.exists(state):
                raise CheckpointError(
                    f"{state} exists but {self.directory} holds no "
                    f"checkpoint (no ckpt-N.index): start over with "
                    f"overwrite"
                )
            return None
        skipped = []
        for candidate in candidates:
            try:
                restore_path(self._restorable, candidate, _THIS_RUN, self._records, report)
            except CheckpointError as e:
                skipped.append(str(e))
                continue
            if skipped:
                report(
                    f"resuming from the older checkpoint {candidate}: {len(skipped)} newer "
                    f"one(s) cannot be restored ({skipped[0]})"
                )
            return candidate
        raise CheckpointError(
            f"none of the {len(candidates)} checkpoints in {self.directory} "
            f"can be restored ({skipped[0]}): start over with overwrite"
        )

    def _remove_temporaries(self):
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if _TEMPORARY.match(name):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def close(self):
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


def checkpoint_paths(directory):
    """Path prefixes of the checkpoints in `directory` (each with its ckpt-N.index), highest
    N first. The state file is not consulted: it may be garbage or name a missing one."""
    if not os.path.isdir(directory):
        return []
    numbered = [
        (int(m.group(1)), m.group(0)) for m in map(_NUMBERED.match, os.listdir(directory)) if m
    ]
    return [
        os.path.join(directory, name[: -len(".index")])
        for _, name in sorted(numbered, reverse=True)
    ]


def _first_line(error):
    text = str(getattr(error, "message", error)).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]


def _compare_records(path, expected, what, report):
    """CheckpointError when a record saved in checkpoint `path` differs from `expected`'s."""
    if not expected:
        return
    reader = tf.train.load_checkpoint(path)
    for name, value in expected.items():
        key = f"{RECORDS}/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if not reader.has_tensor(key):
            report(
                f"checkpoint {path} does not record its {name} (written by an older "
                f"version): trusting that it is the {name} of {what}"
            )
            continue
        stored = reader.get_tensor(key)
        stored = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else str(stored)
        if _normal(stored) != _normal(value):
            raise CheckpointError(
                f"checkpoint {path} does not fit {what}: it was written "
                f"with another {name}: {stored.replace(chr(10), ' ')[:300]}"
            )


def _normal(text):
    """A record as compared: parsed when it is JSON (formatting does not matter)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def restore_path(checkpoint, path, what, records=None, report=_warn):
    """Restores the tf.train.Checkpoint `checkpoint` from the checkpoint at path prefix `path`
    (values it does not hold are left alone); CheckpointError, naming `what` the checkpoint
    should fit, when it is missing, unreadable, of other variables or of other `records`."""
    if not tf.io.gfile.exists(path + ".index"):
        raise CheckpointError(f"checkpoint {path} does not exist (no {path}.index)")
    try:
        _compare_records(path, records, what, report)
        status = checkpoint.restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
        if isinstance(e, CheckpointError):
            raise
        # IndexError: what TensorFlow raises for a truncated data file.
        raise CheckpointError(f"checkpoint {path} does not fit {what}: {_first_line(e)}") from None
    return path


def restore_checkpoint(directory, what, checkpoint=None, records=None, report=_warn, **trackables):
    """Restores `trackables` (named as the run saved them; the rest of the checkpoint is left
    alone) from `checkpoint` (a path prefix) or the latest checkpoint of the run in
    `directory`; returns the path. Raises CheckpointError, naming `what` the checkpoint should
    fit, when there is none or it is unreadable or does not fit (`records` as Checkpointer's)."""
    if checkpoint is None:
        candidates = checkpoint_paths(os.path.join(directory, run_dir.CHECKPOINT_DIR))
        if not candidates:
            raise CheckpointError(f"{directory} holds no checkpoint yet")
        checkpoint = candidates[0]
    return restore_path(tf.train.Checkpoint(**trackables), checkpoint, what, records, report)


_SKIP = (
    "_layers",
    "_tracker",
    "_trainable_variables",
    "_non_trainable_variables",
    "_seed_generators",
    "_metrics",
    "_losses",
    "_loss_ids",
    "_tracked",
    "_inbound_nodes",
    "_outbound_nodes",
    "_parent",
)


def named_variables(model):
    """{attribute path: variable} of every variable of `model`, each once (first path wins)."""
    found, seen, visited = {}, set(), set()

    def visit(obj, path):
        if isinstance(obj, keras.Variable):
            if id(obj) not in seen:
                seen.add(id(obj))
                found[path] = obj
            return
        if isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, f"{path}.{i}" if path else str(i))
            return
        if not isinstance(obj, (keras.layers.Layer, keras.random.SeedGenerator)):
            return
        if id(obj) in visited:
            return
        visited.add(id(obj))
        for name, value in sorted(vars(obj).items()):
            if name in _SKIP or name.startswith("__"):
                continue
            visit(value, f"{path}.{name}" if path else name)

    visit(model, "")
    missing = [v.path for v in model.variables if id(v) not in seen]
    if missing:
        raise ValueError(f"variables not reachable by attribute: {', '.join(missing[:5])}")
    return found


def copy_weights(source, target):
    """Assigns every variable of `target` the value of the same-named one of `source`."""
    src, dst = named_variables(source), named_variables(target)
    absent = sorted(set(dst) - set(src))
    if absent:
        raise ValueError(f"the source network lacks {len(absent)} variables, e.g. {absent[0]}")
    for name, variable in dst.items():
        if tuple(variable.shape) != tuple(src[name].shape):
            raise ValueError(
                f"{name}: shape {tuple(src[name].shape)} of the source does not "
                f"fit {tuple(variable.shape)}"
            )
        variable.assign(src[name])
