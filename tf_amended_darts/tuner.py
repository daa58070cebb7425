"""keras-tuner over DARTS: architectures as trials, and tuning the search itself.

Every trial ends in a short re-training of one genotype by `train.train`, so a trial is the
protocol it stands in for: coupled L2 weight decay, the learning-rate schedule, gradient
clipping, auxiliary head, drop-path and cutout as its training options say. Its score,
`val_accuracy`, is that run's last validation accuracy (`TrainResult.valid`); the run lives in
<trial dir>/train, where `load_model` (so `get_best_models`) and `export_best_trial` restore
its network from (`train.restore_network`).

Architectures: `DartsOracle` proposes genotypes (proposals.py: the searched one first, then
the next most probable under softmax(alpha), each once). keras-tuner's own `Tuner` trains them
with `GenotypeHyperModel` (build: the genotype's network; fit: train.train), or
`ArchitectureTuner` does, whose trials keep their run in the trial directory:

    oracle = DartsOracle(search_config=SearchConfig(...), search_dir="runs/s", max_trials=8)
    tuner = ArchitectureTuner(oracle, {"dataset": "digits", "channels": 8, "cells": 5,
                                       "epochs": 2}, directory="runs/tune", project_name="p")
    tuner.search()
    export_best_trial(tuner, "runs/model")  # SavedModel of the best trial's network

A trial's hyperparameters hold one choice per kept edge: `normal_0.node3.edge1.op` (an
operation) and `normal_0.node3.edge1.input` (0, 1: the cell inputs, 2..: earlier nodes), and
its training options as Fixed values `train.<TrainConfig field>`; DartsOracle gives every
hyperparameter it does not own its default value.

The search's hyperparameters (`SearchTuner`): any stock oracle (RandomSearchOracle,
BayesianOptimizationOracle) proposes SearchConfig values; each trial runs a short search and
trains its derived genotype as above. The supernet's own validation accuracy is not used: it
measures the supernet, not the derived architecture.
"""

import dataclasses
import hashlib
import json
import math
import os
import re

import keras_tuner as kt
import numpy as np

from tf_amended_darts import (
    data,
    errors,
    estimators,
    export,
    genotypes,
    operations,
    proposals,
    run_dir,
    search,
    search_model,
)
from tf_amended_darts import search_space as search_space_lib
from tf_amended_darts import train as train_lib

OBJECTIVE = "val_accuracy"
TRAIN_PREFIX = "train."  # hyperparameter names of the training options
TRAIN_DIR = "train"  # a trial's train.train run, inside its trial directory
_EDGE_NAME = re.compile(r"^(normal|reduce)_(\d+)\.node(\d+)\.edge(\d+)\.(op|input)$")


# -- a genotype as trial hyperparameters ------------------------------------------------------


def _slot_names(space):
    return [f"normal_{i}" for i in range(space.num_normal_slots)] + [
        f"reduce_{i}" for i in range(space.num_reduce_slots)
    ]


def genotype_values(genotype, space):
    """The trial hyperparameter values of a genotype: one op and one input per kept edge."""
    values = {}
    for name, cell in zip(_slot_names(space), genotype.normal_cells + genotype.reduce_cells):
        for i, node in enumerate(cell.nodes):
            for e, (op, j) in enumerate(node):
                values[f"{name}.node{2 + i}.edge{e}.op"] = op
                values[f"{name}.node{2 + i}.edge{e}.input"] = int(j)
    return values


def declare_genotype_hyperparameters(hp, space, genotype):
    """Registers the per-edge Choices in `hp`, defaulting to `genotype`'s choices."""
    ops = [name for name in space.operations if name != "none"]
    for name, value in genotype_values(genotype, space).items():
        node = int(_EDGE_NAME.match(name).group(3))
        hp.Choice(name, ops if name.endswith(".op") else list(range(node)), default=value)


def _values_of(source):
    """The values dict of a Trial, a HyperParameters or a dict."""
    source = getattr(source, "hyperparameters", source)
    return source.values if isinstance(source, kt.HyperParameters) else dict(source)


