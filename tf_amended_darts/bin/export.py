"""Exports a training run's checkpoint as a SavedModel (TensorFlow Serving, saved_model_cli).

  python -m tf_amended_darts.bin.export --run_dir=runs/quickstart_train \
      --export_dir=runs/quickstart_model [--genotype=runs/quickstart/genotype.json]

Signature serving_default: uint8 `images` [batch, H, W, C] -> probabilities, top_class,
top_class_name; signature metadata: genotype, class_names, description. --genotype checks that
the run was trained with that genotype. On any error nothing is written.
"""

from absl import flags

from tf_amended_darts.bin import cli

_RUN_DIR = flags.DEFINE_string("run_dir", None, "The --output_dir of a train run.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint path prefix (default: the run's latest)."
)
_GENOTYPE = flags.DEFINE_string("genotype", None, "Refuse unless the run used this genotype.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel directory to write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")

flags.mark_flag_as_required("run_dir")
flags.mark_flag_as_required("export_dir")
cli.validate_flags(globals().values())


def main(argv):
    del argv
    from tf_amended_darts import export, train  # pylint: disable=g-import-not-at-top

    export.check_export_dir(_EXPORT_DIR.value, _OVERWRITE.value)
    config, info, net, path = train.restore_network(
        _RUN_DIR.value, _CHECKPOINT.value, _GENOTYPE.value
    )
    description = export.export_network(
        net, _EXPORT_DIR.value, config, info, overwrite=_OVERWRITE.value
    )
    print(
        f"exported {path} to {_EXPORT_DIR.value}: {description['network']} network, "
        f"{description['trainable_params']:,} parameters, {description['mult_adds']:,} "
        f"mult-adds, input uint8 {description['image_shape']}"
    )


if __name__ == "__main__":
    cli.run(main)
