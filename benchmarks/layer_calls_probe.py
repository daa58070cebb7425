"""Probe of issue 30's candidates 4 and 5 on a chain of SepConv operations (stride 1, no
affine, as the supernet's edges hold them; BatchNorm in training mode, moving statistics
updated).

Candidate 4, `--forms=keras,raw`: the operations called as Keras layers (today) against the
same arithmetic as raw tf.nn ops on the layers' own variables (relu, depthwise_conv2d,
conv2d, operations.normalize_batch, the moving-statistics update).
Candidate 5, `--xla`: each form also under tf.function(jit_compile=True).
Orders as the estimators' passes take them: first (grad of the loss with respect to the
weights) and second (d/dW <grad_W loss, v>: a Hessian-vector product). All configurations run
in one process, each twice, alternating. Reported per configuration (one JSON line): graph
nodes (graph + function library: search_timing.graph_nodes), trace seconds,
first call seconds (trace + optimisation or XLA compilation + one run), median seconds per
later call, and the largest difference from the first configuration's outputs relative to
their largest magnitude.

  python benchmarks/layer_calls_probe.py --sites=6 --xla
  python benchmarks/layer_calls_probe.py --dtype=float64 --sites=3
"""

import json
import time

import search_timing  # first: puts this checkout's package on sys.path
from absl import app, flags

_SITES = flags.DEFINE_integer("sites", 6, "SepConv operations in the chain.")
_CHANNELS = flags.DEFINE_integer("channels", 8, "Channels C.")
_SIZE = flags.DEFINE_integer("size", 16, "Height and width.")
_BATCH = flags.DEFINE_integer("batch", 16, "Batch size.")
_FORMS = flags.DEFINE_list("forms", "keras,raw", "keras | raw.")
_XLA = flags.DEFINE_bool("xla", False, "Also each form under jit_compile=True.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "dtype.")
_CALLS = flags.DEFINE_integer("calls", 5, "Timed calls after the first.")
_THREADS = flags.DEFINE_integer("threads", 1, "intra/inter-op threads.")


def main(argv):
    del argv
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    from tf_amended_darts import operations

    dtype = _DTYPE.value
    shape = [_BATCH.value, _SIZE.value, _SIZE.value, _CHANNELS.value]
    x0 = tf.cast(tf.random.stateless_normal(shape, [1, 2]), dtype)
    chain = [
        operations.SepConv(_CHANNELS.value, 3, 1, affine=False, dtype=dtype)
        for _ in range(_SITES.value)
    ]
    h = x0
    for op in chain:  # eager build
        h = op(h, training=True)
    weights = [v for op in chain for v in op.trainable_variables]
    directions = [tf.ones_like(w) for w in weights]
    # sin(x) . t, not a norm: the chain ends in a BatchNorm, whose output's norm is constant.
    target = tf.cast(tf.random.stateless_normal(shape, [3, 4]), dtype)

    def raw_dil_conv(block, x):
        x = tf.nn.relu(x)
        x = tf.nn.depthwise_conv2d(x, block.depthwise.kernel.value, [1, 1, 1, 1], "SAME")
        x = tf.nn.conv2d(x, block.pointwise.kernel.value, 1, "VALID")
        y, mean, variance = operations.normalize_batch(x, block.bn.epsilon)
        momentum = block.bn.momentum
        for variable, batch in ((block.bn.moving_mean, mean), (block.bn.moving_variance, variance)):
            old = variable.value
            variable.assign(operations._finite_or(old * momentum + batch * (1 - momentum), old))
        return y

    def loss(form, x):
        for op in chain:
            if form == "keras":
                x = op(x, training=True)
            else:
                x = raw_dil_conv(op.second, raw_dil_conv(op.first, x))
        return tf.reduce_sum(tf.sin(x) * target)

    def step_fn(order, form, xla):
        @tf.function(jit_compile=xla)
        def step(x):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = loss(form, x)
                grads = inner.gradient(value, weights)
                if order == "first":
                    return grads
                dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, directions)])
            return outer.gradient(dot, weights)

        return step

    configs = [(f, x) for f in _FORMS.value for x in ((False, True) if _XLA.value else (False,))]
    for order in ("first", "second"):
        reference = None
        for _ in range(2):
            for form, xla in configs:
                step = step_fn(order, form, xla)
                start = time.perf_counter()
                graph = step.get_concrete_function(tf.TensorSpec(shape, dtype)).graph
                trace = time.perf_counter() - start
                start = time.perf_counter()
                out = [o.numpy() for o in step(x0)]
                first = trace + time.perf_counter() - start
                times = []
                for _ in range(_CALLS.value):
                    start = time.perf_counter()
                    out = [o.numpy() for o in step(x0)]
                    times.append(time.perf_counter() - start)
                reference = reference or out
                difference = max(
                    float(abs(a - b).max() / (abs(a).max() + 1e-30)) for a, b in zip(reference, out)
                )
                print(
                    json.dumps(
                        {
                            "order": order,
                            "form": form,
                            "xla": xla,
                            "nodes": search_timing.graph_nodes(graph)[0],
                            "trace_s": round(trace, 2),
                            "first_call_s": round(first, 2),
                            "s_per_call": round(sorted(times)[len(times) // 2], 4),
                            "relative_difference": float(f"{difference:.1e}"),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
