"""A search cell's training pass with the edges leaving each state computed together.

The estimators differentiate the supernet twice, and tracing costs Python time per graph node,
so the graph should grow with the distinct computations, not with the edges: the E edges
leaving one state share their input, their stride and their candidates. Their ReLU, pools
(with the pools' BatchNorm: non-affine, on identical inputs) and identity are computed once;
each convolution candidate is one depthwise convolution over the edges' concatenated kernels,
one batched pointwise contraction and one BatchNorm over the E x C channels (per-channel
statistics: E BatchNorms); the softmax weights then mix [batch, H, W, E, C] bundles. The same
arithmetic as MixedOp's edge by edge, to rounding. The MixedOps' layers own the variables
(read here each call), and every edge's BatchNorm still takes its moving-statistics update.
Candidates without a bundled form run edge by edge (noise among them: each edge's Noise layer
draws from and advances its own state once per pass, as MixedOp's call does).
"""

import tensorflow as tf
from keras import ops

from tf_amended_darts import operations


def cell_nodes(edges, nodes, states, weights):
    """The intermediate nodes of a cell from its two preprocessed inputs `states`.

    `edges`: the cell's MixedOps (node i takes edges offset(i) + j from states j < 2 + i);
    `weights`: its [num_edges, num_ops] softmax weights.
    """
    columns = ops.transpose(weights)  # [num_ops, num_edges]: gathered per bundle below
    offsets = [2 * i + i * (i - 1) // 2 for i in range(nodes)]
    incoming = [[] for _ in range(nodes)]
    states = list(states)
    for j in range(nodes + 1):
        leaving = [(i, offsets[i] + j) for i in range(max(0, j - 1), nodes)]
        indices = [e for _, e in leaving]
        outputs = leaving_state(
            [edges[e] for e in indices], states[j], ops.take(columns, indices, axis=1)
        )
        for (i, _), y in zip(leaving, outputs):
            incoming[i].append(y)
        if j >= 1:  # node j - 1 has all its inputs (states 0..j)
            states.append(tf.add_n(incoming[j - 1]))
    return states[2:]


def leaving_state(mixed_ops, h, weights):
    """The outputs of `mixed_ops` (MixedOps of one cell, all reading state `h`) in training
    mode; `weights`: their softmax weights, [num_ops, E]."""
    first = mixed_ops[0]
    columns = ops.unstack(ops.reshape(weights, [len(first.candidates), len(mixed_ops), 1]))
    relu = ops.relu(h)
    terms = []
    for slot, (k, _) in enumerate(first.ops):
        bundled = _bundle([m.ops[slot][1] for m in mixed_ops], h, relu)
        terms.append(bundled * columns[k])  # [E, 1] weights over [.., E or 1, C]
    return ops.unstack(tf.add_n(terms), axis=3)


def _bundle(layers, h, relu):
    """One candidate on every edge: [batch, H, W, E, C], or [batch, H, W, 1, C] where the
    edges' outputs are identical."""
    layer = layers[0]
    # Exact types: a subclass may compute something else. Affine BatchNorms are not bundled
    # (the supernet's are not affine; `_batch_norm` applies no scale or offset).
    kind = type(layer) if not layer.affine else None
    if kind is operations.SepConv:
        x = _dil_conv([op.first for op in layers], relu)
        return _dil_conv([op.second for op in layers], ops.relu(x))
    if kind is operations.DilConv:
        return _dil_conv(layers, relu)
    if kind is operations.Pooling and layer.bn is not None:
        pooled = layer.pool(h, layer.stride)
        return _batch_norm([op.bn for op in layers], pooled)[:, :, :, None, :]
    if kind is operations.Identity:
        return h[:, :, :, None, :]
    if kind is operations.FactorizedReduce:
        return _factorized_reduce(layers, relu)
    return ops.stack([op(h, training=True) for op in layers], axis=3)


def _kernels(convs, axis, dtype):
    return ops.concatenate([ops.cast(c.kernel, dtype) for c in convs], axis=axis)


def _dil_conv(layers, x):
    """DilConv after its ReLU, on a shared [batch, H, W, C] input or per edge [.., E, C]."""
    layer, edges, channels = layers[0], len(layers), x.shape[-1]
    depthwise = layer.depthwise
    if layer.subsample:
        x = x[:, ::2, ::2]
    shared = len(x.shape) == 4
    if shared:
        # Channel multiplier E: output channel c * E + e is edge e's channel c.
        kernel = _kernels([op.depthwise for op in layers], 3, x.dtype)
    else:
        x = ops.reshape(x, [-1, *x.shape[1:3], edges * channels])
        kernel = _kernels([op.depthwise for op in layers], 2, x.dtype)
    if depthwise.padding == "valid":
        x = operations.pad_symmetric(x, depthwise.kernel_size, depthwise.dilation_rate)
    y = tf.nn.depthwise_conv2d(
        x,
        kernel,
        (1, *depthwise.strides, 1),
        depthwise.padding.upper(),
        dilations=depthwise.dilation_rate,
    )
    y = ops.reshape(y, [-1, *y.shape[1:3], *((channels, edges) if shared else (edges, channels))])
    pointwise = ops.reshape(
        ops.stack([ops.cast(op.pointwise.kernel, x.dtype) for op in layers]),
        [edges, channels, layer.channels],
    )
    equation = "nhwce,eco->nhweo" if shared else "nhwec,eco->nhweo"
    return _batch_norm([op.bn for op in layers], tf.einsum(equation, y, pointwise))


def _factorized_reduce(layers, relu):
    """FactorizedReduce after its ReLU: [batch, H/2, W/2, E, C]."""
    edges = len(layers)
    shifted = ops.pad(relu[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
    halves = []
    for conv, x in (("conv_1", relu), ("conv_2", shifted)):
        kernel = _kernels([getattr(op, conv) for op in layers], 3, x.dtype)
        y = tf.nn.conv2d(x, kernel, 2, "VALID")
        halves.append(ops.reshape(y, [-1, *y.shape[1:3], edges, y.shape[-1] // edges]))
    return _batch_norm([op.bn for op in layers], ops.concatenate(halves, axis=-1))


def _batch_norm(bns, x):
    """The edges' BatchNorms (non-affine, training mode) on per-edge [.., E, C] or on one
    shared [.., C] input; every layer takes its moving-statistics update."""
    shape = x.shape
    per_edge = len(shape) == 5
    flat = ops.reshape(x, [-1, *shape[1:3], shape[3] * shape[4]]) if per_edge else x
    y, mean, variance = operations.normalize_batch(flat, bns[0].epsilon)
    if per_edge:
        statistics = zip(tf.split(mean, len(bns)), tf.split(variance, len(bns)))
    else:
        statistics = [(mean, variance)] * len(bns)
    for bn, (m, v) in zip(bns, statistics):
        bn.update_moving_statistics(m, v)
    return ops.reshape(ops.cast(y, bns[0].compute_dtype), [-1, *shape[1:]])
