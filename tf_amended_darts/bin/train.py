"""Re-trains a genotype from scratch (DARTS evaluation protocol) and optionally exports it.

  python -m tf_amended_darts.bin.train --flagfile=flags/quickstart_train.cfg \
      --genotype=runs/quickstart/genotype.json --output_dir=runs/quickstart_train \
      --export_dir=runs/quickstart_model
  python -m tf_amended_darts.bin.train --flagfile=flags/cifar10_train.cfg --genotype=DARTS_V2 \
      --data_dir=DIR_WITH_cifar-10-batches-bin --output_dir=runs/c10_train [--resume]

--genotype: a published name (DARTS_V1, DARTS_V2), a genotype.json written by the search, or
the DARTS string form. Strategies, checkpoints/--resume, TensorBoard logs and the progress
line work as in the search binary.
"""

from absl import flags

from tf_amended_darts.bin import cli

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory of the run's outputs.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Write a SavedModel here at the end.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --output_dir.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the run in --output_dir (and --export_dir)."
)
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0, "Also checkpoint every N steps (0: epoch ends only)."
)
_STOP_AFTER_STEPS = flags.DEFINE_integer(
    "stop_after_steps", None, "Stop (with a checkpoint) at this global step."
)
_METRICS_EVERY = flags.DEFINE_integer(
    "metrics_every",
    1,
    "Read the step metrics (progress, summaries, divergence check) every N steps.",
)
_STRATEGY = flags.DEFINE_string("strategy", "auto", "auto|one_device|mirrored|multi_worker.")
_LOGICAL_CPUS = flags.DEFINE_integer("logical_cpus", 1, "Split the CPU into N logical devices.")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "tf.config.experimental.enable_op_determinism()."
)

_GENOTYPE = flags.DEFINE_string("genotype", None, "Published name, JSON file or DARTS string.")
_NETWORK = flags.DEFINE_enum("network", "cifar", ["cifar", "imagenet"], "Network layout.")
_DATASET = flags.DEFINE_string(
    "dataset",
    "digits",
    "digits, cifar10_binary, cifar100_binary, image_folder or a tensorflow-datasets name.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory of the dataset.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "tensorflow-datasets: build it if missing.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Resize images (tfds, image_folder).")
_CELLS = flags.DEFINE_integer("cells", 20, "Number of cells.")
_CHANNELS = flags.DEFINE_integer("channels", 36, "Initial channels C.")
_AUXILIARY = flags.DEFINE_bool("auxiliary", True, "Auxiliary head at 2/3 depth.")
_AUXILIARY_WEIGHT = flags.DEFINE_float("auxiliary_weight", 0.4, "Weight of its loss.")
_DROP_PATH = flags.DEFINE_float("drop_path", 0.2, "Final drop-path probability (linear ramp).")
_CUTOUT = flags.DEFINE_integer("cutout", 16, "Cutout square side (0: none).")
_EPOCHS = flags.DEFINE_integer("epochs", 600, "Epochs.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 96, "Global batch size.")
_LR = flags.DEFINE_float("learning_rate", 0.025, "Initial learning rate.")
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule",
    "cosine",
    ["cosine", "exponential"],
    "Per-epoch schedule: cosine to --learning_rate_min, or "
    "exponential decay by --lr_decay per epoch.",
)
_LR_MIN = flags.DEFINE_float("learning_rate_min", 0.0, "Final rate of the cosine schedule.")
_LR_DECAY = flags.DEFINE_float("lr_decay", 0.97, "Per-epoch factor of the exponential one.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 3e-4, "L2 weight decay.")
_GRAD_CLIP = flags.DEFINE_float("grad_clip", 5.0, "Gradient norm clip (0: none).")
_LABEL_SMOOTHING = flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "off",
    cli.MIXED_PRECISION,
    "Compute in float16 (with dynamic loss scaling) or bfloat16 (Keras mixed_<dtype>; "
    "variables, logits and losses stay float32); auto: float16 on a GPU, else bfloat16. "
    "The exported SavedModel computes as trained.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order, drop-path.")
_VALIDATE = flags.DEFINE_bool("validate", True, "Evaluate every epoch.")
_VALIDATION_SPLIT = flags.DEFINE_float(
    "validation_split",
    0.0,
    "Fraction of the training split held out to validate on (0: the test split).",
)

flags.mark_flag_as_required("output_dir")
flags.mark_flag_as_required("genotype")
cli.validate_flags(globals().values())


def main(argv):
    del argv
    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top

    distribute.configure_logical_cpus(_LOGICAL_CPUS.value)  # before any TF op
    from tf_amended_darts import train  # pylint: disable=g-import-not-at-top

    config = train.TrainConfig(
        genotype=_GENOTYPE.value,
        network=_NETWORK.value,
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        image_size=_IMAGE_SIZE.value,
        channels=_CHANNELS.value,
        cells=_CELLS.value,
        auxiliary=_AUXILIARY.value,
        auxiliary_weight=_AUXILIARY_WEIGHT.value,
        drop_path=_DROP_PATH.value,
        cutout=_CUTOUT.value,
        epochs=_EPOCHS.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LR.value,
        lr_schedule=_LR_SCHEDULE.value,
        learning_rate_min=_LR_MIN.value,
        lr_decay=_LR_DECAY.value,
        momentum=_MOMENTUM.value,
        weight_decay=_WEIGHT_DECAY.value,
        grad_clip=_GRAD_CLIP.value,
        label_smoothing=_LABEL_SMOOTHING.value,
        seed=_SEED.value,
        validate=_VALIDATE.value,
        validation_split=_VALIDATION_SPLIT.value,
        mixed_precision=cli.mixed_precision(_MIXED_PRECISION.value),
    )
    strategy = cli.make_strategy(_STRATEGY.value, _DETERMINISTIC.value)
    train.train(
        config,
        _OUTPUT_DIR.value,
        strategy,
        resume=_RESUME.value,
        overwrite=_OVERWRITE.value,
        checkpoint_every=_CHECKPOINT_EVERY.value,
        stop_after_steps=_STOP_AFTER_STEPS.value,
        metrics_every=_METRICS_EVERY.value,
        download=_DOWNLOAD.value,
        export_dir=_EXPORT_DIR.value,
        flags=cli.flag_values(globals()),
    )


if __name__ == "__main__":
    cli.run(main)
