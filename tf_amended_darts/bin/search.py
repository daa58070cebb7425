"""DARTS architecture search with the amended (or another) architecture gradient.

  python -m tf_amended_darts.bin.search --flagfile=flags/quickstart_search.cfg --output_dir=runs/q
  python -m tf_amended_darts.bin.search --flagfile=flags/cifar10_search.cfg \
      --data_dir=/data/cifar10 --output_dir=runs/c10 [--resume]

Try MirroredStrategy on a CPU-only machine with --logical_cpus=2 (--strategy=auto then mirrors).
Several machines: set TF_CONFIG on each and pass --strategy=multi_worker.
"""

from absl import flags

from tf_amended_darts.bin import cli

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory of the run's outputs.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --output_dir.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the run in --output_dir.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0, "Also checkpoint every N steps (0: epoch ends only)."
)
_STOP_AFTER_STEPS = flags.DEFINE_integer(
    "stop_after_steps", None, "Stop (with a checkpoint) at this global step."
)
_METRICS_EVERY = flags.DEFINE_integer(
    "metrics_every",
    1,
    "Read the step metrics (progress, summaries, divergence check) every N steps.",
)
_STRATEGY = flags.DEFINE_string("strategy", "auto", "auto|one_device|mirrored|multi_worker.")
_LOGICAL_CPUS = flags.DEFINE_integer("logical_cpus", 1, "Split the CPU into N logical devices.")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "tf.config.experimental.enable_op_determinism()."
)
_RENDER = flags.DEFINE_bool("render", True, "Draw the final cells with graphviz.")

