"""Re-training a derived architecture from scratch (the DARTS evaluation protocol).

`train(TrainConfig(genotype=..., ...), output_dir)` builds the CIFAR or ImageNet network of
model.py and trains it with a custom loop shared with the search (search.py): global batches
split over the replicas of a tf.distribute strategy, gradients all-reduced, clipped to norm
`grad_clip`, coupled L2 `weight_decay * w` added, SGD with momentum; the learning rate is set
per epoch (`cosine` to `learning_rate_min` as CosineAnnealingLR, or `exponential`:
learning_rate * lr_decay^epoch as the ImageNet StepLR(1, 0.97)); drop-path probability
`drop_path * epoch / epochs`; auxiliary loss weight `auxiliary_weight`; label smoothing.

Outputs in `output_dir`: run.json (config with the genotype, dataset info, flags, versions),
log.txt, checkpoints/ (weights, optimizer, position (epoch, step), seed), tensorboard/;
with `export_dir` a SavedModel at the end (export.py). `restore_network(run_dir)` rebuilds the
trained network (without auxiliary head) for evaluation and export.
"""

import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

import keras
import tensorflow as tf

from tf_amended_darts import checkpointing, data, distribute, export, genotypes
from tf_amended_darts import model as model_lib
from tf_amended_darts import profiling, run_dir, training

