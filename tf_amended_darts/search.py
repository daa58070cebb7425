"""The DARTS search loop (Liu et al.; Bi et al.'s amended architecture gradient).

`search(SearchConfig(...), output_dir)` runs the DARTS search protocol (Liu et al.,
arXiv:1806.09055, section 3; Bi et al., arXiv:1910.11831; docs/DESIGN.md): the training set
is split into a weights part and an architecture part (`train_portion`); every iteration takes
one architecture step (Adam on the alphas, gradient from the chosen estimator on a
(train, val) batch pair) and then one weight step (SGD with momentum on a train batch).

Optimisation details, as the reference (quark0/darts):
- weights: loop.sgd_weight_update (the global gradient clipped to norm `grad_clip` unless 0,
  plus `weight_decay * w` (coupled L2, as PyTorch's SGD weight_decay), SGD with momentum); its
  gradient and BatchNorm's new statistics come from the estimator's own traced pass
  (estimators.StatelessLosses.training_pass), so a search step's graph holds one
  forward/backward of the supernet, not two;
- alphas: gradient + `arch_weight_decay * alpha` (coupled, as PyTorch's Adam), then Adam;
- learning rate: cosine from `learning_rate` to `learning_rate_min` stepped PER EPOCH as the
  reference steps CosineAnnealingLR (epoch e of E uses min + (max - min) (1 + cos(pi (e + 1)
  / E)) / 2: the last epoch runs at the minimum);
- `warmup_epochs`: the first epochs train the weights only.
Distribution: batches are global (`batch_size`) and split over the replicas; gradients are
all-reduced to the global gradient before clipping and decay. Alphas are one mirrored variable
per cell slot, so every replica derives the same genotype. A step whose loss, gradients or
alphas are not finite is not applied and the search stops with loop.DivergedError.
The epoch loop, checkpoints, resume and summaries are loop.Runner's.

Outputs in `output_dir`: run.json (config, seed, flags, versions, the estimator that ran),
log.txt, genotype.json (every epoch, atomic), alphas_history.json, checkpoints/,
tensorboard/, and at the end genotype_*.dot/png/svg cell pictures (when graphviz is there).
`restore_search_network(output_dir)` rebuilds the supernet of a checkpoint (bin/diagnose.py).
"""

import dataclasses
import json
import os
from typing import NamedTuple, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import (
    checkpointing,
    data,
    distribute,
    errors,
    estimators,
    genotypes,
    io_utils,
    loop,
    operations,
    run_dir,
    search_model,
    search_space,
    visualize,
)
from tf_amended_darts import (
    options as options_lib,
)

KIND = "search"
HISTORY_FILE = "alphas_history.json"
GENOTYPE_FILE = "genotype.json"
LOG_FILE = "log.txt"
OUTPUTS = (HISTORY_FILE, GENOTYPE_FILE, LOG_FILE)


def _explain_estimator(name, value):
    del name
    return f"unknown estimator {value!r}; expected one of {', '.join(estimators.ESTIMATORS)}"


def _usable_amending_coefficient(value):
    try:
        estimators.amending_coefficient(value)
    except errors.InputError:
        return False
    return True


