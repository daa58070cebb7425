"""keras-tuner integration: DARTS architectures as trials, and tuning the search itself.

Architectures (keras-tuner's Tuner runs the trials, `DartsOracle` picks the architectures):

    oracle = DartsOracle(search_config=SearchConfig(...), search_dir="runs/s", max_trials=8)
    tuner = keras_tuner.Tuner(oracle=oracle, hypermodel=GenotypeHyperModel(num_classes=10),
                              directory="runs/tune", project_name="digits")
    tuner.search(train_batches, validation_data=val_batches)
    genotype, network = architecture_from_trial(oracle.get_best_trials()[0])
    export_best_trial(tuner, "runs/model", "digits")  # SavedModel of the best trial's weights

`DartsOracle` starts from a search result (alphas), proposes the derived genotype first and
then the next most probable genotypes under softmax(alpha) (`propose_genotypes`), each once.
A trial's hyperparameters hold one choice per kept edge: `normal_0.node3.edge1.op` (an
operation) and `normal_0.node3.edge1.input` (0, 1: the cell inputs, 2..: earlier nodes).
The network and training settings are hyperparameters of `GenotypeHyperModel`; DartsOracle
gives every hyperparameter it does not own its default value.

The search's own hyperparameters (`SearchTuner`): any stock oracle (RandomSearchOracle,
BayesianOptimizationOracle) proposes SearchConfig values; each trial runs a short search and
scores the derived genotype by a short training of its evaluation network on the weights part
of the search split, validated on the architecture part (`val_accuracy`). The supernet's own
validation accuracy is not used: it measures the supernet, not the derived architecture.
"""

import dataclasses
import heapq
import json
import math
import os
import re

import keras
import keras_tuner as kt
import numpy as np

from tf_amended_darts import data, export, genotypes, model, operations, run_dir, search
from tf_amended_darts import search_model
from tf_amended_darts import search_space as search_space_lib
from tf_amended_darts import train as train_lib

OBJECTIVE = "val_accuracy"
_EDGE_NAME = re.compile(r"^(normal|reduce)_(\d+)\.node(\d+)\.edge(\d+)\.(op|input)$")


# -- alphas, genotypes and their hyperparameters ----------------------------------------------

def slot_names(space):
    return ([f"normal_{i}" for i in range(space.num_normal_slots)]
            + [f"reduce_{i}" for i in range(space.num_reduce_slots)])


def check_alphas(space, alphas):
    """The alphas as float64 arrays; ValueError (one line) when they do not fit `space`."""
    expected = (space.num_normal_slots + space.num_reduce_slots,
                space.num_edges, len(space.operations))
    try:
        alphas = [np.asarray(a, np.float64) for a in alphas]
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid search result: alphas are not numeric arrays ({e})") from None
    shapes = [a.shape for a in alphas]
    if len(alphas) != expected[0] or any(s != expected[1:] for s in shapes):
        raise ValueError(f"invalid search result: the search space ({len(space.operations)} "
                         f"operations, {space.steps} nodes, per_stage={space.per_stage}) needs "
                         f"{expected[0]} alpha arrays of shape {expected[1:]}, got {shapes}")
    if not all(np.isfinite(a).all() for a in alphas):
        raise ValueError("invalid search result: alphas hold NaN or infinite values")
    return alphas


def _log_softmax(a):
    a = a - a.max(axis=-1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))


def canonical_key(genotype):
    """Identity of an architecture: the JSON with each node's edges sorted (a node sums them)."""
    def cell(c):
        return {"nodes": [sorted([op, j] for op, j in node) for node in c.nodes],
                "concat": sorted(c.concat)}
    return json.dumps({"normal": [cell(c) for c in genotype.normal_cells],
                       "reduce": [cell(c) for c in genotype.reduce_cells]}, sort_keys=True)


