"""keras-tuner over DARTS: architectures from a search, or the search's own hyperparameters.

Architectures (DartsOracle + ArchitectureTuner): the search given by the search flags runs in
--search_dir unless it already finished there (same flagfile as the search binary), then each
trial trains one proposed architecture with the train binary's code (--eval_* options):

  python -m tf_amended_darts.bin.tune --flagfile=flags/quickstart_search.cfg \\
      --search_dir=runs/quickstart --directory=runs/tune --max_trials=4 \\
      --export_dir=runs/tune_model

--export_dir exports the best trial's trained network (the end of its training run) as a
SavedModel with the export code (serving_default on uint8 images).

The search's hyperparameters (SearchTuner with a stock oracle; each trial runs a search and
scores its genotype by the same short training):

  python -m tf_amended_darts.bin.tune --mode=search_options --oracle=bayesian --epochs=2 \\
      --directory=runs/tune_search --max_trials=4 --initial_points=2 \\
      --tune=arch_learning_rate,warmup_epochs

Distributed tuning is keras-tuner's: run the same command on every machine with
KERASTUNER_TUNER_ID (chief / tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT set; the chief serves the oracle, the workers run the trials. Run the
search first (the workers only read a finished --search_dir).
Outputs (chief, or the only process): best_genotype.json (and best_search_config.json) in
<directory>/<project_name>, keras-tuner's files, and a summary on stdout.
"""

import json
import os

from absl import flags

from tf_amended_darts import errors, io_utils, options
from tf_amended_darts.bin import cli

# Every flag is a declared option (tf_amended_darts/options.py): keras-tuner's side
# (options.TuneOptions), the search's options as in the search binary (so that its flagfiles
# work here) and the trials' training options as --eval_<TrainConfig field>.
_TUNE = cli.define_flags(options.TuneOptions)


def _library_flags():
    from tf_amended_darts import search, train  # pylint: disable=g-import-not-at-top

    return (
        cli.define_flags(search.SearchConfig),
        cli.define_flags(
            train.TrainConfig,
            names=options.TRIAL_DEFAULTS,
            prefix=options.TRIAL_PREFIX,
            defaults=options.TRIAL_DEFAULTS,
        ),
    )


_SEARCH_FLAGS, _TRIALS = _library_flags()
flags.mark_flag_as_required("directory")


def _search_config():
    from tf_amended_darts import search  # pylint: disable=g-import-not-at-top

    config = search.SearchConfig(**cli.option_values(_SEARCH_FLAGS))
    config.space()  # bad operations / sizes: fail before anything else
    return config


def _is_worker():
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in tuner_id


def _check_export(t):
    if t["mode"] != "architectures":
        raise errors.InputError(
            "--export_dir needs --mode=architectures (search_options trials "
            "train no network to export)"
        )
    from tf_amended_darts import export  # pylint: disable=g-import-not-at-top

    export.check_export_dir(t["export_dir"], t["overwrite_export"], "overwrite_export")


def _train_options(config):
    """The trials' training options: the --eval_* flags, on the search's dataset and seed
    (trials train as the search ran)."""
    from tf_amended_darts import tuner  # pylint: disable=g-import-not-at-top

    return tuner.check_train_options(
        dict(
            cli.option_values(_TRIALS),
            dataset=config.dataset,
            data_dir=config.data_dir,
            image_size=config.image_size,
            seed=config.seed,
            mixed_precision=config.mixed_precision,
        )
    )


def _architecture_tuner(t, config, train_options, common):
    from tf_amended_darts import tuner  # pylint: disable=g-import-not-at-top

    if not t["search_dir"]:
        raise errors.InputError("--mode=architectures needs --search_dir")
    if _is_worker() and tuner.load_search_result(t["search_dir"], config) is None:
        raise errors.InputError(
            f"{t['search_dir']} holds no finished search with these "
            "options: run the search before the workers"
        )
    oracle = tuner.DartsOracle(
        search_config=config,
        search_dir=t["search_dir"],
        search_kwargs={"render": False},
        max_trials=t["max_trials"],
        seed=t["tuner_seed"],
    )
    return tuner.ArchitectureTuner(oracle, train_options, **common)


def _search_options_tuner(t, config, train_options, common):
    import keras_tuner as kt  # pylint: disable=g-import-not-at-top

    from tf_amended_darts import tuner  # pylint: disable=g-import-not-at-top

    options = dict(
        objective=kt.Objective(tuner.OBJECTIVE, "max"),
        max_trials=t["max_trials"],
        seed=t["tuner_seed"],
    )
    if t["oracle"] == "random":
        oracle = kt.oracles.RandomSearchOracle(**options)
    else:
        try:
            oracle = kt.oracles.BayesianOptimizationOracle(
                num_initial_points=t["initial_points"], **options
            )
        except ImportError as e:  # keras-tuner's GP needs scikit-learn and scipy
            raise errors.InputError(f"--oracle=bayesian: {e}") from None
    return tuner.SearchTuner(
        oracle,
        config,
        train_options,
        tune=t["tune"],
        arch_gradients=t["arch_gradients"],
        **common,
    )


def _report_best_architecture(t, keras_tuner, project):
    from tf_amended_darts import tuner  # pylint: disable=g-import-not-at-top

    path = os.path.join(project, "best_genotype.json")
    trial, trained = tuner.write_best_genotype(keras_tuner, path)
    print(
        f"best trial {trial.trial_id}: {tuner.OBJECTIVE}={trial.score:.4f} "
        f"({trained.cells} cells, C={trained.channels}, {trained.epochs} epochs) "
        f"genotype={trained.genotype.to_string()}"
    )
    print(f"wrote {path}")
    if t["export_dir"]:
        _, description = tuner.export_best_trial(
            keras_tuner, t["export_dir"], overwrite=t["overwrite_export"]
        )
        print(
            f"exported trial {trial.trial_id} ({description['trainable_params']:,} "
            f"parameters) to {t['export_dir']}"
        )


def _report_best_search_options(keras_tuner, config, project):
    from tf_amended_darts import tuner  # pylint: disable=g-import-not-at-top

    best = tuner.best_search_config(keras_tuner, config)
    path = os.path.join(project, "best_search_config.json")
    io_utils.write_atomic(path, json.dumps(best.to_dict(), indent=2, sort_keys=True))
    trial = keras_tuner.oracle.get_best_trials(1)[0]
    print(
        f"best trial {trial.trial_id}: {tuner.OBJECTIVE}={trial.score:.4f} "
        f"search options: " + " ".join(f"{k}={v}" for k, v in trial.hyperparameters.values.items())
    )
    print(f"wrote {path}")


def main(argv):
    del argv
    t = cli.option_values(_TUNE)
    if t["export_dir"]:
        _check_export(t)
    config = _search_config()
    train_options = _train_options(config)
    common = dict(
        directory=t["directory"], project_name=t["project_name"], overwrite=t["overwrite"]
    )
    architectures = t["mode"] == "architectures"
    make_tuner = _architecture_tuner if architectures else _search_options_tuner
    keras_tuner = make_tuner(t, config, train_options, common)
    keras_tuner.search(verbose=0 if _is_worker() else 1)
    if _is_worker():
        print("worker finished")
        return
    project = os.path.join(t["directory"], t["project_name"])
    keras_tuner.results_summary(num_trials=3)
    if architectures:
        _report_best_architecture(t, keras_tuner, project)
    else:
        _report_best_search_options(keras_tuner, config, project)


if __name__ == "__main__":
    cli.run(main)