option = options_lib.option


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search's result (the run's identity in run.json). Each
    field declares an option (options.py): bin/search's flags, bin/tune's search flags and the
    study plan's "search" keys are these fields."""

    dataset: str = option("digits", options_lib.DATASET_HELP, "string", options_lib.NOT_EMPTY)
    data_dir: Optional[str] = option(
        None, "Directory of the dataset.", "string", options_lib.NOT_EMPTY
    )
    image_size: Optional[int] = option(
        None, "Resize images (tfds, image_folder).", "integer", options_lib.COUNT
    )
    train_portion: float = option(
        0.5,
        "Share of the training set that trains the weights; the rest trains the alphas.",
        "float",
        options_lib.number_in(0, 1, low_open=True, high_open=True),
    )
    search_space: str = option(
        "darts",
        "Preset: " + " | ".join(search_space.PRESETS) + ".",
        "string",
        options_lib.one_of(sorted(search_space.PRESETS)),
    )
    # overrides of the preset; None keeps its value
    operations: Optional[tuple] = option(None, "Override the preset's operations.", "list")
    nodes: Optional[int] = option(
        None, "Override the intermediate nodes per cell.", "integer", options_lib.COUNT
    )
    cells: Optional[int] = option(
        None, "Override the number of cells.", "integer", options_lib.CELLS
    )
    channels: Optional[int] = option(
        None, "Override the initial channels C.", "integer", options_lib.COUNT
    )
    arch_gradient: str = option(
        "amended",
        "first_order | second_order | amended | implicit.",
        "string",
        options_lib.Rule(
            lambda v: v in estimators.ESTIMATORS,
            f"must be one of {', '.join(estimators.ESTIMATORS)}",
            _explain_estimator,
        ),
    )
    amending_coefficient: Union[float, str] = option(
        0.1,
        "eta of the amended gradient: a number >= 0, or auto (at every step the eta for which "
        "eta A v is closest to A^-1 v, from the step's own Hessian product).",
        "string",
        options_lib.Rule(_usable_amending_coefficient, "must be auto or a finite number >= 0"),
    )
    products: str = option(
        "exact",
        "Hessian products: exact | finite_difference.",
        "string",
        options_lib.one_of(estimators.PRODUCTS),
    )
    sub_batches: int = option(
        1,
        "Sum the estimator's second-derivative products of L_train over this many sub-batches "
        "of the batch, one at a time: their activation memory is that of batch / sub_batches "
        "examples, for one more forward/backward per product; BatchNorm then normalises each "
        "sub-batch alone (docs/USAGE.md, 'Memory').",
        "integer",
        options_lib.COUNT,
    )
    implicit_iterations: int = option(
        20,
        "CG iterations of the implicit estimator (--arch_gradient=implicit; the cosines' "
        "reference).",
        "integer",
        options_lib.COUNT,
    )
    epochs: int = option(50, "Epochs.", "integer", options_lib.COUNT)
    steps_per_epoch: Optional[int] = option(
        None, "Cap on steps per epoch.", "integer", options_lib.COUNT
    )
    batch_size: int = option(64, "Global batch size.", "integer", options_lib.COUNT)
    learning_rate: float = option(
        0.025, "Weights: initial learning rate.", "float", options_lib.NONNEGATIVE
    )
    learning_rate_min: float = option(
        0.001, "Weights: final (cosine) rate.", "float", options_lib.NONNEGATIVE
    )
    momentum: float = option(0.9, "Weights: SGD momentum.", "float", options_lib.NONNEGATIVE)
    weight_decay: float = option(
        3e-4, "Weights: L2 weight decay.", "float", options_lib.NONNEGATIVE
    )
    grad_clip: float = option(5.0, "Weights: gradient norm clip.", "float", options_lib.NONNEGATIVE)
    arch_learning_rate: float = option(
        3e-4, "Alphas: Adam learning rate.", "float", options_lib.NONNEGATIVE
    )
    arch_beta_1: float = option(0.5, "Alphas: Adam beta_1.", "float", options_lib.SHARE)
    arch_beta_2: float = option(0.999, "Alphas: Adam beta_2.", "float", options_lib.SHARE)
    arch_weight_decay: float = option(
        1e-3, "Alphas: L2 weight decay.", "float", options_lib.NONNEGATIVE
    )
    warmup_epochs: int = option(
        0, "First epochs train the weights only.", "integer", options_lib.COUNT_OR_ZERO
    )
    seed: int = option(0, "Seed of initialisation and data order.", "integer", options_lib.SEED)
    validate: bool = option(True, "Evaluate on the architecture part per epoch.", "bool")
    # float16 | bfloat16 compute (operations.py); checked by operations.mixed_precision_dtype
    mixed_precision: Optional[str] = option(
        None,
        "Compute in float16 (with dynamic loss scaling) or bfloat16 (Keras mixed_<dtype>; "
        "variables, alphas, logits and losses stay float32); auto: float16 on a GPU, else "
        "bfloat16. Needs --products=exact (docs/USAGE.md, 'Mixed precision').",
        "mixed_precision",
    )

    def __post_init__(self):
        if self.operations is not None:
            object.__setattr__(self, "operations", tuple(self.operations))
        options_lib.check_fields(self)
        object.__setattr__(
            self, "amending_coefficient", estimators.amending_coefficient(self.amending_coefficient)
        )
        object.__setattr__(
            self, "mixed_precision", operations.config_mixed_precision(self.mixed_precision)
        )
        estimators.check_products_for_dtype(self.products, self.mixed_precision)
        if self.batch_size % self.sub_batches:
            raise errors.InputError(
                f"sub_batches {self.sub_batches} does not divide batch_size {self.batch_size}"
            )
        if self.learning_rate_min > self.learning_rate:
            raise errors.InputError(
                f"learning_rate_min {self.learning_rate_min} exceeds "
                f"learning_rate {self.learning_rate}"
            )

    def space(self):
        """The SearchSpace: the preset with the overrides applied (ValueError if invalid)."""
        changes = {
            "operations": self.operations,
            "nodes": self.nodes,
            "cells": self.cells,
            "channels": self.channels,
        }
        return search_space.get_search_space(self.search_space).replace(
            **{k: v for k, v in changes.items() if v is not None}
        )

    def estimator(self):
        params = {"products": self.products, "sub_batches": self.sub_batches}
        if self.arch_gradient == "amended":
            params["amending_coefficient"] = self.amending_coefficient
        if self.arch_gradient == "implicit":
            params["iterations"] = self.implicit_iterations
        return estimators.make_estimator(self.arch_gradient, **params)

    def build_network(self, num_classes, image_shape):
        """The supernet, built for images of `image_shape` (H, W, C)."""
        net = search_model.SearchNetwork(
            self.space(),
            num_classes,
            seed=self.seed,
            dtype=operations.dtype_policy(self.mixed_precision),
        )
        net.build((None,) + tuple(image_shape))
        return net

    def learning_rate_at(self, epoch):
        """The weights' learning rate in epoch `epoch` (0-based; see the module docstring)."""
        return loop.cosine_learning_rate(
            epoch, self.epochs, self.learning_rate, self.learning_rate_min
        )

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["operations"] = list(self.operations) if self.operations is not None else None
        return d


