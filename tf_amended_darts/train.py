"""Re-training a derived architecture from scratch (the DARTS evaluation protocol).

`train(TrainConfig(genotype=..., ...), output_dir)` builds the CIFAR or ImageNet network of
model.py and trains it with the loop the search uses too (loop.Runner): global batches split
over the replicas of a tf.distribute strategy, the weight update loop.sgd_weight_update
(gradients all-reduced, clipped to norm `grad_clip` unless 0, coupled L2 `weight_decay * w`,
SGD with momentum); the learning rate is set per epoch as the reference steps its schedulers
(`cosine` to `learning_rate_min` as CosineAnnealingLR, or `exponential`: learning_rate *
lr_decay^(epoch + 1) as the ImageNet StepLR(1, 0.97); epoch counted from 0); drop-path
probability `drop_path * epoch / epochs`; auxiliary loss weight `auxiliary_weight`; label
smoothing. A step whose loss or gradients are not finite is not applied and the run stops
with loop.DivergedError.

Outputs in `output_dir`: run.json (config with the genotype, dataset info, flags, versions),
log.txt, checkpoints/ (weights, optimizer, position (epoch, step)), tensorboard/;
with `export_dir` a SavedModel at the end (export.py). `restore_network(run_dir)` rebuilds the
trained network (without auxiliary head) for evaluation and export.
"""

import dataclasses
import json
from typing import Optional

import keras
import tensorflow as tf

from tf_amended_darts import (
    checkpointing,
    data,
    distribute,
    errors,
    export,
    genotypes,
    loop,
    operations,
    profiling,
    run_dir,
)
from tf_amended_darts import model as model_lib
from tf_amended_darts import (
    options as options_lib,
)

LOG_FILE = "log.txt"
KIND = "train"


