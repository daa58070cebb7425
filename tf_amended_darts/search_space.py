"""Search-space definitions: which operations, how many nodes, which cells share alphas."""

import dataclasses

import numpy as np

from tf_amended_darts import errors, genotypes, operations


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A DARTS-style cell search space and the supernet's macro layout.

    Attributes:
      operations: candidate operation names (see `operations.OPS`); 'none' may be among them and
        is never chosen when deriving a genotype.
      nodes: intermediate nodes per cell; node i has 2 + i incoming edges.
      inputs_per_node: incoming edges kept per node when deriving a genotype (DARTS: 2); node i
        keeps min(inputs_per_node, 2 + i), all it has.
      per_stage: False: all normal cells share one set of alphas and all reduction cells another
        (DARTS). True: each stage has its own normal cell and each reduction its own cell (the
        enlarged spaces of Bi et al.).
      cells: number of cells; reductions sit at cells // 3 and 2 * cells // 3.
      channels: channels C of the first cells (the stem has stem_multiplier * C).
      stem_multiplier: see channels.
      edge_operations: None (every edge has all `operations`), or per cell type (normal,
        reduction) one tuple of candidate names per edge, in DARTS' edge order (node i's edges
        from the cell inputs and the nodes before it), each a subset of `operations`:
        RobustDARTS' S1. An edge computes only its candidates; the alphas keep one column per
        operation and the others are masked out of its softmax.
    """

    operations: tuple = operations.DARTS_OPS
    nodes: int = 4
    inputs_per_node: int = 2
    per_stage: bool = False
    cells: int = 8
    channels: int = 16
    stem_multiplier: int = 3
    edge_operations: tuple = None

    def __post_init__(self):
        object.__setattr__(self, "operations", tuple(self.operations))
        if self.edge_operations is not None:  # JSON gives lists
            object.__setattr__(
                self,
                "edge_operations",
                tuple(tuple(tuple(edge) for edge in cell) for cell in self.edge_operations),
            )
        unknown = genotypes.unknown_operation_problems(self.operations, "search space")
        if unknown:
            raise errors.InputError("; ".join(unknown))
        if len(set(self.operations)) != len(self.operations):
            raise errors.InputError(f"operations are repeated: {self.operations}")
        if not [op for op in self.operations if op != "none"]:
            raise errors.InputError("a search space needs at least one operation other than 'none'")
        for field in ("nodes", "inputs_per_node", "cells", "channels", "stem_multiplier"):
            if getattr(self, field) < 1:
                raise errors.InputError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.cells < 3:
            raise errors.InputError(
                f"cells must be at least 3 (two reduction cells), got {self.cells}"
            )
        if self.edge_operations is not None:
            self._check_edge_operations()

    def _check_edge_operations(self):
        if len(self.edge_operations) != 2:
            raise errors.InputError(
                "edge_operations: expected two cell types (normal, reduction), got "
                f"{len(self.edge_operations)}"
            )
        for kind, cell in zip(("normal", "reduction"), self.edge_operations):
            if len(cell) != self.num_edges:
                raise errors.InputError(
                    f"edge_operations: the {kind} cell has {len(cell)} edges, the space's "
                    f"{self.nodes}-node cells have {self.num_edges}"
                )
            for e, edge in enumerate(cell):
                if not set(edge) <= set(self.operations) or not set(edge) - {"none"}:
                    raise errors.InputError(
                        f"edge_operations: {kind} edge {e} {list(edge)}: each edge needs "
                        f"operations other than 'none', all among {list(self.operations)}"
                    )

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def num_edges(self):
        """Edges of one cell: node i sees both cell inputs and the i nodes before it."""
        return sum(2 + i for i in range(self.nodes))

    @property
    def reduction_cells(self):
        """Positions of the two reduction cells among the network's cells."""
        return (self.cells // 3, 2 * self.cells // 3)

    def cell_slot(self, cell):
        """(reduction, index) of the alphas/genotype cell that the cell at position `cell` uses.

        Shared spaces have one normal and one reduction slot (index 0). Per-stage spaces have
        normal slots 0, 1, 2 (before, between, after the reductions) and reduction slots 0, 1.
        """
        reductions = self.reduction_cells
        if cell in reductions:
            return True, reductions.index(cell) if self.per_stage else 0
        return False, sum(cell > r for r in reductions) if self.per_stage else 0

    @property
    def num_normal_slots(self):
        return 3 if self.per_stage else 1

    @property
    def num_reduce_slots(self):
        return 2 if self.per_stage else 1

    def edge_candidates(self, reduction):
        """Per edge of a normal (reduction) cell, the names it computes."""
        if self.edge_operations is None:
            return (self.operations,) * self.num_edges
        return self.edge_operations[1 if reduction else 0]

    def candidate_mask(self, reduction):
        """[num_edges, num_ops] bool: which alpha columns each edge's softmax takes; None
        when every edge takes them all."""
        if self.edge_operations is None:
            return None
        return np.array(
            [[op in edge for op in self.operations] for edge in self.edge_candidates(reduction)]
        )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        """The inverse of `to_dict`."""
        return cls(**config)


# The enlarged space (Bi et al., section 4): more operations, one more node, three inputs kept
# per node, and a separate cell per stage, where first- and second-order DARTS collapse.
ENLARGED_OPS = operations.DARTS_OPS + ("sep_conv_7x7", "conv_7x1_1x7", "conv_1x1", "conv_3x3")

PRESETS = {
    "darts": SearchSpace(),
    "enlarged": SearchSpace(operations=ENLARGED_OPS, nodes=5, inputs_per_node=3, per_stage=True),
    # RobustDARTS' spaces (Zela et al., ICLR 2020), where first-order DARTS is known to fill
    # its cells with parameter-free operations: the same two or three candidates on every edge.
    "s2": SearchSpace(operations=("skip_connect", "sep_conv_3x3")),
    "s3": SearchSpace(operations=("none", "skip_connect", "sep_conv_3x3")),
    "s4": SearchSpace(operations=("noise", "sep_conv_3x3")),
    # S1: two candidates per edge, its own per edge and cell type (the authors took them from
    # a DARTS run's two strongest per edge; automl/RobustDARTS src/spaces.py).
    "s1": SearchSpace(
        operations=(
            "max_pool_3x3",
            "avg_pool_3x3",
            "skip_connect",
            "sep_conv_3x3",
            "dil_conv_3x3",
            "dil_conv_5x5",
        ),
        edge_operations=(
            (
                ("skip_connect", "dil_conv_3x3"),
                ("skip_connect", "dil_conv_5x5"),
                ("skip_connect", "dil_conv_5x5"),
                ("skip_connect", "sep_conv_3x3"),
                ("skip_connect", "dil_conv_3x3"),
                ("max_pool_3x3", "skip_connect"),
                ("skip_connect", "sep_conv_3x3"),
                ("skip_connect", "sep_conv_3x3"),
                ("skip_connect", "dil_conv_3x3"),
                ("skip_connect", "sep_conv_3x3"),
                ("max_pool_3x3", "skip_connect"),
                ("skip_connect", "dil_conv_3x3"),
                ("dil_conv_3x3", "dil_conv_5x5"),
                ("dil_conv_3x3", "dil_conv_5x5"),
            ),
            (
                ("max_pool_3x3", "avg_pool_3x3"),
                ("max_pool_3x3", "dil_conv_3x3"),
                ("max_pool_3x3", "avg_pool_3x3"),
                ("max_pool_3x3", "avg_pool_3x3"),
                ("skip_connect", "dil_conv_5x5"),
                ("max_pool_3x3", "avg_pool_3x3"),
                ("max_pool_3x3", "sep_conv_3x3"),
                ("skip_connect", "dil_conv_3x3"),
                ("skip_connect", "dil_conv_5x5"),
                ("max_pool_3x3", "avg_pool_3x3"),
                ("max_pool_3x3", "avg_pool_3x3"),
                ("skip_connect", "dil_conv_5x5"),
                ("skip_connect", "dil_conv_5x5"),
                ("skip_connect", "dil_conv_5x5"),
            ),
        ),
    ),
}


def get_search_space(name):
    if name not in PRESETS:
        raise errors.InputError(
            f"unknown search space {name!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    return PRESETS[name]
