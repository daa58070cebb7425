"""One declaration per option: its name, type, default, help and check.

The options of a search (search.SearchConfig), of a training run (train.TrainConfig) and of
the binaries' runs (RunOptions, SearchMeasures, TuneOptions below) are dataclass fields
declared with `option(...)`: the default is the field's, the help, the flag kind and the check
are its metadata. The binaries derive their flags from these fields (bin/cli.define_flags),
the study plan's keys are the fields' and diagnostics' parameter names, and the configs check
their fields with the same rules (`check_fields`) in the library, with messages that name the
option. A rule is also registered with absl for the flag of the same name, so that a value
wrong on its own is refused while the flags are parsed.

No TensorFlow here: the binaries read it before they configure their devices.
"""

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple, Optional

from tf_amended_darts import errors


class Rule(NamedTuple):
    check: Callable[[Any], bool]  # True when the value is usable
    message: str  # what a usable value is, after the flag: "must be ..."
    # The library's one line for a refused value: explain(name, value); default
    # "<name> <message>, got <value>".
    explain: Optional[Callable[[str, Any], str]] = None

    def error(self, name, value):
        if self.explain is not None:
            return self.explain(name, value)
        return f"{name} {self.message}, got {value!r}"


def integer_at_least(low, high=None):
    if high is None:
        return Rule(
            lambda v: v >= low,
            f"must be an integer >= {low}",
            lambda name, v: f"{name} must be at least {low}, got {v!r}",
        )
    return Rule(lambda v: low <= v <= high, f"must be an integer in [{low}, {high}]")


def number_in(low, high=math.inf, low_open=False, high_open=False):
    def check(v):
        return (
            math.isfinite(v)
            and (v > low if low_open else v >= low)
            and (v < high if high_open else v <= high)
        )

    if high == math.inf:
        return Rule(check, f"must be a finite number {'>' if low_open else '>='} {low}")
    return Rule(
        check, f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    )


def one_of(choices):
    choices = tuple(choices)
    return Rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


NOT_EMPTY = Rule(lambda v: bool(str(v).strip()), "must not be empty")
SEED = integer_at_least(0, 2**32 - 1)  # numpy's global seed (keras.utils.set_random_seed)
SHARE = number_in(0, 1, high_open=True)  # [0, 1)
NONNEGATIVE = number_in(0)
COUNT = integer_at_least(1)
COUNT_OR_ZERO = integer_at_least(0)
CELLS = integer_at_least(3)  # two of them are reduction cells


DATASET_HELP = (
    "digits, cifar10_binary, cifar100_binary, image_folder or a tensorflow-datasets name."
)


