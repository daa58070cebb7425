"""Checkpoint-safe variable naming for Keras 3 models (shared by training, export, evaluation).

Keras 3 keeps sub-layers held in Python lists (`self.cells = [...]`, `self.node_ops`,
`self.stem_layers`) in its own TrackedList, which is NOT a TensorFlow trackable: a
`tf.train.Checkpoint(model=model)` silently omits every variable reachable only through such
a list. Trainable ones may still be saved through the optimizer's slot list, but BatchNorm
moving statistics and DropPath seed states of the cells are lost, and a restored model
predicts differently.

`named_variables(model)` walks the model by attribute names (lists and tuples by index) and
returns {"cells.3.node_ops.1.0.convs.2.gamma": variable, ...}: stable names that do not depend
on Keras' auto-numbered layer names and are the same in a network with or without its
auxiliary head. Pass the dict to tf.train.Checkpoint (checkpointing.Checkpointer(...,
network=named_variables(model))) so that every variable is saved, and use it to copy weights
between two instances (`copy_weights`).

`dataset_info_dict(info)` is the JSON form of a dataset's description that run.json records.
The loop that search and re-training share is loop.py.
"""

import os

import keras
import tensorflow as tf

from tf_amended_darts import checkpointing, run_dir

_SKIP = ("_layers", "_tracker", "_trainable_variables", "_non_trainable_variables",
         "_seed_generators", "_metrics", "_losses", "_loss_ids", "_tracked",
         "_inbound_nodes", "_outbound_nodes", "_parent")


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
            raise ValueError(f"{name}: shape {tuple(src[name].shape)} of the source does not "
                             f"fit {tuple(variable.shape)}")
        variable.assign(src[name])


def restore_checkpoint(directory, what, checkpoint=None, **trackables):
    """Restores `trackables` (named as the run saved them; the rest of the checkpoint is left
    alone) from `checkpoint` (a path prefix) or the latest checkpoint of the run in
    `directory`; returns the path. Raises checkpointing.CheckpointError, naming `what` the
    checkpoint should fit, when there is none or it is unreadable or does not fit."""
    folder = os.path.join(directory, run_dir.CHECKPOINT_DIR)
    try:
        path = checkpoint or (tf.train.latest_checkpoint(folder) if os.path.isdir(folder)
                              else None)
    except (tf.errors.OpError, ValueError) as e:  # an unparsable `checkpoint` state file
        raise checkpointing.CheckpointError(f"{folder}/checkpoint is unreadable: "
                                            f"{str(e).splitlines()[0][:300]}") from None
    if path is None:
        raise checkpointing.CheckpointError(f"{directory} holds no checkpoint yet")
    if not tf.io.gfile.exists(path + ".index"):
        raise checkpointing.CheckpointError(f"checkpoint {path} does not exist (no {path}.index)")
    try:
        status = tf.train.Checkpoint(**trackables).restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:  # IndexError:
        first = (str(getattr(e, "message", e)).strip().splitlines()  # a truncated data file
                 or [type(e).__name__])[0]
        raise checkpointing.CheckpointError(
            f"checkpoint {path} does not fit {what}: {first[:300]}") from None
    return path


def dataset_info_dict(info):
    """The JSON form of a data.DatasetInfo that run.json records (without the split sizes)."""
    return {"name": info.name, "image_shape": list(info.image_shape),
            "num_classes": info.num_classes, "class_names": list(info.class_names),
            "mean": list(info.mean), "std": list(info.std)}