def genotype_from_values(values):
    """The Genotype encoded in trial hyperparameter values (see `genotype_values`)."""
    values = _values_of(values)
    slots = {}
    for name, value in values.items():
        match = _EDGE_NAME.match(name)
        if match:
            kind, slot, node, edge, part = match.groups()
            edge_entry = (
                slots.setdefault((kind == "reduce", int(slot)), {})
                .setdefault(int(node), {})
                .setdefault(int(edge), {})
            )
            edge_entry[part] = value
    if not slots:
        raise genotypes.GenotypeError(
            "the hyperparameters encode no genotype (no "
            "'normal_0.node2.edge0.op'-style values): use DartsOracle"
        )
    cells = {}
    for key, nodes in slots.items():
        states = sorted(nodes)
        if states != list(range(2, 2 + len(states))):
            raise genotypes.GenotypeError(f"genotype hyperparameters skip nodes: {states}")
        try:
            cells[key] = genotypes.CellGenotype(
                [
                    [(nodes[s][e]["op"], nodes[s][e]["input"]) for e in sorted(nodes[s])]
                    for s in states
                ],
                range(2, 2 + len(states)),
            )
        except KeyError as e:
            raise genotypes.GenotypeError(f"genotype hyperparameters lack {e}") from None
    normal = [cells[k] for k in sorted(k for k in cells if not k[0])]
    reduce = [cells[k] for k in sorted(k for k in cells if k[0])]
    return genotypes.Genotype(normal, reduce)


# -- where the alphas come from ----------------------------------------------------------------


def load_search_result(directory, config=None):
    """(SearchSpace, alphas) of the finished search in `directory`, or None when it holds no
    finished search (or, with `config`, not a finished search with exactly this config).

    Reads run.json and the last record of alphas_history.json; the alphas are log
    probabilities (softmax of them gives the search's probabilities).
    """
    try:
        with open(os.path.join(directory, "run.json")) as f:
            run = json.load(f)
        with open(os.path.join(directory, search.HISTORY_FILE)) as f:
            records = json.load(f)["records"]
    except (OSError, ValueError, KeyError):
        return None
    saved = run.get("config", {})
    if run.get("kind") != "search" or (config is not None and saved != config.to_dict()):
        return None
    if not records or records[-1]["epoch"] < saved.get("epochs", math.inf):
        return None
    space = search_space_lib.SearchSpace.from_dict(run["search_space"])
    with np.errstate(divide="ignore"):
        alphas = [
            np.log(np.maximum(np.asarray(p, np.float64), 1e-300))
            for p in records[-1]["probabilities"]
        ]
    return space, alphas


def _as_space(space):
    if isinstance(space, search_space_lib.SearchSpace):
        return space
    if isinstance(space, str):
        return search_space_lib.get_search_space(space)
    if isinstance(space, dict):
        return search_space_lib.SearchSpace.from_dict(space)
    raise errors.InputError(
        f"search_space must be a SearchSpace, a preset name or a dict, got {space!r}"
    )


def _search_source(alphas, search_space, search_dir, search_config, search_kwargs):
    if alphas is not None:
        if search_space is None:
            raise errors.InputError("DartsOracle: alphas need their search_space")
        return _as_space(search_space), alphas
    if search_dir is None:
        raise errors.InputError(
            "DartsOracle needs alphas and search_space, a search_dir "
            "holding a finished search, or a search_config (and "
            "search_dir) to run one"
        )
    found = load_search_result(search_dir, search_config)
    if found is not None:
        return found
    if search_config is None:
        raise errors.InputError(
            f"DartsOracle: {search_dir} holds no finished search (pass search_config to run it)"
        )
    result = search.search(
        search_config, search_dir, resume=run_dir.holds_run(search_dir), **(search_kwargs or {})
    )
    if not result.finished:
        raise errors.InputError(f"DartsOracle: the search in {search_dir} stopped before its end")
    return search_config.space(), result.alphas


# -- the oracle --------------------------------------------------------------------------------


