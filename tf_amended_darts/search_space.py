"""Search-space definitions: which operations, how many nodes, which cells share alphas."""

import dataclasses

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
    """

    operations: tuple = operations.DARTS_OPS
    nodes: int = 4
    inputs_per_node: int = 2
    per_stage: bool = False
    cells: int = 8
    channels: int = 16
    stem_multiplier: int = 3

    def __post_init__(self):
        object.__setattr__(self, "operations", tuple(self.operations))
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
}


def get_search_space(name):
    if name not in PRESETS:
        raise errors.InputError(
            f"unknown search space {name!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    return PRESETS[name]