def option(default, help, kind, rule=None, choices=None):  # pylint: disable=redefined-builtin
    """A dataclass field declaring an option.

    kind: its flag's kind, "string" | "integer" | "float" | "bool" | "list" | "enum"
    (`choices`). rule: a Rule checked by `check_fields` and at flag parsing (None passes).
    """
    if kind == "enum" and rule is None:
        rule = one_of(choices)
    metadata = {"help": help, "kind": kind, "rule": rule, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def same_as(cls, name, default=dataclasses.MISSING):
    """The option `name` that the dataclass `cls` declares, for another dataclass: the same
    help, kind and check (one declaration), with `default` in place of its default."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default is dataclasses.MISSING:
        default = source.default
    return dataclasses.field(default=default, metadata=source.metadata)


def declared(cls):
    """{name: dataclasses.Field} of the options `cls` declares."""
    return {f.name: f for f in dataclasses.fields(cls) if "kind" in f.metadata}


def check_fields(obj):
    """InputError (one line, naming the option) for the first field of the dataclass
    instance `obj` whose value its rule refuses; None and booleans of number fields too."""
    for name, field in declared(type(obj)).items():
        rule, value = field.metadata["rule"], getattr(obj, name)
        if rule is None or value is None:
            continue
        numeric = field.metadata["kind"] in ("integer", "float")
        if (numeric and (isinstance(value, bool) or not isinstance(value, numbers.Real))) or (
            not rule.check(value)
        ):
            raise errors.InputError(rule.error(name, value))


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a search or a training run runs (not what it computes: not in its identity)."""

    output_dir: Optional[str] = option(None, "Directory of the run's outputs.", "string", NOT_EMPTY)
    resume: bool = option(False, "Continue the run in --output_dir.", "bool")
    overwrite: bool = option(
        False, "Replace the run in --output_dir (and train's --export_dir).", "bool"
    )
    export_dir: Optional[str] = option(
        None, "train: write a SavedModel here at the end.", "string", NOT_EMPTY
    )
    checkpoint_every: int = option(
        0, "Also checkpoint every N steps (0: epoch ends only).", "integer", COUNT_OR_ZERO
    )
    stop_after_steps: Optional[int] = option(
        None, "Stop (with a checkpoint) at this global step.", "integer", COUNT
    )
    metrics_every: int = option(
        1,
        "Read the step metrics (progress, summaries, divergence check) every N steps.",
        "integer",
        COUNT,
    )
    strategy: str = option(
        "auto",
        "auto|one_device|mirrored|multi_worker.",
        "string",
        one_of(("auto", "one_device", "mirrored", "multi_worker")),  # distribute.STRATEGIES
    )
    logical_cpus: int = option(1, "Split the CPU into N logical devices.", "integer", COUNT)
    deterministic: bool = option(False, "tf.config.experimental.enable_op_determinism().", "bool")
    download: bool = option(False, "tensorflow-datasets: build it if missing.", "bool")


@dataclasses.dataclass(frozen=True)
class SearchMeasures:
    """What a search measures and draws besides its result (bin/search)."""

    render: bool = option(True, "Draw the final cells with graphviz.", "bool")
    hessian_eigenvalue_iterations: int = option(
        0,
        "Power iterations of the dominant eigenvalue of the alpha-Hessian of the validation "
        "loss, measured at every epoch's end into the log line and TensorBoard "
        "epoch/hessian_eigenvalue (0: off). An eager power iteration of "
        "--hessian_eigenvalue_examples images, each iteration one Hessian-vector product: it "
        "lengthens every epoch; the search's own numbers are unchanged.",
        "integer",
        COUNT_OR_ZERO,
    )
    hessian_eigenvalue_examples: int = option(
        256,
        "The eigenvalue's fixed batch: the first N images of the architecture part.",
        "integer",
        COUNT,
    )
    cosines_every: int = option(
        0,
        "Every N epochs, at the epoch's end: the cosine of first order, second order and "
        "amended (--amending_coefficient; 0.1 when auto) to the implicit reference "
        "(--implicit_iterations CG iterations on A + --cosines_damping I), amended's "
        "least-squares best eta, and the reference's CG relative residual (near 1 or above: "
        "CG diverged, the cosines are void), on one batch pair of --batch_size, into the log "
        "line and TensorBoard epoch/<measure>/<estimator> (0: off; bin/diagnose --search_dir "
        "measures the same at a checkpoint). The estimators are traced at the first "
        "measurement and kept, which makes that one slow and raises the peak memory; later "
        "measurements are quicker.",
        "integer",
        COUNT_OR_ZERO,
    )
    cosines_damping: float = option(
        1.0,
        "Damping of the cosines' implicit reference: A + damping I. Late in a search "
        "A = H + wd I is nearly singular and can be indefinite (undamped CG diverged there).",
        "float",
        NONNEGATIVE,
    )


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    """bin/study's: the plan, where its runs go, which of them, and the report."""

    plan: Optional[str] = option(
        None, "The study plan (JSON; see tf_amended_darts/study.py).", "string", NOT_EMPTY
    )
    output_dir: Optional[str] = option(None, "Where the runs and records go.", "string", NOT_EMPTY)
    runs: Optional[tuple] = option(
        None,
        "Only the runs whose names (<dataset>-<space>-<estimator>-s<seed>) match one of these "
        "glob patterns, e.g. 'digits-enlarged-*'. Processes given disjoint patterns share a plan.",
        "list",
    )
    stop_after_steps: Optional[int] = same_as(RunOptions, "stop_after_steps")
    grappler: bool = option(
        True,
        "TensorFlow's graph optimizer (grappler) on the step functions. Off, a small supernet's "
        "steps build and run faster for more peak memory (benchmarks/RESULTS.md); the arithmetic "
        "is the same.",
        "bool",
    )
    report_dir: Optional[str] = option(
        None,
        "Where the report goes (report.md and PNGs); default <output_dir>/report.",
        "string",
        NOT_EMPTY,
    )
    report_only: bool = option(
        False, "Only draw the report from <output_dir>/records; run nothing.", "bool"
    )
    report: bool = option(
        True, "Draw the report at the end (--noreport: only run the searches).", "bool"
    )


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """How a measuring binary prints its result (bin/diagnose)."""

    format: str = option("text", "Output format.", "enum", choices=("text", "json"))


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """keras-tuner's side of bin/tune (the search's options are SearchConfig's, the trials'
    training options TrainConfig's with the prefix TRIAL_PREFIX)."""

    mode: str = option(
        "architectures",
        "What the trials vary: architectures (DartsOracle) or the search's "
        "hyperparameters (SearchTuner).",
        "enum",
        choices=("architectures", "search_options"),
    )
    directory: Optional[str] = option(None, "keras-tuner's directory.", "string", NOT_EMPTY)
    project_name: str = option("tune", "keras-tuner's project name.", "string", NOT_EMPTY)
    overwrite: bool = option(False, "Start the project over (else resume it).", "bool")
    max_trials: int = option(5, "Trials in all (resumed ones included).", "integer", COUNT)
    search_dir: Optional[str] = option(
        None,
        "architectures: the search's output directory (run there unless finished).",
        "string",
        NOT_EMPTY,
    )
    oracle: str = option(
        "random", "search_options: keras-tuner's oracle.", "enum", choices=("random", "bayesian")
    )
    tune: tuple = option(
        ("arch_learning_rate", "amending_coefficient", "arch_gradient", "warmup_epochs"),
        "search_options: the search options to tune.",
        "list",
    )
    arch_gradients: tuple = option(
        ("first_order", "second_order", "amended"),
        "search_options: estimators to choose from.",
        "list",
    )
    initial_points: Optional[int] = option(
        None,
        "search_options, bayesian: random trials before the Gaussian process proposes "
        "(default keras-tuner's: 3 per tuned option).",
        "integer",
        COUNT,
    )
    tuner_seed: int = option(1, "Seed of the oracle.", "integer", SEED)
    export_dir: Optional[str] = option(
        None,
        "architectures: export the best trial's trained network there as a SavedModel.",
        "string",
        NOT_EMPTY,
    )
    overwrite_export: bool = option(False, "Replace an existing --export_dir.", "bool")


# bin/tune's trials train with these TrainConfig options, as flags --eval_<name>, with these
# defaults instead of the CIFAR protocol's (a short run on the search's dataset and seed; no
# cutout, which would blank 8x8 digits; scored on held-out training data, never the test split).
TRIAL_PREFIX = "eval_"
TRIAL_DEFAULTS = {
    "channels": 16,
    "cells": 8,
    "epochs": 2,
    "steps_per_epoch": None,
    "batch_size": 64,
    "learning_rate": 0.025,
    "momentum": 0.9,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    "auxiliary": True,
    "drop_path": 0.2,
    "cutout": 0,
    "validation_split": 0.5,
}


# The checks of the flags of the binaries whose options are not declared as dataclass
# fields (describe, evaluate, export, visualize), by flag name.
OTHER_RULES = {
    **dict.fromkeys(("num_classes", "input_size", "input_channels"), COUNT),
    **dict.fromkeys(
        ("run_dir", "checkpoint", "saved_model", "alphas_history", "genotype"), NOT_EMPTY
    ),
}


def rules(*classes):
    """{flag name: Rule} of the options `classes` declare (the first declaration of a name
    wins; TRIAL_DEFAULTS' TrainConfig options also as TRIAL_PREFIX + name), then OTHER_RULES."""
    found = {}
    for cls in classes:
        for name, field in declared(cls).items():
            rule = field.metadata["rule"]
            if rule is not None:
                found.setdefault(name, rule)
                if name in TRIAL_DEFAULTS:
                    found.setdefault(TRIAL_PREFIX + name, rule)
    for name, rule in OTHER_RULES.items():
        found.setdefault(name, rule)
    return found
