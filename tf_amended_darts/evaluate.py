"""Evaluation of a training checkpoint or an exported SavedModel on a dataset split.

Both go through the same function, uint8 images -> class probabilities (the checkpoint's
network is wrapped exactly as export.py serves it), so their figures are comparable:
top-1 and top-5 accuracy, mean cross-entropy loss, examples per second (after the first,
tracing, batch), trainable parameters and mult-adds of one image.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from tf_amended_darts import data, errors, export, train


def _counts(probabilities, labels, k):
    labels = tf.cast(labels, tf.int64)
    top = tf.math.top_k(probabilities, k=k).indices
    hit_k = tf.reduce_any(tf.equal(tf.cast(top, tf.int64), labels[:, None]), axis=-1)
    p_true = tf.gather(probabilities, labels, axis=1, batch_dims=1)
    return (
        tf.reduce_sum(tf.cast(tf.equal(top[:, 0], tf.cast(labels, top.dtype)), tf.float64)),
        tf.reduce_sum(tf.cast(hit_k, tf.float64)),
        -tf.reduce_sum(tf.math.log(tf.maximum(tf.cast(p_true, tf.float64), 1e-12))),
    )


def evaluate_probabilities(predict, examples, num_classes, batch_size=256):
    """`predict`: uint8 images [B, H, W, C] -> probabilities [B, classes]; `examples`: a
    tf.data.Dataset of (uint8 image, label). Returns the metrics dict."""
    k = min(5, num_classes)
    top1 = top5 = loss = 0.0
    count, start, timed = 0, None, 0
    for images, labels in examples.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        probabilities = predict(images)
        t1, t5, batch_loss = (float(v) for v in _counts(probabilities, labels, k))
        top1, top5, loss, n = top1 + t1, top5 + t5, loss + batch_loss, int(labels.shape[0])
        count += n
        if start is None:  # the first batch includes tracing
            start = time.perf_counter()
        else:
            timed += n
    if count == 0:
        raise errors.InputError("the split holds no examples")
    seconds = time.perf_counter() - start
    return {
        "examples": count,
        "top1": top1 / count,
        "top5": top5 / count,
        "top5_k": k,
        "loss": loss / count,
        "examples_per_second": timed / seconds if timed and seconds > 0 else float("nan"),
    }


def load_checkpoint(run_directory, checkpoint=None, genotype=None):
    """(predict, description, dataset_info) of a training run's checkpoint."""
    config, info, net, path = train.restore_network(run_directory, checkpoint, genotype)

    @tf.function(input_signature=[tf.TensorSpec([None, *info["image_shape"]], tf.uint8)])
    def predict(images):
        logits = net(data.normalize(images, info["mean"], info["std"]), training=False)
        return tf.nn.softmax(logits, axis=-1)

    description = {
        **export.describe(net, config, info),
        "source": path,
        "genotype": config.genotype.to_string(),
    }
    return predict, description, info