def log_probability(space, alphas, genotype):
    """sum over the genotype's edges of log softmax(alpha)[edge, op]."""
    logp = [_log_softmax(a) for a in check_alphas(space, alphas)]
    total = 0.0
    for s, cell in enumerate(genotype.normal_cells + genotype.reduce_cells):
        for i, node in enumerate(cell.nodes):
            start = sum(2 + n for n in range(i))
            total += sum(logp[s][start + j, space.operations.index(op)] for op, j in node)
    return float(total)


class _Lazy:
    """A best-first sequence of (score, item) drawn from an iterator on demand."""

    def __init__(self, iterable):
        self._iterator, self._items = iter(iterable), []

    def get(self, index):
        while len(self._items) <= index:
            item = next(self._iterator, None)
            if item is None:
                return None
            self._items.append(item)
        return self._items[index]


def _best_first(components, start, accept=lambda v: True, expand=lambda v: True):
    """Yields (score, rank vector) over the product of best-first `_Lazy` sequences, in order
    of the summed score (highest first): a rank vector's successors raise one rank by one."""
    def score(vector):
        return sum(components[p].get(r)[0] for p, r in enumerate(vector))
    heap, visited = [(-score(start), start)], {start}
    while heap:
        negative, vector = heapq.heappop(heap)
        if accept(vector):
            yield -negative, vector
        for p in range(len(vector)):
            successor = vector[:p] + (vector[p] + 1,) + vector[p + 1:]
            if (successor not in visited and components[p].get(successor[p]) is not None
                    and expand(successor)):
                visited.add(successor)
                heapq.heappush(heap, (-score(successor), successor))


def _node_configurations(logp, space, i):
    """Best-first (score, edges) of node 2 + i: min(k, 2 + i) edges with distinct inputs, each
    any non-'none' operation; `logp` holds the node's rows of log softmax(alpha)."""
    candidates = _Lazy(sorted(((float(logp[j, k]), (name, j)) for j in range(2 + i)
                               for k, name in enumerate(space.operations) if name != "none"),
                              key=lambda c: (-c[0], c[1][1], c[1][0])))
    k = min(space.inputs_per_node, 2 + i)

    def edges(vector):
        return [candidates.get(r)[1] for r in vector]
    for score, vector in _best_first(
            [candidates] * k, tuple(range(k)),
            accept=lambda v: len({j for _, j in edges(v)}) == k,
            expand=lambda v: all(a < b for a, b in zip(v, v[1:]))):
        yield score, edges(vector)


def propose_genotypes(space, alphas):
    """Yields (genotype, log-probability), most probable first, each architecture once.

    The first is the derived genotype (the DARTS rule). A genotype's log-probability is the
    sum over its kept edges of log softmax(alpha)[edge, op]; it is a sum over nodes, so the
    alternatives come from a best-first enumeration over the product of each node's own
    best-first configurations (k edges with distinct inputs, any non-'none' operations): the
    weakest decisions (smallest drops) change first. Deterministic and lazy (the DARTS space
    has ~1e20 genotypes).
    """
    alphas = check_alphas(space, alphas)
    derived = search_model.derive_genotype(space, alphas)
    nodes = []
    for a in alphas:
        logp, start = _log_softmax(a), 0
        for i in range(space.steps):
            nodes.append(_Lazy(_node_configurations(logp[start:start + 2 + i], space, i)))
            start += 2 + i
    seen = {canonical_key(derived)}
    yield derived, log_probability(space, alphas, derived)
    for score, vector in _best_first(nodes, (0,) * len(nodes)):
        configurations = [nodes[n].get(r)[1] for n, r in enumerate(vector)]
        cells = [genotypes.CellGenotype(configurations[s:s + space.steps],
                                        range(2, 2 + space.steps))
                 for s in range(0, len(configurations), space.steps)]
        genotype = genotypes.Genotype(cells[:space.num_normal_slots],
                                      cells[space.num_normal_slots:])
        key = canonical_key(genotype)
        if key not in seen:
            seen.add(key)
            yield genotype, score


