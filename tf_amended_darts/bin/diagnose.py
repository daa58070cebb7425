"""Compares architecture-gradient estimators on one (train, val) batch pair of a supernet.

For each estimator: cosine similarity of its architecture gradient (and of its correction,
gradient - first-order gradient) to the implicit reference g1 - B (H + wd I + damping I)^-1 v
(conjugate gradient, exact products), the pairwise cosine matrix, the norms (g1, correction,
total), and wall time per call inside tf.function (median of --repeats calls after one
trace + first call, whose time is reported separately).

The weights are those of a fresh supernet after --warmup_steps SGD steps (lr 0.025, momentum
0.9, weight decay 3e-4, batch --batch_size) on the weight half of the training set, so H is not
measured at random initialisation. Search checkpoints cannot be loaded yet (the search loop's
checkpoint format is not settled): diagnose always starts from a fresh, warmed-up supernet.

  python -m tf_amended_darts.bin.diagnose --search_space=darts --layers=5 --init_channels=8
  python -m tf_amended_darts.bin.diagnose --estimators=amended --eta=0.05 --format=json
"""

import json
import statistics
import time

from absl import flags

from tf_amended_darts.bin import cli

_SEARCH_SPACE = flags.DEFINE_string("search_space", "darts", "Search-space preset.")
_INIT_CHANNELS = flags.DEFINE_integer("init_channels", None, "Override the preset's C.")
_LAYERS = flags.DEFINE_integer("layers", None, "Override the preset's number of cells.")
_STEPS = flags.DEFINE_integer("steps", None, "Override the preset's intermediate nodes per cell.")
_DATASET = flags.DEFINE_string("dataset", "digits", "Dataset (tf_amended_darts.data.load_dataset).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset directory, when it needs one.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size of the train and val batches.")
_ESTIMATORS = flags.DEFINE_list("estimators", "first_order,second_order,amended",
                                "Estimators to compare (the implicit reference is always run).")
_ETA = flags.DEFINE_float("eta", 0.1, "Amending coefficient of the amended estimator.")
_CG_ITERATIONS = flags.DEFINE_integer("cg_iterations", 20, "CG iterations of the reference.")
_DAMPING = flags.DEFINE_float("damping", 0.0, "Damping added to H in the reference.")
_PRODUCTS = flags.DEFINE_enum("products", "exact", ["exact", "finite_difference"],
                              "Second-derivative products of the compared estimators (the "
                              "reference always uses exact products).")
_FD_RADIUS = flags.DEFINE_float("fd_radius", 0.01, "Finite-difference radius (R = r / ||vector||).")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 20, "SGD steps on the weights first.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per estimator after the first.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the supernet and of the batch order.")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")

WEIGHT_LR, WEIGHT_MOMENTUM, WEIGHT_DECAY, XI = 0.025, 0.9, 3e-4, 0.025


def _check_positive(name, value, minimum=1):
    if value is not None and value < minimum:
        raise ValueError(f"--{name} must be >= {minimum}, got {value}")


