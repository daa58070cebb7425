"""Evaluates a training checkpoint or a SavedModel: top-1, top-5, loss, examples/s,
parameters and mult-adds.

  python -m tf_amended_darts.bin.evaluate --run_dir=runs/quickstart_train
  python -m tf_amended_darts.bin.evaluate --saved_model=runs/quickstart_model --dataset=digits \
      --format=json
"""

from absl import flags

from tf_amended_darts.bin import cli

_RUN_DIR = flags.DEFINE_string("run_dir", None, "The --output_dir of a train run.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint path prefix (default: the run's latest)."
)
_GENOTYPE = flags.DEFINE_string("genotype", None, "Refuse unless the run used this genotype.")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "A SavedModel written by export.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default: the run's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory of the dataset.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "tensorflow-datasets: build it if missing.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
cli.validate_flags(globals().values())


def main(argv):
    del argv
    from tf_amended_darts import evaluate  # pylint: disable=g-import-not-at-top

    result = evaluate.evaluate(
        run_dir=_RUN_DIR.value,
        saved_model=_SAVED_MODEL.value,
        checkpoint=_CHECKPOINT.value,
        genotype=_GENOTYPE.value,
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        split=_SPLIT.value,
        batch_size=_BATCH_SIZE.value,
        download=_DOWNLOAD.value,
    )
    print(evaluate.format_json(result) if _FORMAT.value == "json" else evaluate.format_text(result))


if __name__ == "__main__":
    cli.run(main)
