"""The genotypes of a search space in order of probability under a search's alphas.

A genotype's log-probability is the sum over its kept edges of log softmax(alpha)[edge, op].
`propose_genotypes` yields the derived genotype (the DARTS rule) first, then the next most
probable ones, each architecture once (`canonical_key`); the weakest decisions (the smallest
drops in log-probability) change first. numpy only: keras-tuner's DartsOracle (tuner.py) draws
its trials from here.
"""

import heapq
import json

import numpy as np

from tf_amended_darts import errors, genotypes, search_model


def check_alphas(space, alphas):
    """The alphas as float64 arrays; InputError (one line) when they do not fit `space`."""
    if space.edge_operations is not None:
        # The proposals' log-probabilities and the tuner's per-edge Choices take every
        # operation on every edge.
        raise errors.InputError(
            "proposals and the tuner need the same operations on every edge; this search "
            "space gives each edge its own (edge_operations, as RobustDARTS' s1)"
        )
    expected = (
        space.num_normal_slots + space.num_reduce_slots,
        space.num_edges,
        len(space.operations),
    )
    try:
        alphas = [np.asarray(a, np.float64) for a in alphas]
    except (TypeError, ValueError) as e:
        raise errors.InputError(
            f"invalid search result: alphas are not numeric arrays ({e})"
        ) from None
    shapes = [a.shape for a in alphas]
    if len(alphas) != expected[0] or any(s != expected[1:] for s in shapes):
        raise errors.InputError(
            f"invalid search result: the search space ({len(space.operations)} operations, "
            f"{space.nodes} nodes, per_stage={space.per_stage}) needs {expected[0]} alpha "
            f"arrays of shape {expected[1:]}, got {shapes}"
        )
    if not all(np.isfinite(a).all() for a in alphas):
        raise errors.InputError("invalid search result: alphas hold NaN or infinite values")
    return alphas


def _log_softmax(a):
    a = a - a.max(axis=-1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))


def canonical_key(genotype):
    """Identity of an architecture: the JSON with each node's edges sorted (a node sums them)."""

    def cell(c):
        return {
            "nodes": [sorted([op, j] for op, j in node) for node in c.nodes],
            "concat": sorted(c.concat),
        }

    return json.dumps(
        {
            "normal": [cell(c) for c in genotype.normal_cells],
            "reduce": [cell(c) for c in genotype.reduce_cells],
        },
        sort_keys=True,
    )


def log_probability(space, alphas, genotype):
    """sum over the genotype's edges of log softmax(alpha)[edge, op]."""
    logp = [_log_softmax(a) for a in check_alphas(space, alphas)]
    total = 0.0
    for s, cell in enumerate(genotype.normal_cells + genotype.reduce_cells):
        for i, node in enumerate(cell.nodes):
            start = sum(2 + n for n in range(i))
            total += sum(logp[s][start + j, space.operations.index(op)] for op, j in node)
    return float(total)


class _Lazy:
    """A best-first sequence of (score, item) drawn from an iterator on demand."""

    def __init__(self, iterable):
        self._iterator, self._items = iter(iterable), []

    def get(self, index):
        while len(self._items) <= index:
            item = next(self._iterator, None)
            if item is None:
                return None
            self._items.append(item)
        return self._items[index]


def _best_first(components, start, accept=lambda v: True, expand=lambda v: True):
    """Yields (score, rank vector) over the product of best-first `_Lazy` sequences, in order
    of the summed score (highest first): a rank vector's successors raise one rank by one."""

    def score(vector):
        return sum(components[p].get(r)[0] for p, r in enumerate(vector))

    heap, visited = [(-score(start), start)], {start}
    while heap:
        negative, vector = heapq.heappop(heap)
        if accept(vector):
            yield -negative, vector
        for p in range(len(vector)):
            successor = vector[:p] + (vector[p] + 1,) + vector[p + 1 :]
            if (
                successor not in visited
                and components[p].get(successor[p]) is not None
                and expand(successor)
            ):
                visited.add(successor)
                heapq.heappush(heap, (-score(successor), successor))


def _node_configurations(logp, space, i):
    """Best-first (score, edges) of node 2 + i: min(k, 2 + i) edges with distinct inputs, each
    any non-'none' operation; `logp` holds the node's rows of log softmax(alpha)."""
    candidates = _Lazy(
        sorted(
            (
                (float(logp[j, k]), (name, j))
                for j in range(2 + i)
                for k, name in enumerate(space.operations)
                if name != "none"
            ),
            key=lambda c: (-c[0], c[1][1], c[1][0]),
        )
    )
    k = min(space.inputs_per_node, 2 + i)

    def edges(vector):
        return [candidates.get(r)[1] for r in vector]

    for score, vector in _best_first(
        [candidates] * k,
        tuple(range(k)),
        accept=lambda v: len({j for _, j in edges(v)}) == k,
        expand=lambda v: all(a < b for a, b in zip(v, v[1:])),
    ):
        yield score, edges(vector)


def propose_genotypes(space, alphas):
    """Yields (genotype, log-probability), most probable first, each architecture once.

    The first is the derived genotype (the DARTS rule). A genotype's log-probability is the
    sum over its kept edges of log softmax(alpha)[edge, op]; it is a sum over nodes, so the
    alternatives come from a best-first enumeration over the product of each node's own
    best-first configurations (k edges with distinct inputs, any non-'none' operations): the
    weakest decisions (smallest drops) change first. Deterministic and lazy (the DARTS space
    has ~1e20 genotypes).
    """
    alphas = check_alphas(space, alphas)
    derived = search_model.derive_genotype(space, alphas)
    nodes = []
    for a in alphas:
        logp, start = _log_softmax(a), 0
        for i in range(space.nodes):
            nodes.append(_Lazy(_node_configurations(logp[start : start + 2 + i], space, i)))
            start += 2 + i
    seen = {canonical_key(derived)}
    yield derived, log_probability(space, alphas, derived)
    for score, vector in _best_first(nodes, (0,) * len(nodes)):
        configurations = [nodes[n].get(r)[1] for n, r in enumerate(vector)]
        cells = [
            genotypes.CellGenotype(configurations[s : s + space.nodes], range(2, 2 + space.nodes))
            for s in range(0, len(configurations), space.nodes)
        ]
        genotype = genotypes.Genotype(
            cells[: space.num_normal_slots], cells[space.num_normal_slots :]
        )
        key = canonical_key(genotype)
        if key not in seen:
            seen.add(key)
            yield genotype, score
