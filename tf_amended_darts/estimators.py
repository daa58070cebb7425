"""Architecture-gradient estimators for DARTS: first order, second order, amended, implicit.

Bilevel problem (see docs and arXiv:1910.11831): alpha = architecture variables, w = weights,
    min_alpha L_val(w*(alpha), alpha),   w*(alpha) = argmin_w L_train(w, alpha) + wd/2 ||w||^2.
True gradient g = g1 - B (H + wd I)^-1 v with g1 = grad_alpha L_val, v = grad_w L_val,
B = d^2 L_train / (d alpha d w), H = d^2 L_train / (d w d w), all at the current weights.

| estimator      | returns                                                                         |
|----------------|---------------------------------------------------------------------------------|
| first_order    | g1                                                                              |
| second_order   | grad_alpha L_val(w') - xi B(w) grad_w L_val(w'), w' = w - xi (grad_w L_train    |
|                | + wd w + momentum * buffer) (quark0/darts architect.py; xi = weight lr)         |
| amended        | g1 - eta B (H + wd I) v   (Bi et al.; eta default 0.1, see AmendedEstimator)    |
| implicit       | g1 - B (H + wd I + damping I)^-1 v by conjugate gradient or a Neumann series    |

Conventions:
- Weight decay (WeightOptimizerState.weight_decay) is part of the lower-level objective that SGD
  solves, so every Hessian here is H + wd I; B does not change (the L2 term has no alpha in it).
  Regularisation losses registered on the model (`model.losses`) are not included.
- Hyperparameters given as Python numbers are converted at the model's dtype (exact in float64).
  Weight-space vectors and momentum buffers must match `model.weight_variables` entry by entry
  in static shape, else ValueError naming the argument (checked while tracing, not in the graph).
- Products are exact (back-over-back nested tapes; each product one forward/backward and one
  double backward of L_train) or central finite differences as the reference code
  (R = fd_radius / ||vector||), `products="finite_difference"`. `sub_batches=K` sums them over
  K sub-batches of the training batch, one at a time (_SubBatchProducts: less memory, one more
  forward/backward per product, BatchNorm statistics per sub-batch).
- float16 models take a loss scale (`estimate(loss_scale=)`, loop.LossScale): every derivative,
  the nested ones too, is of the scaled loss and unscaled at once; finite differences are
  refused in half precision (check_products_for_dtype).
- Nothing is assigned: every forward pass is `model.stateless_call(..., training=True)` on
  explicit tensors (the unrolled step is a tensor w', never written into the model), and the new
  BatchNorm statistics it returns are dropped. Weights, BN statistics and optimizer slots are
  bit-for-bit unchanged by an estimator call.
- Distribution (MirroredStrategy, call inside `strategy.run`): losses are
  `tf.nn.compute_average_loss(per_example, global_batch_size)`, so a replica's loss is its local
  contribution to the global loss. Every weight-space vector (v, H v, the unrolled step, CG
  iterates) is all-reduced (SUM) to its global value as soon as it is formed, so norms, dot
  products and the finite-difference radius are computed identically on every replica without
  further communication. The returned architecture gradients are each replica's LOCAL
  contribution: their sum over replicas is the global gradient, which is exactly what Keras'
  `optimizer.apply_gradients` computes (it all-reduces SUM) inside `strategy.run`. Outside a
  strategy they are simply the gradient. Diagnostics are global values on every replica.
"""

import collections.abc
import copy
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_amended_darts import distribute, errors, operations

_ZERO = tf.UnconnectedGradients.ZERO
PRODUCTS = ("exact", "finite_difference")
SOLVERS = ("cg", "neumann")
AUTO = "auto"  # the amended estimator's coefficient chosen at every step (AmendedEstimator)


class WeightOptimizerState(NamedTuple):
    """What the second-order unrolled step needs from the weight optimizer (SGD with momentum).

    Pass tensors or variables (not Python floats) inside tf.function so a changing learning rate
    does not retrace (a NamedTuple, so it can be a tf.function argument). `momentum_buffers`
    follow the PyTorch convention (buf = momentum * buf + grad), one per
    `model.weight_variables` entry and of its shape; None (or a None entry) means zero.
    `learning_rate` is the unrolled step's xi: second order requires it, the others ignore it.
    Use `weight_state_from_keras_sgd` to read them off a Keras SGD optimizer.
    """

    learning_rate: Any = None
    momentum: Any = 0.0
    weight_decay: Any = 0.0
    momentum_buffers: Optional[Sequence[Any]] = None