def load_saved_model(directory):
    """(predict, description, class names) of a SavedModel written by export.py; ExportError
    (one line) for a directory that holds none, or a truncated or corrupt one."""
    fingerprint = os.path.join(directory, "fingerprint.pb")
    try:
        if os.path.isfile(fingerprint):  # TF would log a traceback for it and load on
            tf.saved_model.experimental.read_fingerprint(directory)
        loaded = tf.saved_model.load(directory)
    # What TF raises for a damaged SavedModel depends on the damaged file: a truncated
    # variables file gives IndexError, an empty saved_model.pb ValueError, a bad
    # fingerprint.pb RuntimeError.
    except (OSError, tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
        first = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
        raise export.ExportError(
            f"cannot load a SavedModel from {directory}: {first[:300]}"
        ) from None
    genotype_json, class_names, description = export.read_metadata(loaded)
    serve = loaded.signatures[export.SIGNATURE]

    def predict(images):
        return serve(**{export.INPUT_NAME: images})["probabilities"]

    from tf_amended_darts import genotypes  # pylint: disable=g-import-not-at-top

    try:
        genotype = genotypes.Genotype.from_json(genotype_json)
    except genotypes.GenotypeError as e:
        raise genotypes.GenotypeError(f"the genotype of SavedModel {directory}: {e}") from None
    description = {**description, "source": directory, "genotype": genotype.to_string()}
    return predict, description, class_names


def evaluate(
    run_dir=None,
    saved_model=None,
    checkpoint=None,
    genotype=None,
    dataset=None,
    data_dir=None,
    split="test",
    batch_size=256,
    download=False,
):
    """Evaluates a run's checkpoint (`run_dir`) or a SavedModel; returns a result dict.

    The dataset defaults to the run's (checkpoint) or is required (SavedModel); its images
    must have the network's shape.
    """
    if (run_dir is None) == (saved_model is None):
        raise errors.InputError("give exactly one of run_dir and saved_model")
    if batch_size < 1:
        raise errors.InputError(f"batch_size must be at least 1, got {batch_size}")
    image_size, protocol = None, "cifar"
    if run_dir is not None:
        meta = train.run_dir.read_metadata(run_dir) or {}
        config = meta.get("config", {})
        # The ImageNet protocol evaluates on a 256/224 resize + centre crop, not a squash.
        protocol = config.get("network", "cifar") if split == "test" else "cifar"
        if dataset is None:
            dataset, data_dir = config.get("dataset"), data_dir or config.get("data_dir")
            image_size = config.get("image_size")
        predict, description, _ = load_checkpoint(run_dir, checkpoint, genotype)
    else:
        if checkpoint is not None or genotype is not None:
            raise errors.InputError("checkpoint and genotype go with run_dir, not saved_model")
        predict, description, _ = load_saved_model(saved_model)
        if dataset is None:
            raise errors.InputError("saved_model needs dataset (and data_dir if it needs one)")
    examples = _checked_examples(
        description, dataset, data_dir, download, image_size, protocol, split
    )
    metrics = evaluate_probabilities(predict, examples, description["num_classes"], batch_size)
    return {"dataset": dataset, "split": split, **metrics, **description}


def _checked_examples(description, dataset, data_dir, download, image_size, protocol, split):
    """The `split` of `dataset` as the network described takes it (its image shape, classes);
    `protocol`: imagenet resizes and centre-crops, cifar resizes to the network's size."""
    shape = tuple(description["image_shape"])
    size = image_size or (shape[0] if shape[0] == shape[1] else shape[:2])
    if protocol == "imagenet":
        loaded, _ = data.load_for_training("imagenet", dataset, data_dir, download, size)
    else:
        loaded = data.load_dataset(dataset, data_dir, download, image_size=size)
    if tuple(loaded.info.image_shape) != shape:
        raise errors.InputError(
            f"dataset {dataset} has images {loaded.info.image_shape}, the network takes {shape}"
        )
    if loaded.info.num_classes != description["num_classes"]:
        raise errors.InputError(
            f"dataset {dataset} has {loaded.info.num_classes} classes, the "
            f"network {description['num_classes']}"
        )
    if split not in ("train", "test"):
        raise errors.InputError(f"unknown split {split!r}; expected train or test")
    return loaded.train if split == "train" else loaded.test


def format_text(result):
    return (
        f"{result['source']}: {result['dataset']} {result['split']} "
        f"({result['examples']} examples): top-1 {100 * result['top1']:.2f}% "
        f"top-{result['top5_k']} {100 * result['top5']:.2f}% loss {result['loss']:.4f}, "
        f"{result['examples_per_second']:.1f} examples/s; "
        f"{result['trainable_params']:,} parameters, {result['mult_adds']:,} mult-adds"
    )


def format_json(result):
    return json.dumps(
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in result.items()},
        indent=1,
        sort_keys=True,
    )
