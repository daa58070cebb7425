"""Compares architecture-gradient estimators on one (train, val) batch pair of a supernet.

For each estimator: cosine similarity of its architecture gradient (and of its correction,
gradient - first-order gradient) to the implicit reference g1 - B (H + wd I + damping I)^-1 v
(conjugate gradient, exact products), the pairwise cosine matrix, the norms (g1, correction,
total), and wall time per call inside tf.function (median of `repeats` calls after one
trace + first call, whose time is reported separately).

The supernet is either
- a search-space preset (`search_space` plus overrides), fresh, after `warmup_steps` weight
  steps of the search (loop.sgd_weight_update: lr 0.025, momentum 0.9, weight decay 3e-4,
  gradient clipped to norm 5) on the weight half of the training set, so H is not measured at
  random initialisation; or
- the latest checkpoint of a search run (`search_dir`): its weights, BatchNorm statistics and
  alphas, and the weight optimizer's learning rate and momentum buffers for the unrolled step
  (search.restore_search_network), on the run's dataset and split unless `dataset` is given.
"""

import dataclasses
import statistics
import time
from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts import data, errors, estimators, loop, options, search, search_model
from tf_amended_darts import search_space as search_space_lib
from tf_amended_darts.options import option

WEIGHT_LR, WEIGHT_MOMENTUM, WEIGHT_DECAY, GRAD_CLIP, XI = 0.025, 0.9, 3e-4, 5.0, 0.025
KNOWN = ("first_order", "second_order", "amended", "implicit")


def _flat(grads):
    return np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64)