class DartsOracle(kt.Oracle):
    """Proposes DARTS architectures as keras-tuner trials (see the module docstring).

    Args:
      alphas: logits per cell slot (`SearchResult.alphas`, arch_variables order), with
        `search_space` (a SearchSpace, preset name or dict).
      search_dir: a finished search's output directory; with `search_config` the search is run
        (or resumed) there unless it already finished with that config.
      search_kwargs: more arguments for `search.search` (strategy, log_stream, ...).
      max_proposals: stop after this many architectures (None: max_trials decides).
      objective, max_trials and the rest: as keras_tuner.Oracle (objective: val_accuracy).

    State (oracle.json, key "darts"): the search space, the alphas and the proposals made.
    A project tuned from other alphas is refused on reload.
    """

    def __init__(
        self,
        alphas=None,
        search_space=None,
        *,
        search_dir=None,
        search_config=None,
        search_kwargs=None,
        max_proposals=None,
        objective=None,
        max_trials=10,
        hyperparameters=None,
        **kwargs,
    ):
        space, alphas = _search_source(
            alphas, search_space, search_dir, search_config, search_kwargs
        )
        self.search_space = space
        self.alphas = proposals.check_alphas(space, alphas)
        self.max_proposals = max_proposals
        self.proposals = []  # [{"genotype": dict, "log_probability": float}]
        self._proposed = set()
        self._generator = None
        hyperparameters = hyperparameters.copy() if hyperparameters else kt.HyperParameters()
        declare_genotype_hyperparameters(
            hyperparameters, space, search_model.derive_genotype(space, self.alphas)
        )
        super().__init__(
            objective=objective or kt.Objective(OBJECTIVE, "max"),
            max_trials=max_trials,
            hyperparameters=hyperparameters,
            **kwargs,
        )

    def populate_space(self, trial_id):
        if self.max_proposals is not None and len(self.proposals) >= self.max_proposals:
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        if self._generator is None:
            self._generator = proposals.propose_genotypes(self.search_space, self.alphas)
        for genotype, logp in self._generator:
            key = proposals.canonical_key(genotype)
            if key in self._proposed:
                continue
            self._proposed.add(key)
            self.proposals.append({"genotype": genotype.to_dict(), "log_probability": logp})
            values = {hp.name: hp.default for hp in self.hyperparameters.space}
            values.update(genotype_values(genotype, self.search_space))
            return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
        return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}

    def get_state(self):
        state = super().get_state()
        state["darts"] = {
            "search_space": self.search_space.to_dict(),
            "alphas": [a.tolist() for a in self.alphas],
            "proposals": self.proposals,
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        saved = state.get("darts")
        if saved is None:
            raise errors.InputError(
                "DartsOracle: this project was not tuned by a DartsOracle; "
                "use another project_name or overwrite=True"
            )
        same = (
            _as_space(saved["search_space"]) == self.search_space
            and len(saved["alphas"]) == len(self.alphas)
            and all(
                np.allclose(np.asarray(a), b, rtol=1e-6, atol=1e-9)
                for a, b in zip(saved["alphas"], self.alphas)
            )
        )
        if not same:
            raise errors.InputError(
                "DartsOracle: the project was tuned from another search "
                "result (search space or alphas differ); use another "
                "project_name or overwrite=True"
            )
        self.proposals = list(saved["proposals"])
        self._proposed = {
            proposals.canonical_key(genotypes.Genotype.from_dict(p["genotype"]))
            for p in self.proposals
        }
        self._generator = None


# -- a trial's training: train.train -----------------------------------------------------------

_NOT_OPTIONS = ("genotype", "validate")  # the trial's genotype; a trial always validates


def check_train_options(options):
    """The training options of the trials (TrainConfig fields but genotype and validate; None
    means TrainConfig's default) without the Nones; InputError (one line) when TrainConfig
    refuses them."""
    fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)} - set(_NOT_OPTIONS)
    unknown = sorted(set(options) - fields)
    if unknown:
        raise errors.InputError(
            f"unknown training options {unknown}; options are "
            f"TrainConfig's fields: {', '.join(sorted(fields))}"
        )
    options = {k: v for k, v in options.items() if v is not None}
    # Trials choose an architecture: score them on held-out training data, never on the test
    # split (the same half that the search's architecture step uses, unless told otherwise).
    options.setdefault("validation_split", 0.5)
    try:  # TrainConfig's checks do not depend on the genotype
        train_lib.TrainConfig(genotype=genotypes.PUBLISHED["DARTS_V2"], **options)
    except ValueError as e:
        raise errors.InputError(f"invalid training options for the trials: {e}") from None
    return options


