"""The DARTS search loop (Liu et al.; Bi et al.'s amended architecture gradient).

`search(SearchConfig(...), output_dir)` runs the protocol of docs (method.md): the training set
is split into a weights part and an architecture part (`train_portion`); every iteration takes
one architecture step (Adam on the alphas, gradient from the chosen estimator on a
(train, val) batch pair) and then one weight step (SGD with momentum on a train batch).

Optimisation details, as the reference (quark0/darts):
- weights: the global gradient is clipped to norm `grad_clip`, then `weight_decay * w` is added
  (coupled L2, as PyTorch's SGD weight_decay), then SGD with momentum;
- alphas: gradient + `arch_weight_decay * alpha` (coupled, as PyTorch's Adam), then Adam;
- learning rate: cosine from `learning_rate` to `learning_rate_min` stepped PER EPOCH as
  CosineAnnealingLR (epoch e of E uses min + (max - min) (1 + cos(pi e / E)) / 2);
- `warmup_epochs`: the first epochs train the weights only.
Distribution: batches are global (`batch_size`) and split over the replicas. Under a strategy
each replica's gradients are all-reduced to the global gradient here; clipping and decay act
on it, and `apply_gradients` (which SUMs over replicas itself) receives global / replicas.
Alphas are one mirrored variable per cell slot, so every replica derives the same genotype.

Outputs in `output_dir`: run.json (config, seed, flags, versions, the estimator that ran),
log.txt, genotype.json (every epoch, atomic), alphas_history.json, checkpoints/,
tensorboard/, and at the end genotype_*.dot/png/svg cell pictures (when graphviz is there).
`restore_search_network(output_dir)` rebuilds the supernet of a checkpoint (bin/diagnose.py).
"""

import dataclasses
import json
import math
import os
import sys
import time
from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import checkpointing, data, distribute, estimators, genotypes
from tf_amended_darts import io_utils, operations, run_dir, search_model, search_space
from tf_amended_darts import training, visualize

