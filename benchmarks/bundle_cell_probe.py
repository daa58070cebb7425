"""Probe (issue 30): one search cell's training pass per edge against bundled, per call.

A normal SearchCell of the DARTS space (4 nodes, C=8, 16x16, batch 16, inputs of C channels),
its forward and the gradient with respect to its inputs, weights and softmax weights,
`SearchCell.call(bundled=True)` against `bundled=False`, each a tf.function; graph nodes,
then medians of 20 calls over four alternating rounds, one thread. Prints each form's
largest difference to the per-edge one (float32).

  python benchmarks/bundle_cell_probe.py [OPERATION,...]   (default: the DARTS space's)
"""

import sys

import search_timing  # first: puts this checkout's package on sys.path
import tensorflow as tf

from tf_amended_darts import search_model, search_space

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
N, H, C = 16, 16, 8
operations = sys.argv[1].split(",") if len(sys.argv) > 1 else None
space = search_space.get_search_space("darts")
if operations:
    space = space.replace(operations=tuple(operations))
cell = search_model.SearchCell(space.operations, 4, C, False, False)
s0 = tf.random.stateless_normal([N, H, H, C], [1, 2])
s1 = tf.random.stateless_normal([N, H, H, C], [3, 4])
logits = tf.Variable(tf.random.stateless_normal([14, len(space.operations)], [5, 6]) * 1e-3)
cell(s0, s1, tf.nn.softmax(logits), training=True, bundled=False)  # eager build
target = tf.random.stateless_normal([N, H, H, 4 * C], [7, 8])
variables = cell.trainable_variables + [logits]


def make(bundled):
    @tf.function
    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = cell(a, b, tf.nn.softmax(logits), training=True, bundled=bundled)
            loss = tf.reduce_sum(tf.sin(y) * target)
        return tape.gradient(loss, [a, b] + variables)

    return step


steps = {"per edge": make(False), "bundled": make(True)}
reference = None
for name, step in steps.items():
    graph = step.get_concrete_function(s0, s1).graph
    nodes, _ = search_timing.graph_nodes(graph)
    out = step(s0, s1)
    reference = reference or out
    difference = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(reference, out))
    print(
        f"{','.join(space.operations)}: {name:9s} nodes {nodes:6d}  "
        f"max difference to per edge {difference:.1e}"
    )
search_timing.print_alternating_medians(steps, (s0, s1))