LOG_FILE = "log.txt"
KIND = "train"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (its identity in run.json)."""
    genotype: genotypes.Genotype = None    # a Genotype, or anything load_genotype accepts
    network: str = "cifar"                 # cifar | imagenet
    dataset: str = "digits"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    channels: int = 36
    cells: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2                 # final drop-path probability (rises linearly)
    cutout: int = 16
    epochs: int = 600
    steps_per_epoch: Optional[int] = None  # cap on the steps of an epoch (None: all)
    batch_size: int = 96
    learning_rate: float = 0.025
    lr_schedule: str = "cosine"            # cosine | exponential
    learning_rate_min: float = 0.0
    lr_decay: float = 0.97
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0                 # 0: no clipping
    label_smoothing: float = 0.0
    seed: int = 0
    validate: bool = True                  # evaluate on the test split every epoch

    def __post_init__(self):
        g = self.genotype
        if g is None:
            raise ValueError("a genotype is required (published name, JSON file or text)")
        if isinstance(g, dict):
            g = genotypes.Genotype.from_dict(g)
        elif not isinstance(g, genotypes.Genotype):
            g = genotypes.load_genotype(str(g))
        object.__setattr__(self, "genotype", g)
        if self.network not in model_lib.NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; expected cifar or imagenet")
        if self.lr_schedule not in ("cosine", "exponential"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; expected cosine or "
                             "exponential")
        for name in ("epochs", "batch_size", "channels", "cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.cells < 3:
            raise ValueError(f"cells must be at least 3 (two are reduction cells), got "
                             f"{self.cells}")
        for name in ("auxiliary_weight", "learning_rate", "learning_rate_min", "lr_decay",
                     "momentum", "weight_decay", "grad_clip", "cutout"):
            value = getattr(self, name)
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("drop_path", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")

    def learning_rate_at(self, epoch):
        if self.lr_schedule == "exponential":
            return self.learning_rate * self.lr_decay ** epoch
        cosine = (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        return self.learning_rate_min + (self.learning_rate - self.learning_rate_min) * cosine

    def drop_path_at(self, epoch):
        return self.drop_path * epoch / self.epochs

    def build_network(self, num_classes, image_shape, auxiliary=None):
        """The network, built for images of `image_shape` (H, W, C)."""
        net = model_lib.NETWORKS[self.network](
            self.genotype, init_channels=self.channels, layers_count=self.cells,
            num_classes=num_classes, auxiliary=self.auxiliary if auxiliary is None else auxiliary)
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
    epoch: int                   # epochs completed
    finished: bool               # False when stopped by stop_after_steps
    traces: dict
    learning_rates: dict         # epoch -> learning rate used in this process
    train_loss: float            # mean loss of the last epoch run (auxiliary term included)
    valid: dict                  # last validation metrics (empty without validate)
    images_per_second: float


def _loss_fn(config, num_classes):
    def loss(labels, logits):
        if not config.label_smoothing:
            return training.cross_entropy(labels, logits)
        return keras.losses.categorical_crossentropy(
            tf.one_hot(labels, num_classes), logits, from_logits=True,
            label_smoothing=config.label_smoothing)
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
            self.optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
            self.optimizer.build(self.model.trainable_variables)  # keras#23085
        self.train_step = tf.function(self._train_step)
        self.eval_step = tf.function(training.evaluation_step(self.model, strategy),
                                     reduce_retracing=True)

    def _replica_step(self, batch):
        c, x, y = self.config, batch[0], batch[1]
        weights = self.model.trainable_variables
        with tf.GradientTape() as tape:
            if c.auxiliary:
                logits, aux_logits = self.model(x, training=True, return_aux=True)
                per_example = (self.loss(y, logits)
                               + c.auxiliary_weight * self.loss(y, aux_logits))
            else:
                logits = self.model(x, training=True)
                per_example = self.loss(y, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=c.batch_size)
        grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = distribute.all_reduce_sum(grads)
        norm = tf.linalg.global_norm(grads)
        if c.grad_clip:
            grads, _ = tf.clip_by_global_norm(grads, c.grad_clip, use_norm=norm)
        grads = [g + c.weight_decay * w for g, w in zip(grads, weights)]
        self.optimizer.apply_gradients(zip([g / self.replicas for g in grads], weights))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(y, tf.int64)),
                                        tf.float32))
        return {"train_loss": loss, "train_correct": correct, "weight_grad_norm": norm / self.replicas}

    def _train_step(self, batch):
        self.traces["train_step"] += 1
        return training.reduce_sum(self.strategy, self.strategy.run(
            self._replica_step, args=(batch,)))


def train(config, output_dir, strategy=None, *, resume=False, overwrite=False,
          checkpoint_every=0, stop_after_steps=None, flags=None, progress_stream=None,
          log_stream=None, download=False, export_dir=None):
    """Runs (or resumes) a training run; returns a TrainResult.

    Arguments as search.search; `export_dir`: write a SavedModel there when training ends
    (refused up front if it exists, unless `overwrite`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    distribute.check_global_batch(config.batch_size, strategy)
    if export_dir and chief:
        export.check_export_dir(export_dir, overwrite, runs=(output_dir,))
    dataset, augmentation = data.load_for_training(config.network, config.dataset,
                                                   config.data_dir, download,
                                                   config.image_size, config.cutout)
    info = dataset.info
    if None in info.image_shape:
        raise ValueError(f"images of {config.dataset} vary in size: set image_size")
    steps_per_epoch = info.num_examples["train"] // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {config.batch_size} exceeds the "
                         f"{info.num_examples['train']} training examples")
    steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch or steps_per_epoch)

    resuming = (run_dir.prepare(output_dir, config.to_dict(), KIND, resume, overwrite,
                                owned=(LOG_FILE,)) if chief
                else resume and os.path.isdir(output_dir))
    log_file = open(os.path.join(output_dir, LOG_FILE), "a") if chief else None

    def log(message):
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        print(line, file=log_stream or sys.stdout, flush=True)
        if log_file:
            log_file.write(line + "\n")
            log_file.flush()

    trainer = _Trainer(config, strategy, info.image_shape, info.num_classes)
    model = trainer.model
    params = profiling.trainable_params(model, include_auxiliary=False)
    position = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                for name in ("epoch", "step_in_epoch", "global_step")}
    checkpointer = checkpointing.Checkpointer(
        os.path.join(output_dir, run_dir.CHECKPOINT_DIR), strategy,
        records={"genotype": config.genotype.to_json()},
        network=checkpointing.named_variables(model), optimizer=trainer.optimizer,
        seed=tf.Variable(config.seed, dtype=tf.int64, trainable=False), **position)
    restored = checkpointer.restore(report=log) if resuming else None
    epoch, step_in_epoch, global_step = (int(position[k].numpy()) for k in
                                         ("epoch", "step_in_epoch", "global_step"))
    writer = run_dir.summary_writer(output_dir, chief)
    if chief:
        run_dir.write_metadata(output_dir, config.to_dict(), KIND, flags, {
            "dataset_info": training.dataset_info_dict(info),
            "strategy": distribute.describe(strategy), "trainable_params": params})
    log(f"train: {config.network} network, {config.cells} cells, C={config.channels}, "
        f"{params:,} parameters (auxiliary head excluded); genotype "
        f"{config.genotype.to_string()}")
    log(f"data: {config.dataset} {info.image_shape}, {info.num_classes} classes, "
        f"{steps_per_epoch} steps/epoch x {config.epochs} epochs, global batch "
        f"{config.batch_size}, {distribute.describe(strategy)}")
    if restored:
        log(f"resumed from {restored}: epoch {epoch}, step {step_in_epoch} of the epoch, "
            f"global step {global_step}")

    progress = run_dir.Progress(config.epochs * steps_per_epoch, config.batch_size,
                                stream=progress_stream, enabled=chief)
    stopped, learning_rates, line, valid = False, {}, {}, {}
    with writer.as_default():
        while epoch < config.epochs and not stopped:
            lr = config.learning_rate_at(epoch)
            learning_rates[epoch] = lr
            trainer.optimizer.learning_rate.assign(lr)
            model.drop_path_rate.assign(config.drop_path_at(epoch))
            batches = distribute.distribute_dataset(strategy, data.epoch_batches(
                dataset.train, config.batch_size, mean=info.mean, std=info.std,
                seed=config.seed, epoch=epoch, augmentation=augmentation,
                skip_batches=step_in_epoch).take(steps_per_epoch - step_in_epoch))
            summary, step_in_epoch, global_step, stopped = training.run_epoch(
                trainer.train_step, batches, lr=lr, batch_size=config.batch_size,
                steps_per_epoch=steps_per_epoch, epoch=epoch, step_in_epoch=step_in_epoch,
                global_step=global_step, progress=progress, checkpointer=checkpointer,
                position=position, checkpoint_every=checkpoint_every,
                stop_after_steps=stop_after_steps)
            if stopped and step_in_epoch < steps_per_epoch:
                break
            epoch, step_in_epoch = epoch + 1, 0
            line = {"lr": lr, "drop_path": config.drop_path_at(epoch - 1), **summary}
            if config.validate:
                valid = training.validate(trainer.eval_step, strategy, dataset.test, info,
                                         config.batch_size)
                line.update(valid)
            for k, v in line.items():
                run_dir.write_scalar(f"epoch/{k}", v, step=global_step)
            training.save_position(checkpointer, position, epoch, 0, global_step)
            log(f"epoch {epoch}/{config.epochs} "
                + " ".join(f"{k}={v:.4g}" for k, v in line.items()))
    writer.flush()
    checkpointer.close()
    rate = progress.images_per_second(global_step)
    if stopped:
        log(f"stopped after global step {global_step} (checkpoint saved; --resume continues)")
    else:
        log(f"training finished: {config.epochs} epochs, {global_step} steps, "
            f"{rate:.1f} images/s")
        if export_dir and chief:
            export.export_network(model, export_dir, config, training.dataset_info_dict(info),
                                  overwrite=overwrite)
            log(f"exported SavedModel to {export_dir}")
    if log_file:
        log_file.close()
    run_dir.release(output_dir)
    return TrainResult(model=model, global_step=global_step, epoch=epoch, finished=not stopped,
                       traces=dict(trainer.traces), learning_rates=learning_rates,
                       train_loss=line.get("train_loss", float("nan")), valid=valid,
                       images_per_second=rate)


