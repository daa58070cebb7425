"""Genotypes: the discrete architectures a search derives and re-training builds.

A cell genotype lists, per intermediate node, its kept incoming edges as (operation, input)
pairs; input 0 and 1 are the cell's two inputs, 2.. earlier intermediate nodes. `concat` names
the states concatenated into the cell output. A `Genotype` holds one normal and one reduction
cell (DARTS) or one cell per stage (3 normal, 2 reduction: the enlarged spaces).

Text forms: canonical JSON (`to_json`/`from_json`) and the DARTS string form
`Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...],
reduce_concat=[...])`, so published genotypes paste in; per-stage genotypes nest one list per
stage in each field.
"""

import ast
import dataclasses
import json
import os

from tf_amended_darts import errors, io_utils, operations


class GenotypeError(errors.InputError):
    """A genotype that cannot be built; the message lists each problem once."""


def _edges_per_node(steps, inputs_per_node):
    return [min(inputs_per_node, 2 + i) for i in range(steps)]


@dataclasses.dataclass(frozen=True)
class CellGenotype:
    """nodes[i] is a tuple of (operation, input) pairs feeding intermediate node i (state 2 + i)."""
    nodes: tuple
    concat: tuple

    def __post_init__(self):
        object.__setattr__(self, "nodes",
                           tuple(tuple((str(op), int(j)) for op, j in node) for node in self.nodes))
        object.__setattr__(self, "concat", tuple(int(c) for c in self.concat))

    @property
    def steps(self):
        return len(self.nodes)

    @property
    def edges(self):
        """The DARTS flat list: all (operation, input) pairs in node order."""
        return [edge for node in self.nodes for edge in node]

    @property
    def inputs_per_node(self):
        return max(len(node) for node in self.nodes)

    def problems(self, where):
        found = []
        if not self.nodes:
            return [f"{where}: no intermediate nodes"]
        k = self.inputs_per_node
        if [len(node) for node in self.nodes] != _edges_per_node(self.steps, k):
            found.append(f"{where}: wrong number of edges per node {[len(n) for n in self.nodes]}"
                         f" (node i keeps min({k}, 2 + i) edges)")
        for i, node in enumerate(self.nodes):
            for op, j in node:
                if op not in operations.OPS:
                    found.append(f"{where}: unknown operation {op!r} (known: "
                                 f"{', '.join(sorted(operations.OPS))})")
                if not 0 <= j < 2 + i:
                    found.append(f"{where}: node {2 + i} takes input {j}, which is out of range "
                                 f"0..{1 + i}")
        if not self.concat or len(set(self.concat)) != len(self.concat) or not all(
                0 <= c < 2 + self.steps for c in self.concat):
            found.append(f"{where}: concat {list(self.concat)} must be distinct states in "
                         f"0..{1 + self.steps}")
        return found

    @classmethod
    def from_edges(cls, edges, concat):
        """Groups a DARTS flat edge list into nodes. The last node is the highest state in
        concat; node i keeps min(k, 2 + i) edges for the k that fits the number of edges."""
        edges, concat = [tuple(e) for e in edges], list(concat)
        steps = max(concat, default=1) - 1
        for k in range(1, len(edges) + 1):
            counts = _edges_per_node(steps, k)
            if sum(counts) == len(edges):
                starts = [sum(counts[:i]) for i in range(steps)]
                return cls(tuple(tuple(edges[s:s + n]) for s, n in zip(starts, counts)), concat)
        raise GenotypeError(f"wrong number of edges: {len(edges)} edges do not give the "
                            f"{steps} nodes of concat {concat} min(k, 2 + i) inputs each")

    def to_dict(self):
        return {"nodes": [[list(e) for e in node] for node in self.nodes],
                "concat": list(self.concat)}


