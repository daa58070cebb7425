"""What every binary shares: bad input (errors.InputError) is one line and exit status 2; a
run stopped by SIGINT/SIGTERM (errors.Interrupted) is one line saying how to continue and exit
status 128 + the signal; any other exception is a bug and shows its traceback (absl re-raises
it: exit status 1)."""

import dataclasses
import importlib
import logging as python_logging
import os
import sys

from absl import app, flags, logging

from tf_amended_darts import errors


def _rules():
    # Imported here: the configs live in modules that import TensorFlow.
    from tf_amended_darts import (  # pylint: disable=g-import-not-at-top
        diagnostics,
        options,
        search,
        train,
    )

    return options.rules(
        options.RunOptions,
        options.SearchMeasures,
        options.TuneOptions,
        options.StudyOptions,
        options.OutputOptions,
        search.SearchConfig,
        train.TrainConfig,
        diagnostics.DiagnoseConfig,
    )


def validate_flags(holders):
    """Registers, for a binary's FlagHolders (`globals().values()`; other values are skipped),
    the check of the declared option of the same name (options.rules): absl runs it while
    parsing, before main, and reports `flag --name=value: message` (exit status 1). An unset
    flag (None) passes. Checks that need several options raise errors.InputError in the
    library instead."""
    rules = _rules()
    for holder in holders:
        if isinstance(holder, flags.FlagHolder) and holder.name in rules:
            _register(holder, rules[holder.name])


def _register(holder, rule):
    flags.register_validator(holder, lambda v: v is None or rule.check(v), rule.message)


MIXED_PRECISION = ("off", "auto", "float16", "bfloat16")  # --mixed_precision's values


def define_flags(cls, names=None, prefix="", defaults=None):
    """Defines a flag for each option that the dataclass `cls` declares (options.option), or
    for those in `names`: --<prefix><name>, of the option's kind, default (or `defaults`'),
    help and choices, with its own check. Returns {option name: FlagHolder}.
    A mixed_precision option is the enum MIXED_PRECISION ("off": None; see `option_values`)."""
    from tf_amended_darts import options  # pylint: disable=g-import-not-at-top

    module = sys._getframe(1).f_globals["__name__"]  # the binary's: its --help lists them
    if module == "__main__":  # absl names the main module by its path (python -m, a script)
        module = sys.argv[0]
    declared = options.declared(cls)
    holders = {}
    for name in declared if names is None else names:
        field = declared[name]
        meta = field.metadata
        default = (defaults or {}).get(name, field.default)
        if default is dataclasses.MISSING:
            default = field.default_factory()
        flag = prefix + name
        kind = meta["kind"]
        if kind == "mixed_precision":
            holder = flags.DEFINE_enum(
                flag, default or "off", MIXED_PRECISION, meta["help"], module_name=module
            )
        elif kind == "enum":
            holder = flags.DEFINE_enum(
                flag, default, meta["choices"], meta["help"], module_name=module
            )
        elif kind == "list":
            holder = flags.DEFINE_list(
                flag, list(default) if default else default, meta["help"], module_name=module
            )
        else:
            define = {
                "string": flags.DEFINE_string,
                "integer": flags.DEFINE_integer,
                "float": flags.DEFINE_float,
                "bool": flags.DEFINE_bool,
            }[kind]
            if kind == "string" and default is not None:
                default = str(default)  # amending_coefficient: 0.1 or auto
            holder = define(flag, default, meta["help"], module_name=module)
        holders[name] = holder
        if meta["rule"] is not None:
            _register(holder, meta["rule"])
    return holders


def option_values(holders):
    """{option name: value} of define_flags' holders, as the library takes them (the
    mixed_precision flag's off/auto resolved by `mixed_precision`)."""
    values = {name: holder.value for name, holder in holders.items()}
    if "mixed_precision" in values:
        values["mixed_precision"] = mixed_precision(values["mixed_precision"])
    return values


# The RunOptions that are loop.RunControl fields: search.search's and train.train's keywords.
RUN_CONTROL = (
    "resume",
    "overwrite",
    "checkpoint_every",
    "stop_after_steps",
    "metrics_every",
    "download",
)


def run_control(run):
    """{keyword: value} of RUN_CONTROL from RunOptions' option_values `run`."""
    return {name: run[name] for name in RUN_CONTROL}


def flag_values(namespace):
    """{name: value} of the FlagHolders defined in a binary's module (`globals()`), for
    recording next to a result; absl's own flags are left out."""
    return {h.name: h.value for h in namespace.values() if isinstance(h, flags.FlagHolder)}


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