@dataclasses.dataclass
class SearchResult:
    genotype: genotypes.Genotype
    alphas: list  # logits per cell slot (numpy), arch_variables order
    global_step: int
    epoch: int  # epochs completed
    finished: bool  # False when stopped by stop_after_steps
    traces: dict  # tf.function traces per step function
    estimator: str
    images_per_second: float
    metrics: dict  # the last epoch's summary: lr, train_loss/acc, valid_loss/acc


def slot_names(space):
    """The alpha slots of `space` by name: normal_<i>, then reduce_<i>."""
    return [f"normal_{i}" for i in range(space.num_normal_slots)] + [
        f"reduce_{i}" for i in range(space.num_reduce_slots)
    ]


class _Searcher:
    """The model, the optimizers and the two step functions, built under a strategy."""

    def __init__(self, config, strategy, input_shape, num_classes, estimator=None):
        self.config, self.strategy = config, strategy
        self.estimator = estimator or config.estimator()  # search() passes the one it built
        self.replicas = strategy.num_replicas_in_sync
        self.traces = {"search_step": 0, "weight_step": 0}
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = config.build_network(num_classes, input_shape)
            self.weight_optimizer = loop.SGD(config.learning_rate, momentum=config.momentum)
            self.arch_optimizer = loop.Adam(
                config.arch_learning_rate,
                beta_1=config.arch_beta_1,
                beta_2=config.arch_beta_2,
                epsilon=1e-8,
            )
            # Slots built here: Keras 3.15 cannot create them lazily inside strategy.run.
            self.weight_optimizer.build(self.model.weight_variables)
            self.arch_optimizer.build(self.model.arch_variables)
            self.loss_scale = loop.LossScale() if config.mixed_precision == "float16" else None
        self.search_step = loop.step_function(self._search_step)
        self.weight_step = loop.step_function(self._weight_step)
        self.eval_step = loop.step_function(
            loop.evaluation_step(self.model, strategy), reduce_retracing=True
        )

    # -- replica functions
    def _losses(self):
        """The step's StatelessLosses: the estimator's passes and the weight step's run one
        traced forward/backward (estimators.StatelessLosses)."""
        scale = None if self.loss_scale is None else self.loss_scale.scale.read_value()
        return estimators.StatelessLosses(
            self.model, loop.cross_entropy, self.config.batch_size, scale
        )

    def _replica_weight_step(self, batch, losses, proceed=True, values=()):
        c = self.config
        _, y = batch
        # The alphas as they are now (after the architecture step), the rest as `losses` read them.
        arch = [tf.convert_to_tensor(a.value) for a in self.model.arch_variables]
        loss, grads, logits, non_trainable = losses.training_pass(losses.weights(), arch, batch)
        for variable, value in zip(self.model.non_trainable_variables, non_trainable):
            variable.assign(value)  # BatchNorm's moving statistics, as a Keras call would
        metrics = loop.sgd_weight_update(
            self.weight_optimizer,
            grads,
            loss,
            self.model.weight_variables,
            grad_clip=c.grad_clip,
            weight_decay=c.weight_decay,
            proceed=proceed,
            loss_scale=self.loss_scale,
            values=values,
        )
        metrics.update(train_loss=loss, train_correct=loop.correct_count(y, logits))
        return metrics

    def _replica_search_step(self, train_batch, val_batch):
        c = self.config
        alphas = self.model.arch_variables
        state = estimators.weight_state_from_keras_sgd(
            self.weight_optimizer, self.model.weight_variables, c.weight_decay
        )
        losses = self._losses()
        grads, diagnostics = self.estimator.estimate(
            self.model,
            loop.cross_entropy,
            train_batch,
            val_batch,
            weight_state=state,
            losses=losses,
        )
        grads = distribute.all_reduce_sum(grads)
        norm = tf.linalg.global_norm(grads)
        grads = [g + c.arch_weight_decay * a for g, a in zip(grads, alphas)]
        finite = loop.all_finite(norm, diagnostics["val_loss"])
        loop.apply_if_finite(self.arch_optimizer, grads, alphas, finite)
        # The weight step runs at the updated alphas; a bad architecture step stops it too
        # (under a loss scale, an overflow of either skips the weight update; non-finite
        # losses or alphas are a divergence).
        metrics = self._replica_weight_step(
            train_batch,
            losses,
            proceed=tf.logical_and(finite, loop.all_finite(*alphas)),
            values=[v for k, v in diagnostics.items() if k.endswith("_loss")] + alphas,
        )
        # Diagnostics are global on every replica: divide so that the SUM below is right.
        diagnostics = {**diagnostics, "grad_norm": norm}
        metrics.update({f"arch/{k}": v / self.replicas for k, v in diagnostics.items()})
        return metrics

    # -- tf.functions (each traced once per run)
    def _search_step(self, train_batch, val_batch):
        self.traces["search_step"] += 1
        return loop.reduce_sum(
            self.strategy,
            self.strategy.run(self._replica_search_step, args=(train_batch, val_batch)),
        )

    def _weight_step(self, train_batch):
        self.traces["weight_step"] += 1
        return loop.reduce_sum(
            self.strategy,
            self.strategy.run(
                lambda batch: self._replica_weight_step(batch, self._losses()), args=(train_batch,)
            ),
        )