def genotype_values(genotype, space):
    """The trial hyperparameter values of a genotype: one op and one input per kept edge."""
    values = {}
    for name, cell in zip(slot_names(space), genotype.normal_cells + genotype.reduce_cells):
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
            edge_entry = (slots.setdefault((kind == "reduce", int(slot)), {})
                          .setdefault(int(node), {}).setdefault(int(edge), {}))
            edge_entry[part] = value
    if not slots:
        raise genotypes.GenotypeError("the hyperparameters encode no genotype (no "
                                      "'normal_0.node2.edge0.op'-style values): use DartsOracle")
    cells = {}
    for key, nodes in slots.items():
        states = sorted(nodes)
        if states != list(range(2, 2 + len(states))):
            raise genotypes.GenotypeError(f"genotype hyperparameters skip nodes: {states}")
        try:
            cells[key] = genotypes.CellGenotype(
                [[(nodes[s][e]["op"], nodes[s][e]["input"]) for e in sorted(nodes[s])]
                 for s in states], range(2, 2 + len(states)))
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
        alphas = [np.log(np.maximum(np.asarray(p, np.float64), 1e-300))
                  for p in records[-1]["probabilities"]]
    return space, alphas


def _as_space(space):
    if isinstance(space, search_space_lib.SearchSpace):
        return space
    if isinstance(space, str):
        return search_space_lib.get_search_space(space)
    if isinstance(space, dict):
        return search_space_lib.SearchSpace.from_dict(space)
    raise ValueError(f"search_space must be a SearchSpace, a preset name or a dict, got {space!r}")


def _search_source(alphas, search_space, search_dir, search_config, search_kwargs):
    if alphas is not None:
        if search_space is None:
            raise ValueError("DartsOracle: alphas need their search_space")
        return _as_space(search_space), alphas
    if search_dir is None:
        raise ValueError("DartsOracle needs alphas and search_space, a search_dir holding a "
                         "finished search, or a search_config (and search_dir) to run one")
    found = load_search_result(search_dir, search_config)
    if found is not None:
        return found
    if search_config is None:
        raise ValueError(f"DartsOracle: {search_dir} holds no finished search (pass "
                         "search_config to run it)")
    result = search.search(search_config, search_dir, resume=run_dir.holds_run(search_dir),
                           **(search_kwargs or {}))
    if not result.finished:
        raise ValueError(f"DartsOracle: the search in {search_dir} stopped before its end")
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

    def __init__(self, alphas=None, search_space=None, *, search_dir=None, search_config=None,
                 search_kwargs=None, max_proposals=None, objective=None, max_trials=10,
                 hyperparameters=None, **kwargs):
        space, alphas = _search_source(alphas, search_space, search_dir, search_config,
                                       search_kwargs)
        self.search_space = space
        self.alphas = check_alphas(space, alphas)
        self.max_proposals = max_proposals
        self.proposals = []  # [{"genotype": dict, "log_probability": float}]
        self._proposed = set()
        self._generator = None
        hyperparameters = hyperparameters.copy() if hyperparameters else kt.HyperParameters()
        declare_genotype_hyperparameters(
            hyperparameters, space, search_model.derive_genotype(space, self.alphas))
        super().__init__(objective=objective or kt.Objective(OBJECTIVE, "max"),
                         max_trials=max_trials, hyperparameters=hyperparameters, **kwargs)

    def populate_space(self, trial_id):
        if self.max_proposals is not None and len(self.proposals) >= self.max_proposals:
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        if self._generator is None:
            self._generator = propose_genotypes(self.search_space, self.alphas)
        for genotype, logp in self._generator:
            key = canonical_key(genotype)
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
        state["darts"] = {"search_space": self.search_space.to_dict(),
                          "alphas": [a.tolist() for a in self.alphas],
                          "proposals": self.proposals}
        return state

    def set_state(self, state):
        super().set_state(state)
        saved = state.get("darts")
        if saved is None:
            raise ValueError("DartsOracle: this project was not tuned by a DartsOracle; use "
                             "another project_name or overwrite=True")
        same = (_as_space(saved["search_space"]) == self.search_space
                and len(saved["alphas"]) == len(self.alphas)
                and all(np.allclose(np.asarray(a), b, rtol=1e-6, atol=1e-9)
                        for a, b in zip(saved["alphas"], self.alphas)))
        if not same:
            raise ValueError("DartsOracle: the project was tuned from another search result "
                             "(search space or alphas differ); use another project_name or "
                             "overwrite=True")
        self.proposals = list(saved["proposals"])
        self._proposed = {canonical_key(genotypes.Genotype.from_dict(p["genotype"]))
                          for p in self.proposals}
        self._generator = None


