"""Probe of issue 30's candidate 3: a bundle's derivatives as traced functions.

A stride-1 bundle of the E edges leaving a state as the branch `hotpath`'s edge_bundles built
it (shared ReLU; per convolution candidate a depthwise convolution with channel multiplier E,
a batched pointwise einsum and a BatchNorm over E x C channels, separable ones twice; max
pool + BN;
identity; mixed by the softmax rows), on a chain of `--sites` call sites of the same shape,
each with its own weights and alphas:
  h_{k+1} = h_k + sum_e bundle(h_k; softmax(a_k), W_k)[..., e, :],   loss = sum(sin(h_S) t).
Two forms of the bundle:
  autodiff  the ops inline; TensorFlow's automatic derivatives (that branch's path);
  explicit  tf.custom_gradient around three tf.functions on stop-gradient inputs, each traced
            once per shape and called from every site: the forward, its vector-Jacobian
            product (VJP: a tape inside the function) and the VJP of that VJP (nested tapes
            inside the function). No tape crosses a function call.
Two derivative orders, as the estimators' passes take them (estimators.StatelessLosses):
  first     grad of the loss with respect to (W, a)                 (`_pass`)
  second    d/d(W, a) <grad_W loss, v>  (Hessian-vector products)   (`_products`)
Reported: graph nodes (outer graph + function library, as benchmarks/search_timing counts
them), trace seconds (get_concrete_function), first call seconds, seconds per later call, peak
RSS; `--check` compares both forms in float64 (values, gradients, products).
`--replicas=2` runs the step under MirroredStrategy over 2 logical CPUs (per-replica losses).

  python benchmarks/bundle_derivatives_probe.py --form=autodiff --order=second --sites=14
  python benchmarks/bundle_derivatives_probe.py --check --dtype=float64 --sites=3
"""

import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_FORM = flags.DEFINE_enum("form", "explicit", ["autodiff", "explicit"], "Bundle form.")
_ORDER = flags.DEFINE_enum("order", "first", ["first", "second"], "Derivative order.")
_SITES = flags.DEFINE_integer("sites", 14, "Call sites (bundles) in the chain.")
_EDGES = flags.DEFINE_integer("edges", 4, "Edges per bundle (E).")
_CHANNELS = flags.DEFINE_integer("channels", 8, "Channels C.")
_SIZE = flags.DEFINE_integer("size", 16, "Height and width.")
_BATCH = flags.DEFINE_integer("batch", 16, "Batch size.")
_CANDIDATES = flags.DEFINE_integer(
    "candidates", 4, "Convolution candidates in the bundle: sep 3x3, sep 5x5, dil 3x3, dil 5x5."
)
_VARY_EDGES = flags.DEFINE_bool(
    "vary_edges", False, "Sites with E = edges, edges - 1, ..., 1 in turn (distinct shapes)."
)
_RELAXED = flags.DEFINE_bool(
    "relaxed", False, "Explicit form traced once for every shape (all dimensions unknown)."
)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "dtype.")
_CALLS = flags.DEFINE_integer("calls", 3, "Timed calls after the first.")
_CHECK = flags.DEFINE_bool("check", False, "Compare both forms (float64 recommended).")
_NOINLINE = flags.DEFINE_bool("noinline", False, "Mark the explicit form's functions _noinline.")
_REPLICAS = flags.DEFINE_integer("replicas", 1, "1, or 2: MirroredStrategy on 2 logical CPUs.")
_THREADS = flags.DEFINE_integer("threads", 1, "intra/inter-op threads.")