option = options_lib.option


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (its identity in run.json). Each
    field but the genotype declares an option (options.py): bin/train's flags, bin/tune's
    --eval_* flags and the study plan's "retrain" keys are these fields."""

    # a Genotype, or anything load_genotype accepts
    genotype: genotypes.Genotype = option(
        None, "Published name, JSON file or DARTS string.", "string", options_lib.NOT_EMPTY
    )
    network: str = option("cifar", "Network layout.", "enum", choices=tuple(model_lib.NETWORKS))
    dataset: str = option("digits", options_lib.DATASET_HELP, "string", options_lib.NOT_EMPTY)
    data_dir: Optional[str] = option(
        None, "Directory of the dataset.", "string", options_lib.NOT_EMPTY
    )
    image_size: Optional[int] = option(
        None, "Resize images (tfds, image_folder).", "integer", options_lib.COUNT
    )
    channels: int = option(36, "Initial channels C.", "integer", options_lib.COUNT)
    cells: int = option(
        20,
        "Number of cells.",
        "integer",
        options_lib.Rule(
            options_lib.CELLS.check,
            options_lib.CELLS.message,
            lambda name, v: f"{name} must be at least 3 (two are reduction cells), got {v!r}",
        ),
    )
    auxiliary: bool = option(True, "Auxiliary head at 2/3 depth.", "bool")
    auxiliary_weight: float = option(0.4, "Weight of its loss.", "float", options_lib.NONNEGATIVE)
    drop_path: float = option(
        0.2, "Final drop-path probability (linear ramp).", "float", options_lib.SHARE
    )
    cutout: int = option(16, "Cutout square side (0: none).", "integer", options_lib.COUNT_OR_ZERO)
    epochs: int = option(600, "Epochs.", "integer", options_lib.COUNT)
    steps_per_epoch: Optional[int] = option(
        None, "Cap on steps per epoch.", "integer", options_lib.COUNT
    )
    batch_size: int = option(96, "Global batch size.", "integer", options_lib.COUNT)
    learning_rate: float = option(0.025, "Initial learning rate.", "float", options_lib.NONNEGATIVE)
    lr_schedule: str = option(
        "cosine",
        "Per-epoch schedule: cosine to --learning_rate_min, or exponential decay by --lr_decay "
        "per epoch.",
        "enum",
        choices=("cosine", "exponential"),
    )
    learning_rate_min: float = option(
        0.0, "Final rate of the cosine schedule.", "float", options_lib.NONNEGATIVE
    )
    lr_decay: float = option(
        0.97, "Per-epoch factor of the exponential one.", "float", options_lib.NONNEGATIVE
    )
    momentum: float = option(0.9, "SGD momentum.", "float", options_lib.NONNEGATIVE)
    weight_decay: float = option(3e-4, "L2 weight decay.", "float", options_lib.NONNEGATIVE)
    grad_clip: float = option(
        5.0, "Gradient norm clip (0: none).", "float", options_lib.NONNEGATIVE
    )
    label_smoothing: float = option(0.0, "Label smoothing.", "float", options_lib.SHARE)
    seed: int = option(
        0, "Seed of initialisation, data order, drop-path.", "integer", options_lib.SEED
    )
    validate: bool = option(True, "Evaluate every epoch.", "bool")
    # What a choice between architectures (keras-tuner trials) must be scored on.
    validation_split: float = option(
        0.0,
        "Fraction of the training split held out to validate on (0: the test split).",
        "float",
        options_lib.SHARE,
    )
    # float16 | bfloat16 compute (operations.py); checked by operations.mixed_precision_dtype
    mixed_precision: Optional[str] = option(
        None,
        "Compute in float16 (with dynamic loss scaling) or bfloat16 (Keras mixed_<dtype>; "
        "variables, logits and losses stay float32); auto: float16 on a GPU, else bfloat16. "
        "The exported SavedModel computes as trained.",
        "mixed_precision",
    )

    def __post_init__(self):
        g = self.genotype
        if g is None:
            raise errors.InputError("a genotype is required (published name, JSON file or text)")
        if isinstance(g, dict):
            g = genotypes.Genotype.from_dict(g)
        elif not isinstance(g, genotypes.Genotype):
            g = genotypes.load_genotype(str(g))
        object.__setattr__(self, "genotype", g)
        options_lib.check_fields(self)
        object.__setattr__(
            self, "mixed_precision", operations.config_mixed_precision(self.mixed_precision)
        )

    def learning_rate_at(self, epoch):
        """The learning rate of epoch `epoch` (0-based; see the module docstring)."""
        if self.lr_schedule == "exponential":
            return loop.exponential_learning_rate(epoch, self.learning_rate, self.lr_decay)
        return loop.cosine_learning_rate(
            epoch, self.epochs, self.learning_rate, self.learning_rate_min
        )

    def drop_path_at(self, epoch):
        return self.drop_path * epoch / self.epochs

    def build_network(self, num_classes, image_shape, auxiliary=None):
        """The network, built for images of `image_shape` (H, W, C)."""
        net = model_lib.NETWORKS[self.network](
            self.genotype,
            channels=self.channels,
            cells=self.cells,
            num_classes=num_classes,
            auxiliary=self.auxiliary if auxiliary is None else auxiliary,
            dtype=operations.dtype_policy(self.mixed_precision),
        )
        net.build((None,) + tuple(image_shape))
        return net

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["genotype"] = self.genotype.to_dict()
        return json.loads(json.dumps(d))  # JSON-normal (lists, not tuples), as run.json holds

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    global_step: int
    epoch: int  # epochs completed
    finished: bool  # False when stopped by stop_after_steps
    traces: dict
    learning_rates: dict  # epoch -> learning rate used in this process
    train_loss: float  # mean loss of the last epoch run (auxiliary term included)
    valid: dict  # last validation metrics (empty without validate)
    images_per_second: float


def _loss_fn(config, num_classes):
    def loss(labels, logits):
        if not config.label_smoothing:
            return loop.cross_entropy(labels, logits)
        return keras.losses.categorical_crossentropy(
            tf.one_hot(labels, num_classes),
            logits,
            from_logits=True,
            label_smoothing=config.label_smoothing,
        )

    return loss