# -- the hypermodel ----------------------------------------------------------------------------

def _declare(hp, name, value):
    """A list/tuple value makes a Choice, anything else a Fixed hyperparameter."""
    if isinstance(value, (list, tuple)):
        return hp.Choice(name, list(value))
    return hp.Fixed(name, value)


def compile_network(net, learning_rate, momentum, weight_decay):
    """SGD with momentum; weight decay is Keras' decoupled form (w -= lr * wd * w)."""
    net.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum,
                                               weight_decay=weight_decay or None),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    return net


class GenotypeHyperModel(kt.HyperModel):
    """Builds NetworkCIFAR from a trial's genotype hyperparameters.

    `channels`, `layers`, `learning_rate`, `momentum`, `weight_decay`, `epochs`, `batch_size`
    become hyperparameters of the same names (a list/tuple makes a Choice, a value a Fixed),
    so the summaries and `get_best_hyperparameters` show them; `num_classes` is Fixed.
    `fit` trains for `epochs` unless the `search(...)` call passes its own; `batch_size` is
    used for array inputs (datasets come batched).
    """

    def __init__(self, num_classes, *, channels=16, layers=8, learning_rate=0.025,
                 momentum=0.9, weight_decay=3e-4, epochs=10, batch_size=64, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.settings = {"channels": channels, "layers": layers, "learning_rate": learning_rate,
                         "momentum": momentum, "weight_decay": weight_decay, "epochs": epochs,
                         "batch_size": batch_size}

    def _values(self, hp):
        values = {name: _declare(hp, name, v) for name, v in self.settings.items()}
        values["num_classes"] = hp.Fixed("num_classes", self.num_classes)
        return values

    def build(self, hp):
        v = self._values(hp)
        net = model.NetworkCIFAR(genotype_from_values(hp), v["channels"], v["layers"],
                                 v["num_classes"])
        return compile_network(net, v["learning_rate"], v["momentum"], v["weight_decay"])

    def fit(self, hp, net, *args, **kwargs):
        v = self._values(hp)
        kwargs.setdefault("epochs", v["epochs"])
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, np.ndarray):
            kwargs.setdefault("batch_size", v["batch_size"])
        return net.fit(*args, **kwargs)


def architecture_from_trial(trial):
    """Export hook: (Genotype, network config) of a trial (or HyperParameters, or values).

    `model.NetworkCIFAR(genotype, **config)` rebuilds the evaluated network; the config keys
    are NetworkCIFAR's (init_channels, layers_count, num_classes, auxiliary).
    """
    values = _values_of(trial)
    genotype = genotype_from_values(values)
    config = {"init_channels": values.get("channels", 16), "layers_count": values.get("layers", 8),
              "num_classes": values.get("num_classes", 10), "auxiliary": False}
    return genotype, config


def write_best_genotype(oracle_or_tuner, path):
    """Writes the best trial's genotype.json; returns (trial, genotype, network config)."""
    oracle = getattr(oracle_or_tuner, "oracle", oracle_or_tuner)
    best = oracle.get_best_trials(1)
    if not best:
        raise ValueError("no trial has completed yet")
    genotype, config = architecture_from_trial(best[0])
    genotypes.write_genotype(genotype, path)
    return best[0], genotype, config