class _History:
    """alphas_history.json: {"operations", "slots", "records": [{epoch, step, probabilities}]}."""

    def __init__(self, path, operations_, slots):
        self.path = path
        self.data = {"operations": list(operations_), "slots": slots, "records": []}

    def load(self, until_epoch):
        if os.path.exists(self.path):
            with open(self.path) as f:
                records = json.load(f).get("records", [])
            self.data["records"] = [r for r in records if r["epoch"] <= until_epoch]

    def add(self, epoch, step, probabilities, write=True):
        self.data["records"] = [r for r in self.data["records"] if r["epoch"] != epoch]
        self.data["records"].append(
            {
                "epoch": int(epoch),
                "step": int(step),
                "probabilities": [np.asarray(p).tolist() for p in probabilities],
            }
        )
        if write:
            io_utils.write_atomic(self.path, json.dumps(self.data) + "\n")


class _SearchData(NamedTuple):
    """The dataset of a search, split into its weights and architecture parts."""

    info: data.DatasetInfo
    parts: tuple  # (weights part, architecture part)
    sizes: tuple  # their numbers of examples
    steps_per_epoch: int


def _search_data(config, download):
    """The split of `config`'s training set, and the steps of an epoch through both parts."""
    dataset = data.load_dataset(
        config.dataset, config.data_dir, download, image_size=config.image_size
    )
    info = dataset.info
    if None in info.image_shape:
        raise errors.InputError(f"images of {config.dataset} vary in size: set image_size")
    parts = data.search_split(dataset.train, info.num_examples["train"], config.train_portion)
    n_weights = int(np.floor(config.train_portion * info.num_examples["train"]))
    n_arch = info.num_examples["train"] - n_weights
    steps_per_epoch = min(n_weights, n_arch) // config.batch_size
    if steps_per_epoch < 1:
        raise errors.InputError(
            f"batch size {config.batch_size} exceeds a part of the "
            f"split ({n_weights} / {n_arch} examples)"
        )
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch or steps_per_epoch)
    return _SearchData(info, parts, (n_weights, n_arch), steps_per_epoch)