def _rss_peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main(argv):
    del argv
    import tensorflow as tf

    if _REPLICAS.value > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * _REPLICAS.value
        )
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    import numpy as np

    from tf_amended_darts import operations

    dtype, c = _DTYPE.value, _CHANNELS.value
    zero = tf.UnconnectedGradients.ZERO

    def dim(t, i):  # static where known (shape-relaxed traces: dynamic)
        return t.shape[i] if t.shape[i] is not None else tf.shape(t)[i]

    def batch_norm(y):  # [.., E, C] -> normalised over N, H, W per (e, c); and its moments
        d = [dim(y, i) for i in range(1, 5)]
        flat = tf.reshape(y, [-1, d[0], d[1], d[2] * d[3]])
        out, mean, variance = operations.normalize_batch(flat, 1e-5)
        return tf.reshape(out, [-1, *d]), tf.concat([mean, variance], 0)

    kinds = [("sep", 3), ("sep", 5), ("dil", 3), ("dil", 5)][: _CANDIDATES.value]

    def dilated_depthwise(x, kernel, d):
        """SAME, stride 1, dilation d, for unknown H, W: space_to_batch by hand (CPU kernels
        have no dilated depthwise; tf.nn's helper needs static shapes)."""
        if d == 1:
            return tf.nn.depthwise_conv2d(x, kernel, (1, 1, 1, 1), "SAME")
        k = dim(kernel, 0)
        total = d * (k - 1)
        hw = tf.shape(x)[1:3]
        extra = (-(hw + total)) % d
        lo = total // 2
        paddings = tf.stack([[lo, lo], [lo, lo]]) + tf.stack(
            [[0, total - 2 * lo + extra[0]], [0, total - 2 * lo + extra[1]]]
        )
        y = tf.space_to_batch_nd(x, [d, d], paddings)
        y = tf.nn.depthwise_conv2d(y, kernel, (1, 1, 1, 1), "VALID")
        return tf.batch_to_space(y, [d, d], tf.stack([[0, extra[0]], [0, extra[1]]]))

    def conv(x, depthwise, pointwise, dilation, shared):
        """ReLU'd x (shared [N, H, W, C] or per edge [N, H, W, E * C]) -> BN(pw(dw(x)))."""
        hh, ww, e, c = dim(x, 1), dim(x, 2), dim(pointwise, 0), dim(pointwise, 1)
        if x.shape[1] is None:  # tf.nn's dilation (space_to_batch) needs static H, W
            y = dilated_depthwise(x, depthwise, dilation)
        else:
            y = tf.nn.depthwise_conv2d(
                x, depthwise, (1, 1, 1, 1), "SAME", dilations=(dilation,) * 2
            )
        if shared:  # channel c * E + e is edge e's channel c
            y = tf.einsum("nhwce,eco->nhweo", tf.reshape(y, [-1, hh, ww, c, e]), pointwise)
        else:
            y = tf.einsum("nhwec,eco->nhweo", tf.reshape(y, [-1, hh, ww, e, c]), pointwise)
        return batch_norm(y)

    def body(h, mix, *w):
        """A bundle of `kinds` + max pool with BN + identity on E edges:
        [N, H, W, C], mix [len(kinds) + 2, E] -> ([N, H, W, E, C] mixed, moments)."""
        relu = tf.nn.relu(h)
        e, c = dim(mix, 1), dim(h, 3)
        terms, moments, i = [], [], 0
        for kind, _ in kinds:
            if kind == "sep":
                y, m1 = conv(relu, w[i], w[i + 1], 1, True)
                y, m2 = conv(
                    tf.reshape(tf.nn.relu(y), [-1, dim(h, 1), dim(h, 2), e * c]),
                    w[i + 2],
                    w[i + 3],
                    1,
                    False,
                )
                moments += [m1, m2]
                i += 4
            else:
                y, m = conv(relu, w[i], w[i + 1], 2, True)
                moments.append(m)
                i += 2
            terms.append(y)
        pooled, m = batch_norm(tf.nn.max_pool2d(h, 3, 1, "SAME")[:, :, :, None, :])
        moments.append(m)
        terms += [pooled, h[:, :, :, None, :]]
        mixed = tf.add_n([t * mix[j][:, None] for j, t in enumerate(terms)])
        return mixed, tf.concat(moments, 0)

    def site_weights(normal, e):
        w = []
        for kind, k in kinds:
            w += [normal(k, k, c, e, scale=0.3), normal(e, c, c, scale=0.3)]
            if kind == "sep":
                w += [normal(k, k, e * c, 1, scale=0.3), normal(e, c, c, scale=0.3)]
        return w

    # ---- the explicit form: three traced functions, shared by every call site -------------
    attributes = {"_noinline": True} if _NOINLINE.value else None

    traces = []

    def _fn(f):
        if not _RELAXED.value:
            return tf.function(f, autograph=False, experimental_attributes=attributes)
        traced = {}

        def relaxed(*args):  # one trace per structure of ranks, every dimension unknown
            key = str(tf.nest.map_structure(lambda t: t.shape.rank, args))
            if key not in traced:
                spec = tf.nest.map_structure(
                    lambda t: tf.TensorSpec([None] * t.shape.rank, t.dtype), args
                )
                traces.append(key)
                traced[key] = tf.function(
                    f,
                    autograph=False,
                    input_signature=spec,
                    experimental_attributes=attributes,
                )
            return traced[key](*args)

        return relaxed

    @_fn
    def forward(h, mix, *w):
        return body(h, mix, *w)

    @_fn
    def vjp(h, w, dy):  # w: [mix, *weights]
        with tf.GradientTape() as tape:
            tape.watch([h, *w])
            y, _ = body(h, *w)
        return tape.gradient(y, [h, *w], output_gradients=dy, unconnected_gradients=zero)

    @_fn
    def vjp_of_vjp(h, w, dy, dd):
        with tf.GradientTape() as outer:
            outer.watch([h, *w, dy])
            with tf.GradientTape() as inner:
                inner.watch([h, *w])
                y, _ = body(h, *w)
            g = inner.gradient(y, [h, *w], output_gradients=dy, unconnected_gradients=zero)
            dot = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, dd)])
        return outer.gradient(dot, [h, *w, dy], unconnected_gradients=zero)

    sg = tf.stop_gradient

    @tf.custom_gradient
    def backward(h, *w_and_dy):
        w, dy = list(w_and_dy[:-1]), w_and_dy[-1]
        grads = vjp(sg(h), [sg(x) for x in w], sg(dy))

        def second(*dd):
            return vjp_of_vjp(sg(h), [sg(x) for x in w], sg(dy), [sg(x) for x in dd])

        return grads, second

    @tf.custom_gradient
    def explicit(h, *w):  # w: mix, then the weights
        y, moments = forward(sg(h), *[sg(x) for x in w])

        def first(dy, _dmoments):  # the moments feed the moving statistics only
            return backward(h, *w, dy)

        return (y, moments), first

    bundle = body if _FORM.value == "autodiff" else explicit

    # ---- the chain and its derivatives ------------------------------------------------------
    rng = np.random.default_rng(0)
    s, size, n = _SITES.value, _SIZE.value, _BATCH.value

    def normal(*shape, scale=1.0):
        return tf.constant(rng.normal(size=shape) * scale, dtype)

    # --vary_edges: site k has E = edges - k % edges out-edges (distinct shapes, as the states
    # of a cell: 4, 4, 3, 2, 1 edges); else every site E = edges (one shape).
    edges = [
        _EDGES.value - k % _EDGES.value if _VARY_EDGES.value else _EDGES.value for k in range(s)
    ]
    weights = []
    for k in range(s):
        weights += site_weights(normal, edges[k])
    per_site = len(weights) // s
    alphas = [normal(len(kinds) + 2, edges[k], scale=0.5) for k in range(s)]
    x = normal(n, size, size, c)
    target = normal(n, size, size, c)
    vector = [normal(*w.shape) for w in weights]

    def loss_of(weights, alphas, form):
        h = x
        moments = []
        for k in range(s):
            mix = tf.nn.softmax(alphas[k], axis=0)
            y, m = form(h, mix, *weights[per_site * k : per_site * (k + 1)])
            moments.append(m)
            h = h + tf.reduce_sum(y, axis=3)
        return tf.reduce_sum(tf.sin(h) * target), moments

    def first_order(weights, alphas, form):
        with tf.GradientTape() as tape:
            tape.watch(weights + alphas)
            loss, moments = loss_of(weights, alphas, form)
        grads = tape.gradient(loss, weights + alphas, unconnected_gradients=zero)
        return [loss] + grads + [tf.add_n([tf.reduce_sum(m) for m in moments])]

    def second_order(weights, alphas, form):
        with tf.GradientTape() as outer:
            outer.watch(weights + alphas)
            with tf.GradientTape() as inner:
                inner.watch(weights)
                loss, _ = loss_of(weights, alphas, form)
            grads = inner.gradient(loss, weights, unconnected_gradients=zero)
            dot = tf.add_n([tf.reduce_sum(g * tf.stop_gradient(v)) for g, v in zip(grads, vector)])
        products = outer.gradient(dot, weights + alphas, unconnected_gradients=zero)
        return [loss] + grads + products

    order_fn = first_order if _ORDER.value == "first" else second_order

    if _CHECK.value:
        results = {}
        for order, fn in (("first", first_order), ("second", second_order)):
            got = tf.function(lambda w, a, fn=fn: fn(w, a, explicit), autograph=False)(
                weights, alphas
            )
            want = tf.function(lambda w, a, fn=fn: fn(w, a, body), autograph=False)(weights, alphas)
            errors = [float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(got, want)]
            scale = max(float(tf.reduce_max(tf.abs(b))) for b in want)
            results[order] = {"max_abs_error": max(errors), "max_abs_value": scale}
        print(json.dumps({"check": results, "dtype": dtype, "sites": s}))
        return

    if _REPLICAS.value > 1:
        strategy = tf.distribute.MirroredStrategy([f"CPU:{i}" for i in range(_REPLICAS.value)])

        def step(w, a):
            per_replica = strategy.run(lambda: order_fn(w, a, bundle))
            return [strategy.reduce("SUM", t, axis=None) for t in per_replica]

        reference_fn = tf.function(
            lambda w, a: [_REPLICAS.value * t for t in order_fn(w, a, body)], autograph=False
        )
    else:

        def step(w, a):
            return order_fn(w, a, bundle)

        reference_fn = None
    function = tf.function(step, autograph=False)
    start = time.perf_counter()
    concrete = function.get_concrete_function(weights, alphas)
    trace = time.perf_counter() - start
    graph = concrete.graph
    types = [op.type for op in graph.get_operations()]
    library = {name: len(f.definition.node_def) for name, f in graph._functions.items()}
    outer_nodes = len(types)
    start = time.perf_counter()
    out = function(weights, alphas)
    float(out[0])
    first_call = time.perf_counter() - start
    times = []
    for _ in range(_CALLS.value):
        start = time.perf_counter()
        float(function(weights, alphas)[0])
        times.append(time.perf_counter() - start)
    report = {
        "form": _FORM.value,
        "order": _ORDER.value,
        "sites": s,
        "noinline": _NOINLINE.value,
        "replicas": _REPLICAS.value,
        "dtype": dtype,
        "nodes": outer_nodes + sum(library.values()),
        "outer_nodes": outer_nodes,
        "library_functions": len(library),
        "library_nodes": sum(library.values()),
        "outer_per_site": round(outer_nodes / s),
        "trace_s": round(trace, 2),
        "first_call_s": round(first_call, 2),
        "s_per_call": round(sorted(times)[len(times) // 2], 3) if times else None,
        "peak_rss_mb": round(_rss_peak_mb()),
        "outer_types": dict(collections.Counter(types).most_common()),
    }
    if reference_fn is not None:
        want = reference_fn(weights, alphas)
        report["max_abs_error_vs_one_device_autodiff"] = max(
            float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(out, want)
        )
    print(json.dumps(report))


if __name__ == "__main__":
    app.run(main)
