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

from tf_amended_darts import errors, io_utils
from tf_amended_darts.bin import cli

_MODE = flags.DEFINE_enum(
    "mode",
    "architectures",
    ["architectures", "search_options"],
    "What the trials vary: architectures (DartsOracle) or the search's "
    "hyperparameters (SearchTuner).",
)
_DIRECTORY = flags.DEFINE_string("directory", None, "keras-tuner's directory.")
_PROJECT = flags.DEFINE_string("project_name", "tune", "keras-tuner's project name.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start the project over (else resume it).")
_MAX_TRIALS = flags.DEFINE_integer("max_trials", 5, "Trials in all (resumed ones included).")
_SEARCH_DIR = flags.DEFINE_string(
    "search_dir", None, "architectures: the search's output directory (run there unless finished)."
)
_ORACLE = flags.DEFINE_enum(
    "oracle", "random", ["random", "bayesian"], "search_options: keras-tuner's oracle."
)
_TUNE = flags.DEFINE_list(
    "tune",
    "arch_learning_rate,amending_coefficient,arch_gradient,warmup_epochs",
    "search_options: the search options to tune.",
)
_ARCH_GRADIENTS = flags.DEFINE_list(
    "arch_gradients",
    "first_order,second_order,amended",
    "search_options: estimators to choose from.",
)
_INITIAL_POINTS = flags.DEFINE_integer(
    "initial_points",
    None,
    "search_options, bayesian: random trials before the Gaussian "
    "process proposes (default keras-tuner's: 3 per tuned option).",
)
_TUNER_SEED = flags.DEFINE_integer("tuner_seed", 1, "Seed of the oracle.")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir",
    None,
    "architectures: export the best trial's trained network there as a SavedModel.",
)
_OVERWRITE_EXPORT = flags.DEFINE_bool(
    "overwrite_export", False, "Replace an existing --export_dir."
)
# How each trial trains its network (the train binary's options of the same names, on the
# search's dataset and seed; cosine schedule).
_EVAL_CHANNELS = flags.DEFINE_integer("eval_channels", 16, "Trained networks: channels C.")
_EVAL_CELLS = flags.DEFINE_integer("eval_cells", 8, "Trained networks: cells.")
_EVAL_EPOCHS = flags.DEFINE_integer("eval_epochs", 2, "Trained networks: epochs.")
_EVAL_STEPS = flags.DEFINE_integer("eval_steps_per_epoch", None, "Cap on steps per epoch.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 64, "Trained networks: batch size.")
_EVAL_LR = flags.DEFINE_float("eval_learning_rate", 0.025, "Trained networks: SGD rate.")
_EVAL_MOMENTUM = flags.DEFINE_float("eval_momentum", 0.9, "Trained networks: momentum.")
_EVAL_WD = flags.DEFINE_float(
    "eval_weight_decay", 3e-4, "Trained networks: coupled L2 weight decay."
)
_EVAL_GRAD_CLIP = flags.DEFINE_float(
    "eval_grad_clip", 5.0, "Trained networks: gradient norm clip (0: none)."
)
_EVAL_AUXILIARY = flags.DEFINE_bool(
    "eval_auxiliary", True, "Trained networks: auxiliary head (loss weight 0.4)."
)
_EVAL_DROP_PATH = flags.DEFINE_float(
    "eval_drop_path", 0.2, "Trained networks: final drop-path probability."
)
_EVAL_VALIDATION_SPLIT = flags.DEFINE_float(
    "eval_validation_split",
    0.5,
    "Trained networks: fraction of the training split held out to score them on (never the "
    "test split: trials choose an architecture).",
)
_EVAL_CUTOUT = flags.DEFINE_integer(
    "eval_cutout", 0, "Trained networks: cutout size (the CIFAR protocol: 16; 0: none)."
)

# The search's options, named as in the search binary (so its flagfiles work here); unset
# flags keep SearchConfig's defaults.
_SEARCH_FLAGS = {
    name: define(name, None, f"Search option {name} (default: the search binary's).")
    for define, names in (
        (
            flags.DEFINE_string,
            (
                "dataset",
                "data_dir",
                "search_space",
                "arch_gradient",
                "amending_coefficient",  # a number or auto
                "products",
            ),
        ),
        (
            flags.DEFINE_integer,
            (
                "image_size",
                "nodes",
                "cells",
                "channels",
                "implicit_iterations",
                "epochs",
                "steps_per_epoch",
                "batch_size",
                "sub_batches",
                "warmup_epochs",
                "seed",
            ),
        ),
        (
            flags.DEFINE_float,
            (
                "train_portion",
                "learning_rate",
                "learning_rate_min",
                "momentum",
                "weight_decay",
                "grad_clip",
                "arch_learning_rate",
                "arch_beta_1",
                "arch_beta_2",
                "arch_weight_decay",
            ),
        ),
        (flags.DEFINE_list, ("operations",)),
        (flags.DEFINE_bool, ("validate",)),
        (
            lambda name, default, help: flags.DEFINE_enum(name, default, cli.MIXED_PRECISION, help),
            ("mixed_precision",),
        ),
    )
    for name in names
}

flags.mark_flag_as_required("directory")
cli.validate_flags(globals().values())
cli.validate_flags(_SEARCH_FLAGS.values())


def _search_config():
    from tf_amended_darts import search  # pylint: disable=g-import-not-at-top

    options = {k: h.value for k, h in _SEARCH_FLAGS.items() if h.value is not None}
    if "mixed_precision" in options:
        options["mixed_precision"] = cli.mixed_precision(options["mixed_precision"])
    config = search.SearchConfig(**options)
    config.space()  # bad operations / sizes: fail before anything else
    config.estimator()
    return config


def _is_worker():
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in tuner_id


def main(argv):
    del argv
    if _EXPORT_DIR.value:
        if _MODE.value != "architectures":
            raise errors.InputError(
                "--export_dir needs --mode=architectures (search_options trials "
                "train no network to export)"
            )
        from tf_amended_darts import export  # pylint: disable=g-import-not-at-top

        export.check_export_dir(_EXPORT_DIR.value, _OVERWRITE_EXPORT.value, "--overwrite_export")
    config = _search_config()
    import keras_tuner as kt  # pylint: disable=g-import-not-at-top

    from tf_amended_darts import tuner  # pylint: disable=g-import-not-at-top

    common = dict(
        directory=_DIRECTORY.value, project_name=_PROJECT.value, overwrite=_OVERWRITE.value
    )
    train_options = tuner.check_train_options(
        dict(
            dataset=config.dataset,
            data_dir=config.data_dir,
            image_size=config.image_size,
            seed=config.seed,
            channels=_EVAL_CHANNELS.value,
            cells=_EVAL_CELLS.value,
            epochs=_EVAL_EPOCHS.value,
            steps_per_epoch=_EVAL_STEPS.value,
            batch_size=_EVAL_BATCH.value,
            learning_rate=_EVAL_LR.value,
            momentum=_EVAL_MOMENTUM.value,
            weight_decay=_EVAL_WD.value,
            grad_clip=_EVAL_GRAD_CLIP.value,
            auxiliary=_EVAL_AUXILIARY.value,
            drop_path=_EVAL_DROP_PATH.value,
            cutout=_EVAL_CUTOUT.value,
            validation_split=_EVAL_VALIDATION_SPLIT.value,
            mixed_precision=config.mixed_precision,  # trials train as the search ran
        )
    )
    if _MODE.value == "architectures":
        if not _SEARCH_DIR.value:
            raise errors.InputError("--mode=architectures needs --search_dir")
        if _is_worker() and tuner.load_search_result(_SEARCH_DIR.value, config) is None:
            raise errors.InputError(
                f"{_SEARCH_DIR.value} holds no finished search with these "
                "options: run the search before the workers"
            )
        oracle = tuner.DartsOracle(
            search_config=config,
            search_dir=_SEARCH_DIR.value,
            search_kwargs={"render": False},
            max_trials=_MAX_TRIALS.value,
            seed=_TUNER_SEED.value,
        )
        keras_tuner = tuner.ArchitectureTuner(oracle, train_options, **common)
        keras_tuner.search(verbose=0 if _is_worker() else 1)
    else:
        options = dict(
            objective=kt.Objective(tuner.OBJECTIVE, "max"),
            max_trials=_MAX_TRIALS.value,
            seed=_TUNER_SEED.value,
        )
        if _ORACLE.value == "random":
            oracle = kt.oracles.RandomSearchOracle(**options)
        else:
            try:
                oracle = kt.oracles.BayesianOptimizationOracle(
                    num_initial_points=_INITIAL_POINTS.value, **options
                )
            except ImportError as e:  # keras-tuner's GP needs scikit-learn and scipy
                raise errors.InputError(f"--oracle=bayesian: {e}") from None
        keras_tuner = tuner.SearchTuner(
            oracle,
            config,
            train_options,
            tune=_TUNE.value,
            arch_gradients=_ARCH_GRADIENTS.value,
            **common,
        )
        keras_tuner.search(verbose=0 if _is_worker() else 1)
    if _is_worker():
        print("worker finished")
        return
    project = os.path.join(_DIRECTORY.value, _PROJECT.value)
    keras_tuner.results_summary(num_trials=3)
    if _MODE.value == "architectures":
        path = os.path.join(project, "best_genotype.json")
        trial, trained = tuner.write_best_genotype(keras_tuner, path)
        print(
            f"best trial {trial.trial_id}: {tuner.OBJECTIVE}={trial.score:.4f} "
            f"({trained.cells} cells, C={trained.channels}, {trained.epochs} epochs) "
            f"genotype={trained.genotype.to_string()}"
        )
        print(f"wrote {path}")
        if _EXPORT_DIR.value:
            _, description = tuner.export_best_trial(
                keras_tuner, _EXPORT_DIR.value, overwrite=_OVERWRITE_EXPORT.value
            )
            print(
                f"exported trial {trial.trial_id} ({description['trainable_params']:,} "
                f"parameters) to {_EXPORT_DIR.value}"
            )
    else:
        best = tuner.best_search_config(keras_tuner, config)
        path = os.path.join(project, "best_search_config.json")
        io_utils.write_atomic(path, json.dumps(best.to_dict(), indent=2, sort_keys=True))
        trial = keras_tuner.oracle.get_best_trials(1)[0]
        print(
            f"best trial {trial.trial_id}: {tuner.OBJECTIVE}={trial.score:.4f} "
            f"search options: "
            + " ".join(f"{k}={v}" for k, v in trial.hyperparameters.values.items())
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