def search(config, output_dir, strategy=None, *, render=True, epoch_callback=None, **control):
    """Runs (or resumes) a search; returns a SearchResult.

    Args:
      config: SearchConfig.
      output_dir: where outputs go (see module docstring); a directory holding another run is
        refused unless `overwrite`; one holding this run is continued with `resume`.
      strategy: a tf.distribute strategy (default: the current/default one).
      render: draw the final genotype's cells (graphviz).
      epoch_callback: called at the end of every epoch, after validation and before the
        epoch's checkpoint, as `epoch_callback(epoch=epochs done, run=RestoredSearch of the
        live search (checkpoint None), line=the epoch's metrics)`; returns a dict of extra
        scalar metrics merged into the epoch's log line and TensorBoard `epoch/<name>`.
        An epoch interrupted before its checkpoint runs again on resume, callback included.
      **control: loop.RunControl's fields: resume, overwrite, checkpoint_every,
        stop_after_steps, metrics_every, download, flags (recorded in run.json), log_stream,
        progress_stream.
    """
    control = loop.RunControl(**control)
    strategy = strategy or tf.distribute.get_strategy()
    distribute.check_global_batch(config.batch_size, strategy)
    config.space()  # an invalid search space fails before the estimator and the data
    estimator = config.estimator()
    split = _search_data(config, control.download)
    runner = loop.Runner(
        output_dir,
        strategy,
        control,
        kind=KIND,
        config=config.to_dict(),
        owned=OUTPUTS + ("genotype_*",),
    )
    with runner:
        searcher = _Searcher(
            config, strategy, split.info.image_shape, split.info.num_classes, estimator
        )
        history = _start_search(runner, searcher, split)
        outcome = runner.run(
            _SearchEpochs(searcher, runner, history, split, epoch_callback),
            loop.Schedule(config.epochs, split.steps_per_epoch, config.batch_size),
            divergence_hint="lower learning_rate or arch_learning_rate",
            memory_hint=_memory_hint(config, estimator),
        )
        genotype = searcher.model.genotype()
        _finish_search(runner, searcher, genotype, outcome, render)
    return SearchResult(
        genotype=genotype,
        alphas=[keras.ops.convert_to_numpy(a) for a in searcher.model.arch_variables],
        global_step=outcome.global_step,
        epoch=outcome.epoch,
        finished=outcome.epoch >= config.epochs,
        traces=dict(searcher.traces),
        estimator=estimator.name,
        images_per_second=outcome.images_per_second,
        metrics=outcome.line,
    )


