"""DARTS architecture search with the amended (or another) architecture gradient.

  python -m tf_amended_darts.bin.search --flagfile=flags/quickstart_search.cfg --output_dir=runs/q
  python -m tf_amended_darts.bin.search --flagfile=flags/cifar10_search.cfg \
      --data_dir=/data/cifar10 --output_dir=runs/c10 [--resume]

Try MirroredStrategy on a CPU-only machine with --logical_cpus=2 (--strategy=auto then mirrors).
Several machines: set TF_CONFIG on each and pass --strategy=multi_worker.
"""

from absl import flags

from tf_amended_darts import options
from tf_amended_darts.bin import cli

# Every flag is a declared option (tf_amended_darts/options.py, search.SearchConfig).
_RUN = cli.define_flags(
    options.RunOptions, names=[n for n in options.declared(options.RunOptions) if n != "export_dir"]
)
_MEASURES = cli.define_flags(options.SearchMeasures)


def _search_flags():
    from tf_amended_darts import search  # pylint: disable=g-import-not-at-top

    return cli.define_flags(search.SearchConfig)


_SEARCH = _search_flags()
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top

    run = cli.option_values(_RUN)
    distribute.configure_logical_cpus(run["logical_cpus"])  # before any TF op
    from tf_amended_darts import diagnostics, search  # pylint: disable=g-import-not-at-top

    config = search.SearchConfig(**cli.option_values(_SEARCH))
    config.space()  # bad operations / sizes: fail before anything else
    strategy = cli.make_strategy(run["strategy"], run["deterministic"])
    measures = cli.option_values(_MEASURES)
    callbacks = []
    if measures["hessian_eigenvalue_iterations"]:
        callbacks.append(
            diagnostics.hessian_eigenvalue_callback(
                config,
                measures["hessian_eigenvalue_iterations"],
                measures["hessian_eigenvalue_examples"],
            )
        )
    if measures["cosines_every"]:
        coefficient = config.amending_coefficient
        callbacks.append(
            diagnostics.cosines_callback(
                measures["cosines_every"],
                amending_coefficient=coefficient if isinstance(coefficient, float) else 0.1,
                implicit_iterations=config.implicit_iterations,
                cosines_damping=measures["cosines_damping"],
                batch_size=config.batch_size,
            )
        )

    def callback(epoch, run, line):
        return {k: v for c in callbacks for k, v in c(epoch=epoch, run=run, line=line).items()}

    search.search(
        config,
        run["output_dir"],
        strategy,
        **cli.run_control(run),
        render=measures["render"],
        flags=cli.flag_values({**_RUN, **_MEASURES, **_SEARCH}),
        epoch_callback=callback if callbacks else None,
    )


if __name__ == "__main__":
    cli.run(main)
