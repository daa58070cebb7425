"""Probe (issue 30): which part of a bundled separable-convolution half is slow per call on
this CPU. E per-edge depthwise convolutions (multiplier 1) and 1x1 conv2d, against one
depthwise convolution with channel multiplier E and an einsum, and the two mixes; forward
and gradient with respect to the input and the kernels, C=8, 16x16, batch 16, E=4, one
thread; medians of 30 calls, three rounds, alternating. Prints each form's difference to the
first (float32) and its times.

  python benchmarks/bundle_parts_probe.py
"""

import time

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
N, H, C, E = 16, 16, 8, 4
x = tf.random.stateless_normal([N, H, H, C], [1, 2])
dws = [tf.random.stateless_normal([3, 3, C, 1], [3, e]) for e in range(E)]
pws = [tf.random.stateless_normal([1, 1, C, C], [4, e]) for e in range(E)]
t = tf.random.stateless_normal([N, H, H, E, C], [5, 6])


def per_edge_dw(x, dws):
    return tf.stack(
        [tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME") for k in dws], axis=3
    )  # n h w e c


def multiplier_dw(x, dws):
    y = tf.nn.depthwise_conv2d(x, tf.concat(dws, 3), [1, 1, 1, 1], "SAME")  # channel c*E+e
    return tf.transpose(tf.reshape(y, [N, H, H, C, E]), [0, 1, 2, 4, 3])


def multiplier_dw_raw(x, dws):  # no transpose: einsum takes nhwce
    y = tf.nn.depthwise_conv2d(x, tf.concat(dws, 3), [1, 1, 1, 1], "SAME")
    return tf.reshape(y, [N, H, H, C, E])


def per_edge_pw(y, pws):
    return tf.stack([tf.nn.conv2d(y[:, :, :, e], pws[e], 1, "VALID") for e in range(E)], axis=3)


def einsum_pw(y, pws, eq="nhwec,eco->nhweo"):
    return tf.einsum(eq, y, tf.reshape(tf.stack(pws), [E, C, C]))


variants = {
    "per-edge dw + per-edge pw": lambda x: per_edge_pw(per_edge_dw(x, dws), pws),
    "multiplier dw + einsum (nhwce)": lambda x: einsum_pw(
        multiplier_dw_raw(x, dws), pws, "nhwce,eco->nhweo"
    ),
    "multiplier dw + per-edge pw": lambda x: per_edge_pw(multiplier_dw(x, dws), pws),
    "per-edge dw + einsum": lambda x: einsum_pw(per_edge_dw(x, dws), pws),
}


def make(f):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch([x] + dws + pws)
            loss = tf.reduce_sum(f(x) * t)
        return tape.gradient(loss, [x] + dws + pws)

    return step


steps = {k: make(f) for k, f in variants.items()}
ref = None
for k, s in steps.items():
    out = s(x)
    ref = ref or out
    err = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(ref, out))
    print(f"{k:32s} max diff to first {err:.1e}")
for rep in range(3):
    for k, s in steps.items():
        s(x)
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            [o.numpy() for o in s(x)]
            ts.append(time.perf_counter() - t0)
        print(f"rep {rep} {k:32s} {sorted(ts)[15] * 1e3:6.2f} ms", flush=True)