def _start_search(runner, searcher, split):
    """Restores the newest checkpoint when resuming, writes run.json and the search's first
    log lines; returns its alphas' _History (the initial alphas as epoch 0 when new)."""
    config, model, estimator = searcher.config, searcher.model, searcher.estimator
    space, info = model.search_space, split.info
    restored = runner.start(
        dict(
            network=checkpointing.named_variables(model),
            weight_optimizer=searcher.weight_optimizer,
            arch_optimizer=searcher.arch_optimizer,
            loss_scale=searcher.loss_scale,
        ),
        {
            "estimator": repr(estimator),
            "strategy": distribute.describe(searcher.strategy),
            "search_space": space.to_dict(),
            "dataset_info": data.dataset_info_dict(info),
        },
    )
    history = _History(
        os.path.join(runner.output_dir, HISTORY_FILE), space.operations, slot_names(space)
    )
    runner.log(
        f"search: {config.dataset} {info.image_shape}, {info.num_classes} "
        f"classes, split {split.sizes[0]}/{split.sizes[1]}, {split.steps_per_epoch} "
        f"steps/epoch x {config.epochs} epochs, global batch {config.batch_size}, "
        f"{distribute.describe(searcher.strategy)}"
    )
    runner.log(
        f"architecture gradient: {estimator!r} (estimator '{estimator.name}' runs; "
        f"warm-up epochs {config.warmup_epochs})"
    )
    if restored:
        history.load(runner.epoch)
        runner.log_resumed(restored)
    else:
        history.add(0, 0, model.alpha_probabilities(), write=runner.chief)
    with runner.writer.as_default():
        run_dir.write_text("genotype/estimator", repr(estimator), step=runner.global_step)
    return history


def _finish_search(runner, searcher, genotype, outcome, render):
    """genotype.json of the run's end; when the search finished, its last log line and (with
    `render`) the cell pictures."""
    config, estimator = searcher.config, searcher.estimator
    if runner.chief:
        genotypes.write_genotype(genotype, os.path.join(runner.output_dir, GENOTYPE_FILE))
    if outcome.stopped:
        return
    runner.log(
        f"search finished: {config.epochs} epochs, {outcome.global_step} "
        f"steps, {outcome.images_per_second:.1f} images/s, estimator "
        f"{estimator.name}; genotype: {genotype.to_string()}"
    )
    if runner.chief and render:
        try:
            visualize.render_genotype(genotype, os.path.join(runner.output_dir, "genotype"))
        except visualize.VisualizeError as e:
            runner.log(f"warning: no cell pictures: {e}")


def _memory_hint(config, estimator):
    """What a search step that ran out of memory is, and what makes it smaller."""
    step = (
        f"the {estimator.name} search step at batch_size {config.batch_size}, sub_batches "
        f"{config.sub_batches}"
    )
    if estimator.name == "first_order":
        return f"{step}: lower batch_size"
    # sub_batches splits the second-derivative products, whose activations dominate.
    return f"{step}: raise sub_batches (a divisor of batch_size) or lower batch_size"