def _train_options_of(values):
    return {
        name[len(TRAIN_PREFIX) :]: value
        for name, value in _values_of(values).items()
        if name.startswith(TRAIN_PREFIX)
    }


def trial_config(trial, genotype=None):
    """The TrainConfig of a trial (or HyperParameters, or values): its `train.*` options and
    `genotype` (default: the one its edge hyperparameters encode)."""
    if genotype is None:
        genotype = genotype_from_values(trial)
    return train_lib.TrainConfig(genotype=genotype, validate=True, **_train_options_of(trial))


def _quietly(run, *args, **kwargs):
    """`run(...)` with its log and progress lines discarded, unless `kwargs` route them."""
    with open(os.devnull, "w") as quiet:
        return run(*args, **{"log_stream": quiet, "progress_stream": quiet, **kwargs})


def _metrics_of(result):
    """A trial's metrics: its train.train run's last validation and training figures."""
    return {
        OBJECTIVE: result.valid["valid_acc"],
        "val_loss": result.valid["valid_loss"],
        "train_loss": result.train_loss,
    }


class _TrainingTuner(kt.Tuner):
    """A Tuner whose trials end in `train.train` of a genotype (`train_genotype`).

    `train_options` (see `check_train_options`) become Fixed `train.<field>` hyperparameters,
    so each trial records how it trained; a project tuned with other options is refused on
    reload. `train_kwargs`: more arguments for train.train (strategy, log_stream, ...).
    """

    def __init__(self, oracle, train_options, *, train_kwargs=None, **kwargs):
        options = check_train_options(train_options)
        hp = oracle.get_space()
        for name, value in options.items():
            hp.Fixed(TRAIN_PREFIX + name, value)
        oracle.update_space(hp)
        super().__init__(oracle, **kwargs)
        # A reloaded project keeps the options it was tuned with (update_space adds no
        # existing name): trials trained otherwise would not be comparable.
        saved = _train_options_of({p.name: p.default for p in oracle.get_space().space})
        if saved != options:
            changed = sorted(k for k in set(saved) | set(options) if saved.get(k) != options.get(k))
            raise errors.InputError(
                f"the project was tuned with other training options "
                f"(differ in: {', '.join(changed)}); use another "
                "project_name or overwrite=True"
            )
        self.train_kwargs = train_kwargs or {}

    def trial_run_dir(self, trial_id):
        return os.path.join(self.get_trial_dir(trial_id), TRAIN_DIR)

    def train_genotype(self, trial, genotype=None):
        """Trains the trial's TrainConfig (`trial_config`); returns the metrics to report."""
        result = _quietly(
            train_lib.train,
            trial_config(trial, genotype),
            self.trial_run_dir(trial.trial_id),
            overwrite=True,
            **self.train_kwargs,
        )
        return _metrics_of(result)

    def load_model(self, trial):
        """The trial's trained network (without auxiliary head), as `get_best_models` gives."""
        return train_lib.restore_network(self.trial_run_dir(trial.trial_id))[2]


