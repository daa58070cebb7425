"""The DARTS supernet: mixed operations, search cells, the network, and genotype derivation."""

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from tf_amended_darts import distribute, edge_bundles, genotypes, operations
from tf_amended_darts.search_space import SearchSpace

_PACKAGE = "tf_amended_darts"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MixedOp(operations.Composite):
    """sum_i softmax(alpha)_i * op_i(x) over the candidate operations of one edge.

    'none' contributes exactly zero, so it is not computed; its alpha still enters the
    softmax that weighs the others. `computed`: the names among `candidates` this edge
    computes (default all; RobustDARTS' S1 gives each edge its own two), the others weighted
    zero by the caller's masked softmax.
    """

    def __init__(self, candidates, channels, stride, computed=None, **kwargs):
        super().__init__(**kwargs)
        self.candidates = tuple(candidates)
        self.computed = tuple(computed) if computed is not None else None
        self.channels = channels
        self.stride = stride
        self.ops = [
            (
                i,
                operations.make_operation(
                    name, channels, stride, affine=False, dtype=self.dtype_policy
                ),
            )
            for i, name in enumerate(self.candidates)
            if name != "none" and (self.computed is None or name in self.computed)
        ]

    def call(self, x, weights, training=False):
        """`weights`: this edge's softmax(alpha) row, a [num_ops] tensor or a list of scalars."""
        if not isinstance(weights, (list, tuple)):
            weights = ops.unstack(weights)
        # Products and one AddN: a contraction of the stacked outputs (tf.einsum, or a matmul)
        # makes the step's graph smaller but its run slower (the stack copies every output).
        return tf.add_n([weights[i] * op(x, training=training) for i, op in self.ops])

    def get_config(self):
        return {
            **super().get_config(),
            "candidates": list(self.candidates),
            "channels": self.channels,
            "stride": self.stride,
            "computed": list(self.computed) if self.computed is not None else None,
        }


