"""Genotypes: the discrete architectures a search derives and re-training builds.

A cell genotype lists, per intermediate node, its kept incoming edges as (operation, input)
pairs; input 0 and 1 are the cell's two inputs, 2.. earlier intermediate nodes. `concat` names
the intermediate nodes concatenated into the cell output. A `Genotype` holds one normal and one
reduction cell (DARTS) or one cell per stage (3 normal, 2 reduction: the enlarged spaces).

Text forms: canonical JSON (`to_json`/`from_json`) and the DARTS string form
`Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...],
reduce_concat=[...])`, so published genotypes paste in; per-stage genotypes nest one list per
stage in each field.

Every way in checks the whole genotype (types, ranges, structure, operations registered in
operations.OPS) before anything is built, and raises GenotypeError listing each problem in one
line.
"""

import ast
import dataclasses
import functools
import json
import numbers
import os
import reprlib

from tf_amended_darts import errors, io_utils, operations


class GenotypeError(errors.InputError):
    """A genotype that cannot be built; the message lists each problem once."""

    @classmethod
    def listing(cls, problems, shown=10):
        """One line: the first `shown` problems, then how many more there are."""
        more = len(problems) - shown
        return cls("; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else ""))


# Values quoted in messages stay short however large or deep the user's input is.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxstring = 3, 8, 8, 40
_SHORT.maxother = 40


def _show(value):
    return _SHORT.repr(value)


def _is_list(value):
    return isinstance(value, (list, tuple))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_pair(edge):
    return _is_list(edge) and len(edge) == 2 and isinstance(edge[0], str) and _is_int(edge[1])


def _edge_list_problems(edges, where):
    if not _is_list(edges):
        return [f"{where}: expected a list of (operation, input) pairs, got {_show(edges)}"]
    return [
        f"{where}: {_show(e)} is not an (operation, input) pair" for e in edges if not _is_pair(e)
    ]


def _concat_problems(concat, where):
    if not isinstance(concat, (list, tuple, range)):
        return [f"{where}: concat must be a list of node numbers, got {_show(concat)}"]
    bad = [c for c in concat if not _is_int(c)]
    if bad:
        return [f"{where}: concat {_show(concat)} holds {_show(bad[0])}, not a node number"]
    return []


def unknown_operation_problems(names, where):
    """One problem per name that operations.OPS does not know."""
    return [
        f"{where}: unknown operation {_show(name)} (known: {', '.join(sorted(operations.OPS))})"
        for name in dict.fromkeys(names)
        if name not in operations.OPS
    ]


def _edges_per_node(steps, inputs_per_node):
    return [min(inputs_per_node, 2 + i) for i in range(steps)]


@dataclasses.dataclass(frozen=True)
class CellGenotype:
    """nodes[i] is a tuple of (operation, input) pairs feeding intermediate node i (state 2 + i)."""

    nodes: tuple
    concat: tuple

    def __post_init__(self):
        found = _cell_type_problems(self.nodes, self.concat, "cell")
        if found:
            raise GenotypeError.listing(found)
        object.__setattr__(
            self, "nodes", tuple(tuple((str(op), int(j)) for op, j in node) for node in self.nodes)
        )
        object.__setattr__(self, "concat", tuple(int(c) for c in self.concat))

    @property
    def num_nodes(self):
        return len(self.nodes)

    @property
    def edges(self):
        """The DARTS flat list: all (operation, input) pairs in node order."""
        return [edge for node in self.nodes for edge in node]

    @property
    def inputs_per_node(self):
        return max(len(node) for node in self.nodes)

    def problems(self, where):
        if not self.nodes:
            return [f"{where}: no intermediate nodes"]
        empty = [2 + i for i, node in enumerate(self.nodes) if not node]
        if empty:  # a node without inputs has no value to pass on
            return [f"{where}: node {_show(empty[0])} has no incoming edge"]
        found = []
        k = self.inputs_per_node
        if [len(node) for node in self.nodes] != _edges_per_node(self.num_nodes, k):
            found.append(
                f"{where}: wrong number of edges per node "
                f"{_show([len(n) for n in self.nodes])}"
                f" (node i keeps min({k}, 2 + i) edges)"
            )
        found += unknown_operation_problems([op for op, _ in self.edges], where)
        for i, node in enumerate(self.nodes):
            for _, j in node:
                if not 0 <= j < 2 + i:
                    found.append(
                        f"{where}: node {2 + i} takes input {_show(j)}, which is out of range "
                        f"0..{1 + i}"
                    )
        last = 1 + self.num_nodes
        if not self.concat:
            found.append(f"{where}: concat is empty")
        elif len(set(self.concat)) != len(self.concat) or not all(
            2 <= c <= last for c in self.concat
        ):
            # The cell inputs 0 and 1 are not concatenated: in a reduction cell they have
            # twice the output's height and width.
            found.append(
                f"{where}: concat {_show(list(self.concat))} must be distinct "
                f"intermediate nodes in 2..{last}"
            )
        elif last not in self.concat:
            # The DARTS string form has no node count: it takes the highest concat entry as
            # the last node, so a cell without it would not read back as itself.
            found.append(
                f"{where}: concat {_show(list(self.concat))} leaves out the last node {last}"
            )
        return found

    @classmethod
    def from_edges(cls, edges, concat, where="cell"):
        """Groups a DARTS flat edge list into nodes. The last node is the highest state in
        concat; node i keeps min(k, 2 + i) edges for the k that fits the number of edges."""
        found = _edge_list_problems(edges, where) + _concat_problems(concat, where)
        if found:
            raise GenotypeError.listing(found)
        edges, concat = [tuple(e) for e in edges], list(concat)
        steps = max(concat, default=1) - 1
        if not 1 <= steps <= len(edges):  # each node has an edge; also bounds the loop below
            raise GenotypeError(
                f"{where}: concat {_show(concat)} must name intermediate nodes "
                f"2..{1 + len(edges)} ({len(edges)} edges make at most "
                f"{len(edges)} nodes)"
            )
        for k in range(1, len(edges) + 1):
            counts = _edges_per_node(steps, k)
            if sum(counts) == len(edges):
                starts = [sum(counts[:i]) for i in range(steps)]
                return cls(tuple(tuple(edges[s : s + n]) for s, n in zip(starts, counts)), concat)
        raise GenotypeError(
            f"{where}: wrong number of edges: {len(edges)} edges do not give the "
            f"{steps} nodes of concat {_show(concat)} min(k, 2 + i) inputs each"
        )

    def to_dict(self):
        return {
            "nodes": [[list(e) for e in node] for node in self.nodes],
            "concat": list(self.concat),
        }


def _cell_type_problems(nodes, concat, where):
    if not _is_list(nodes):
        found = [f"{where}: nodes must be a list of nodes, got {_show(nodes)}"]
    else:
        found = [
            p
            for i, node in enumerate(nodes)
            for p in _edge_list_problems(node, f"{where}: node {2 + i}")
        ]
    return found + _concat_problems(concat, where)


def _collect(makers):
    """Runs each (no-argument) maker; raises one GenotypeError listing every failure."""
    results, found = [], []
    for make in makers:
        try:
            results.append(make())
        except GenotypeError as e:
            found.append(str(e))
    if found:
        raise GenotypeError.listing(found)
    return results


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
            found.append(
                f"a genotype has 1 normal and 1 reduction cell, or 3 and 2 per stage; "
                f"got {len(self.normal_cells)} and {len(self.reduce_cells)}"
            )
        for kind, cells in (("normal", self.normal_cells), ("reduce", self.reduce_cells)):
            for s, cell in enumerate(cells):
                where = kind if len(cells) == 1 else f"{kind}[{s}]"
                if not isinstance(cell, CellGenotype):
                    found.append(f"{where}: expected a CellGenotype, got {_show(cell)}")
                else:
                    found += cell.problems(where)
        if found:
            raise GenotypeError.listing(found)

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
        return (
            f"Genotype(normal={self.normal!r}, normal_concat={self.normal_concat!r}, "
            f"reduce={self.reduce!r}, reduce_concat={self.reduce_concat!r})"
        )

    __str__ = to_string

    def to_dict(self):
        return {
            "normal": [c.to_dict() for c in self.normal_cells],
            "reduce": [c.to_dict() for c in self.reduce_cells],
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_fields(cls, normal, normal_concat, reduce, reduce_concat):
        """From DARTS fields; nested lists (one per stage) make a per-stage genotype."""
        return cls(
            *_collect(
                [
                    functools.partial(_cells_from_edges, normal, normal_concat, "normal"),
                    functools.partial(_cells_from_edges, reduce, reduce_concat, "reduce"),
                ]
            )
        )

    @classmethod
    def from_dict(cls, data):
        """From `to_dict`'s form ({"normal": [cell, ...], "reduce": [...]}, each cell
        {"nodes": [[[op, input], ...], ...], "concat": [...]}) or the four DARTS fields."""
        if not isinstance(data, dict):
            raise GenotypeError(f"expected an object with the cells, got {_show(data)}")
        if set(data) == set(_FIELDS):
            return cls.from_fields(**{name: data[name] for name in _FIELDS})
        if set(data) != {"normal", "reduce"}:
            raise GenotypeError(
                f"keys {_show(sorted(map(str, data)))}: expected normal and reduce (lists of "
                f'{{"nodes": ..., "concat": ...}} cells) or the DARTS fields {", ".join(_FIELDS)}'
            )
        return cls(
            *_collect(
                [
                    functools.partial(_cells_from_dicts, data[kind], kind)
                    for kind in ("normal", "reduce")
                ]
            )
        )

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text, parse_constant=_refuse_json_constant)
        except GenotypeError:  # _refuse_json_constant's (a ValueError too)
            raise
        except json.JSONDecodeError as e:
            raise GenotypeError(f"malformed JSON: {e}") from None
        except RecursionError:
            raise GenotypeError("malformed JSON: nested too deeply") from None
        except ValueError:  # int() refuses integers of more than sys.get_int_max_str_digits()
            raise GenotypeError("malformed JSON: a number too long to be an input index") from None
        return cls.from_dict(data)

    @classmethod
    def parse(cls, text):
        """Parses the DARTS string form (keyword arguments; `range(a, b)` allowed for concat)."""
        text = text.strip()
        try:
            call = ast.parse(text, mode="eval").body
        except SyntaxError as e:
            raise GenotypeError(f"malformed DARTS text: {e.msg} at column {e.offset}") from None
        except (RecursionError, MemoryError):
            raise GenotypeError("malformed DARTS text: nested too deeply") from None
        if not (
            isinstance(call, ast.Call)
            and getattr(call.func, "id", None) == "Genotype"
            and not call.args
        ):
            raise GenotypeError(
                "malformed DARTS text: expected Genotype(normal=[...], "
                "normal_concat=[...], reduce=[...], reduce_concat=[...])"
            )
        fields = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise GenotypeError("malformed DARTS text: ** is not allowed")
            if kw.arg in fields:
                raise GenotypeError(f"malformed DARTS text: {kw.arg}= given twice")
            fields[kw.arg] = _literal(kw.value)
        if set(fields) != set(_FIELDS):
            raise GenotypeError(
                f"malformed DARTS text: fields {sorted(fields)}, expected {sorted(_FIELDS)}"
            )
        return cls.from_fields(**fields)


_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
# A `range(a, b)` concat longer than this cannot name intermediate nodes of a buildable cell;
# the cap keeps `range(0, 10**9)`-like text from filling the memory before it is refused.
_MAX_RANGE = 1000


def _refuse_json_constant(name):
    raise GenotypeError(f"malformed JSON: {name} is not a number a genotype can hold")


def _literal(node):
    if (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "range"
        and not node.keywords
    ):
        args = [_literal(a) for a in node.args]
        if not 1 <= len(args) <= 3 or not all(_is_int(a) for a in args):
            raise GenotypeError(
                f"malformed DARTS text: {_show(ast.unparse(node))} is not "
                "range(start, stop) of integers"
            )
        if len(range(*args)) > _MAX_RANGE:
            raise GenotypeError(
                f"malformed DARTS text: {_show(ast.unparse(node))} is too long for a concat"
            )
        return list(range(*args))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise GenotypeError(
            f"malformed DARTS text: {_show(ast.unparse(node))} is not a literal"
        ) from None


def _cells_from_edges(edges, concat, name):
    """The cells of one DARTS field pair: a flat edge list, or one list per stage."""
    if not _is_list(edges) or not edges:
        raise GenotypeError(
            f"{name} must be a non-empty list of (operation, input) pairs, got {_show(edges)}"
        )
    if not all(_is_list(e) and e and _is_list(e[0]) for e in edges):
        return (CellGenotype.from_edges(edges, concat, name),)
    if not _is_list(concat) or len(concat) != len(edges):
        raise GenotypeError(
            f"{name}_concat needs one list per stage of {name}, got {_show(concat)}"
        )
    return tuple(
        _collect(
            [
                functools.partial(CellGenotype.from_edges, e, c, f"{name}[{s}]")
                for s, (e, c) in enumerate(zip(edges, concat))
            ]
        )
    )


def _cells_from_dicts(cells, kind):
    if not _is_list(cells) or not cells:
        raise GenotypeError(f"{kind}: expected a non-empty list of cells, got {_show(cells)}")
    return tuple(
        _collect(
            [
                functools.partial(_cell_from_dict, c, kind if len(cells) == 1 else f"{kind}[{s}]")
                for s, c in enumerate(cells)
            ]
        )
    )


def _cell_from_dict(cell, where):
    if not isinstance(cell, dict) or set(cell) != {"nodes", "concat"}:
        raise GenotypeError(
            f'{where}: expected a cell {{"nodes": [[[op, input], ...], ...], '
            f'"concat": [...]}}, got {_show(cell)}'
        )
    found = _cell_type_problems(cell["nodes"], cell["concat"], where)
    if found:
        raise GenotypeError.listing(found)
    return CellGenotype(cell["nodes"], cell["concat"])


# Published genotypes (quark0/darts genotypes.py).
PUBLISHED = {
    "DARTS_V1": Genotype.parse(
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
        "reduce_concat=[2, 3, 4, 5])"
    ),
    "DARTS_V2": Genotype.parse(
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
        "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=[2, 3, 4, 5])"
    ),
}
PUBLISHED["DARTS"] = PUBLISHED["DARTS_V2"]


def load_genotype(spec):
    """A genotype from a published name, a JSON file, a file holding the string form, or the
    JSON or string form itself. Errors name the file, or say `genotype:` for a text."""
    spec = spec.strip()
    if spec in PUBLISHED:
        return PUBLISHED[spec]
    if spec.startswith(("Genotype(", "{")):
        return _from_text(spec, "genotype")
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise GenotypeError(f"cannot read genotype file {spec}: {e}") from None
        if not text.strip():
            raise GenotypeError(f"genotype file {spec} is empty")
        return _from_text(text, f"genotype file {spec}")
    raise GenotypeError(
        f"{_show(spec)} is neither a published genotype "
        f"({', '.join(sorted(PUBLISHED))}), a file, nor a genotype text"
    )


def _from_text(text, source):
    """JSON or the DARTS string form; `source` leads the error message."""
    try:
        text = text.strip()
        return Genotype.from_json(text) if text.startswith("{") else Genotype.parse(text)
    except GenotypeError as e:
        raise GenotypeError(f"{source}: {e}") from None


def write_genotype(genotype, path):
    io_utils.write_atomic(path, genotype.to_json() + "\n")
