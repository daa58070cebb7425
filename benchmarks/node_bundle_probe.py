"""Probe (issue 30): a normal search cell's training pass bundled by *destination node*.

edge_bundles groups the edges leaving one state; their outputs go to different nodes, so a
bundle must be split back into per-edge outputs (the [.., E, C] stacks and unstacks that
made the bundled cell slower, docs/notes/profiling.md). Grouped by the node they enter, the
E = 2 + i edges of node i need no split: their inputs are concatenated along channels once,
[B, H, W, E*C], and each candidate runs once over all of them: one depthwise convolution with
the E edges' kernels side by side (depthwise is per channel, so that is E separate ones), one
pointwise einsum with the E kernels [E, C, C], one BatchNorm over E*C channels (per-channel
statistics: E separate BatchNorms), the ReLU once for every convolution candidate, the pools
once; the mix and the sum over the edges are one einsum per candidate. A cell then has 4
chains per candidate instead of 14.

Same cell, same variables (the MixedOps' layers; moving statistics updated per edge) against
`SearchCell.call(bundled=False)`: its forward and the gradient with respect to its inputs,
weights and softmax weights, each a tf.function; graph nodes, the largest difference, then
medians of 20 calls over four alternating rounds, one thread. Normal cells of stride-1
candidates only (DARTS space by default; a reduction cell would add a stride-2 group per node).

  python benchmarks/node_bundle_probe.py [OPERATION,...] [--second] [--float64]   (--second: also a
  Hessian-vector product of the loss, as the estimators' exact products take; --float64:
  the cell in float64, for the differences)
"""

import sys

import search_timing  # first: puts this checkout's package on sys.path
import tensorflow as tf

from tf_amended_darts import operations, search_model, search_space

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
N, H, C, NODES = 16, 16, 8, 4
args = [a for a in sys.argv[1:] if not a.startswith("--")]
SECOND = "--second" in sys.argv
DTYPE = "float64" if "--float64" in sys.argv else "float32"
space = search_space.get_search_space("darts")
if args:
    space = space.replace(operations=tuple(args[0].split(",")))
cell = search_model.SearchCell(space.operations, NODES, C, False, False, dtype=DTYPE)
s0 = tf.random.stateless_normal([N, H, H, C], [1, 2], dtype=DTYPE)
s1 = tf.random.stateless_normal([N, H, H, C], [3, 4], dtype=DTYPE)
logits = tf.Variable(tf.random.stateless_normal([14, len(space.operations)], [5, 6], dtype=DTYPE))
cell(s0, s1, tf.nn.softmax(logits), training=True, bundled=False)  # eager build
target = tf.random.stateless_normal([N, H, H, NODES * C], [7, 8], dtype=DTYPE)


def _batch_norm(bns, x):
    """Non-affine BatchNorm over the E edges' channels side by side; each edge's layer takes
    its slice of the moments as its moving-statistics update."""
    y, mean, variance = operations.normalize_batch(x, bns[0].epsilon)
    for bn, m, v in zip(bns, tf.split(mean, len(bns)), tf.split(variance, len(bns))):
        bn.update_moving_statistics(m, v)
    return y


def _dil_block(blocks, x):
    """DilConv after its ReLU (x: already rectified), stride 1, for the E edges at once."""
    first = blocks[0]
    kernel = tf.concat([b.depthwise.kernel for b in blocks], axis=2)  # [k, k, E*C, 1]
    d = first.dilation
    z = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", dilations=[d, d])
    pointwise = tf.stack([b.pointwise.kernel[0, 0] for b in blocks])  # [E, C, C]
    e = len(blocks)
    z = tf.einsum("bhwec,ecd->bhwed", tf.reshape(z, [N, H, H, e, C]), pointwise)
    return _batch_norm([b.bn for b in blocks], tf.reshape(z, [N, H, H, e * C]))


def _candidate(layers, x, r):
    """One candidate's output for the E edges, [B, H, W, E*C]; r = relu(x)."""
    layer = layers[0]
    if isinstance(layer, operations.Identity):
        return x
    if isinstance(layer, operations.Pooling):
        return _batch_norm([op.bn for op in layers], layer.pool(x, 1))
    if isinstance(layer, operations.SepConv):
        y = _dil_block([op.first for op in layers], r)
        return _dil_block([op.second for op in layers], tf.nn.relu(y))
    if isinstance(layer, operations.DilConv):
        return _dil_block(layers, r)
    raise NotImplementedError(type(layer).__name__)


class _Stacked:
    """One bundle's variables in the bundled layout (copies of the edges' values): what the
    graph would hold if the variables were stored per node instead of per edge."""

    def __init__(self, blocks=None, bns=None):
        if blocks is not None:
            self.dilation = blocks[0].dilation
            self.depthwise = tf.Variable(tf.concat([b.depthwise.kernel for b in blocks], 2))
            self.pointwise = tf.Variable(tf.stack([b.pointwise.kernel[0, 0] for b in blocks]))
            bns = [b.bn for b in blocks]
        self.bn = bns[0]
        self.mean = tf.Variable(tf.concat([bn.moving_mean for bn in bns], 0), trainable=False)
        self.var = tf.Variable(tf.concat([bn.moving_variance for bn in bns], 0), trainable=False)

    def batch_norm(self, x):
        y, mean, variance = operations.normalize_batch(x, self.bn.epsilon)
        m = self.bn.momentum
        for variable, batch in ((self.mean, mean), (self.var, variance)):
            new = variable * m + batch * (1.0 - m)
            variable.assign(tf.where(tf.math.is_finite(new), new, variable))
        return y

    def dil_block(self, x, e):
        d = self.dilation
        z = tf.nn.depthwise_conv2d(x, self.depthwise, [1, 1, 1, 1], "SAME", dilations=[d, d])
        z = tf.einsum("bhwec,ecd->bhwed", tf.reshape(z, [N, H, H, e, C]), self.pointwise)
        return self.batch_norm(tf.reshape(z, [N, H, H, e * C]))