def export_best_trial(keras_tuner, export_dir, dataset, *, data_dir=None, image_size=None,
                      overwrite=False):
    """Exports the best trial's trained network as a SavedModel (export.export_network);
    returns (trial, description dict).

    The weights are keras-tuner's checkpoint of the trial's best epoch (what
    `keras_tuner.get_best_models()` loads; a `keras_tuner.Tuner` with GenotypeHyperModel writes
    it), not a re-training. `dataset` (with data_dir, image_size) gives the serving signature's
    image shape, normalisation and class names: the one the trials were trained on.
    """
    export.check_export_dir(export_dir, overwrite)
    best = keras_tuner.oracle.get_best_trials(1)
    if not best:
        raise ValueError("no trial has completed yet: nothing to export")
    trial = best[0]
    genotype, network = architecture_from_trial(trial)
    info = data.dataset_info_dict(data.load_dataset(dataset, data_dir,
                                                        image_size=image_size).info)
    if info["num_classes"] != network["num_classes"]:
        raise ValueError(f"trial {trial.trial_id} classifies {network['num_classes']} classes, "
                         f"dataset {dataset} has {info['num_classes']}")
    try:
        net = keras_tuner.load_model(trial)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load the trained weights of trial {trial.trial_id} from "
                         f"{keras_tuner.get_trial_dir(trial.trial_id)} (a keras_tuner.Tuner "
                         f"with GenotypeHyperModel writes them): "
                         f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    values = trial.hyperparameters.values
    config = train_lib.TrainConfig(
        genotype=genotype, dataset=dataset, data_dir=data_dir, image_size=image_size,
        channels=network["init_channels"], cells=network["layers_count"], auxiliary=False,
        drop_path=0.0, cutout=0, grad_clip=0.0,
        **{k: values[k] for k in ("epochs", "batch_size", "learning_rate", "momentum",
                                  "weight_decay") if k in values})
    return trial, export.export_network(net, export_dir, config, info, overwrite=overwrite)


# -- data for keras fit ------------------------------------------------------------------------

def fit_datasets(dataset, batch_size, *, data_dir=None, image_size=None, train_portion=0.5,
                 seed=0, steps_per_epoch=None, validation_steps=None):
    """(train, validation, info) tf.data for `fit`: the weights / architecture parts of the
    search split (as the search uses them), normalised, train shuffled (no augmentation)."""
    loaded = data.load_dataset(dataset, data_dir, image_size=image_size)
    info = loaded.info
    train, validation = data.search_split(loaded.train, info.num_examples["train"],
                                          train_portion)
    train = data.epoch_batches(train, batch_size, mean=info.mean, std=info.std, seed=seed,
                               epoch=0, augmentation=None)
    validation = data.eval_batches(validation, batch_size, mean=info.mean, std=info.std)
    if steps_per_epoch:
        train = train.take(steps_per_epoch)
    if validation_steps:
        validation = validation.take(validation_steps)
    return train, validation, info


# -- tuning the search itself ------------------------------------------------------------------

SEARCH_HYPERPARAMETERS = ("arch_learning_rate", "amending_coefficient", "arch_gradient",
                          "warmup_epochs")


def declare_search_hyperparameters(hp, config, names=SEARCH_HYPERPARAMETERS,
                                   arch_gradients=("first_order", "second_order", "amended")):
    """Registers the tunable search options (defaults: `config`'s values). Hyperparameters
    already in `hp` (a user's Fixed, say) keep their definition."""
    declare = {
        "arch_learning_rate": lambda: hp.Float("arch_learning_rate", 1e-4, 1e-2, sampling="log",
                                               default=config.arch_learning_rate),
        "amending_coefficient": lambda: hp.Float("amending_coefficient", 0.0, 1.0,
                                                 default=config.amending_coefficient),
        "arch_gradient": lambda: hp.Choice(
            "arch_gradient", list(dict.fromkeys([config.arch_gradient, *arch_gradients])),
            default=config.arch_gradient),
        "warmup_epochs": lambda: (hp.Int("warmup_epochs", 0, config.epochs - 1,
                                         default=min(config.warmup_epochs, config.epochs - 1))
                                  if config.epochs > 1 else hp.Fixed("warmup_epochs", 0)),
    }
    for name in names:
        if name not in declare:
            raise ValueError(f"cannot tune {name!r}; tunable: {', '.join(declare)}")
        declare[name]()
    return hp