def preprocess(channels, reduction_prev, affine, dtype=None):
    """The reference's cell-input preprocessing: s0 is halved if the previous cell reduced."""
    s0 = (
        operations.FactorizedReduce(channels, affine=affine, dtype=dtype)
        if reduction_prev
        else operations.ReLUConvBN(channels, 1, 1, affine, dtype=dtype)
    )
    return s0, operations.ReLUConvBN(channels, 1, 1, affine, dtype=dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SearchCell(operations.Composite):
    """A DARTS cell with a MixedOp on every edge; output = concat of the intermediate nodes.

    `edge_candidates`: per edge, the names among `candidates` it computes (MixedOp's
    `computed`); None: all of them on every edge."""

    def __init__(
        self, candidates, nodes, channels, reduction, reduction_prev, edge_candidates=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.candidates = tuple(candidates)
        self.edge_candidates = (
            tuple(tuple(e) for e in edge_candidates) if edge_candidates is not None else None
        )
        self.nodes = nodes
        self.channels = channels
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.preprocess0, self.preprocess1 = preprocess(
            channels, reduction_prev, affine=False, dtype=self.dtype_policy
        )
        strides = [2 if reduction and j < 2 else 1 for i in range(nodes) for j in range(2 + i)]
        computed = self.edge_candidates or [None] * len(strides)
        self.edges = [
            MixedOp(candidates, channels, stride, computed=c, dtype=self.dtype_policy)
            for stride, c in zip(strides, computed)
        ]

    def call(self, s0, s1, weights, training=False, bundled=True):
        """`bundled=False` computes every edge by its own MixedOp, as inference, building
        and several replicas always do; training passes otherwise take
        `edge_bundles.cell_nodes` (the same arithmetic in a smaller graph)."""
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        # One unstack of the cell's [num_edges, num_ops] weights into scalars, for both paths:
        # indexing them op by op puts two slices and their gradients per operation in the graph.
        k = weights.shape[-1]
        flat = ops.unstack(ops.reshape(weights, [-1]))
        rows = [flat[e * k : (e + 1) * k] for e in range(len(self.edges))]
        if (
            bundled
            and training
            and distribute.replicas_in_context() == 1
            # Variables exist; no frozen layer (a frozen BatchNorm normalises as in inference).
            and all(layer.built and layer.trainable for layer in self._flatten_layers())
        ):
            nodes = edge_bundles.cell_nodes(self.edges, self.nodes, states, rows)
        else:
            nodes = self._nodes_per_edge(states, rows, training)
        return ops.concatenate(nodes, axis=-1)

    def _nodes_per_edge(self, states, rows, training):
        offset = 0
        for _ in range(self.nodes):
            states.append(
                tf.add_n(
                    [
                        self.edges[offset + j](h, rows[offset + j], training=training)
                        for j, h in enumerate(states)
                    ]
                )
            )
            offset += len(states) - 1
        return states[2:]

    def get_config(self):
        return {
            **super().get_config(),
            "candidates": list(self.candidates),
            "nodes": self.nodes,
            "channels": self.channels,
            "reduction": self.reduction,
            "reduction_prev": self.reduction_prev,
            "edge_candidates": (
                [list(e) for e in self.edge_candidates] if self.edge_candidates else None
            ),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SearchNetwork(keras.Model):
    """The supernet: stem, `search_space.cells` search cells, global pooling, classifier.

    `arch_variables` are the alphas (one [num_edges, num_ops] logit matrix per cell slot: normal
    slots first, then reduction slots); `weight_variables` are all other trainable variables.
    `dtype` (e.g. "float64") applies to every sublayer and variable; the alphas' initial values
    are drawn in float32 and cast, so they do not depend on it.
    """

    def __init__(self, search_space, num_classes, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(search_space, dict):
            search_space = SearchSpace.from_dict(search_space)
        self.search_space = space = search_space
        self.num_classes = num_classes
        self.seed = seed
        c_stem = space.stem_multiplier * space.channels
        dtype = self.dtype_policy
        self.stem = operations.conv_bn(c_stem, 1, dtype=dtype)
        self.cells = []
        channels, reduction_prev = space.channels, False
        for i in range(space.cells):
            reduction, _ = space.cell_slot(i)
            channels *= 2 if reduction else 1
            self.cells.append(
                SearchCell(
                    space.operations,
                    space.nodes,
                    channels,
                    reduction,
                    reduction_prev,
                    edge_candidates=(
                        space.edge_candidates(reduction) if space.edge_operations else None
                    ),
                    name=f"cell_{i}",
                    dtype=dtype,
                )
            )
            reduction_prev = reduction
        self.global_pooling = layers.GlobalAveragePooling2D(dtype=dtype)
        self.classifier = layers.Dense(num_classes, dtype=dtype)
        # 1e-3 * N(0, 1), an independent draw per slot (a shared seeded initializer would
        # repeat the same values in every slot).
        seeds = keras.random.SeedGenerator(seed)
        self.normal_alphas = [
            self._alpha(f"alphas_normal_{s}", seeds) for s in range(space.num_normal_slots)
        ]
        self.reduce_alphas = [
            self._alpha(f"alphas_reduce_{s}", seeds) for s in range(space.num_reduce_slots)
        ]

    def _alpha(self, name, seeds):
        shape = (self.search_space.num_edges, len(self.search_space.operations))
        init = keras.random.normal(shape, stddev=1e-3, seed=seeds)
        # autocast=False: under a mixed policy the alphas and their softmax stay in the
        # variable dtype (float32); only the mixing weights are cast to the compute dtype.
        return self.add_weight(
            shape=shape,
            name=name,
            initializer=lambda *_, dtype=None, **__: ops.cast(init, dtype),
            autocast=False,
        )

    def build(self, input_shape):
        build_by_zeros(self, input_shape)

    @property
    def arch_variables(self):
        return self.normal_alphas + self.reduce_alphas

    @property
    def weight_variables(self):
        arch = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in arch]

    def call(self, x, training=False):
        s0 = s1 = operations.apply_layers(self.stem, x, training)
        slots = [(False, s) for s in range(len(self.normal_alphas))]
        slots += [(True, s) for s in range(len(self.reduce_alphas))]
        weights = {
            slot: ops.cast(
                masked_softmax(a, self.search_space.candidate_mask(slot[0])), self.compute_dtype
            )
            for slot, a in zip(slots, self.arch_variables)
        }
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, weights[self.search_space.cell_slot(i)], training=training)
        # Logits in the variable dtype: under a mixed policy the loss is float32.
        return ops.cast(self.classifier(self.global_pooling(s1)), self.dtype)

    def alpha_probabilities(self):
        """softmax(alpha) per slot as numpy arrays, in `arch_variables` order."""
        return alpha_probabilities(
            self.search_space, [keras.ops.convert_to_numpy(a) for a in self.arch_variables]
        )

    def genotype(self):
        return derive_genotype(
            self.search_space, [keras.ops.convert_to_numpy(a) for a in self.arch_variables]
        )

    def get_config(self):
        return {
            **super().get_config(),
            "search_space": self.search_space.to_dict(),
            "num_classes": self.num_classes,
            "seed": self.seed,
        }


def build_by_zeros(model, input_shape, **call_kwargs):
    """Creates all variables by one eager forward pass on a zero batch of one example."""
    with tf.init_scope():
        model.call(
            tf.zeros((1,) + tuple(input_shape[1:]), model.dtype), training=False, **call_kwargs
        )


# A masked column's logit: exp underflows to exactly 0 in every float type, and tf.where
# passes it no gradient.
_MASKED_LOGIT = -1e9


def masked_softmax(logits, mask):
    """softmax over each row's columns where `mask` ([rows, columns] bool, None: all) holds;
    the others get probability 0."""
    if mask is not None:
        logits = ops.where(mask, logits, ops.cast(_MASKED_LOGIT, logits.dtype))
    return ops.softmax(logits, axis=-1)


def _softmax(a, mask=None):
    if mask is not None:
        a = np.where(mask, a, _MASKED_LOGIT)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def alpha_probabilities(space, alphas):
    """Each slot's (masked) softmax of its alpha logits (`SearchNetwork.arch_variables` order),
    as numpy arrays."""
    reductions = [False] * space.num_normal_slots + [True] * space.num_reduce_slots
    return [_softmax(np.asarray(a), space.candidate_mask(r)) for a, r in zip(alphas, reductions)]


def derive_cell(probabilities, space):
    """DARTS rule, k inputs per node: keep the k incoming edges whose strongest non-'none'
    probability is largest (ties: lower input first); on each, its argmax non-'none' op."""
    probabilities = np.asarray(probabilities)
    candidates = [k for k, name in enumerate(space.operations) if name != "none"]
    nodes, start = [], 0
    for i in range(space.nodes):
        w = probabilities[start : start + 2 + i][:, candidates]
        kept = sorted(range(2 + i), key=lambda j: -w[j].max())[: space.inputs_per_node]
        nodes.append([(space.operations[candidates[int(np.argmax(w[j]))]], j) for j in kept])
        start += 2 + i
    return genotypes.CellGenotype(nodes, range(2, 2 + space.nodes))


def derive_genotype(space, alphas):
    """Genotype from alpha logits given per slot in `SearchNetwork.arch_variables` order."""
    expected = space.num_normal_slots + space.num_reduce_slots
    shape = (space.num_edges, len(space.operations))
    alphas = [np.asarray(a) for a in alphas]
    if len(alphas) != expected or any(a.shape != shape for a in alphas):
        raise ValueError(
            f"alphas do not fit the search space: expected {expected} arrays of "
            f"shape {shape}, got {[a.shape for a in alphas]}"
        )
    cells = [derive_cell(p, space) for p in alpha_probabilities(space, alphas)]
    return genotypes.Genotype(cells[: space.num_normal_slots], cells[space.num_normal_slots :])