def restore_network(directory, checkpoint=None, genotype=None):
    """(config, dataset_info dict, network without auxiliary head, checkpoint path) of the
    training run in `directory`; `checkpoint`: a checkpoint path prefix (default: the latest).

    Raises ValueError when `directory` holds no training run or `genotype` (anything
    load_genotype accepts) is not the run's, CheckpointError when the checkpoint does not fit.
    """
    meta = run_dir.read_metadata(directory)
    if meta is None or meta.get("kind") != KIND:
        raise ValueError(f"{directory} holds no training run (no run.json of kind {KIND!r}); "
                         "pass the --output_dir of a train run")
    config = TrainConfig.from_dict(meta["config"])
    if genotype is not None:
        wanted = genotypes.load_genotype(genotype) if isinstance(genotype, str) else genotype
        if wanted != config.genotype:
            raise ValueError(f"the run in {directory} was trained with genotype "
                             f"{config.genotype.to_string()}, not {wanted.to_string()}")
    info = meta["dataset_info"]
    net = config.build_network(info["num_classes"], info["image_shape"], auxiliary=False)
    # The run's optimizer and auxiliary head are in the checkpoint too: they stay unread.
    path = checkpointing.restore_checkpoint(
        directory, f"the network of {directory} ({config.genotype.to_string()})", checkpoint,
        records={"genotype": config.genotype.to_json()}, network=checkpointing.named_variables(net))
    return config, info, net, path