def weight_state_from_keras_sgd(optimizer, weight_variables, weight_decay=0.0):
    """WeightOptimizerState of a (built) keras.optimizers.SGD for `weight_variables`.

    Keras stores m = momentum * m - lr * grad and steps w += m; the PyTorch buffer is -m / lr,
    so that w - lr * (grad + wd w + momentum * buf) is exactly Keras' next step.
    """
    lr = tf.convert_to_tensor(optimizer.learning_rate)
    buffers = None
    if optimizer.momentum and getattr(optimizer, "momentums", None):
        buffers = []
        for variable in weight_variables:
            slot = optimizer.momentums[optimizer._get_variable_index(variable)]
            buffers.append(-tf.math.divide_no_nan(slot.value, tf.cast(lr, slot.dtype)))
    # Keras casts the Python momentum through float32 (0.9 -> 0.89999998); do the same.
    momentum = tf.convert_to_tensor(optimizer.momentum, tf.float32)
    return WeightOptimizerState(
        learning_rate=lr, momentum=momentum, weight_decay=weight_decay, momentum_buffers=buffers
    )


# ---------------------------------------------------------------------------------------------
# Argument checks (Python-level, on static shapes: they add nothing to a traced graph).


def _is_sequence(value):
    return isinstance(value, collections.abc.Sequence) and not isinstance(value, (str, bytes))


def _check_like_weights(name, vectors, variables, none_allowed=False):
    """Raises ValueError unless `vectors` has one entry per weight variable, each of its shape
    (a shorter list or a broadcastable shape would silently give wrong numbers)."""
    if not _is_sequence(vectors):
        raise ValueError(
            f"{name} must be a list with one tensor per model.weight_variables "
            f"entry, got {type(vectors).__name__}"
        )
    if len(vectors) != len(variables):
        raise ValueError(
            f"{name} has {len(vectors)} entries, model.weight_variables has {len(variables)}"
        )
    for i, (vector, variable) in enumerate(zip(vectors, variables)):
        if vector is None:
            if none_allowed:
                continue
            raise ValueError(f"{name}[{i}] is None; expected the shape of {variable.path}")
        shape = tf.TensorShape(vector.shape if hasattr(vector, "shape") else np.shape(vector))
        if not shape.is_compatible_with(variable.shape):
            raise ValueError(
                f"{name}[{i}] has shape {tuple(shape.as_list())}, expected "
                f"{tuple(variable.shape)} ({variable.path})"
            )