def _cosine(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def _search_option(name, default=dataclasses.MISSING):
    return options.same_as(search.SearchConfig, name, default)


@dataclasses.dataclass(frozen=True)
class DiagnoseConfig:
    """What `diagnose` compares, on which supernet. The options a search has too are its own
    (SearchConfig's help and checks); None: the search run's value, or the preset's."""

    search_dir: Optional[str] = option(
        None,
        "A search's output directory: its latest checkpoint's supernet instead of a preset.",
        "string",
        options.NOT_EMPTY,
    )
    search_space: Optional[str] = _search_option("search_space", None)  # None: darts
    channels: Optional[int] = _search_option("channels")
    cells: Optional[int] = _search_option("cells")
    nodes: Optional[int] = _search_option("nodes")
    dataset: Optional[str] = _search_option("dataset", None)  # None: digits, or the run's
    data_dir: Optional[str] = _search_option("data_dir")
    batch_size: int = _search_option("batch_size", 32)
    estimators: tuple = option(
        ("first_order", "second_order", "amended"),
        "Estimators to compare (the implicit reference is always run).",
        "list",
    )
    amending_coefficient: float = _search_option("amending_coefficient")
    implicit_iterations: int = _search_option("implicit_iterations")
    cosines_damping: float = options.same_as(options.SearchMeasures, "cosines_damping", 0.0)
    products: str = _search_option("products")
    fd_radius: float = option(
        0.01,
        "Finite-difference radius of the compared estimators (R = r / ||vector||).",
        "float",
        options.number_in(0, low_open=True),
    )
    warmup_steps: Optional[int] = option(
        None,
        "SGD steps on a preset's fresh weights first (default 20).",
        "integer",
        options.COUNT_OR_ZERO,
    )
    repeats: int = option(3, "Timed calls per estimator after the first.", "integer", options.COUNT)
    seed: int = _search_option("seed")

    def __post_init__(self):
        names = tuple(dict.fromkeys(n.strip() for n in self.estimators if n.strip()))
        object.__setattr__(self, "estimators", names)
        options.check_fields(self)
        if not names:
            raise errors.InputError("estimators is empty")
        for n in names:
            if n not in KNOWN:
                raise errors.InputError(
                    f"unknown estimator {n!r}; expected some of {', '.join(KNOWN)}"
                )
        eta = estimators.amending_coefficient(self.amending_coefficient)
        if eta == estimators.AUTO:  # best_eta rescales the measured correction
            raise errors.InputError("amending_coefficient must be a number here, got auto")
        object.__setattr__(self, "amending_coefficient", eta)
        if self.search_dir:
            self.check_searched()

    def check_searched(self):
        """InputError if a supernet option is set while the supernet is a search run's."""
        given = [
            name
            for name in ("search_space", "channels", "cells", "nodes", "warmup_steps")
            if getattr(self, name)  # warmup_steps=0 says the same as None
        ]
        if given:
            raise errors.InputError(
                "a search run's supernet comes with its weights: drop " + ", ".join(given)
            )

    def compared(self):
        """{name: estimator} of the compared estimators."""
        made = {}
        for n in self.estimators:
            params = {"products": self.products, "fd_radius": self.fd_radius}
            if n == "amended":
                params["amending_coefficient"] = self.amending_coefficient
            if n == "implicit":
                params.update(iterations=self.implicit_iterations, damping=self.cosines_damping)
            made[n] = estimators.make_estimator(n, **params)
        return made

    def reference(self):
        return estimators.make_estimator(
            "implicit", iterations=self.implicit_iterations, damping=self.cosines_damping
        )


def _searched_supernet(run, search_dir, dataset, data_dir):
    """(model, weight state, data.Dataset, train_portion, description) of a search run (`run`:
    a search.RestoredSearch)."""
    config = run.config
    same = dataset in (None, config.dataset)
    ds = data.load_dataset(
        config.dataset if same else dataset,
        data_dir or (config.data_dir if same else None),
        image_size=config.image_size,
    )
    fits = (
        list(ds.info.image_shape) == list(run.dataset_info["image_shape"])
        and ds.info.num_classes == run.dataset_info["num_classes"]
    )
    if not fits:
        raise errors.InputError(
            f"dataset {ds.info.name} ({tuple(ds.info.image_shape)}, "
            f"{ds.info.num_classes} classes) does not fit the searched "
            f"supernet ({tuple(run.dataset_info['image_shape'])}, "
            f"{run.dataset_info['num_classes']} classes)"
        )
    state = estimators.weight_state_from_keras_sgd(
        run.weight_optimizer, run.network.weight_variables, config.weight_decay
    )
    return (
        run.network,
        state,
        ds,
        config.train_portion,
        {
            "search_dir": search_dir,
            "checkpoint": run.checkpoint,
            "global_step": run.global_step,
            "search_space": config.search_space,
            "weights": f"search checkpoint {run.checkpoint} (global step {run.global_step})",
        },
    )


def _warmed_up_supernet(space, ds, batches, warmup_steps, seed):
    """(model, weight state, warm-up losses) of a fresh supernet after `warmup_steps` steps."""
    keras.utils.set_random_seed(seed)
    model = search_model.SearchNetwork(space, ds.info.num_classes, seed=seed)
    model.build((None,) + tuple(ds.info.image_shape))
    optimizer = loop.SGD(WEIGHT_LR, momentum=WEIGHT_MOMENTUM)
    optimizer.build(model.weight_variables)

    @tf.function
    def weight_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loop.cross_entropy(y, model(x, training=True)))
        loop.sgd_weight_update(
            optimizer,
            loop.weight_gradients(tape, loss, model.weight_variables),
            loss,
            model.weight_variables,
            grad_clip=GRAD_CLIP,
            weight_decay=WEIGHT_DECAY,
        )
        return loss

    losses = [float(weight_step(*next(batches))) for _ in range(warmup_steps)]
    state = estimators.weight_state_from_keras_sgd(optimizer, model.weight_variables, WEIGHT_DECAY)
    if not warmup_steps:  # no momentum yet; the unrolled step's learning rate is still xi
        state = state._replace(learning_rate=tf.constant(XI))
    return model, state, losses


class Supernet(NamedTuple):
    """The measured point: the network, its weight-optimizer state and one batch pair."""

    model: search_model.SearchNetwork
    state: estimators.WeightOptimizerState
    train_batch: tuple
    val_batch: tuple
    dataset_name: str
    source: dict  # where the weights come from (the result's "config")
    warmup_losses: list


