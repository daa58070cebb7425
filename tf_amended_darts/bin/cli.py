"""What every binary shares: bad input (errors.InputError) is one line and exit status 2; a
run stopped by SIGINT/SIGTERM (errors.Interrupted) is one line saying how to continue and exit
status 128 + the signal; any other exception is a bug and shows its traceback (absl re-raises
it: exit status 1)."""

import importlib
import logging as python_logging
import math
import os
import sys

from absl import app, flags, logging

from tf_amended_darts import errors


# Checks of a flag on its own, by flag name (a name means the same in every binary); absl runs
# them while parsing, before main, and reports `flag --name=value: message` (exit status 1).
# Checks that need several flags raise errors.InputError in the library instead.
def _integer_at_least(low, high=None):
    if high is None:
        return (lambda v: v >= low), f"must be an integer >= {low}"
    return (lambda v: low <= v <= high), f"must be an integer in [{low}, {high}]"


def _number_in(low, high=math.inf, low_open=False, high_open=False):
    def check(v):
        return (
            math.isfinite(v)
            and (v > low if low_open else v >= low)
            and (v < high if high_open else v <= high)
        )

    if high == math.inf:
        return check, f"must be a finite number {'>' if low_open else '>='} {low}"
    return check, (f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def _amending_coefficient(estimators):
    def check(v):
        try:
            estimators.amending_coefficient(v)
        except errors.InputError:
            return False
        return True

    return check, "must be auto or a finite number >= 0"


def _not_empty():
    return (lambda v: bool(str(v).strip())), "must not be empty"


def _one_of(choices):
    return (lambda v: v in choices), f"must be one of {', '.join(choices)}"


def _flag_rules():
    # Imported here: the registries live in modules that import TensorFlow.
    from tf_amended_darts import distribute, estimators, search_space

    rules = {
        # Seeds reach numpy's global seed (keras.utils.set_random_seed): 0 .. 2**32 - 1.
        "seed": _integer_at_least(0, 2**32 - 1),
        "tuner_seed": _integer_at_least(0, 2**32 - 1),
        "arch_beta_1": _number_in(0, 1, high_open=True),
        "arch_beta_2": _number_in(0, 1, high_open=True),
        "drop_path": _number_in(0, 1, high_open=True),
        "label_smoothing": _number_in(0, 1, high_open=True),
        "validation_split": _number_in(0, 1, high_open=True),
        "eval_validation_split": _number_in(0, 1, high_open=True),
        "train_portion": _number_in(0, 1, low_open=True, high_open=True),
        "fd_radius": _number_in(0, low_open=True),
        "amending_coefficient": _amending_coefficient(estimators),
        "strategy": _one_of(distribute.STRATEGIES),
        "arch_gradient": _one_of(tuple(estimators.ESTIMATORS)),
        "products": _one_of(estimators.PRODUCTS),
        "search_space": _one_of(tuple(sorted(search_space.PRESETS))),
    }
    for names, rule in (
        (
            (
                "checkpoint_every",
                "warmup_epochs",
                "warmup_steps",
                "cutout",
                "hessian_eigenvalue_iterations",
            ),
            _integer_at_least(0),
        ),
        (
            (
                "stop_after_steps",
                "metrics_every",
                "logical_cpus",
                "image_size",
                "nodes",
                "channels",
                "implicit_iterations",
                "sub_batches",
                "epochs",
                "steps_per_epoch",
                "batch_size",
                "num_classes",
                "input_size",
                "input_channels",
                "cg_iterations",
                "repeats",
                "max_trials",
                "initial_points",
                "eval_channels",
                "eval_epochs",
                "eval_steps_per_epoch",
                "eval_validation_steps",
                "eval_batch_size",
                "hessian_eigenvalue_examples",
            ),
            _integer_at_least(1),
        ),
        (("cells", "eval_cells"), _integer_at_least(3)),  # two are reductions
        (
            (
                "learning_rate",
                "learning_rate_min",
                "momentum",
                "weight_decay",
                "grad_clip",
                "arch_learning_rate",
                "arch_weight_decay",
                "auxiliary_weight",
                "lr_decay",
                "eta",
                "damping",
                "eval_learning_rate",
                "eval_momentum",
                "eval_weight_decay",
            ),
            _number_in(0),
        ),
        (
            (
                "dataset",
                "data_dir",
                "output_dir",
                "export_dir",
                "run_dir",
                "checkpoint",
                "saved_model",
                "search_dir",
                "directory",
                "project_name",
                "alphas_history",
                "genotype",
            ),
            _not_empty(),
        ),
    ):
        rules.update(dict.fromkeys(names, rule))
    return rules


def validate_flags(holders):
    """Registers the checks above for a binary's FlagHolders (`globals().values()`; other
    values are skipped); an unset flag (None) passes."""
    rules = _flag_rules()
    for holder in holders:
        if isinstance(holder, flags.FlagHolder) and holder.name in rules:
            check, message = rules[holder.name]
            flags.register_validator(holder, lambda v, check=check: v is None or check(v), message)


def flag_values(namespace):
    """{name: value} of the FlagHolders defined in a binary's module (`globals()`), for
    recording next to a result; absl's own flags are left out."""
    return {h.name: h.value for h in namespace.values() if isinstance(h, flags.FlagHolder)}


MIXED_PRECISION = ("off", "auto", "float16", "bfloat16")  # --mixed_precision's values


def mixed_precision(value):
    """--mixed_precision as the configs take it: None (off), "float16" or "bfloat16"; auto is
    float16 when TensorFlow sees a GPU (its tensor cores; the step scales its losses), else
    bfloat16 (float32's range, no scaling; CPUs have no fast float16)."""
    if value == "off":
        return None
    if value == "auto":
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        return "float16" if tf.config.list_physical_devices("GPU") else "bfloat16"
    return value


def make_strategy(name, deterministic=False):
    """The tf.distribute strategy `name` (distribute.make_strategy), after enabling op
    determinism when `deterministic`; call it after distribute.configure_logical_cpus."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return distribute.make_strategy(name)


def run(main):
    """`app.run(main)`, with bad input (errors.InputError) printed as one line (exit status 2)."""

    def guarded(argv):
        if len(argv) > 1:  # absl's UsageError would print the whole flag help before it
            _exit_with_error(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
        if not flags.FLAGS["verbosity"].present:
            # TF logs routine INFO lines (checkpoint sharding...) through absl; -v=0 shows them.
            logging.set_verbosity(logging.WARNING)
            python_logging.getLogger("tensorflow").setLevel(python_logging.WARNING)
        try:
            return main(argv)
        except errors.InputError as e:
            _exit_with_error(e)
        except errors.Interrupted as e:
            resume = " with --resume" if "resume" in flags.FLAGS else ""
            print(
                f"{_name()}: {e}: run the same command again{resume} to continue", file=sys.stderr
            )
            sys.exit(128 + e.signum)

    app.run(guarded)


def _name():
    return os.path.basename(sys.argv[0]).removesuffix(".py")


def _exit_with_error(message):
    print(f"{_name()}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _console_script(binary):
    """The function a console script calls (pyproject.toml [project.scripts]): `run` of
    bin/<binary>.py's main, as `python -m tf_amended_darts.bin.<binary>` does."""

    def console_main():
        run(importlib.import_module(f"tf_amended_darts.bin.{binary}").main)

    console_main.__name__ = binary
    return console_main


describe = _console_script("describe")
diagnose = _console_script("diagnose")
evaluate = _console_script("evaluate")
export = _console_script("export")
search = _console_script("search")
study = _console_script("study")
train = _console_script("train")
tune = _console_script("tune")
visualize = _console_script("visualize")
