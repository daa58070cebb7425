"""SavedModel export of a trained network, for TensorFlow Serving and saved_model_cli.

`export_network(net, export_dir, config, dataset_info)` writes a SavedModel whose
`serving_default` signature takes uint8 images [batch, H, W, C] named `images` (normalised
inside the graph with data.normalize, the function training uses) and returns
  probabilities   float32 [batch, classes]   softmax of the logits
  top_class       int64 [batch]             the most probable class index
  top_class_name  string [batch]            its name
The network runs with training=False (no drop-path) and without the auxiliary head. The
genotype, class names and network description travel along: the `metadata` signature (no
inputs) returns them as string tensors (`genotype` JSON, `class_names`, `description` JSON), and
assets.extra/ holds genotype.json, class_names.txt and description.json.

The directory appears complete or not at all: everything is written into a temporary folder
beside it, which is then renamed.
"""

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from tf_amended_darts import checkpointing, data, errors, io_utils, profiling, run_dir

SIGNATURE = "serving_default"
METADATA = "metadata"
INPUT_NAME = "images"


class ExportError(errors.InputError):
    """The export cannot be written (target exists, ...)."""


def check_export_dir(export_dir, overwrite=False, overwrite_option="overwrite", runs=()):
    """ExportError unless `export_dir` can be written (`overwrite_option`: the option
    that allows replacing it, for the message). A directory that is, contains or lies inside a
    run directory (run.json of this project, or one of `runs`: runs about to start) is refused
    even with `overwrite`: replacing it would delete the run."""
    target = os.path.abspath(export_dir)
    starting = {os.path.abspath(r) for r in runs}
    folder = target
    while True:
        if folder in starting or run_dir.holds_run(folder):
            where = "is" if folder == target else "lies inside"
            raise ExportError(
                f"export_dir {export_dir} {where} the run directory {folder}: "
                f"choose a directory outside the run"
            )
        if os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    inside = sorted(
        [r for r in starting if r.startswith(target + os.sep)]
        + [root for root, _, _ in os.walk(target) if run_dir.holds_run(root)]
    )
    if inside:
        raise ExportError(
            f"export_dir {export_dir} contains the run directory {inside[0]}: "
            f"choose a directory that holds no run"
        )
    if os.path.exists(export_dir) and not overwrite:
        raise ExportError(
            f"{export_dir} already exists: choose another export_dir or pass "
            f"{overwrite_option} to replace it"
        )
    parent = os.path.dirname(target)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ExportError(f"cannot write {export_dir}: {parent} is not a directory")


def _without_auxiliary(net, config, dataset_info):
    """`net` itself, or a copy without the auxiliary head holding the same weights."""
    if not getattr(net, "auxiliary", False):
        return net
    copy = config.build_network(
        dataset_info["num_classes"], dataset_info["image_shape"], auxiliary=False
    )
    checkpointing.copy_weights(net, copy)
    return copy


def describe(net, config, dataset_info):
    """The network description stored with the SavedModel (and printed by evaluate)."""
    shape = tuple(dataset_info["image_shape"])
    return {
        "network": config.network,
        "cells": config.cells,
        "channels": config.channels,
        "dataset": dataset_info["name"],
        "image_shape": list(shape),
        "num_classes": dataset_info["num_classes"],
        "trainable_params": profiling.trainable_params(net, include_auxiliary=False),
        "mult_adds": profiling.mult_adds(net, shape),
    }


def export_network(net, export_dir, config, dataset_info, overwrite=False):
    """Writes the SavedModel of `net` (a model.py network built for dataset_info's images);
    `config`: its train.TrainConfig; returns the description dict."""
    check_export_dir(export_dir, overwrite)
    net = _without_auxiliary(net, config, dataset_info)
    class_names = [str(c) for c in dataset_info["class_names"]]
    description = describe(net, config, dataset_info)
    genotype_json = config.genotype.to_json()
    archive = _serving_archive(net, dataset_info, class_names)

    def metadata():
        return {
            "genotype": tf.constant(genotype_json),
            "class_names": tf.constant(class_names),
            "description": tf.constant(json.dumps(description)),
        }

    archive.add_endpoint(METADATA, metadata, input_signature=[])

    def write(folder):
        archive.write_out(folder, verbose=False)
        extra = os.path.join(folder, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        for name, text in (
            ("genotype.json", genotype_json + "\n"),
            ("class_names.txt", "".join(c + "\n" for c in class_names)),
            ("description.json", json.dumps(description, indent=1) + "\n"),
        ):
            with open(os.path.join(extra, name), "w") as f:
                f.write(text)

    _write_directory(export_dir, write)
    return description


def _serving_archive(net, dataset_info, class_names):
    """An ExportArchive of `net` with the serving_default endpoint (uint8 images in)."""
    mean, std = dataset_info["mean"], dataset_info["std"]

    def serve(images):
        logits = net(data.normalize(images, mean, std), training=False)
        probabilities = tf.nn.softmax(logits, axis=-1)
        top = tf.argmax(probabilities, axis=-1)
        return {
            "probabilities": probabilities,
            "top_class": top,
            "top_class_name": tf.gather(tf.constant(class_names), top),
        }

    archive = keras.export.ExportArchive()
    archive.track(net)
    shape = [None, *dataset_info["image_shape"]]
    archive.add_endpoint(
        SIGNATURE, serve, input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)]
    )
    return archive


def _write_directory(directory, write):
    """write(folder) into a temporary folder beside `directory`, then renamed to it (replacing
    what was there): the directory appears complete or not at all."""
    target = os.path.abspath(directory)
    parent = os.path.dirname(target)
    io_utils.make_directory(parent)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(target)}-")
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{os.path.basename(target)}-")
            os.rename(target, os.path.join(old, "previous"))
        os.rename(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_metadata(loaded):
    """(genotype JSON str, class names list, description dict) of a tf.saved_model.load result."""
    if not hasattr(loaded, METADATA):
        raise ExportError(
            "this SavedModel was not written by tf_amended_darts export (it has no "
            f"{METADATA!r} endpoint)"
        )
    values = getattr(loaded, METADATA)()
    try:
        return (
            values["genotype"].numpy().decode(),
            [c.decode() for c in values["class_names"].numpy()],
            json.loads(values["description"].numpy().decode()),
        )
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(
            f"this SavedModel's {METADATA!r} endpoint is not the one export "
            f"writes ({type(e).__name__}: {e})"
        ) from None