class GenotypeHyperModel(kt.HyperModel):
    """The re-training protocol as a keras-tuner HyperModel, for any `keras_tuner.Tuner`:

        tuner = keras_tuner.Tuner(oracle=DartsOracle(search_dir="runs/s", max_trials=4),
                                  hypermodel=GenotypeHyperModel(options, "runs/tune/train"),
                                  directory="runs/tune", project_name="p")
        tuner.search()

    `build(hp)` makes the network (auxiliary head included, when the options have one) of the
    genotype that `hp`'s edge hyperparameters encode (a DartsOracle's trial) and registers the
    training options as Fixed `train.<field>` hyperparameters. `fit(hp, model)` trains that
    genotype with `train.train`, the code path of ArchitectureTuner's trials, in
    `<directory>/<digest of the TrainConfig>` (run.json there records the config), copies the
    trained weights into `model`, hands the final metrics to keras-tuner's callbacks (its
    best-epoch checkpoint saves them, so `get_best_models` returns the trained network) and
    returns them: val_accuracy (the objective), val_loss, train_loss. `tuner.search()` takes no
    data (the options name the dataset) and no fit arguments but `verbose`, which is ignored.

    Args:
      train_options: TrainConfig fields but genotype and validate, as ArchitectureTuner's.
      directory: where the trials' train.train runs go.
      train_kwargs: more arguments for train.train (strategy, log_stream, ...).
    """

    def __init__(self, train_options, directory, *, train_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.train_options = check_train_options(train_options)
        self.directory = directory
        self.train_kwargs = train_kwargs or {}
        self._dataset_info = None

    def trial_config(self, hp):
        """The TrainConfig of a trial's hyperparameters: its genotype and these options."""
        return train_lib.TrainConfig(
            genotype=genotype_from_values(hp), validate=True, **self.train_options
        )

    def run_dir(self, hp):
        """The train.train run directory of a trial's hyperparameters."""
        config = json.dumps(self.trial_config(hp).to_dict(), sort_keys=True)
        return os.path.join(self.directory, hashlib.sha1(config.encode()).hexdigest()[:12])

    def _info(self, config):
        # The shapes train.train builds its network for; loaded once (loading is lazy).
        if self._dataset_info is None:
            self._dataset_info = data.load_for_training(
                config.network,
                config.dataset,
                config.data_dir,
                self.train_kwargs.get("download", False),
                config.image_size,
                config.cutout,
            )[0].info
        return self._dataset_info

    def build(self, hp):
        for name, value in self.train_options.items():
            hp.Fixed(TRAIN_PREFIX + name, value)
        config = self.trial_config(hp)
        info = self._info(config)
        return config.build_network(info.num_classes, info.image_shape)

    def fit(self, hp, model, *args, callbacks=None, verbose=None, **kwargs):
        del verbose  # tuner.search's; the trial's lines go to its run's log.txt
        if args or kwargs:
            raise errors.InputError(
                "GenotypeHyperModel trains on its train_options' dataset: call tuner.search() "
                f"without data or fit arguments (got {len(args)} positional, {sorted(kwargs)})"
            )
        config = self.trial_config(hp)
        result = _quietly(
            train_lib.train, config, self.run_dir(hp), overwrite=True, **self.train_kwargs
        )
        model.set_weights(result.model.get_weights())
        metrics = _metrics_of(result)
        for callback in callbacks or []:
            callback.set_model(model)
            callback.on_epoch_end(config.epochs - 1, logs=dict(metrics))
        return metrics


class ArchitectureTuner(_TrainingTuner):
    """Trains the architectures a DartsOracle proposes, each with train.train.

    Args:
      oracle: a DartsOracle.
      train_options: TrainConfig fields but genotype (dataset, channels, cells, epochs,
        steps_per_epoch, learning_rate, weight_decay, grad_clip, auxiliary, drop_path, cutout,
        ...); the rest keep TrainConfig's defaults.
      train_kwargs: more arguments for train.train.
      directory, project_name, overwrite and the rest: as keras_tuner.Tuner.
    """

    def run_trial(self, trial, *args, **kwargs):
        return self.train_genotype(trial)


def _best_trial(oracle_or_tuner):
    oracle = getattr(oracle_or_tuner, "oracle", oracle_or_tuner)
    best = oracle.get_best_trials(1)
    if not best:
        raise errors.InputError("no trial has completed yet")
    return best[0]


def write_best_genotype(oracle_or_tuner, path):
    """Writes the best DartsOracle trial's genotype.json; returns (trial, its TrainConfig)."""
    trial = _best_trial(oracle_or_tuner)
    config = trial_config(trial)
    genotypes.write_genotype(config.genotype, path)
    return trial, config


def export_best_trial(training_tuner, export_dir, *, overwrite=False):
    """Exports the best trial's trained network (the end of its train.train run) as a
    SavedModel with export.export_network; returns (trial, description dict)."""
    trial = _best_trial(training_tuner)
    config, info, net, _ = train_lib.restore_network(training_tuner.trial_run_dir(trial.trial_id))
    return trial, export.export_network(net, export_dir, config, info, overwrite=overwrite)


# -- tuning the search itself ------------------------------------------------------------------

SEARCH_HYPERPARAMETERS = (
    "arch_learning_rate",
    "amending_coefficient",
    "arch_gradient",
    "warmup_epochs",
)


def declare_search_hyperparameters(
    hp,
    config,
    names=SEARCH_HYPERPARAMETERS,
    arch_gradients=("first_order", "second_order", "amended"),
):
    """Registers the tunable search options (defaults: `config`'s values). Hyperparameters
    already in `hp` (a user's Fixed, say) keep their definition."""
    declare = {
        "arch_learning_rate": lambda: hp.Float(
            "arch_learning_rate", 1e-4, 1e-2, sampling="log", default=config.arch_learning_rate
        ),
        "amending_coefficient": lambda: hp.Float(
            "amending_coefficient", 0.0, 1.0, default=config.amending_coefficient
        ),
        "arch_gradient": lambda: hp.Choice(
            "arch_gradient",
            list(dict.fromkeys([config.arch_gradient, *arch_gradients])),
            default=config.arch_gradient,
        ),
        "warmup_epochs": lambda: (
            hp.Int(
                "warmup_epochs",
                0,
                config.epochs - 1,
                default=min(config.warmup_epochs, config.epochs - 1),
            )
            if config.epochs > 1
            else hp.Fixed("warmup_epochs", 0)
        ),
    }
    for name in names:
        if name not in declare:
            raise errors.InputError(f"cannot tune {name!r}; tunable: {', '.join(declare)}")
        if name == "amending_coefficient" and config.amending_coefficient == estimators.AUTO:
            raise errors.InputError(
                "amending_coefficient=auto chooses eta at every step: it cannot be tuned"
            )
        declare[name]()
    return hp


def search_config_from_values(base_config, values):
    """`base_config` with every hyperparameter named like a SearchConfig field applied."""
    values = _values_of(values)
    fields = {f.name for f in dataclasses.fields(search.SearchConfig)}
    return dataclasses.replace(base_config, **{k: v for k, v in values.items() if k in fields})


class SearchTuner(_TrainingTuner):
    """Tunes the search's hyperparameters with any keras-tuner oracle.

    Each trial runs `search.search` with `base_config` plus the trial's values (every
    hyperparameter named like a SearchConfig field; by default `SEARCH_HYPERPARAMETERS`,
    declared here) in <trial dir>/search, then trains the derived genotype with train.train
    (`train_options`, on the search's dataset and seed unless they say otherwise): metrics
    val_accuracy (the objective), val_loss, train_loss, parameter_free_ops.
    """

    def __init__(
        self,
        oracle,
        base_config,
        train_options,
        *,
        tune=SEARCH_HYPERPARAMETERS,
        arch_gradients=("first_order", "second_order", "amended"),
        search_kwargs=None,
        **kwargs,
    ):
        self.base_config = base_config
        self.search_kwargs = search_kwargs or {}
        hp = oracle.get_space()
        oracle.update_space(declare_search_hyperparameters(hp, base_config, tune, arch_gradients))
        data_options = {
            k: getattr(base_config, k) for k in ("dataset", "data_dir", "image_size", "seed")
        }
        super().__init__(oracle, {**data_options, **train_options}, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        config = search_config_from_values(self.base_config, trial.hyperparameters)
        directory = os.path.join(self.get_trial_dir(trial.trial_id), "search")
        result = _quietly(
            search.search,
            config,
            directory,
            overwrite=True,
            **{"render": False, **self.search_kwargs},
        )
        metrics = self.train_genotype(trial, result.genotype)
        metrics["parameter_free_ops"] = float(
            result.genotype.count_ops(operations.PARAMETER_FREE_OPS)
        )
        return metrics


def best_search_config(oracle_or_tuner, base_config):
    """The SearchConfig of the best trial."""
    return search_config_from_values(base_config, _best_trial(oracle_or_tuner).hyperparameters)