def diagnose(config, search_run=None, traced=None):
    """The measurements of the DiagnoseConfig `config` as a JSON-ready dict (see the module
    docstring).

    `search_run`: a search.RestoredSearch (the live search of an epoch_callback) measured
    instead of a preset or `config.search_dir`'s latest checkpoint.
    `traced`: a dict that keeps the traced estimate functions between calls on the same
    supernet (the study measures a live search every few epochs, and tracing is most of a
    measurement's cost); "first_call_seconds" then times a call that traces nothing. The
    weight optimizer's state is an argument of those functions, so each call reads its own.
    """
    if search_run is not None:
        config.check_searched()
    point = _supernet(config, search_run)
    results, vectors = {}, {}
    reference = config.reference()
    for name, est in [("implicit", reference)] + list(config.compared().items()):
        if est is reference or name != "implicit" or est.products != "exact":
            key = name if est is reference or name != "implicit" else "implicit_" + est.products
            results[key], vectors[key] = _measure(traced, point, est, config.repeats)
    g1 = vectors["first_order"] if "first_order" in vectors else _first_order(traced, point)
    for key in vectors:
        results[key]["cosine_to_implicit"] = _cosine(vectors[key], vectors["implicit"])
        results[key]["correction_cosine_to_implicit"] = _cosine(
            vectors[key] - g1, vectors["implicit"] - g1
        )
    if "amended" in vectors:
        results["amended"].update(
            best_eta(g1, vectors["amended"], vectors["implicit"], config.amending_coefficient)
        )
    model = point.model
    return {
        "config": {
            **point.source,
            "space": model.search_space.to_dict(),
            "dataset": point.dataset_name,
            **{
                name: getattr(config, name)
                for name in (
                    "batch_size",
                    "amending_coefficient",
                    "implicit_iterations",
                    "cosines_damping",
                    "products",
                    "fd_radius",
                    "repeats",
                    "seed",
                )
            },
            "warmup_steps": len(point.warmup_losses),
        },
        "warmup_losses": point.warmup_losses,
        "weight_count": int(sum(int(np.prod(v.shape)) for v in model.weight_variables)),
        "alphas": [keras.ops.convert_to_numpy(a).tolist() for a in model.arch_variables],
        "estimators": results,
        "cosine": {a: {b: _cosine(vectors[a], vectors[b]) for b in vectors} for a in vectors},
    }


def _supernet(config, search_run):
    """The Supernet `config` measures: `search_run`'s, `config.search_dir`'s latest
    checkpoint's, or a fresh preset's after its warm-up steps."""
    searched = search_run is not None or bool(config.search_dir)
    if searched:
        run = search_run or search.restore_search_network(config.search_dir)
        model, state, ds, portion, source = _searched_supernet(
            run, config.search_dir, config.dataset, config.data_dir
        )
    else:
        ds, portion = data.load_dataset(config.dataset or "digits", config.data_dir), 0.5
        warmup_steps = 20 if config.warmup_steps is None else config.warmup_steps
        source = {
            "search_space": config.search_space or "darts",
            "weights": f"fresh supernet after {warmup_steps} SGD steps",
        }

    def stream(part, s):
        return iter(
            data.epoch_batches(
                part,
                config.batch_size,
                mean=ds.info.mean,
                std=ds.info.std,
                seed=s,
                epoch=0,
                augmentation=data.default_augmentation(ds.info),
            ).repeat()
        )

    weights_part, arch_part = data.search_split(ds.train, ds.info.num_examples["train"], portion)
    train_batches = stream(weights_part, 2 * config.seed)
    val_batch = next(stream(arch_part, 2 * config.seed + 1))
    warmup_losses = []
    if not searched:
        space = search_space_lib.get_search_space(source["search_space"]).replace(
            **{k: getattr(config, k) for k in ("channels", "cells", "nodes") if getattr(config, k)}
        )
        model, state, warmup_losses = _warmed_up_supernet(
            space, ds, train_batches, warmup_steps, config.seed
        )
    return Supernet(
        model, state, next(train_batches), val_batch, ds.info.name, source, warmup_losses
    )


def _measure(traced, point, est, repeats):
    """(result, flat gradient) of the estimator `est` at `point`: its norms, validation loss,
    the first call's and the median later call's seconds, and a solve's residual."""
    model = point.model
    fn = _traced(
        traced,
        model,
        repr(est),
        lambda t, v, s: est.estimate(
            model, loop.cross_entropy, t, v, s, loss_scale=loss_scale_for(model)
        ),
    )
    batches = (point.train_batch, point.val_batch, point.state)
    start = time.perf_counter()
    grads, diag = fn(*batches)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        grads, diag = fn(*batches)
        [g.numpy() for g in grads]
        times.append(time.perf_counter() - start)
    flat = _flat(grads)
    result = {
        "estimator": repr(est),
        "g1_norm": float(diag["g1_norm"]),
        "correction_norm": float(diag["correction_norm"]),
        "total_norm": float(np.linalg.norm(flat)),
        "val_loss": float(diag["val_loss"]),
        "first_call_seconds": first,
        "seconds_per_call": statistics.median(times),
    }
    if "residual_norm" in diag:  # the solve's convergence: residual relative to ||v||
        result["residual_norm"] = float(diag["residual_norm"])
        result["relative_residual"] = float(diag["residual_norm"] / diag["rhs_norm"])
    return result, flat