class _SearchEpochs:
    """The search's side of loop.Runner: an epoch's step and batches, the end of an epoch."""

    def __init__(self, searcher, runner, history, split, epoch_callback):
        self.config, self.searcher, self.runner = searcher.config, searcher, runner
        self.history, self.info, self.parts = history, split.info, split.parts
        self.steps_per_epoch, self.epoch_callback = split.steps_per_epoch, epoch_callback

    def start_epoch(self, epoch, skip_batches):
        c, searcher = self.config, self.searcher
        lr = c.learning_rate_at(epoch)
        searcher.weight_optimizer.learning_rate.assign(lr)
        batches = [
            distribute.distribute_dataset(
                searcher.strategy,
                data.epoch_batches(
                    part,
                    c.batch_size,
                    mean=self.info.mean,
                    std=self.info.std,
                    seed=2 * c.seed + k,
                    epoch=epoch,
                    augmentation=data.default_augmentation(self.info),
                    skip_batches=skip_batches,
                ).take(self.steps_per_epoch - skip_batches),
            )
            for k, part in enumerate(self.parts)
        ]
        warmup = epoch < c.warmup_epochs
        auto = getattr(searcher.estimator, "amending_coefficient", None) == estimators.AUTO
        step = (
            (lambda pair: searcher.weight_step(pair[0]))
            if warmup
            else (lambda pair: searcher.search_step(*pair))
        )
        return loop.Epoch(
            step=step,
            batches=zip(*batches),
            scalars={"lr": lr},
            note=" (warm-up: weights only)" if warmup else "",
            # amended's `auto`: the coefficient it chose, per epoch (mean, min, max)
            ranges=("arch/amending_coefficient",) if auto and not warmup else (),
        )

    def end_epoch(self, epochs_done, global_step, line):
        c, model, space = self.config, self.searcher.model, self.searcher.model.search_space
        if c.validate:
            line.update(
                loop.validate(
                    self.searcher.eval_step,
                    self.searcher.strategy,
                    self.parts[1],
                    self.info,
                    c.batch_size,
                )
            )
        if self.epoch_callback is not None:
            live = RestoredSearch(
                c,
                model,
                self.searcher.weight_optimizer,
                data.dataset_info_dict(self.info),
                None,
                global_step,
            )
            line.update(self.epoch_callback(epoch=epochs_done, run=live, line=dict(line)))
        genotype = model.genotype()
        probabilities = model.alpha_probabilities()
        parameter_free = genotype.count_ops(operations.PARAMETER_FREE_OPS)
        self.history.add(epochs_done, global_step, probabilities, write=self.runner.chief)
        if self.runner.chief:
            genotypes.write_genotype(genotype, os.path.join(self.runner.output_dir, GENOTYPE_FILE))
        _epoch_summaries(genotype, probabilities, parameter_free, space, epochs_done, global_step)
        return f" parameter_free_ops={parameter_free} genotype={genotype.to_string()}"


class RestoredSearch(NamedTuple):
    """A search checkpoint, restored by restore_search_network (or the live search, which
    search's epoch_callback receives)."""

    config: SearchConfig
    network: keras.Model  # the SearchNetwork: weights, BatchNorm statistics, alphas
    weight_optimizer: keras.optimizers.Optimizer  # SGD: learning rate, momentum buffers
    dataset_info: dict  # as run.json records it (data.dataset_info_dict)
    checkpoint: str  # the path prefix restored (None: the live search, epoch_callback)
    global_step: int


def restore_search_network(directory, checkpoint=None):
    """The supernet (and weight optimizer) of the search run in `directory` at `checkpoint`
    (a path prefix; default: the latest), as a RestoredSearch.

    Raises ValueError when `directory` holds no search run, CheckpointError when it holds no
    checkpoint or the checkpoint is unreadable or does not fit the run's supernet.
    """
    meta = run_dir.read_metadata(directory)
    if meta is None or meta.get("kind") != KIND:
        raise errors.InputError(
            f"{directory} holds no search run (no run.json of kind "
            f"{KIND!r}); pass the output_dir of a search"
        )
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    config = SearchConfig(**{k: v for k, v in meta["config"].items() if k in names})
    info = meta["dataset_info"]
    net = config.build_network(info["num_classes"], info["image_shape"])
    optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    optimizer.build(net.weight_variables)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    path = checkpointing.restore_checkpoint(
        directory,
        f"the supernet of the search in {directory}",
        checkpoint,
        network=checkpointing.named_variables(net),
        weight_optimizer=optimizer,
        global_step=global_step,
    )
    return RestoredSearch(config, net, optimizer, info, path, int(global_step.numpy()))


def architecture_batch(config, examples):
    """The first `examples` images (normalised) and labels of the architecture part of the
    search `config` (a SearchConfig): a fixed batch for per-epoch measurements."""
    ds = data.load_dataset(config.dataset, config.data_dir, image_size=config.image_size)
    _, arch_part = data.search_split(ds.train, ds.info.num_examples["train"], config.train_portion)
    return next(iter(data.eval_batches(arch_part, examples, mean=ds.info.mean, std=ds.info.std)))


def _epoch_summaries(genotype, probabilities, parameter_free, space, epoch, step):
    run_dir.write_scalar("epoch/parameter_free_ops", parameter_free, step=step)
    run_dir.write_text("genotype/text", genotype.to_string(), step=step)
    for name, p in zip(slot_names(space), probabilities):
        image = visualize.alpha_heatmap(p, space.operations, f"{name} epoch {epoch}")
        run_dir.write_image(f"alphas/{name}", image, step)