class _Trainer:
    """The network, its optimizer, the train and eval step functions, under a strategy."""

    def __init__(self, config, strategy, image_shape, num_classes):
        self.config, self.strategy = config, strategy
        self.replicas = strategy.num_replicas_in_sync
        self.loss = _loss_fn(config, num_classes)
        self.traces = {"train_step": 0}
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = config.build_network(num_classes, image_shape)
            self.optimizer = loop.SGD(config.learning_rate, momentum=config.momentum)
            # Slots built here: Keras 3.15 cannot create them lazily inside strategy.run.
            self.optimizer.build(self.model.trainable_variables)
            self.loss_scale = loop.LossScale() if config.mixed_precision == "float16" else None
        self.train_step = loop.step_function(self._train_step)
        self.eval_step = loop.step_function(
            loop.evaluation_step(self.model, strategy), reduce_retracing=True
        )

    def _replica_step(self, batch):
        c, x, y = self.config, batch[0], batch[1]
        with tf.GradientTape() as tape:
            if c.auxiliary:
                logits, aux_logits = self.model(x, training=True, return_aux=True)
                per_example = self.loss(y, logits) + c.auxiliary_weight * self.loss(y, aux_logits)
            else:
                logits = self.model(x, training=True)
                per_example = self.loss(y, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=c.batch_size)
        weights = self.model.trainable_variables
        metrics = loop.sgd_weight_update(
            self.optimizer,
            loop.weight_gradients(tape, loss, weights, self.loss_scale),
            loss,
            weights,
            grad_clip=c.grad_clip,
            weight_decay=c.weight_decay,
            loss_scale=self.loss_scale,
        )
        metrics.update(train_loss=loss, train_correct=loop.correct_count(y, logits))
        return metrics

    def _train_step(self, batch):
        self.traces["train_step"] += 1
        return loop.reduce_sum(self.strategy, self.strategy.run(self._replica_step, args=(batch,)))


def _training_data(config, download):
    """(dataset, augmentation, steps_per_epoch) of `config`; with `validation_split`, its
    test split is the part of the training split held out."""
    dataset, augmentation = data.load_for_training(
        config.network, config.dataset, config.data_dir, download, config.image_size, config.cutout
    )
    info = dataset.info
    if None in info.image_shape:
        raise errors.InputError(f"images of {config.dataset} vary in size: set image_size")
    num_train = info.num_examples["train"]
    if config.validation_split:
        if config.network != "cifar":
            raise errors.InputError("validation_split needs the cifar network's protocol")
        kept = 1 - config.validation_split
        train_part, held_out = data.search_split(dataset.train, num_train, kept)
        dataset = dataclasses.replace(dataset, train=train_part, test=held_out)
        num_train = int(kept * num_train)  # as search_split counts (floor)
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch < 1:
        raise errors.InputError(
            f"batch size {config.batch_size} exceeds the {num_train} training examples"
        )
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch or steps_per_epoch)
    return dataset, augmentation, steps_per_epoch


def train(config, output_dir, strategy=None, *, export_dir=None, **control):
    """Runs (or resumes) a training run; returns a TrainResult.

    Arguments as search.search (`**control`: loop.RunControl's fields); `export_dir`: write a
    SavedModel there when training ends (refused up front if it exists, unless `overwrite`).
    """
    control = loop.RunControl(**control)
    strategy = strategy or tf.distribute.get_strategy()
    distribute.check_global_batch(config.batch_size, strategy)
    if export_dir and distribute.is_chief(strategy):
        export.check_export_dir(export_dir, control.overwrite, runs=(output_dir,))
    dataset, augmentation, steps_per_epoch = _training_data(config, control.download)
    info = dataset.info
    runner = loop.Runner(
        output_dir, strategy, control, kind=KIND, config=config.to_dict(), owned=(LOG_FILE,)
    )
    with runner:
        trainer = _Trainer(config, strategy, info.image_shape, info.num_classes)
        _start_training(runner, trainer, info, steps_per_epoch)
        task = _TrainEpochs(config, trainer, dataset, augmentation, steps_per_epoch)
        outcome = runner.run(
            task,
            loop.Schedule(config.epochs, steps_per_epoch, config.batch_size),
            divergence_hint="lower learning_rate",
            memory_hint=f"the {config.network} training step at batch_size "
            f"{config.batch_size}: lower batch_size",
        )
        if not outcome.stopped:
            runner.log(
                f"training finished: {config.epochs} epochs, {outcome.global_step} "
                f"steps, {outcome.images_per_second:.1f} images/s"
            )
            if export_dir and runner.chief:
                export.export_network(
                    trainer.model,
                    export_dir,
                    config,
                    data.dataset_info_dict(info),
                    overwrite=control.overwrite,
                )
                runner.log(f"exported SavedModel to {export_dir}")
    return TrainResult(
        model=trainer.model,
        global_step=outcome.global_step,
        epoch=outcome.epoch,
        finished=not outcome.stopped,
        traces=dict(trainer.traces),
        learning_rates=task.learning_rates,
        train_loss=outcome.line.get("train_loss", float("nan")),
        valid=task.valid,
        images_per_second=outcome.images_per_second,
    )