@dataclasses.dataclass(frozen=True)
class Genotype:
    """Cells of an architecture: shared (1 normal, 1 reduction) or per stage (3 and 2)."""
    normal_cells: tuple
    reduce_cells: tuple

    def __post_init__(self):
        object.__setattr__(self, "normal_cells", tuple(self.normal_cells))
        object.__setattr__(self, "reduce_cells", tuple(self.reduce_cells))
        found = []
        if (len(self.normal_cells), len(self.reduce_cells)) not in ((1, 1), (3, 2)):
            found.append(f"a genotype has 1 normal and 1 reduction cell, or 3 and 2 per stage; "
                         f"got {len(self.normal_cells)} and {len(self.reduce_cells)}")
        for kind, cells in (("normal", self.normal_cells), ("reduce", self.reduce_cells)):
            for s, cell in enumerate(cells):
                found += cell.problems(kind if len(cells) == 1 else f"{kind}[{s}]")
        if found:
            raise GenotypeError("; ".join(found))

    @property
    def per_stage(self):
        return len(self.normal_cells) > 1

    def cell(self, reduction, slot):
        """The cell for a network slot, as `SearchSpace.cell_slot` numbers them."""
        cells = self.reduce_cells if reduction else self.normal_cells
        return cells[slot if self.per_stage else 0]

    def cells(self):
        return self.normal_cells + self.reduce_cells

    def count_ops(self, names):
        return sum(op in names for cell in self.cells() for op, _ in cell.edges)

    # --- DARTS field view -----------------------------------------------------------------
    def _field(self, cells, part):
        values = [c.edges if part == "edges" else list(c.concat) for c in cells]
        return values if self.per_stage else values[0]

    @property
    def normal(self):
        return self._field(self.normal_cells, "edges")

    @property
    def normal_concat(self):
        return self._field(self.normal_cells, "concat")

    @property
    def reduce(self):
        return self._field(self.reduce_cells, "edges")

    @property
    def reduce_concat(self):
        return self._field(self.reduce_cells, "concat")

    def to_string(self):
        return (f"Genotype(normal={self.normal!r}, normal_concat={self.normal_concat!r}, "
                f"reduce={self.reduce!r}, reduce_concat={self.reduce_concat!r})")

    __str__ = to_string

    def to_dict(self):
        return {"normal": [c.to_dict() for c in self.normal_cells],
                "reduce": [c.to_dict() for c in self.reduce_cells]}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_fields(cls, normal, normal_concat, reduce, reduce_concat):
        """From DARTS fields; nested lists (one per stage) make a per-stage genotype."""
        def cells(edges, concat, name):
            if not isinstance(edges, (list, tuple)) or not edges:
                raise GenotypeError(f"malformed genotype: {name} must be a non-empty list")
            if all(isinstance(e, (list, tuple)) and e and isinstance(e[0], (list, tuple))
                   for e in edges):
                if len(concat) != len(edges) or not all(isinstance(c, (list, tuple, range))
                                                        for c in concat):
                    raise GenotypeError(f"malformed genotype: {name}_concat needs one list per "
                                        f"stage of {name}")
                return tuple(CellGenotype.from_edges(_pairs(e, name), c)
                             for e, c in zip(edges, concat))
            return (CellGenotype.from_edges(_pairs(edges, name), concat),)
        return cls(cells(normal, normal_concat, "normal"), cells(reduce, reduce_concat, "reduce"))

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise GenotypeError("malformed genotype: JSON must be an object")
        try:
            if {"normal_concat", "reduce_concat"} <= data.keys():
                return cls.from_fields(data["normal"], data["normal_concat"], data["reduce"],
                                       data["reduce_concat"])
            return cls(*(tuple(CellGenotype(tuple(map(_pairs_of_node, c["nodes"])), c["concat"])
                               for c in data[kind]) for kind in ("normal", "reduce")))
        except GenotypeError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise GenotypeError(f"malformed genotype JSON ({type(e).__name__}: {e}); expected "
                                '{"normal": [{"nodes": [[[op, input], ...], ...], "concat": '
                                '[...]}], "reduce": [...]}') from None

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"malformed genotype JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def parse(cls, text):
        """Parses the DARTS string form (keyword arguments; `range(a, b)` allowed for concat)."""
        text = text.strip()
        try:
            call = ast.parse(text, mode="eval").body
        except SyntaxError as e:
            raise GenotypeError(f"malformed genotype text: {e.msg} at column {e.offset}") from None
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Genotype"
                and not call.args):
            raise GenotypeError("malformed genotype text: expected Genotype(normal=[...], "
                                "normal_concat=[...], reduce=[...], reduce_concat=[...])")
        fields = {}
        for kw in call.keywords:
            fields[kw.arg] = _literal(kw.value)
        expected = {"normal", "normal_concat", "reduce", "reduce_concat"}
        if set(fields) != expected:
            raise GenotypeError(f"malformed genotype text: fields {sorted(fields)}, expected "
                                f"{sorted(expected)}")
        return cls.from_fields(**fields)


def _literal(node):
    if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range"
            and not node.keywords):
        return list(range(*(_literal(a) for a in node.args)))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise GenotypeError(f"malformed genotype text: {ast.unparse(node)!r} is not a "
                            "literal") from None


def _pairs(edges, name):
    try:
        return [_pair(e) for e in edges]
    except GenotypeError as e:
        raise GenotypeError(f"malformed genotype: {name}: {e}") from None


def _pairs_of_node(node):
    return [_pair(e) for e in node]


def _pair(edge):
    if (not isinstance(edge, (list, tuple)) or len(edge) != 2 or not isinstance(edge[0], str)
            or isinstance(edge[1], bool) or not isinstance(edge[1], int)):
        raise GenotypeError(f"edge {edge!r} is not an (operation, input) pair")
    return edge[0], edge[1]


# Published genotypes (quark0/darts genotypes.py).
PUBLISHED = {
    "DARTS_V1": Genotype.parse(
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
        "reduce_concat=[2, 3, 4, 5])"),
    "DARTS_V2": Genotype.parse(
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
        "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=[2, 3, 4, 5])"),
}
PUBLISHED["DARTS"] = PUBLISHED["DARTS_V2"]


def load_genotype(spec):
    """A genotype from a published name, a JSON file, a file holding the string form, or the
    JSON or string form itself."""
    spec = spec.strip()
    if spec in PUBLISHED:
        return PUBLISHED[spec]
    if spec.startswith("Genotype("):
        return Genotype.parse(spec)
    if spec.startswith("{"):
        return Genotype.from_json(spec)
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise GenotypeError(f"cannot read genotype file {spec}: {e}") from None
        if not text.strip():
            raise GenotypeError(f"genotype file {spec} is empty")
        return load_genotype(text) if text.lstrip()[:1] in "{G" else Genotype.parse(text)
    raise GenotypeError(f"{spec!r} is neither a published genotype "
                        f"({', '.join(sorted(PUBLISHED))}), a file, nor a genotype text")


def write_genotype(genotype, path):
    io_utils.write_atomic(path, genotype.to_json() + "\n")