def diagnose(search_space="darts", init_channels=None, layers=None, steps=None, dataset="digits",
             data_dir=None, batch_size=32, estimator_names=("first_order", "second_order", "amended"),
             eta=0.1, cg_iterations=20, damping=0.0, products="exact", fd_radius=0.01,
             warmup_steps=20, repeats=3, seed=0):
    """Returns the measurements as a JSON-ready dict (see the module docstring)."""
    for name, value, minimum in (("init_channels", init_channels, 1), ("layers", layers, 3),
                                 ("steps", steps, 1), ("batch_size", batch_size, 1),
                                 ("cg_iterations", cg_iterations, 1), ("repeats", repeats, 1),
                                 ("warmup_steps", warmup_steps, 0)):
        _check_positive(name, value, minimum)
    names = [n.strip() for n in estimator_names if n.strip()]
    if not names:
        raise ValueError("--estimators is empty")
    known = ("first_order", "second_order", "amended", "implicit")
    for n in names:
        if n not in known:
            raise ValueError(f"unknown estimator {n!r}; expected some of {', '.join(known)}")
    import keras
    import numpy as np
    import tensorflow as tf
    from tf_amended_darts import data, estimators, search_model, search_space as ss

    compared = {}
    for n in dict.fromkeys(names):
        params = {"products": products, "fd_radius": fd_radius}
        if n == "amended":
            params["eta"] = eta
        if n == "implicit":
            params.update(iterations=cg_iterations, damping=damping)
        compared[n] = estimators.make_estimator(n, **params)
    reference = estimators.make_estimator("implicit", iterations=cg_iterations, damping=damping)
    space = ss.get_search_space(search_space)
    space = space.replace(**{k: v for k, v in (("init_channels", init_channels), ("layers", layers),
                                               ("steps", steps)) if v is not None})

    ds = data.load_dataset(dataset, data_dir)
    info = ds.info
    weights_part, arch_part = data.search_split(ds.train, info.num_examples["train"])
    stream = lambda part, s: data.epoch_batches(  # noqa: E731
        part, batch_size, mean=info.mean, std=info.std, seed=s, epoch=0,
        augmentation=data.default_augmentation(info)).repeat()
    train_batches = iter(stream(weights_part, 2 * seed))
    val_batch = next(iter(stream(arch_part, 2 * seed + 1)))

    keras.utils.set_random_seed(seed)
    model = search_model.SearchNetwork(space, info.num_classes, seed=seed)
    model.build((None,) + tuple(info.image_shape))

    def loss_fn(labels, logits):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                              logits=logits)

    optimizer = keras.optimizers.SGD(WEIGHT_LR, momentum=WEIGHT_MOMENTUM)
    optimizer.build(model.weight_variables)

    @tf.function
    def weight_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
        grads = tape.gradient(loss, model.weight_variables)
        grads = [g + WEIGHT_DECAY * w for g, w in zip(grads, model.weight_variables)]
        optimizer.apply_gradients(zip(grads, model.weight_variables))
        return loss

    warmup_losses = [float(weight_step(*next(train_batches))) for _ in range(warmup_steps)]
    train_batch = next(train_batches)
    state = estimators.weight_state_from_keras_sgd(optimizer, model.weight_variables, WEIGHT_DECAY)
    if not warmup_steps:  # no momentum yet; the unrolled step's learning rate is still xi
        state = state._replace(learning_rate=tf.constant(XI))

    results, vectors = {}, {}
    for name, est in [("implicit", reference)] + [(n, e) for n, e in compared.items()
                                                  if n != "implicit" or e.products != "exact"]:
        key = name if name != "implicit" or est is reference else "implicit_" + products
        fn = tf.function(lambda t, v, est=est: est.estimate(model, loss_fn, t, v, state))
        start = time.perf_counter()
        grads, diag = fn(train_batch, val_batch)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            grads, diag = fn(train_batch, val_batch)
            [g.numpy() for g in grads]
            times.append(time.perf_counter() - start)
        flat = np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64)
        vectors[key] = flat
        results[key] = {
            "estimator": repr(est),
            "g1_norm": float(diag["g1_norm"]), "correction_norm": float(diag["correction_norm"]),
            "total_norm": float(np.linalg.norm(flat)),
            "val_loss": float(diag["val_loss"]),
            "first_call_seconds": first, "seconds_per_call": statistics.median(times),
        }
        if "residual_norm" in diag:
            results[key]["residual_norm"] = float(diag["residual_norm"])

    def cosine(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")

    g1 = None
    if "first_order" in vectors:
        g1 = vectors["first_order"]
    else:  # the first-order gradient is needed for the corrections
        grads, _ = tf.function(lambda t, v: estimators.FirstOrderEstimator().estimate(
            model, loss_fn, t, v))(train_batch, val_batch)
        g1 = np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64)
    keys = list(vectors)
    for key in keys:
        results[key]["cosine_to_implicit"] = cosine(vectors[key], vectors["implicit"])
        results[key]["correction_cosine_to_implicit"] = cosine(vectors[key] - g1,
                                                               vectors["implicit"] - g1)
    return {
        "config": {"search_space": search_space, "space": space.to_dict(), "dataset": dataset,
                   "batch_size": batch_size, "eta": eta, "cg_iterations": cg_iterations,
                   "damping": damping, "products": products, "fd_radius": fd_radius,
                   "warmup_steps": warmup_steps, "repeats": repeats, "seed": seed,
                   "weights": "fresh supernet after the warm-up (search checkpoints not supported)"},
        "warmup_losses": warmup_losses,
        "weight_count": int(sum(int(np.prod(v.shape)) for v in model.weight_variables)),
        "estimators": results,
        "cosine": {a: {b: cosine(vectors[a], vectors[b]) for b in keys} for a in keys},
    }


def main(argv):
    del argv
    d = diagnose(_SEARCH_SPACE.value, _INIT_CHANNELS.value, _LAYERS.value, _STEPS.value,
                 _DATASET.value, _DATA_DIR.value, _BATCH_SIZE.value, _ESTIMATORS.value, _ETA.value,
                 _CG_ITERATIONS.value, _DAMPING.value, _PRODUCTS.value, _FD_RADIUS.value,
                 _WARMUP_STEPS.value, _REPEATS.value, _SEED.value)
    if _FORMAT.value == "json":
        print(json.dumps(d))
        return
    c = d["config"]
    print(f"supernet {c['search_space']} (C={c['space']['init_channels']}, "
          f"{c['space']['layers']} cells, {c['space']['steps']} nodes), {d['weight_count']:,} weights, "
          f"{c['dataset']} batch {c['batch_size']}, after {c['warmup_steps']} SGD steps "
          f"(fresh supernet: search checkpoints are not supported yet)")
    print(f"reference: implicit, {c['cg_iterations']} CG iterations, damping {c['damping']}, "
          f"exact products; compared estimators use {c['products']} products")
    header = (f"{'estimator':<14}{'cos(ref)':>9}{'cos corr':>9}{'|g1|':>10}{'|corr|':>10}"
              f"{'|total|':>10}{'ms/call':>10}{'first s':>9}")
    print(header)
    for key, r in d["estimators"].items():
        print(f"{key:<14}{r['cosine_to_implicit']:>9.4f}{r['correction_cosine_to_implicit']:>9.4f}"
              f"{r['g1_norm']:>10.3e}{r['correction_norm']:>10.3e}{r['total_norm']:>10.3e}"
              f"{1e3 * r['seconds_per_call']:>10.1f}{r['first_call_seconds']:>9.1f}")
    print("pairwise cosine of the architecture gradients:")
    keys = list(d["cosine"])
    print(" " * 14 + "".join(f"{k[:12]:>13}" for k in keys))
    for a in keys:
        print(f"{a:<14}" + "".join(f"{d['cosine'][a][b]:>13.4f}" for b in keys))


if __name__ == "__main__":
    cli.run(main)