def _start_training(runner, trainer, info, steps_per_epoch):
    """Restores the newest checkpoint when resuming, writes run.json and the run's first log
    lines."""
    config, model = trainer.config, trainer.model
    params = profiling.trainable_params(model, include_auxiliary=False)
    restored = runner.start(
        dict(
            network=checkpointing.named_variables(model),
            optimizer=trainer.optimizer,
            loss_scale=trainer.loss_scale,
        ),
        {
            "dataset_info": data.dataset_info_dict(info),
            "strategy": distribute.describe(trainer.strategy),
            "trainable_params": params,
        },
        records={"genotype": config.genotype.to_json()},
    )
    runner.log(
        f"train: {config.network} network, {config.cells} cells, "
        f"C={config.channels}, {params:,} parameters (auxiliary head excluded); "
        f"genotype {config.genotype.to_string()}"
    )
    runner.log(
        f"data: {config.dataset} {info.image_shape}, {info.num_classes} classes, "
        f"{steps_per_epoch} steps/epoch x {config.epochs} epochs, global batch "
        f"{config.batch_size}, {distribute.describe(trainer.strategy)}"
    )
    if restored:
        runner.log_resumed(restored)


class _TrainEpochs:
    """Re-training's side of loop.Runner: an epoch's step and batches, the end of an epoch."""

    def __init__(self, config, trainer, dataset, augmentation, steps_per_epoch):
        self.config, self.trainer, self.dataset = config, trainer, dataset
        self.steps_per_epoch = steps_per_epoch
        self.augmentation = augmentation  # data.load_for_training chooses it per network
        self.learning_rates, self.valid = {}, {}  # epoch -> rate in this process; last metrics

    def start_epoch(self, epoch, skip_batches):
        c, info = self.config, self.dataset.info
        lr = c.learning_rate_at(epoch)
        self.learning_rates[epoch] = lr
        self.trainer.optimizer.learning_rate.assign(lr)
        self.trainer.model.drop_path_rate.assign(c.drop_path_at(epoch))
        batches = distribute.distribute_dataset(
            self.trainer.strategy,
            data.epoch_batches(
                self.dataset.train,
                c.batch_size,
                mean=info.mean,
                std=info.std,
                seed=c.seed,
                epoch=epoch,
                augmentation=self.augmentation,
                skip_batches=skip_batches,
            ).take(self.steps_per_epoch - skip_batches),
        )
        return loop.Epoch(
            step=self.trainer.train_step,
            batches=batches,
            scalars={"lr": lr, "drop_path": c.drop_path_at(epoch)},
        )

    def end_epoch(self, epochs_done, global_step, line):
        if self.config.validate:
            self.valid = loop.validate(
                self.trainer.eval_step,
                self.trainer.strategy,
                self.dataset.test,
                self.dataset.info,
                self.config.batch_size,
            )
            line.update(self.valid)
        return ""


def restore_network(directory, checkpoint=None, genotype=None):
    """(config, dataset_info dict, network without auxiliary head, checkpoint path) of the
    training run in `directory`; `checkpoint`: a checkpoint path prefix (default: the latest).

    Raises ValueError when `directory` holds no training run or `genotype` (anything
    load_genotype accepts) is not the run's, CheckpointError when the checkpoint does not fit.
    """
    meta = run_dir.read_metadata(directory)
    if meta is None or meta.get("kind") != KIND:
        raise errors.InputError(
            f"{directory} holds no training run (no run.json of kind "
            f"{KIND!r}); pass the output_dir of a train run"
        )
    config = TrainConfig.from_dict(meta["config"])
    if genotype is not None:
        wanted = genotypes.load_genotype(genotype) if isinstance(genotype, str) else genotype
        if wanted != config.genotype:
            raise errors.InputError(
                f"the run in {directory} was trained with genotype "
                f"{config.genotype.to_string()}, not {wanted.to_string()}"
            )
    info = meta["dataset_info"]
    net = config.build_network(info["num_classes"], info["image_shape"], auxiliary=False)
    # The run's optimizer and auxiliary head are in the checkpoint too: they stay unread.
    path = checkpointing.restore_checkpoint(
        directory,
        f"the network of {directory} ({config.genotype.to_string()})",
        checkpoint,
        records={"genotype": config.genotype.to_json()},
        network=checkpointing.named_variables(net),
    )
    return config, info, net, path