def _stack_cell():
    """{(node, slot): [_Stacked per block]} for the candidates with variables."""
    stacked, offset = {}, 0
    for i in range(NODES):
        edges = cell.edges[offset : offset + 2 + i]
        for slot, (_, layer) in enumerate(edges[0].ops):
            layers = [m.ops[slot][1] for m in edges]
            if isinstance(layer, operations.Pooling):
                stacked[i, slot] = [_Stacked(bns=[op.bn for op in layers])]
            elif isinstance(layer, operations.SepConv):
                stacked[i, slot] = [
                    _Stacked([op.first for op in layers]),
                    _Stacked([op.second for op in layers]),
                ]
            elif isinstance(layer, operations.DilConv):
                stacked[i, slot] = [_Stacked(layers)]
        offset += 2 + i
    return stacked


STACKED = _stack_cell()
STACKED_VARIABLES = [
    v
    for blocks in STACKED.values()
    for b in blocks
    for v in (getattr(b, "depthwise", None), getattr(b, "pointwise", None))
    if v is not None
]


def _candidate_stacked(layer, blocks, x, r, e):
    if isinstance(layer, operations.Identity):
        return x
    if isinstance(layer, operations.Pooling):
        return blocks[0].batch_norm(layer.pool(x, 1))
    if isinstance(layer, operations.SepConv):
        return blocks[1].dil_block(tf.nn.relu(blocks[0].dil_block(r, e)), e)
    return blocks[0].dil_block(r, e)


def cell_by_node(a, b, weights, stacked=False):
    states = [cell.preprocess0(a, training=True), cell.preprocess1(b, training=True)]
    offset = 0
    for i in range(NODES):
        e = 2 + i
        edges = cell.edges[offset : offset + e]
        rows = weights[offset : offset + e]  # [E, K]
        x = tf.concat(states, axis=-1)  # [B, H, W, E*C]
        r = tf.nn.relu(x)
        terms = []
        for slot, (k, layer) in enumerate(edges[0].ops):
            if stacked:
                y = _candidate_stacked(layer, STACKED.get((i, slot)), x, r, e)
            else:
                y = _candidate([m.ops[slot][1] for m in edges], x, r)
            terms.append(tf.einsum("bhwec,e->bhwc", tf.reshape(y, [N, H, H, e, C]), rows[:, k]))
        states.append(tf.add_n(terms))
        offset += e
    return tf.concat(states[2:], axis=-1)


def make(form):
    def forward(a, b):
        weights = tf.nn.softmax(logits)
        if form.startswith("by node"):
            return cell_by_node(a, b, weights, stacked=form == "by node, stacked")
        return cell(a, b, weights, training=True, bundled=form == "shared")

    # The stacked form's convolution weights are its own copies: compared are the outputs
    # that do not depend on the layout (gradients to the inputs, the preprocessing weights
    # and the logits; with --second, the product's part to those).
    own = cell.preprocess0.trainable_variables + cell.preprocess1.trainable_variables
    convolutions = (
        STACKED_VARIABLES
        if form == "by node, stacked"
        else [v for v in cell.trainable_variables if all(v is not w for w in own)]
    )
    wrt = own + [logits] + convolutions

    @tf.function
    def step(a, b):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = tf.reduce_sum(tf.sin(forward(a, b)) * target)
            grads = tape.gradient(loss, [a, b] + wrt)
            if not SECOND:
                return grads[: 3 + len(own)]
            product = tf.add_n([tf.reduce_sum(g * tf.stop_gradient(g)) for g in grads[2:]])
        return grads[: 3 + len(own)] + outer.gradient(product, wrt)[: 1 + len(own)]

    return step


moving = cell.non_trainable_variables
saved = [v.numpy() for v in moving]  # the stacked form's statistics are its own copies
forms = ("per edge", "shared", "by node", "by node, stacked")
steps = {form: make(form) for form in forms}
reference = None
for name, step in steps.items():
    graph = step.get_concrete_function(s0, s1).graph
    nodes, _ = search_timing.graph_nodes(graph)
    for v, value in zip(moving, saved):
        v.assign(value)
    out = step(s0, s1)
    stats = [v.numpy() for v in moving]
    reference = reference or (out, stats)
    difference = max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(reference[0], out))
    scale = max(float(tf.reduce_max(tf.abs(x))) for x in reference[0])
    moved = max(float(abs(x - y).max()) for x, y in zip(reference[1], stats))
    print(
        f"{','.join(space.operations)}{' +HVP' if SECOND else ''}: {name:16s} nodes {nodes:6d}  "
        f"max difference to per edge {difference:.1e} (values up to {scale:.0f})"
        + ("" if name.endswith("stacked") else f", moving statistics {moved:.1e}"),
        flush=True,
    )
search_timing.print_alternating_medians(steps, (s0, s1))