def search_config_from_values(base_config, values):
    """`base_config` with every hyperparameter named like a SearchConfig field applied."""
    values = _values_of(values)
    fields = {f.name for f in dataclasses.fields(search.SearchConfig)}
    return dataclasses.replace(base_config, **{k: v for k, v in values.items() if k in fields})


class SearchTuner(kt.Tuner):
    """Tunes the search's hyperparameters with any keras-tuner oracle.

    Each trial runs `search.search` with `base_config` plus the trial's values (every
    hyperparameter named like a SearchConfig field; by default `SEARCH_HYPERPARAMETERS`,
    declared here) in the trial's directory, then scores the derived genotype by a short
    training of its NetworkCIFAR (`eval_*` settings) on the weights part of the search split,
    validated on the architecture part: metrics val_accuracy (the objective), val_loss,
    parameter_free_ops.
    """

    def __init__(self, oracle, base_config, *, tune=SEARCH_HYPERPARAMETERS,
                 arch_gradients=("first_order", "second_order", "amended"), eval_channels=16,
                 eval_layers=8, eval_epochs=2, eval_steps_per_epoch=None,
                 eval_validation_steps=None,
                 eval_batch_size=None,
                 eval_learning_rate=0.025, eval_momentum=0.9, eval_weight_decay=3e-4,
                 search_kwargs=None, **kwargs):
        self.base_config = base_config
        self.evaluation = dict(channels=eval_channels, layers=eval_layers, epochs=eval_epochs,
                               steps_per_epoch=eval_steps_per_epoch,
                               validation_steps=eval_validation_steps,
                               batch_size=eval_batch_size or base_config.batch_size,
                               learning_rate=eval_learning_rate, momentum=eval_momentum,
                               weight_decay=eval_weight_decay)
        self.search_kwargs = search_kwargs or {}
        hp = oracle.get_space()
        oracle.update_space(declare_search_hyperparameters(hp, base_config, tune,
                                                           arch_gradients))
        super().__init__(oracle, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        config = search_config_from_values(self.base_config, trial.hyperparameters)
        directory = os.path.join(self.get_trial_dir(trial.trial_id), "search")
        with open(os.devnull, "w") as quiet:
            options = {"render": False, "log_stream": quiet, "progress_stream": quiet,
                       **self.search_kwargs}
            result = search.search(config, directory, overwrite=True, **options)
        metrics = evaluate_genotype(result.genotype, config, **self.evaluation)
        metrics["parameter_free_ops"] = float(
            result.genotype.count_ops(operations.PARAMETER_FREE_OPS))
        return metrics


def evaluate_genotype(genotype, config, *, channels, layers, epochs, steps_per_epoch,
                      validation_steps, batch_size, learning_rate, momentum, weight_decay):
    """Short training of the genotype's NetworkCIFAR on the weights part of `config`'s search
    split; returns the last epoch's val_accuracy and val_loss on the architecture part."""
    train, validation, info = fit_datasets(
        config.dataset, batch_size, data_dir=config.data_dir, image_size=config.image_size,
        train_portion=config.train_portion, seed=config.seed, steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps)
    keras.utils.set_random_seed(config.seed)
    net = compile_network(model.NetworkCIFAR(genotype, channels, layers, info.num_classes),
                          learning_rate, momentum, weight_decay)
    history = net.fit(train, validation_data=validation, epochs=epochs, verbose=0)
    return {"val_accuracy": float(history.history["val_accuracy"][-1]),
            "val_loss": float(history.history["val_loss"][-1])}


def best_search_config(oracle_or_tuner, base_config):
    """The SearchConfig of the best trial."""
    oracle = getattr(oracle_or_tuner, "oracle", oracle_or_tuner)
    best = oracle.get_best_trials(1)
    if not best:
        raise ValueError("no trial has completed yet")
    return search_config_from_values(base_config, best[0].hyperparameters)
