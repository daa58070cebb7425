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
"""

import keras

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
