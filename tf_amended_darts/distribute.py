"""Strategy selection for the custom training loops (search, re-training, evaluation).

  configure_logical_cpus(n)   split the CPU into n logical devices (BEFORE any TF op) so that
                              MirroredStrategy can be tried and tested without GPUs
  make_strategy(name)         "auto" | "one_device" | "mirrored" | "multi_worker"
  check_global_batch(b, s)    the global batch must split evenly over the replicas
  is_chief(s)                 the one process that writes outputs

"auto": MirroredStrategy over all visible GPUs when there are any (or over the logical CPUs
when the CPU was split), MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
else the default one-device strategy.
"""

import json
import os

import tensorflow as tf

from tf_amended_darts import errors

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def configure_logical_cpus(count):
    """Splits the first CPU into `count` logical devices (no-op for 1 or None).

    Must run before TensorFlow initialises its devices (any op or device listing);
    afterwards it raises errors.InputError saying so.
    """
    if count is not None and count < 1:
        raise errors.InputError(f"logical_cpus must be at least 1, got {count}")
    if count is None or count == 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        present = len(tf.config.list_logical_devices("CPU"))
        if present != count:
            raise errors.InputError(
                f"cannot split the CPU into {count} logical devices: "
                f"TensorFlow is already initialised with {present}"
            ) from None


def _num_workers_in_tf_config():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as e:
        raise errors.InputError(f"TF_CONFIG is not valid JSON: {e}") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def make_strategy(name="auto"):
    """The tf.distribute strategy `name` (see the module docstring)."""
    if name not in STRATEGIES:
        raise errors.InputError(
            f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}"
        )
    if name == "auto":
        if _num_workers_in_tf_config() > 1:
            name = "multi_worker"
        elif (
            tf.config.list_logical_devices("GPU") or len(tf.config.list_logical_devices("CPU")) > 1
        ):
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise errors.InputError(
                "strategy=multi_worker needs the TF_CONFIG environment variable"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # Logical CPUs: reduce through one device. TF's default collectives here key their
        # instances per process, so a second strategy in the same process (tests, tuner
        # trials) that all-reduces another dtype aborts with "Collective instance 100
        # expected ... data_type".
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    return tf.distribute.get_strategy()  # the default strategy: one device, no overhead


def check_global_batch(global_batch_size, strategy):
    """Raises errors.InputError unless the global batch splits evenly over the replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
        raise errors.InputError(
            f"the global batch size {global_batch_size} is not a positive "
            f"multiple of the {replicas} replicas"
        )
    return global_batch_size // replicas


def is_chief(strategy):
    """True for the one process that writes outputs (the chief, or worker 0 without a chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and (resolver.task_id or 0) == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def describe(strategy):
    """One line: strategy class, replicas, workers."""
    workers = 1
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.cluster_spec().as_dict():
        workers = sum(len(v) for v in resolver.cluster_spec().as_dict().values())
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)" + (
        f" on {workers} workers" if workers > 1 else ""
    )


def replicas_in_context():
    """Replicas taking part in the current replica context (1 outside `strategy.run`)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def all_reduce_sum(values):
    """Sum over the replicas inside `strategy.run` of a nest of tensors (the values themselves
    on one device); differentiable to any order, its gradient the same sum of the upstream
    gradients.

    Not ReplicaContext.all_reduce's own gradient: that wraps the reduction in
    tf.custom_gradient, which in a graph walks back from the result to find the variables
    used; through the reduction the walk reaches the other replicas' inputs and their whole
    history, with list-membership checks, so each all-reduce costs time quadratic in the
    graph. Synchronized BatchNorm all-reduces in every layer: the first call of a 2-replica
    first-order search step on the quickstart's supernet had not finished tracing its weight
    step after 20 minutes. Here the reduction reads stop_gradient copies, where the walk ends.
    """
    if replicas_in_context() == 1:
        return values
    context = tf.distribute.get_replica_context()

    @tf.custom_gradient
    def reduce(*xs):
        sums = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.stop_gradient(x) for x in xs])

        def gradient(*upstream):
            return all_reduce_sum(
                [tf.zeros_like(x) if g is None else g for x, g in zip(xs, upstream)]
            )

        return sums, gradient

    flat = [tf.convert_to_tensor(v) for v in tf.nest.flatten(values)]
    return tf.nest.pack_sequence_as(values, list(reduce(*flat)))


def distribute_dataset(strategy, dataset):
    """Splits each global batch over the replicas (and workers: sharding by data)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))
