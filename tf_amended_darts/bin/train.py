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

from tf_amended_darts import options
from tf_amended_darts.bin import cli

# Every flag is a declared option (tf_amended_darts/options.py, train.TrainConfig).
_RUN = cli.define_flags(options.RunOptions)


def _train_flags():
    from tf_amended_darts import train  # pylint: disable=g-import-not-at-top

    return cli.define_flags(train.TrainConfig)


_TRAIN = _train_flags()
flags.mark_flag_as_required("output_dir")
flags.mark_flag_as_required("genotype")


def main(argv):
    del argv
    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top

    run = cli.option_values(_RUN)
    distribute.configure_logical_cpus(run["logical_cpus"])  # before any TF op
    from tf_amended_darts import train  # pylint: disable=g-import-not-at-top

    config = train.TrainConfig(**cli.option_values(_TRAIN))
    strategy = cli.make_strategy(run["strategy"], run["deterministic"])
    train.train(
        config,
        run["output_dir"],
        strategy,
        **cli.run_control(run),
        export_dir=run["export_dir"],
        flags=cli.flag_values({**_RUN, **_TRAIN}),
    )


if __name__ == "__main__":
    cli.run(main)