def _as_dtype(value, dtype):
    """`value` as a `dtype` tensor. Python numbers are converted at `dtype` directly: tf.cast
    of a Python float would round it through float32 first (0.1 off by 1.5e-8 in float64)."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def gradients(tape, loss, sources, scale=None):
    """d loss / d sources (zeros where unconnected); with a loss scale, of loss x scale and
    divided by it (`scale`, a scalar: it seeds the backward pass, so the tape needs no scaled
    loss)."""
    if scale is None:
        return tape.gradient(loss, sources, unconnected_gradients=_ZERO)
    scale = tf.cast(scale, loss.dtype)
    grads = tape.gradient(loss, sources, output_gradients=scale, unconnected_gradients=_ZERO)
    return [g / tf.cast(scale, g.dtype) for g in grads]


# ---------------------------------------------------------------------------------------------
# Small vector helpers (lists of tensors); cross-replica sums are distribute.all_reduce_sum.


def _dot(xs, ys):
    return tf.add_n([tf.reduce_sum(x * y) for x, y in zip(xs, ys)])


def _norm(xs):
    return tf.sqrt(_dot(xs, xs))


def _axpy(a, xs, ys):
    """a * xs + ys."""
    return [a * x + y for x, y in zip(xs, ys)]


class StatelessLosses:
    """L(w, alpha) on a batch as a function of explicit tensors, via model.stateless_call.

    The estimators' passes and the search's weight step are calls of the same traced pass
    (`loss_and_grads`, `training_pass`), so a search step's graph holds one forward/backward
    of the supernet: build one per step and give it to `estimate(losses=)`.
    """

    def __init__(self, model, loss_fn, global_batch_size, loss_scale=None):
        trainable = list(model.trainable_variables)
        position = {id(v): i for i, v in enumerate(trainable)}
        for kind in ("arch_variables", "weight_variables"):
            if not hasattr(model, kind):
                raise ValueError(f"model {model.name!r} has no `{kind}` (see docs/DESIGN.md)")
            missing = [v.path for v in getattr(model, kind) if id(v) not in position]
            if missing:
                raise ValueError(f"{kind} not in model.trainable_variables: {missing}")
        self.model, self.loss_fn, self.global_batch_size = model, loss_fn, global_batch_size
        self.loss_scale = loss_scale  # float16: every derivative seeded with it (gradients)
        self._arch_positions = [position[id(v)] for v in model.arch_variables]
        self._weight_positions = [position[id(v)] for v in model.weight_variables]
        # Trainable variables in neither list are held at their current values.
        self._values = [tf.convert_to_tensor(v.value) for v in trainable]
        self._non_trainable = [v.value for v in model.non_trainable_variables]
        self._functions = {}

    def weights(self):
        return [self._values[i] for i in self._weight_positions]

    def arch(self):
        return [self._values[i] for i in self._arch_positions]

    def loss(self, weights, arch, batch):
        return self._forward(weights, arch, batch)[0]

    def _forward(self, weights, arch, batch):
        """(local loss, logits, the model's new non-trainable values) in training mode."""
        values = list(self._values)
        for i, w in zip(self._weight_positions, weights):
            values[i] = w
        for i, a in zip(self._arch_positions, arch):
            values[i] = a
        x, y = batch
        logits, non_trainable = self.model.stateless_call(
            values, self._non_trainable, x, training=True
        )
        loss = tf.nn.compute_average_loss(
            self.loss_fn(y, logits), global_batch_size=self.global_batch_size
        )
        return loss, logits, non_trainable

    def loss_and_grads(self, weights, arch, batch):
        """(local loss, local grad_w, local grad_alpha) from one forward/backward pass."""
        return self._function("pass", self._pass)(weights, arch, batch)[:3]

    def training_pass(self, weights, arch, batch):
        """(local loss, local grad_w, logits, new non-trainable values: BatchNorm's moving
        statistics, in model.non_trainable_variables order) from the same traced pass as
        `loss_and_grads`, for a weight step that assigns them."""
        loss, grad_w, _, logits, non_trainable = self._function("pass", self._pass)(
            weights, arch, batch
        )
        return loss, grad_w, logits, non_trainable

    def _pass(self, weights, arch, batch):
        # One body for every pass: a second function (without the logits and statistics, or
        # without grad_alpha) would double the traced graph for a few small outputs.
        with tf.GradientTape() as tape:
            tape.watch(weights + arch)
            loss, logits, non_trainable = self._forward(weights, arch, batch)
        grads = gradients(tape, loss, weights + arch, self.loss_scale)
        return loss, grads[: len(weights)], grads[len(weights) :], logits, non_trainable

    def products(self, weights, arch, batch, vector):
        """(local loss, local H vector, local B vector) of this loss (L_train): one forward,
        one backward and one double backward (back-over-back tapes). Under a loss scale s
        (float16) the first backward is of s L: the products differentiate
        <s grad_w L, vector / |vector|> and are multiplied by |vector| / s, so that the second
        backward's values are those of a scaled gradient whatever the size of the vector."""
        return self._function("products", self._products)(weights, arch, batch, vector)

    def _products(self, weights, arch, batch, vector):
        scale = self.loss_scale
        with tf.GradientTape() as outer:
            outer.watch(weights + arch)
            with tf.GradientTape() as inner:
                inner.watch(weights)
                loss = self.loss(weights, arch, batch)
            if scale is not None:
                scale = tf.cast(scale, loss.dtype)
            grad_w = inner.gradient(
                loss, weights, output_gradients=scale, unconnected_gradients=_ZERO
            )
            factor = None
            if scale is not None:
                norm = tf.stop_gradient(_norm(vector))
                norm = tf.where(norm > 0, norm, tf.ones_like(norm))
                vector = [u / norm for u in vector]
                factor = norm / tf.cast(scale, norm.dtype)
            dot = _dot(grad_w, [tf.stop_gradient(u) for u in vector])
        products = outer.gradient(dot, weights + arch, unconnected_gradients=_ZERO)
        if factor is not None:
            products = [p * factor for p in products]
        return loss, products[: len(weights)], products[len(weights) :]

    def _function(self, name, python_function):
        """`python_function` as a nested tf.function when tracing on one device, else itself.

        An estimator makes up to five passes; traced inline, the step's graph would hold a copy
        of the supernet's forward/backward per pass (the products' double backward too), which
        dominated the first call and the peak memory (docs/DESIGN.md "One traced function per
        pass"). Traced once and called, the graph holds one of each, and a call's activations
        are freed when it returns. `_noinline` keeps TensorFlow from inlining the calls again.
        Over several replicas the passes stay inline: MirroredStrategy's cross-replica sums
        (synchronised BatchNorm) cannot run inside a nested function. Eagerly there is nothing
        to trace."""
        if not tf.inside_function() or distribute.replicas_in_context() > 1:
            return python_function
        if name not in self._functions:
            self._functions[name] = tf.function(
                python_function, autograph=False, experimental_attributes={"_noinline": True}
            )
        return self._functions[name]


def _after(tensors, batch):
    """`batch` as it is, but available only once `tensors` are computed.

    Passes with no data dependence on each other (the validation pass and the training pass,
    the two finite-difference passes) may otherwise run at the same time in a graph and hold
    their activations together; gating a pass's input orders it after the other.
    """
    with tf.control_dependencies(tf.nest.flatten(tensors)):
        return tf.nest.map_structure(tf.identity, batch)


# ---------------------------------------------------------------------------------------------
# Second-derivative products of L_train at (w, alpha). Both classes return LOCAL contributions
# (sum over replicas = global product) of H v and B u for GLOBAL vectors v, u.


class _Products:
    """What both kinds of products share: the batch, and L_train's gradient at w computed once."""

    def __init__(self, losses, weights, arch, batch):
        self._losses, self._weights, self._arch, self._batch = losses, weights, arch, batch
        self._at_w = self._loss = None

    def loss_and_grad_w(self):
        if self._at_w is None:
            loss, grad_w, _ = self._losses.loss_and_grads(self._weights, self._arch, self._batch)
            self._at_w = loss, grad_w
        return self._at_w

    def train_loss(self):
        return self._loss if self._loss is not None else self.loss_and_grad_w()[0]


class _ExactProducts(_Products):
    """Exact products, each one call of `StatelessLosses.products` (H v and B v come from the
    same double backward): a product recomputes its forward/backward rather than keeping a
    persistent tape's activations alive from one product to the next."""

    def hessian_vector(self, vector):
        self._loss, hv, _ = self._losses.products(self._weights, self._arch, self._batch, vector)
        return hv

    def mixed_vector(self, vector):
        self._loss, _, bv = self._losses.products(self._weights, self._arch, self._batch, vector)
        return bv


class _FiniteDifferenceProducts(_Products):
    """Central differences of gradients at w +- R vector, R = radius / ||vector|| (reference)."""

    def __init__(self, losses, weights, arch, batch, radius):
        super().__init__(losses, weights, arch, batch)
        self._radius = radius

    def _difference(self, vector, want_weights):
        norm = _norm(vector)
        r = self._radius / tf.where(norm > 0, norm, tf.ones_like(norm))
        grads, batch = [], self._batch
        for sign in (1.0, -1.0):
            shifted = _axpy(sign * r, vector, self._weights)
            _, grad_w, grad_a = self._losses.loss_and_grads(shifted, self._arch, batch)
            grads.append(grad_w if want_weights else grad_a)
            batch = _after(grads[-1], self._batch)
        return [(p - m) / (2.0 * r) for p, m in zip(*grads)]

    def hessian_vector(self, vector):
        return self._difference(vector, want_weights=True)

    def mixed_vector(self, vector):
        return self._difference(vector, want_weights=False)


class _SubBatchProducts:
    """The products of L_train summed over `count` equal sub-batches of `batch`, one sub-batch
    at a time (a tf.while_loop on one replica), so that only one sub-batch's passes are alive:
    the activation memory of batch / count examples, for one more forward/backward per product
    (each product recomputes its sub-batches' passes). The loss is the full batch's mean (each
    sub-batch's loss is divided by the global batch size). BatchNorm in training mode
    normalises each sub-batch with its own statistics, so H and B are those of that loss (the
    batch normalised in `count` groups, as `count` replicas without synchronised BatchNorm
    would); on a model without batch statistics they are the full batch's exactly."""

    def __init__(self, method, fd_radius, losses, weights, arch, batch, count):
        size = batch[0].shape[0]
        if size is not None and size % count:
            raise errors.InputError(
                f"sub_batches={count} does not divide the batch of {size} examples (per replica)"
            )
        if losses.global_batch_size is None:  # the full batch's, not the sub-batch's
            losses = copy.copy(losses)
            losses._functions = {}
            losses.global_batch_size = tf.shape(batch[0])[0] * distribute.replicas_in_context()
        self._make = lambda sub_batch: _make_products(
            method, fd_radius, losses, weights, arch, sub_batch
        )
        self._weights, self._arch = weights, arch
        self._batch, self._count, self._exact = batch, count, method == "exact"
        self._loss = self._at_w = None

    def _sum(self, compute, like):
        """sum over the sub-batches k of compute(products of sub-batch k), a list of tensors
        shaped as `like`. Over several replicas the loop is unrolled (MirroredStrategy refuses
        synchronised BatchNorm's all-reduces inside a while loop)."""
        size = tf.shape(self._batch[0])[0] // self._count

        def body(k, total):
            sub_batch = tf.nest.map_structure(lambda t: t[k * size : (k + 1) * size], self._batch)
            return k + 1, [a + b for a, b in zip(total, compute(self._make(sub_batch)))]

        total = [tf.zeros_like(t) for t in like]
        if distribute.replicas_in_context() > 1:
            for k in range(self._count):
                total = body(k, total)[1]
            return total
        # parallel_iterations=1: an iteration's passes depend on k only, so by default the
        # loop would run up to 10 sub-batches at once, holding their activations together.
        return tf.while_loop(
            lambda k, _: k < self._count, body, (tf.constant(0), total), parallel_iterations=1
        )[1]

    def _product(self, method_name, vector, like):
        if not self._exact:
            return self._sum(lambda p: getattr(p, method_name)(vector), like)
        # Exact products compute the loss anyway: keep it for train_loss.
        loss_like = tf.zeros([], like[0].dtype)
        total = self._sum(
            lambda p: getattr(p, method_name)(vector) + [p.train_loss()], like + [loss_like]
        )
        self._loss = total[-1]
        return total[:-1]

    def loss_and_grad_w(self):
        if self._at_w is None:
            like = [tf.zeros([], self._weights[0].dtype)] + self._weights
            total = self._sum(lambda p: [p.loss_and_grad_w()[0]] + p.loss_and_grad_w()[1], like)
            self._at_w = total[0], total[1:]
        return self._at_w

    def train_loss(self):
        return self._loss if self._loss is not None else self.loss_and_grad_w()[0]

    def hessian_vector(self, vector):
        return self._product("hessian_vector", vector, self._weights)

    def mixed_vector(self, vector):
        return self._product("mixed_vector", vector, self._arch)


def _make_products(method, fd_radius, losses, weights, arch, batch, sub_batches=1):
    if sub_batches > 1:
        return _SubBatchProducts(method, fd_radius, losses, weights, arch, batch, sub_batches)
    if method == "exact":
        return _ExactProducts(losses, weights, arch, batch)
    return _FiniteDifferenceProducts(losses, weights, arch, batch, fd_radius)


def hessian_vector_product(
    model,
    loss_fn,
    batch,
    vector,
    *,
    products="exact",
    weight_decay=0.0,
    fd_radius=0.01,
    global_batch_size=None,
    sub_batches=1,
    loss_scale=None,
):
    """(H + wd I) v of L_train on `batch` at the model's weights; global, aligned with
    model.weight_variables. `vector` must be global (identical on every replica). sub_batches:
    accumulated over that many sub-batches (_SubBatchProducts); loss_scale: as estimate's."""
    _check_choice("products", products, PRODUCTS)
    losses = StatelessLosses(model, loss_fn, global_batch_size, loss_scale)
    _check_like_weights("vector", vector, model.weight_variables)
    weights, arch = losses.weights(), losses.arch()
    hv = _make_products(
        products, fd_radius, losses, weights, arch, batch, sub_batches
    ).hessian_vector(vector)
    wd = _as_dtype(weight_decay, weights[0].dtype)
    return _axpy(wd, vector, distribute.all_reduce_sum(hv))


def mixed_vector_product(
    model,
    loss_fn,
    batch,
    vector,
    *,
    products="exact",
    fd_radius=0.01,
    global_batch_size=None,
    sub_batches=1,
    loss_scale=None,
):
    """B u = d/d alpha <grad_w L_train, u>, aligned with model.arch_variables: this replica's
    local contribution (sum over replicas = global product; the product itself on one device).
    sub_batches, loss_scale: as hessian_vector_product."""
    _check_choice("products", products, PRODUCTS)
    losses = StatelessLosses(model, loss_fn, global_batch_size, loss_scale)
    _check_like_weights("vector", vector, model.weight_variables)
    weights, arch = losses.weights(), losses.arch()
    return _make_products(
        products, fd_radius, losses, weights, arch, batch, sub_batches
    ).mixed_vector(vector)


# ---------------------------------------------------------------------------------------------
# Estimators.

# Estimator parameters come from flags (search, diagnose, tune): bad values are InputError.


def _check_choice(name, value, choices):
    if value not in choices:
        raise errors.InputError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def check_products_for_dtype(products, compute_dtype):
    """InputError for finite-difference products on a half-precision model: the step
    R = fd_radius / |v| moves each weight by ~fd_radius / sqrt(n), far below the relative
    resolution of bfloat16 (2^-8) or float16 (2^-11): the differences would be rounding noise."""
    if products != "exact" and compute_dtype in operations.HALF_DTYPES:
        raise errors.InputError(
            f"mixed precision needs products=exact: products={products!r} on a "
            f"{compute_dtype} model, whose resolution is far coarser than the "
            f"finite-difference step of the weights"
        )


def amending_coefficient(value):
    """A user's amending coefficient (a number, or its text as a flag gives it, or AUTO) as
    AmendedEstimator takes it: AUTO or a float; InputError unless finite and >= 0."""
    if value == AUTO:
        return AUTO
    try:
        eta = float(value)
    except (TypeError, ValueError):
        eta = float("nan")
    if isinstance(value, bool) or not 0 <= eta < float("inf"):
        raise errors.InputError(
            f"amending_coefficient must be auto or a finite number >= 0, got {value!r}"
        )
    return eta


def _check_number(name, value, minimum, strict=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.InputError(f"{name} must be a number, got {value!r}")
    in_range = value > minimum if strict else value >= minimum
    if not in_range or value != value or value == float("inf"):
        raise errors.InputError(
            f"{name} must be {'>' if strict else '>='} {minimum} and finite, got {value!r}"
        )


class _Estimator:
    """Shared plumbing. `estimate(...)` returns (grads, diagnostics):
    grads: list of tensors aligned with model.arch_variables (local contribution per replica);
    diagnostics: dict of global scalar tensors: val_loss = L_val at the current weights (for
    every estimator, so the curves compare), g1_norm, correction_norm, train_loss where the
    estimator evaluates it, and estimator-specific ones (second order: unrolled_val_loss =
    L_val(w'); implicit: residual_norm)."""

    name = ""
    # Diagnostics that are this replica's local contribution, summed over replicas in estimate.
    _LOCAL_DIAGNOSTICS = ("val_loss", "unrolled_val_loss", "train_loss")

    def __init__(self, products="exact", fd_radius=0.01, sub_batches=1):
        _check_choice("products", products, PRODUCTS)
        _check_number("fd_radius", fd_radius, 0.0, strict=True)
        if isinstance(sub_batches, bool) or not isinstance(sub_batches, int) or sub_batches < 1:
            raise errors.InputError(f"sub_batches must be an integer >= 1, got {sub_batches!r}")
        self.products, self.fd_radius, self.sub_batches = products, float(fd_radius), sub_batches

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    @tf.autograph.experimental.do_not_convert  # plain Python control flow, trace-time only
    def estimate(
        self,
        model,
        loss_fn,
        train_batch,
        val_batch,
        weight_state=None,
        global_batch_size=None,
        loss_scale=None,
        losses=None,
    ):
        """Architecture gradient for `model` (see module doc for the model contract).

        loss_fn(labels, logits) -> per-example losses; batches are (x, labels) (this replica's
        share under a strategy); global_batch_size defaults to local batch x replicas.
        loss_scale: a scalar for float16 models (loop.LossScale's): every derivative is of the
        loss times it and divided by it; results and diagnostics are unscaled.
        losses: the StatelessLosses of `model` and `loss_fn` that the caller's own passes use
        (the search's weight step), so that both run one traced pass; it holds the global
        batch size and the loss scale, so those two are not given with it. Default: a new one.
        """
        check_products_for_dtype(self.products, model.compute_dtype)
        if losses is None:
            losses = StatelessLosses(model, loss_fn, global_batch_size, loss_scale)
        elif (losses.model, losses.loss_fn) != (model, loss_fn):
            raise ValueError("`losses` is of another model or loss function")
        elif global_batch_size is not None or loss_scale is not None:
            raise ValueError("give global_batch_size and loss_scale to `losses`, not beside it")
        self._check_weight_state(weight_state)
        state = weight_state or WeightOptimizerState()
        if state.momentum_buffers is not None:
            _check_like_weights(
                "weight_state.momentum_buffers",
                state.momentum_buffers,
                model.weight_variables,
                none_allowed=True,
            )
        weights, arch = losses.weights(), losses.arch()
        wd = _as_dtype(state.weight_decay, weights[0].dtype)
        g1, correction, diagnostics = self._estimate(
            losses, weights, arch, train_batch, val_batch, state, wd
        )
        grads = [a + b for a, b in zip(g1, correction)]
        g1_sum, correction_sum = distribute.all_reduce_sum((g1, correction))
        diagnostics = dict(diagnostics)
        for key in self._LOCAL_DIAGNOSTICS:
            if key in diagnostics:
                diagnostics[key] = distribute.all_reduce_sum(diagnostics[key])
        diagnostics["g1_norm"] = _norm(g1_sum)
        diagnostics["correction_norm"] = _norm(correction_sum)
        return grads, diagnostics

    def _check_weight_state(self, weight_state):
        """Raises ValueError if this estimator cannot run on `weight_state` (None allowed)."""

    def _products(self, losses, weights, arch, batch):
        return _make_products(
            self.products, self.fd_radius, losses, weights, arch, batch, self.sub_batches
        )

    @staticmethod
    def _validation(losses, weights, arch, val_batch):
        """(local val loss, GLOBAL v = grad_w L_val, local g1 = grad_alpha L_val)."""
        val_loss, v, g1 = losses.loss_and_grads(weights, arch, val_batch)
        return val_loss, distribute.all_reduce_sum(v), g1


class FirstOrderEstimator(_Estimator):
    """DARTS first order: g1 = grad_alpha L_val at the current weights (one val pass)."""

    name = "first_order"

    def _estimate(self, losses, weights, arch, train_batch, val_batch, state, wd):
        val_loss, _, g1 = losses.loss_and_grads(weights, arch, val_batch)
        return g1, [tf.zeros_like(g) for g in g1], {"val_loss": val_loss}


class SecondOrderEstimator(_Estimator):
    """DARTS second order with the reference's virtual step (quark0/darts architect.py):
    w' = w - xi (grad_w L_train(w) + wd w + momentum * buffer), xi = weight_state.learning_rate,
    g = grad_alpha L_val(w') - xi B(w) grad_w' L_val(w'). Needs weight_state with a
    learning_rate (without it the estimate would silently be first order). Diagnostics:
    val_loss = L_val(w) as every estimator (one extra forward pass), unrolled_val_loss =
    L_val(w')."""

    name = "second_order"

    def _check_weight_state(self, weight_state):
        if weight_state is None or weight_state.learning_rate is None:
            raise ValueError(
                "second_order needs weight_state with the weight optimizer's "
                "learning_rate (the unrolled step's xi)"
            )

    def _estimate(self, losses, weights, arch, train_batch, val_batch, state, wd):
        dtype = weights[0].dtype
        xi = _as_dtype(state.learning_rate, dtype)
        products = self._products(losses, weights, arch, train_batch)
        train_loss, grad_w = products.loss_and_grad_w()
        step = _axpy(wd, weights, distribute.all_reduce_sum(grad_w))
        if state.momentum_buffers is not None:
            momentum = _as_dtype(state.momentum, dtype)
            step = [
                s if b is None else s + momentum * _as_dtype(b, dtype)
                for s, b in zip(step, state.momentum_buffers)
            ]
        unrolled = _axpy(-xi, step, weights)
        unrolled_val_loss, v_unrolled, g1 = self._validation(losses, unrolled, arch, val_batch)
        correction = [-xi * bu for bu in products.mixed_vector(v_unrolled)]
        return (
            g1,
            correction,
            {
                "val_loss": losses.loss(weights, arch, _after(correction, val_batch)),
                "unrolled_val_loss": unrolled_val_loss,
                "train_loss": train_loss,
            },
        )


class AmendedEstimator(_Estimator):
    """Amended gradient (Bi et al., arXiv:1910.11831): g = g1 - eta B A v with A = H + wd I,
    everything at the current weights, i.e. A^-1 replaced by eta A (no unrolled step).

    eta defaults to 0.1, the value of the public reimplementation, so results are comparable
    with it. The paper fixes no value; the best scalar depends on the Hessian's spectrum
    (eta A ~ A^-1 wants eta ~ 1 / lambda^2): `bin/diagnose.py` measures the best one at a
    checkpoint. "auto" takes, at every step, the eta for which eta A v is closest to A^-1 v
    in least squares: <A v, A^-1 v> / |A v|^2 = |v|^2 / |A v|^2 (A symmetric), from the product
    the step computes anyway (no solve, no extra product); it is reported as the diagnostic
    `amending_coefficient`. A fixed eta is a trace-time constant. The constructor argument and
    every flag, config field and record name it `amending_coefficient`; eta is its symbol.
    """

    name = "amended"

    def __init__(self, amending_coefficient=0.1, products="exact", fd_radius=0.01, sub_batches=1):
        super().__init__(products, fd_radius, sub_batches)
        if amending_coefficient != AUTO:
            _check_number("amending_coefficient", amending_coefficient, 0.0)
            amending_coefficient = float(amending_coefficient)
        self.amending_coefficient = amending_coefficient

    def _estimate(self, losses, weights, arch, train_batch, val_batch, state, wd):
        val_loss, v, g1 = self._validation(losses, weights, arch, val_batch)
        products = self._products(losses, weights, arch, _after(v + g1, train_batch))
        av = _axpy(wd, v, distribute.all_reduce_sum(products.hessian_vector(v)))
        diagnostics = {"val_loss": val_loss}
        if (
            self.amending_coefficient == AUTO
        ):  # v and A v are global: every replica computes the same eta
            eta = tf.math.divide_no_nan(_dot(v, v), _dot(av, av))
            diagnostics["amending_coefficient"] = eta
        else:
            eta = _as_dtype(self.amending_coefficient, weights[0].dtype)
        correction = [-eta * bu for bu in products.mixed_vector(av)]
        if self.products == "exact":
            diagnostics["train_loss"] = products.train_loss()
        return g1, correction, diagnostics


class ImplicitEstimator(_Estimator):
    """Implicit-function-theorem reference: g = g1 - B x, x ~ (H + wd I + damping I)^-1 v by
    `iterations` steps of conjugate gradient ("cg") or the truncated Neumann series
    x = s sum_k (I - s A)^k v ("neumann", needs 0 < s < 2 / lambda_max(A), s = neumann_scale).
    Costs `iterations` Hessian-vector products; a diagnostic, not a search estimator. CG assumes
    A positive definite (true near a minimum; use damping elsewhere). Diagnostics
    `residual_norm` ||v - A x|| (CG: the recursive residual) and `rhs_norm` ||v||: their ratio
    says how far the solve converged."""

    name = "implicit"

    def __init__(
        self,
        solver="cg",
        iterations=20,
        damping=0.0,
        neumann_scale=0.01,
        products="exact",
        fd_radius=0.01,
        sub_batches=1,
    ):
        super().__init__(products, fd_radius, sub_batches)
        _check_choice("solver", solver, SOLVERS)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise errors.InputError(f"iterations must be an integer >= 1, got {iterations!r}")
        _check_number("damping", damping, 0.0)
        _check_number("neumann_scale", neumann_scale, 0.0, strict=True)
        self.solver, self.iterations = solver, iterations
        self.damping, self.neumann_scale = float(damping), float(neumann_scale)

    def _estimate(self, losses, weights, arch, train_batch, val_batch, state, wd):
        val_loss, v, g1 = self._validation(losses, weights, arch, val_batch)
        products = self._products(losses, weights, arch, _after(v + g1, train_batch))
        shift = wd + _as_dtype(self.damping, wd.dtype)

        def apply_a(p):  # (H + wd I + damping I) p, global
            return _axpy(shift, p, distribute.all_reduce_sum(products.hessian_vector(p)))

        if self.solver == "cg":
            x, residual = self._conjugate_gradient(apply_a, v)
        else:
            x, residual = self._neumann(apply_a, v, _as_dtype(self.neumann_scale, wd.dtype))
        correction = [-bx for bx in products.mixed_vector(x)]
        diagnostics = {"val_loss": val_loss, "residual_norm": _norm(residual), "rhs_norm": _norm(v)}
        if self.products == "exact":
            diagnostics["train_loss"] = products.train_loss()
        return g1, correction, diagnostics

    # On one replica the solvers loop in tf.while_loop, so a traced step holds ONE
    # Hessian-vector product whatever `iterations` is (unrolled, 20 CG iterations on the
    # quickstart supernet did not finish compiling in 24 min and took 16 GB). Over several
    # replicas the product all-reduces (synchronized BatchNorm's gradient, the sums above),
    # which MirroredStrategy refuses inside a while loop: there the loop is unrolled.
    def _loop(self, body, state):
        if distribute.replicas_in_context() > 1:
            for _ in range(self.iterations):
                state = body(*state)
            return state
        iterations = tf.constant(self.iterations)
        return tf.while_loop(
            lambda k, *_: k < iterations,
            lambda k, *s: (k + 1,) + body(*s),
            (tf.constant(0),) + state,
        )[1:]

    def _conjugate_gradient(self, apply_a, v):
        def body(x, r, p, rs):
            ap = apply_a(p)
            step = tf.math.divide_no_nan(rs, _dot(p, ap))
            x = _axpy(step, p, x)
            r = _axpy(-step, ap, r)
            rs_new = _dot(r, r)
            return x, r, _axpy(tf.math.divide_no_nan(rs_new, rs), p, r), rs_new

        x, r, _, _ = self._loop(body, ([tf.zeros_like(t) for t in v], list(v), list(v), _dot(v, v)))
        return x, r

    def _neumann(self, apply_a, v, scale):
        def body(term, total):
            return _axpy(-scale, apply_a(term), term), [t + s for t, s in zip(total, term)]

        term, total = self._loop(body, (list(v), [tf.zeros_like(t) for t in v]))
        # x = s sum_{k<K} (I - sA)^k v, and v - A x = (I - sA)^K v = term: no extra product.
        return [scale * t for t in total], term


ESTIMATORS = {
    cls.name: cls
    for cls in (FirstOrderEstimator, SecondOrderEstimator, AmendedEstimator, ImplicitEstimator)
}


def make_estimator(name, **params):
    """Estimator by name ("first_order", "second_order", "amended", "implicit") and parameters.
    Unknown names, unknown or out-of-range parameters raise InputError (one line)."""
    _check_choice("estimator", name, tuple(ESTIMATORS))
    try:
        return ESTIMATORS[name](**params)
    except TypeError as error:  # unexpected keyword
        raise errors.InputError(f"bad parameters for estimator {name!r}: {error}") from None