KIND = "search"
HISTORY_FILE = "alphas_history.json"
GENOTYPE_FILE = "genotype.json"
LOG_FILE = "log.txt"
OUTPUTS = (HISTORY_FILE, GENOTYPE_FILE, LOG_FILE)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search's result (the run's identity in run.json)."""
    dataset: str = "digits"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    train_portion: float = 0.5
    search_space: str = "darts"
    operations: Optional[tuple] = None     # overrides of the preset; None keeps its value
    nodes: Optional[int] = None
    cells: Optional[int] = None
    channels: Optional[int] = None
    arch_gradient: str = "amended"
    amending_coefficient: float = 0.1
    products: str = "exact"                # exact | finite_difference Hessian products
    implicit_iterations: int = 20          # CG iterations of arch_gradient=implicit
    epochs: int = 50
    steps_per_epoch: Optional[int] = None  # cap on the iterations of an epoch (None: all)
    batch_size: int = 64
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4
    arch_beta_1: float = 0.5
    arch_beta_2: float = 0.999
    arch_weight_decay: float = 1e-3
    warmup_epochs: int = 0
    seed: int = 0
    validate: bool = True                  # evaluate on the architecture part every epoch

    def __post_init__(self):
        if self.operations is not None:
            object.__setattr__(self, "operations", tuple(self.operations))
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "learning_rate_min", "momentum", "weight_decay",
                     "grad_clip", "arch_learning_rate", "arch_weight_decay",
                     "amending_coefficient", "warmup_epochs"):
            value = getattr(self, name)
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.learning_rate_min > self.learning_rate:
            raise ValueError(f"learning_rate_min {self.learning_rate_min} exceeds "
                             f"learning_rate {self.learning_rate}")
        if not 0 < self.train_portion < 1:
            raise ValueError(f"train_portion must be in (0, 1), got {self.train_portion}")
        if not (0 <= self.arch_beta_1 < 1 and 0 <= self.arch_beta_2 < 1):
            raise ValueError("arch_beta_1 and arch_beta_2 must be in [0, 1)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")

    def space(self):
        """The SearchSpace: the preset with the overrides applied (ValueError if invalid)."""
        changes = {"operations": self.operations, "steps": self.nodes,
                   "layers": self.cells, "init_channels": self.channels}
        return search_space.get_search_space(self.search_space).replace(
            **{k: v for k, v in changes.items() if v is not None})

    def estimator(self):
        params = {"products": self.products}
        if self.arch_gradient == "amended":
            params["eta"] = self.amending_coefficient
        if self.arch_gradient == "implicit":
            params["iterations"] = self.implicit_iterations
        return estimators.make_estimator(self.arch_gradient, **params)

    def learning_rate_at(self, epoch):
        """CosineAnnealingLR(T_max=epochs, eta_min=learning_rate_min), stepped per epoch."""
        cosine = (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        return self.learning_rate_min + (self.learning_rate - self.learning_rate_min) * cosine

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["operations"] = list(self.operations) if self.operations is not None else None
        return d


@dataclasses.dataclass
class SearchResult:
    genotype: genotypes.Genotype
    alphas: list                 # logits per cell slot (numpy), arch_variables order
    global_step: int
    epoch: int                   # epochs completed
    finished: bool               # False when stopped by stop_after_steps
    traces: dict                 # tf.function traces per step function
    estimator: str
    images_per_second: float
    metrics: dict                # the last epoch's summary: lr, train_loss/acc, valid_loss/acc


def _slot_names(space):
    return ([f"normal_{i}" for i in range(space.num_normal_slots)]
            + [f"reduce_{i}" for i in range(space.num_reduce_slots)])


class _Searcher:
    """The model, the optimizers and the two step functions, built under a strategy."""

    def __init__(self, config, strategy, input_shape, num_classes):
        self.config, self.strategy = config, strategy
        self.replicas = strategy.num_replicas_in_sync
        self.estimator = config.estimator()
        self.traces = {"search_step": 0, "weight_step": 0}
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = search_model.SearchNetwork(config.space(), num_classes, seed=config.seed)
            self.model.build((None,) + tuple(input_shape))
            self.weight_optimizer = keras.optimizers.SGD(config.learning_rate,
                                                         momentum=config.momentum)
            self.arch_optimizer = keras.optimizers.Adam(
                config.arch_learning_rate, beta_1=config.arch_beta_1,
                beta_2=config.arch_beta_2, epsilon=1e-8)
            self.weight_optimizer.build(self.model.weight_variables)  # keras#23085
            self.arch_optimizer.build(self.model.arch_variables)
        self.search_step = tf.function(self._search_step)
        self.weight_step = tf.function(self._weight_step)
        self.eval_step = tf.function(training.evaluation_step(self.model, strategy),
                                     reduce_retracing=True)

    # -- replica functions
    def _apply(self, optimizer, grads, variables):
        optimizer.apply_gradients(zip([g / self.replicas for g in grads], variables))

    def _replica_weight_step(self, batch):
        c = self.config
        x, y = batch
        weights = self.model.weight_variables
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.nn.compute_average_loss(training.cross_entropy(y, logits),
                                              global_batch_size=c.batch_size)
        grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads, norm = tf.clip_by_global_norm(distribute.all_reduce_sum(grads), c.grad_clip)
        grads = [g + c.weight_decay * w for g, w in zip(grads, weights)]
        self._apply(self.weight_optimizer, grads, weights)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(y, tf.int64)),
                                        tf.float32))
        return {"train_loss": loss, "train_correct": correct, "weight_grad_norm": norm}

    def _replica_search_step(self, train_batch, val_batch):
        c = self.config
        alphas = self.model.arch_variables
        state = estimators.weight_state_from_keras_sgd(
            self.weight_optimizer, self.model.weight_variables, c.weight_decay)
        grads, diagnostics = self.estimator.estimate(
            self.model, training.cross_entropy, train_batch, val_batch, weight_state=state,
            global_batch_size=c.batch_size)
        grads = [g + c.arch_weight_decay * a for g, a in zip(distribute.all_reduce_sum(grads), alphas)]
        self._apply(self.arch_optimizer, grads, alphas)
        metrics = self._replica_weight_step(train_batch)
        # Diagnostics are global on every replica: divide so that the SUM below is right.
        metrics.update({f"arch/{k}": v / self.replicas for k, v in diagnostics.items()})
        return metrics

    # -- tf.functions (each traced once per run)
    def _search_step(self, train_batch, val_batch):
        self.traces["search_step"] += 1
        return training.reduce_sum(self.strategy, self.strategy.run(
            self._replica_search_step, args=(train_batch, val_batch)))

    def _weight_step(self, train_batch):
        self.traces["weight_step"] += 1
        return training.reduce_sum(self.strategy, self.strategy.run(
            self._replica_weight_step, args=(train_batch,)))


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
        self.data["records"].append({"epoch": int(epoch), "step": int(step),
                                     "probabilities": [np.asarray(p).tolist()
                                                       for p in probabilities]})
        if write:
            io_utils.write_atomic(self.path, json.dumps(self.data) + "\n")


def search(config, output_dir, strategy=None, *, resume=False, overwrite=False,
           checkpoint_every=0, stop_after_steps=None, flags=None, progress_stream=None,
           render=True, log_stream=None, download=False):
    """Runs (or resumes) a search; returns a SearchResult.

    Args:
      config: SearchConfig.
      output_dir: where outputs go (see module docstring); a directory holding another run is
        refused unless `overwrite`; one holding this run is continued with `resume`.
      strategy: a tf.distribute strategy (default: the current/default one).
      checkpoint_every: also checkpoint every this many steps (0: only at epoch ends).
      stop_after_steps: stop (with a checkpoint) once the global step reaches this value.
      flags: dict of the command-line flags, recorded in run.json.
      download: tensorflow-datasets: build the dataset when it is missing.
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    distribute.check_global_batch(config.batch_size, strategy)
    space = config.space()
    estimator = config.estimator()
    dataset = data.load_dataset(config.dataset, config.data_dir, download,
                                 image_size=config.image_size)
    info = dataset.info
    if None in info.image_shape:
        raise ValueError(f"images of {config.dataset} vary in size: set image_size")
    weights_part, arch_part = data.search_split(dataset.train, info.num_examples["train"],
                                                config.train_portion)
    n_weights = int(np.floor(config.train_portion * info.num_examples["train"]))
    n_arch = info.num_examples["train"] - n_weights
    steps_per_epoch = min(n_weights, n_arch) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {config.batch_size} exceeds a part of the split "
                         f"({n_weights} / {n_arch} examples)")
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch or steps_per_epoch)

    resuming = (run_dir.prepare(output_dir, config.to_dict(), KIND, resume, overwrite,
                                owned=OUTPUTS + ("genotype_*",)) if chief
                else resume and os.path.isdir(output_dir))
    log_file = open(os.path.join(output_dir, LOG_FILE), "a") if chief else None

    def log(message):
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        print(line, file=log_stream or sys.stdout, flush=True)
        if log_file:
            log_file.write(line + "\n")
            log_file.flush()

    searcher = _Searcher(config, strategy, info.image_shape, info.num_classes)
    model = searcher.model
    position = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                for name in ("epoch", "step_in_epoch", "global_step")}
    seed_variable = tf.Variable(config.seed, dtype=tf.int64, trainable=False)
    checkpointer = checkpointing.Checkpointer(
        os.path.join(output_dir, run_dir.CHECKPOINT_DIR), strategy,
        network=checkpointing.named_variables(model),
        weight_optimizer=searcher.weight_optimizer, arch_optimizer=searcher.arch_optimizer,
        seed=seed_variable, **position)
    restored = checkpointer.restore(report=log) if resuming else None
    epoch, step_in_epoch, global_step = (int(position[k].numpy()) for k in
                                         ("epoch", "step_in_epoch", "global_step"))
    history = _History(os.path.join(output_dir, HISTORY_FILE), space.operations,
                       _slot_names(space))
    writer = run_dir.summary_writer(output_dir, chief)
    if chief:
        run_dir.write_metadata(output_dir, config.to_dict(), KIND, flags, {
            "estimator": repr(estimator), "strategy": distribute.describe(strategy),
            "search_space": space.to_dict(), "dataset_info": training.dataset_info_dict(info)})
    log(f"search: {config.dataset} {info.image_shape}, {info.num_classes} classes, "
        f"split {n_weights}/{n_arch}, {steps_per_epoch} steps/epoch x {config.epochs} epochs, "
        f"global batch {config.batch_size}, {distribute.describe(strategy)}")
    log(f"architecture gradient: {estimator!r} (estimator '{estimator.name}' runs; "
        f"warm-up epochs {config.warmup_epochs})")
    if restored:
        history.load(epoch)
        log(f"resumed from {restored}: epoch {epoch}, step {step_in_epoch} of the epoch, "
            f"global step {global_step}")
    else:
        history.add(0, 0, model.alpha_probabilities(), write=chief)
    total_steps = config.epochs * steps_per_epoch
    progress = run_dir.Progress(total_steps, config.batch_size, stream=progress_stream,
                                enabled=chief)
    stopped, line = False, {}
    with writer.as_default():
        run_dir.write_text("genotype/estimator", repr(estimator), step=global_step)
        while epoch < config.epochs and not stopped:
            lr = config.learning_rate_at(epoch)
            searcher.weight_optimizer.learning_rate.assign(lr)
            warmup = epoch < config.warmup_epochs
            batches = [distribute.distribute_dataset(strategy, data.epoch_batches(
                part, config.batch_size, mean=info.mean, std=info.std, seed=2 * config.seed + k,
                epoch=epoch, augmentation=data.default_augmentation(info),
                skip_batches=step_in_epoch).take(steps_per_epoch - step_in_epoch))
                for k, part in enumerate((weights_part, arch_part))]
            step = ((lambda pair: searcher.weight_step(pair[0])) if warmup
                    else (lambda pair: searcher.search_step(*pair)))
            summary, step_in_epoch, global_step, stopped = training.run_epoch(
                step, zip(*batches), lr=lr, batch_size=config.batch_size,
                steps_per_epoch=steps_per_epoch, epoch=epoch, step_in_epoch=step_in_epoch,
                global_step=global_step, progress=progress, checkpointer=checkpointer,
                position=position, checkpoint_every=checkpoint_every,
                stop_after_steps=stop_after_steps)
            if stopped and step_in_epoch < steps_per_epoch:
                break
            epoch, step_in_epoch = epoch + 1, 0
            line = {"lr": lr, **summary}
            if config.validate:
                line.update(training.validate(searcher.eval_step, strategy, arch_part, info, config.batch_size))
            genotype = model.genotype()
            probabilities = model.alpha_probabilities()
            parameter_free = genotype.count_ops(operations.PARAMETER_FREE_OPS)
            history.add(epoch, global_step, probabilities, write=chief)
            if chief:
                genotypes.write_genotype(genotype, os.path.join(output_dir, GENOTYPE_FILE))
            _epoch_summaries(line, genotype, probabilities, parameter_free, space, epoch,
                             global_step)
            training.save_position(checkpointer, position, epoch, 0, global_step)
            log(f"epoch {epoch}/{config.epochs}{' (warm-up: weights only)' if warmup else ''} "
                + " ".join(f"{k}={v:.4g}" for k, v in line.items())
                + f" parameter_free_ops={parameter_free} genotype={genotype.to_string()}")
    writer.flush()
    checkpointer.close()
    genotype = model.genotype()
    rate = progress.images_per_second(global_step)
    if chief:
        genotypes.write_genotype(genotype, os.path.join(output_dir, GENOTYPE_FILE))
    if stopped:
        log(f"stopped after global step {global_step} (checkpoint saved; --resume continues)")
    else:
        log(f"search finished: {config.epochs} epochs, {global_step} steps, "
            f"{rate:.1f} images/s, estimator {estimator.name}; genotype: {genotype.to_string()}")
        if chief and render:
            try:
                visualize.render_genotype(genotype, os.path.join(output_dir, "genotype"))
            except visualize.VisualizeError as e:
                log(f"warning: no cell pictures: {e}")
    if log_file:
        log_file.close()
    run_dir.release(output_dir)
    return SearchResult(genotype=genotype,
                        alphas=[keras.ops.convert_to_numpy(a) for a in model.arch_variables],
                        global_step=global_step, epoch=epoch, finished=epoch >= config.epochs,
                        traces=dict(searcher.traces), estimator=estimator.name,
                        images_per_second=rate, metrics=line)