def _first_order(traced, point):
    """The flat first-order gradient at `point` (the corrections need it)."""
    model = point.model
    first_order = _traced(
        traced,
        model,
        "g1",
        lambda t, v: estimators.FirstOrderEstimator().estimate(
            model, loop.cross_entropy, t, v, loss_scale=loss_scale_for(model)
        ),
    )
    return _flat(first_order(point.train_batch, point.val_batch)[0])


def _traced(traced, model, key, function):
    """tf.function(function), kept in the dict `traced` under `key` while `model` is the same
    (a fresh one each time when `traced` is None)."""
    if traced is None:
        return tf.function(function)
    if traced.get("model") is not model:
        traced.clear()
        traced["model"] = model
    if key not in traced:
        traced[key] = tf.function(function)
    return traced[key]


def best_eta(g1, amended, implicit, eta):
    """{"best_eta", "cosine_to_implicit_at_best_eta"} for flat gradients measured with `eta`.

    The amended correction c = amended - g1 is linear in eta, so eta* = eta <c, c_imp> / |c|^2
    (c_imp = implicit - g1) is the coefficient whose correction is closest to the implicit one
    in least squares over alpha space: how far it sits from `eta` says whether `eta` is
    mis-scaled at this point. NaN when c is zero.
    """
    c, c_imp = amended - g1, implicit - g1
    size = float(c @ c)
    best = eta * float(c @ c_imp) / size if size > 0 else float("nan")
    return {
        "best_eta": best,
        "cosine_to_implicit_at_best_eta": _cosine(g1 + (best / eta) * c, implicit),
    }


# The loss scale of the diagnostics' derivatives on a float16 network (a restored float16
# search): fixed, as they run once per checkpoint or epoch, with no dynamic scale to keep.
# 2^12 puts gradients of 1e-6..1 well inside float16's range, whose top is 65504.
FLOAT16_LOSS_SCALE = 2.0**12


def loss_scale_for(model):
    """FLOAT16_LOSS_SCALE for a float16 network, None otherwise (no scaling)."""
    return FLOAT16_LOSS_SCALE if model.compute_dtype == "float16" else None