_DATASET = flags.DEFINE_string(
    "dataset",
    "digits",
    "digits, cifar10_binary, cifar100_binary, image_folder or a tensorflow-datasets name.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory of the dataset.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "tensorflow-datasets: build it if missing.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Resize images (tfds, image_folder).")
_TRAIN_PORTION = flags.DEFINE_float(
    "train_portion",
    0.5,
    "Share of the training set that trains the weights; the rest trains the alphas.",
)
_SEARCH_SPACE = flags.DEFINE_string(
    "search_space", "darts", "Preset: darts | enlarged | s2 | s3 | s4."
)
_OPERATIONS = flags.DEFINE_list("operations", None, "Override the preset's operations.")
_NODES = flags.DEFINE_integer("nodes", None, "Override the intermediate nodes per cell.")
_CELLS = flags.DEFINE_integer("cells", None, "Override the number of cells.")
_CHANNELS = flags.DEFINE_integer("channels", None, "Override the initial channels C.")
_ARCH_GRADIENT = flags.DEFINE_string(
    "arch_gradient", "amended", "first_order | second_order | amended | implicit."
)
_AMENDING = flags.DEFINE_string(
    "amending_coefficient",
    "0.1",
    "eta of the amended gradient: a number >= 0, or auto (at every step the eta for which "
    "eta A v is closest to A^-1 v, from the step's own Hessian product).",
)
_PRODUCTS = flags.DEFINE_string("products", "exact", "Hessian products: exact | finite_difference.")
_SUB_BATCHES = flags.DEFINE_integer(
    "sub_batches",
    1,
    "Sum the estimator's second-derivative products of L_train over this many sub-batches of "
    "the batch, one at a time: their activation memory is that of batch / sub_batches "
    "examples, for one more forward/backward per product; BatchNorm then normalises each "
    "sub-batch alone (docs/USAGE.md, 'Memory').",
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "off",
    cli.MIXED_PRECISION,
    "Compute in float16 (with dynamic loss scaling) or bfloat16 (Keras mixed_<dtype>; "
    "variables, alphas, logits and losses stay float32); auto: float16 on a GPU, else "
    "bfloat16. Needs --products=exact (docs/USAGE.md, 'Mixed precision').",
)
_IMPLICIT_ITERATIONS = flags.DEFINE_integer(
    "implicit_iterations", 20, "CG iterations of --arch_gradient=implicit."
)
_EPOCHS = flags.DEFINE_integer("epochs", 50, "Epochs.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_LR = flags.DEFINE_float("learning_rate", 0.025, "Weights: initial learning rate.")
_LR_MIN = flags.DEFINE_float("learning_rate_min", 0.001, "Weights: final (cosine) rate.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "Weights: SGD momentum.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 3e-4, "Weights: L2 weight decay.")
_GRAD_CLIP = flags.DEFINE_float("grad_clip", 5.0, "Weights: gradient norm clip.")
_ARCH_LR = flags.DEFINE_float("arch_learning_rate", 3e-4, "Alphas: Adam learning rate.")
_ARCH_BETA_1 = flags.DEFINE_float("arch_beta_1", 0.5, "Alphas: Adam beta_1.")
_ARCH_BETA_2 = flags.DEFINE_float("arch_beta_2", 0.999, "Alphas: Adam beta_2.")
_ARCH_WD = flags.DEFINE_float("arch_weight_decay", 1e-3, "Alphas: L2 weight decay.")
_WARMUP = flags.DEFINE_integer("warmup_epochs", 0, "First epochs train the weights only.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation and data order.")
_VALIDATE = flags.DEFINE_bool("validate", True, "Evaluate on the architecture part per epoch.")
_HESSIAN_ITERATIONS = flags.DEFINE_integer(
    "hessian_eigenvalue_iterations",
    0,
    "Power iterations of the dominant eigenvalue of the alpha-Hessian of the validation loss, "
    "measured at every epoch's end into the log line and TensorBoard epoch/hessian_eigenvalue "
    "(0: off). An eager power iteration of --hessian_eigenvalue_examples images, each "
    "iteration one Hessian-vector product: it lengthens every epoch; the search's own "
    "numbers are unchanged.",
)
_HESSIAN_EXAMPLES = flags.DEFINE_integer(
    "hessian_eigenvalue_examples",
    256,
    "The eigenvalue's fixed batch: the first N images of the architecture part.",
)
_COSINES_EVERY = flags.DEFINE_integer(
    "cosines_every",
    0,
    "Every N epochs, at the epoch's end: the cosine of first order, second order and amended "
    "(--amending_coefficient; 0.1 when auto) to the implicit reference (--implicit_iterations "
    "CG iterations on A + --cosines_damping I), amended's least-squares best eta, and the "
    "reference's CG relative residual (near 1 or above: CG diverged, the cosines are void), "
    "on one batch pair of --batch_size, into the log line and TensorBoard epoch/<measure>/"
    "<estimator> (0: off; bin/diagnose --search_dir measures the same at a checkpoint). The "
    "estimators are traced at the first measurement and kept, which makes that one slow and "
    "raises the peak memory; later measurements are quicker.",
    lower_bound=0,
)
_COSINES_DAMPING = flags.DEFINE_float(
    "cosines_damping",
    1.0,
    "Damping of the --cosines_every reference: A + damping I. Late in a search A = H + wd I "
    "is nearly singular and can be indefinite (undamped CG diverged there).",
    lower_bound=0.0,
)

flags.mark_flag_as_required("output_dir")
cli.validate_flags(globals().values())


def main(argv):
    del argv
    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top

    distribute.configure_logical_cpus(_LOGICAL_CPUS.value)  # before any TF op
    from tf_amended_darts import search  # pylint: disable=g-import-not-at-top

    config = search.SearchConfig(
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        image_size=_IMAGE_SIZE.value,
        train_portion=_TRAIN_PORTION.value,
        search_space=_SEARCH_SPACE.value,
        operations=_OPERATIONS.value,
        nodes=_NODES.value,
        cells=_CELLS.value,
        channels=_CHANNELS.value,
        arch_gradient=_ARCH_GRADIENT.value,
        amending_coefficient=_AMENDING.value,
        products=_PRODUCTS.value,
        sub_batches=_SUB_BATCHES.value,
        implicit_iterations=_IMPLICIT_ITERATIONS.value,
        epochs=_EPOCHS.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LR.value,
        learning_rate_min=_LR_MIN.value,
        momentum=_MOMENTUM.value,
        weight_decay=_WEIGHT_DECAY.value,
        grad_clip=_GRAD_CLIP.value,
        arch_learning_rate=_ARCH_LR.value,
        arch_beta_1=_ARCH_BETA_1.value,
        arch_beta_2=_ARCH_BETA_2.value,
        arch_weight_decay=_ARCH_WD.value,
        warmup_epochs=_WARMUP.value,
        seed=_SEED.value,
        validate=_VALIDATE.value,
        mixed_precision=cli.mixed_precision(_MIXED_PRECISION.value),
    )
    config.space()  # bad operations / sizes: fail before anything else
    config.estimator()
    strategy = cli.make_strategy(_STRATEGY.value, _DETERMINISTIC.value)
    from tf_amended_darts import diagnostics  # pylint: disable=g-import-not-at-top

    callbacks = []
    if _HESSIAN_ITERATIONS.value:
        callbacks.append(
            diagnostics.hessian_eigenvalue_callback(
                config, _HESSIAN_ITERATIONS.value, _HESSIAN_EXAMPLES.value
            )
        )
    if _COSINES_EVERY.value:
        coefficient = config.amending_coefficient
        callbacks.append(
            diagnostics.cosines_callback(
                _COSINES_EVERY.value,
                eta=coefficient if isinstance(coefficient, float) else 0.1,
                cg_iterations=config.implicit_iterations,
                damping=_COSINES_DAMPING.value,
                batch_size=config.batch_size,
            )
        )

    def callback(epoch, run, line):
        return {k: v for c in callbacks for k, v in c(epoch=epoch, run=run, line=line).items()}

    search.search(
        config,
        _OUTPUT_DIR.value,
        strategy,
        resume=_RESUME.value,
        overwrite=_OVERWRITE.value,
        checkpoint_every=_CHECKPOINT_EVERY.value,
        stop_after_steps=_STOP_AFTER_STEPS.value,
        metrics_every=_METRICS_EVERY.value,
        render=_RENDER.value,
        download=_DOWNLOAD.value,
        flags=cli.flag_values(globals()),
        epoch_callback=callback if callbacks else None,
    )


if __name__ == "__main__":
    cli.run(main)
