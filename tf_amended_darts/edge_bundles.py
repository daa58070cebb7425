"""A search cell's training pass with what the edges leaving one state share computed once.

The estimators differentiate the supernet twice, and tracing costs Python time per graph node,
so the graph should not repeat a computation per edge where the edges share it: the E edges
leaving one state share their input, their stride and their candidates, so their pools with
the pools' BatchNorm (non-affine, on identical inputs: identical outputs) and their identity
are computed once. Every other candidate runs edge by edge through its own layer, and each
edge's output is its own sum of products, as MixedOp's: batching the convolutions of the E
edges into [batch, H, W, E, C] tensors was measured and made the pass slower (the stacks,
reshapes and unstacks cost more than the batched convolutions save; docs/notes/profiling.md).
The MixedOps' layers own the variables, and every edge's BatchNorm still takes its
moving-statistics update.
"""

import tensorflow as tf
from keras import ops

from tf_amended_darts import operations


def cell_nodes(edges, nodes, states, rows):
    """The intermediate nodes of a cell from its two preprocessed inputs `states`.

    `edges`: the cell's MixedOps (node i takes edges offset(i) + j from states j < 2 + i);
    `rows`: each edge's softmax weights, a list of scalars per edge.
    """
    offsets = [2 * i + i * (i - 1) // 2 for i in range(nodes)]
    incoming = [[] for _ in range(nodes)]
    states = list(states)
    for j in range(nodes + 1):
        leaving = [(i, offsets[i] + j) for i in range(max(0, j - 1), nodes)]
        outputs = leaving_state(
            [edges[e] for _, e in leaving], states[j], [rows[e] for _, e in leaving]
        )
        for (i, _), y in zip(leaving, outputs):
            incoming[i].append(y)
        if j >= 1:  # node j - 1 has all its inputs (states 0..j)
            states.append(tf.add_n(incoming[j - 1]))
    return states[2:]


def leaving_state(mixed_ops, h, rows):
    """The outputs of `mixed_ops` (MixedOps of one cell, all reading state `h`) in training
    mode; `rows`: each edge's softmax weights, a list of scalars per edge.

    Candidates whose output is the same on every edge (pools with their non-affine
    BatchNorm, the identity) are computed once; every other candidate runs edge by edge
    through its own layer. Each edge's output is its own sum of products (no [.., E, C]
    stacks: they cost more than the convolutions they batch)."""
    # Grouped by candidate (alpha column k), not by position in MixedOp.ops: with per-edge
    # candidates (S1) the edges leaving a state compute different ones.
    columns = {}
    for e, mixed in enumerate(mixed_ops):
        for k, layer in mixed.ops:
            columns.setdefault(k, []).append((e, layer))
    terms = [[] for _ in mixed_ops]
    for k, column in sorted(columns.items()):
        layer = column[0][1]
        # Exact types (a subclass may compute something else); affine layers run per edge.
        kind = type(layer) if not layer.affine else None
        if kind is operations.Pooling and layer.bn is not None:
            shared = _batch_norm([op.bn for _, op in column], layer.pool(h, layer.stride))
        elif kind is operations.Identity:
            shared = h
        else:
            shared = None
        for e, op in column:
            y = shared if shared is not None else op(h, training=True)
            terms[e].append(rows[e][k] * y)
    return [tf.add_n(t) for t in terms]


def _batch_norm(bns, x):
    """The edges' BatchNorms (non-affine, training mode) on their one shared input: one
    normalisation, and every layer takes its moving-statistics update."""
    y, mean, variance = operations.normalize_batch(x, bns[0].epsilon)
    for bn in bns:
        bn.update_moving_statistics(mean, variance)
    return ops.cast(y, bns[0].compute_dtype)