def alpha_hessian_product(model, loss_fn):
    """A tf.function (vector, batch) -> H·vector, H the Hessian of the loss on `batch` with
    respect to the architecture variables at the model's values when it runs (vector: one
    tensor per arch variable). Traced once per batch shape: build it once per model and call
    it every epoch (eagerly, one product cost as much as tracing it).

    Products are back-over-back gradients of `model.stateless_call` with the alphas as
    explicit tensors (estimators' convention: training=True, nothing assigned, new BatchNorm
    statistics dropped), so each costs about two forward/backward passes of the batch. On a
    float16 network they are of the loss times FLOAT16_LOSS_SCALE (float16 gradients
    underflow below 6e-8), divided by it.
    """
    scale = loss_scale_for(model)

    @tf.function(autograph=False, reduce_retracing=True)
    def product(vector, batch):
        x, _ = batch
        losses = estimators.StatelessLosses(model, loss_fn, global_batch_size=tf.shape(x)[0])
        weights, arch = losses.weights(), losses.arch()
        with tf.GradientTape() as outer:
            outer.watch(arch)
            with tf.GradientTape() as inner:
                inner.watch(arch)
                loss = losses.loss(weights, arch, batch)
            grads = inner.gradient(
                loss,
                arch,
                output_gradients=scale,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
        products = outer.gradient(dot, arch, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return products if scale is None else [p / scale for p in products]

    return product


def alpha_hessian_eigenvalue(model, loss_fn, batch, iterations=10, seed=0, product=None):
    """The dominant eigenvalue of the Hessian of the loss on `batch` with respect to the
    architecture variables (Zela et al., ICLR 2020's instability indicator), by power
    iteration on exact alpha-space Hessian-vector products at the model's current values.

    product: alpha_hessian_product(model, loss_fn), to reuse its trace across calls (built
    here when None). Power iteration finds the eigenvalue of largest magnitude (sign kept, a
    Rayleigh quotient); its error shrinks as (|lambda_2| / |lambda_1|)^(2k). Returns
    (eigenvalue, relative change of the last iteration: a convergence indicator).
    """
    if iterations < 1:
        raise errors.InputError(f"iterations must be at least 1, got {iterations}")
    product = product or alpha_hessian_product(model, loss_fn)
    rng = np.random.default_rng(seed)
    vector = [tf.constant(rng.standard_normal(a.shape), a.dtype) for a in model.arch_variables]
    eigenvalue, change = 0.0, float("inf")
    for _ in range(iterations):
        norm = tf.linalg.global_norm(vector)
        if float(norm) == 0.0:  # the Hessian maps the iterate to zero: a zero eigenvalue
            return 0.0, 0.0
        vector = [v / norm for v in vector]
        image = product(vector, batch)
        previous, eigenvalue = eigenvalue, float(_flat(vector) @ _flat(image))
        change = abs(eigenvalue - previous) / max(abs(eigenvalue), 1e-30)
        vector = image
    return eigenvalue, change


def hessian_eigenvalue_callback(config, iterations, examples):
    """A search.search epoch_callback that measures alpha_hessian_eigenvalue of the
    validation loss at the end of every epoch, on the first `examples` images of the
    architecture part of the search `config`; it returns {"hessian_eigenvalue",
    "hessian_relative_change"} (the metrics the epoch line and TensorBoard get). The
    product is traced on the first epoch and reused while the network stays the same."""
    if iterations < 1 or examples < 1:
        raise errors.InputError(
            f"hessian eigenvalue: iterations ({iterations}) and examples ({examples}) must be >= 1"
        )
    batch = search.architecture_batch(config, examples)
    traced = {}  # the network the product was built for, and the product

    def measure(epoch, run, line):
        del epoch, line
        if traced.get("network") is not run.network:
            traced.update(
                network=run.network, product=alpha_hessian_product(run.network, loop.cross_entropy)
            )
        eigenvalue, change = alpha_hessian_eigenvalue(
            run.network,
            loop.cross_entropy,
            batch,
            iterations=iterations,
            product=traced["product"],
        )
        return {"hessian_eigenvalue": eigenvalue, "hessian_relative_change": change}

    return measure


# diagnose's measures of an estimator that the epoch callbacks report (the implicit reference
# reports only its CG residual: its cosines to itself are 1).
COSINE_KEYS = (
    "cosine_to_implicit",
    "correction_cosine_to_implicit",
    "best_eta",
    "cosine_to_implicit_at_best_eta",
    "relative_residual",
)


# The DiagnoseConfig options that a search's cosines take (bin/search, study plans).
COSINE_SETTINGS = (
    "estimators",
    "amending_coefficient",
    "implicit_iterations",
    "cosines_damping",
    "batch_size",
)


def estimator_cosines(run, traced, **settings):
    """{estimator: {key: value}} for the COSINE_KEYS of `diagnose` at the live search `run` (a
    search.RestoredSearch), on one (train, val) batch pair; NaN (a zero vector: first order
    has no correction) is None. `settings`: DiagnoseConfig options among COSINE_SETTINGS.
    `traced`: a dict kept for the run (diagnose's)."""
    unknown = sorted(set(settings) - set(COSINE_SETTINGS))
    if unknown:
        raise errors.InputError(f"cosines: unknown settings {unknown}")
    measured = diagnose(DiagnoseConfig(repeats=1, **settings), search_run=run, traced=traced)
    return {
        name: {
            key: values[key] if np.isfinite(values[key]) else None
            for key in COSINE_KEYS
            if key in values and (name != "implicit" or key == "relative_residual")
        }
        for name, values in measured["estimators"].items()
    }


def cosines_callback(every, **settings):
    """A search.search epoch_callback: every `every` epochs, estimator_cosines(**settings) at
    the live search, as metrics "<key>/<estimator>" for the epoch line and TensorBoard ({} on
    the other epochs). The estimate functions are traced at the first measurement and kept
    while the network stays the same."""
    if every < 1:
        raise errors.InputError(f"cosines: every must be >= 1 epoch, got {every}")
    traced = {}

    def measure(epoch, run, line):
        del line
        if epoch % every:
            return {}
        return {
            f"{key}/{name}": value
            for name, values in estimator_cosines(run, traced, **settings).items()
            for key, value in values.items()
            if value is not None
        }

    return measure