class RestoredSearch(NamedTuple):
    """A search checkpoint, restored by restore_search_network."""
    config: SearchConfig
    network: keras.Model         # the SearchNetwork: weights, BatchNorm statistics, alphas
    weight_optimizer: keras.optimizers.Optimizer  # SGD: learning rate, momentum buffers
    dataset_info: dict           # as run.json records it (training.dataset_info_dict)
    checkpoint: str              # the path prefix restored
    global_step: int


def restore_search_network(directory, checkpoint=None):
    """The supernet (and weight optimizer) of the search run in `directory` at `checkpoint`
    (a path prefix; default: the latest), as a RestoredSearch.

    Raises ValueError when `directory` holds no search run, CheckpointError when it holds no
    checkpoint or the checkpoint is unreadable or does not fit the run's supernet.
    """
    meta = run_dir.read_metadata(directory)
    if meta is None or meta.get("kind") != KIND:
        raise ValueError(f"{directory} holds no search run (no run.json of kind {KIND!r}); "
                         "pass the --output_dir of a search")
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    config = SearchConfig(**{k: v for k, v in meta["config"].items() if k in names})
    info = meta.get("dataset_info") or training.dataset_info_dict(data.load_dataset(
        config.dataset, config.data_dir, image_size=config.image_size).info)  # older runs
    net = search_model.SearchNetwork(config.space(), info["num_classes"], seed=config.seed)
    net.build((None,) + tuple(info["image_shape"]))
    optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    optimizer.build(net.weight_variables)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    path = checkpointing.restore_checkpoint(
        directory, f"the supernet of the search in {directory}", checkpoint,
        network=checkpointing.named_variables(net), weight_optimizer=optimizer,
        global_step=global_step)
    return RestoredSearch(config, net, optimizer, info, path, int(global_step.numpy()))


def _epoch_summaries(line, genotype, probabilities, parameter_free, space, epoch, step):
    for k, v in line.items():
        run_dir.write_scalar(f"epoch/{k}", v, step=step)
    run_dir.write_scalar("epoch/parameter_free_ops", parameter_free, step=step)
    run_dir.write_text("genotype/text", genotype.to_string(), step=step)
    for name, p in zip(_slot_names(space), probabilities):
        image = visualize.alpha_heatmap(p, space.operations, f"{name} epoch {epoch}")
        run_dir.write_image(f"alphas/{name}", image, step)
