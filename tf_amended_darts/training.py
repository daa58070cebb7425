"""Pieces of the custom training loop that search and re-training share."""

import keras
import tensorflow as tf

from tf_amended_darts import data, distribute, run_dir


def dataset_info_dict(info):
    """The JSON form of a data.DatasetInfo that run.json records (without the split sizes)."""
    return {"name": info.name, "image_shape": list(info.image_shape),
            "num_classes": info.num_classes, "class_names": list(info.class_names),
            "mean": list(info.mean), "std": list(info.std)}


# ---------------------------------------------------------------------------------------------
# Pieces of the custom training loop that search and re-training share.

def cross_entropy(labels, logits):
    """Per-example sparse softmax cross-entropy on logits."""
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def reduce_sum(strategy, per_replica):
    """{name: sum over the replicas} of the dict a `strategy.run` returned."""
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()}


def evaluation_step(model, strategy):
    """batch -> {loss, correct, count} summed over the batch and the replicas (inference
    mode); wrap it in tf.function. `validate` turns the sums into means over a split."""
    def replica(batch):
        x, y = batch
        logits = model(x, training=False)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(y, tf.int64)), tf.float32)
        return {"loss": tf.reduce_sum(cross_entropy(y, logits)),
                "correct": tf.reduce_sum(correct),
                "count": tf.cast(tf.shape(y)[0], tf.float32)}
    return lambda batch: reduce_sum(strategy, strategy.run(replica, args=(batch,)))


def save_position(checkpointer, position, epoch, step_in_epoch, global_step):
    """Records the loop position (the data pipeline resumes from it) and checkpoints."""
    position["epoch"].assign(epoch)
    position["step_in_epoch"].assign(step_in_epoch)
    position["global_step"].assign(global_step)
    checkpointer.save(global_step)


def run_epoch(step, batches, *, lr, batch_size, steps_per_epoch, epoch, step_in_epoch,
              global_step, progress, checkpointer, position, checkpoint_every=0,
              stop_after_steps=None):
    """Runs `step(batch)` (a dict of global metrics with train_loss, train_correct,
    weight_grad_norm) over the rest of an epoch: progress, per-step summaries, a checkpoint
    every `checkpoint_every` steps and at `stop_after_steps` (epoch ends are the caller's).

    Returns (summary, step_in_epoch, global_step, stopped); summary holds the mean train_loss
    and train_acc of the steps run (a resumed epoch summarises only those).
    """
    sums, ran, stopped = {}, 0, False
    for batch in batches:
        metrics = {k: float(v) for k, v in step(batch).items()}
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        step_in_epoch, global_step, ran = step_in_epoch + 1, global_step + 1, ran + 1
        progress.update(global_step, epoch=epoch, loss=metrics["train_loss"])
        step_summaries(metrics, lr, batch_size, global_step)
        stopped = stop_after_steps is not None and global_step >= stop_after_steps
        if step_in_epoch < steps_per_epoch and (stopped or (
                checkpoint_every and global_step % checkpoint_every == 0)):
            save_position(checkpointer, position, epoch, step_in_epoch, global_step)
        if stopped:
            break
    ran = max(ran, 1)
    summary = {"train_loss": sums.get("train_loss", 0.0) / ran,
               "train_acc": sums.get("train_correct", 0.0) / (ran * batch_size)}
    return summary, step_in_epoch, global_step, stopped


def step_summaries(metrics, lr, batch_size, step):
    run_dir.write_scalar("train/loss", metrics["train_loss"], step)
    run_dir.write_scalar("train/accuracy", metrics["train_correct"] / batch_size, step)
    run_dir.write_scalar("train/weight_grad_norm", metrics["weight_grad_norm"], step)
    run_dir.write_scalar("train/learning_rate", lr, step)
    for k, v in metrics.items():
        if k.startswith("arch/"):  # estimator diagnostics: val_loss, g1_norm, correction_norm..
            run_dir.write_scalar(k, v, step)


def validate(eval_step, strategy, dataset, info, batch_size):
    """Mean loss and accuracy of `eval_step` (returning summed loss, correct, count) on a split."""
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    batches = data.eval_batches(dataset, batch_size, mean=info.mean, std=info.std)
    for batch in distribute.distribute_dataset(strategy, batches):
        for k, v in eval_step(batch).items():
            totals[k] += float(v)
    count = max(totals["count"], 1.0)
    return {"valid_loss": totals["loss"] / count, "valid_acc": totals["correct"] / count}
