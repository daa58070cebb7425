"""Pictures of a search: genotype cells as the DARTS papers draw them, and the history of the
architecture weights softmax(alpha).

* `cell_dot` / `render_genotype`: Graphviz drawings of a genotype's cells (the layout of
  quark0/darts visualize.py). Rendering runs the `dot` executable (Debian/Ubuntu:
  `apt-get install graphviz`); the .dot sources are written without it.
* `alpha_heatmap`: softmax(alpha) of one cell slot as an RGB image (for `tf.summary.image`).
* `load_alpha_history` / `plot_alpha_history`: the search output file `alphas_history.json`,
      {"operations": [op names], "slots": ["normal_0", "reduce_0", ...],
       "records": [{"epoch": int, "step": int,
                    "probabilities": [[[p, ...] one row per edge] one matrix per slot]}, ...]}
  and its plot (mean softmax(alpha) per op over the slot's edges, one subplot per slot).

Every file is written atomically (a temporary file in the same folder, then a rename).
Matplotlib is used through `matplotlib.figure.Figure` and the Agg canvas only: no pyplot, no
global state.
"""

import fractions
import io
import json
import math
import os
import shutil
import subprocess

import numpy as np

from tf_amended_darts import errors, io_utils

FORMATS = ("png", "svg", "pdf")
_INPUTS = ("c_{k-2}", "c_{k-1}")
_OUTPUT = "c_{k}"


class VisualizeError(errors.InputError, OSError):
    """A picture that cannot be made (no `dot` executable, `dot` failing)."""


# --- genotype cells -----------------------------------------------------------------------


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _state_name(j):
    return _INPUTS[j] if j < 2 else str(j - 2)


def cell_dot(cell, title):
    """DOT source of a cell genotype: inputs c_{k-2}, c_{k-1}, intermediate nodes 0..n-1, output
    c_{k}; one edge labelled with its operation per kept (op, input) pair, and an edge from every
    concatenated state to the output."""
    lines = [
        "digraph cell {",
        "  rankdir=LR;",
        f"  graph [label={_quote(title)}, labelloc=t, fontsize=20, fontname=times];",
        "  node [style=filled, shape=rect, align=center, fontsize=20, height=0.5, width=0.5, "
        "penwidth=2, fontname=times];",
        "  edge [fontsize=20, fontname=times];",
    ]
    for name in _INPUTS:
        lines.append(f"  {_quote(name)} [fillcolor=darkseagreen2];")
    for i in range(cell.num_nodes):
        lines.append(f"  {_quote(i)} [fillcolor=lightblue];")
    lines.append(f"  {_quote(_OUTPUT)} [fillcolor=palegoldenrod];")
    for i, node in enumerate(cell.nodes):
        for op, j in node:
            lines.append(
                f"  {_quote(_state_name(j))} -> {_quote(i)} [label={_quote(op)}, fillcolor=gray];"
            )
    for c in cell.concat:
        lines.append(f"  {_quote(_state_name(c))} -> {_quote(_OUTPUT)} [fillcolor=gray];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def genotype_cells(genotype):
    """[(name, cell)]: "normal", "reduce" for a shared genotype; "normal_0", ..., "reduce_1"
    for a per-stage one."""
    named = []
    for kind, cells in (("normal", genotype.normal_cells), ("reduce", genotype.reduce_cells)):
        for s, cell in enumerate(cells):
            named.append((kind if not genotype.per_stage else f"{kind}_{s}", cell))
    return named


def check_formats(formats):
    """The formats as a list without duplicates; errors.InputError for one not in FORMATS."""
    if isinstance(formats, str):
        formats = [formats]
    formats = [f.strip().lower() for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise errors.InputError(
            f"picture format(s) {bad or '(none)'}: expected some of {', '.join(FORMATS)}"
        )
    return list(dict.fromkeys(formats))


def find_dot():
    """Path of the Graphviz `dot` executable; VisualizeError if it is not on PATH."""
    dot = shutil.which("dot")
    if dot is None:
        raise VisualizeError(
            "the Graphviz 'dot' executable is not on PATH; install graphviz "
            "(Debian/Ubuntu: apt-get install graphviz) to render genotypes"
        )
    return dot


def render_dot(source, path, fmt, dot=None):
    """Renders DOT source to `path` with `dot -T{fmt}`, atomically."""
    dot = dot or find_dot()
    try:
        result = subprocess.run(
            [dot, f"-T{fmt}"],
            input=source.encode("utf-8"),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VisualizeError(f"cannot run {dot} for {path}: {e}") from None
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise VisualizeError(
            f"{dot} -T{fmt} failed for {path} (exit {result.returncode})"
            + (f": {message[0]}" if message else "")
        )
    io_utils.write_atomic(path, result.stdout)


def render_genotype(genotype, out_prefix, formats=("png", "svg")):
    """Draws every cell of `genotype`: `{out_prefix}_{name}.dot` and `.{fmt}` per format, name as
    `genotype_cells` gives it. Returns the paths written (per cell: the .dot, then the pictures).

    The .dot sources are written first; then, if `dot` is missing, VisualizeError (no picture is
    written, none is left half-written)."""
    formats = check_formats(formats)
    written, sources = [], []
    for name, cell in genotype_cells(genotype):
        stem = f"{out_prefix}_{name}"
        source = cell_dot(cell, f"{os.path.basename(out_prefix)} {name}".strip())
        io_utils.write_atomic(stem + ".dot", source)
        written.append(stem + ".dot")
        sources.append((stem, source))
    try:
        dot = find_dot()
    except VisualizeError as e:
        raise VisualizeError(f"{e} (wrote the sources {', '.join(written)})") from None
    result = []
    for (stem, source), dot_path in zip(sources, written):
        result.append(dot_path)
        for fmt in formats:
            render_dot(source, f"{stem}.{fmt}", fmt, dot)
            result.append(f"{stem}.{fmt}")
    return result


# --- architecture weights ----------------------------------------------------------------


def edge_labels(num_edges):
    """Labels "node<-input" of a DARTS cell's edges in MixedOp order ("2<-0", "2<-1", "3<-0",
    ...): node i (state 2 + i) has 2 + i incoming edges. "e0", "e1", ... if num_edges is not
    such a count."""
    labels, node = [], 2
    while len(labels) < num_edges:
        labels += [f"{node}<-{j}" for j in range(node)]
        node += 1
    return labels if len(labels) == num_edges else [f"e{i}" for i in range(num_edges)]


def figure(width, height, dpi=100):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, fmt, dpi=100):
    """Writes `fig` to `path` as `fmt` (png, svg, pdf) atomically; SVG and PDF without a date."""
    buffer = io.BytesIO()
    fig.savefig(
        buffer,
        format=fmt,
        dpi=dpi,
        **({"metadata": {"Date": None}} if fmt in ("svg", "pdf") else {}),
    )
    io_utils.write_atomic(path, buffer.getvalue())
    return str(path)


def heatmap_colormap():
    """The colour map of `alpha_heatmap` (probabilities 0..1)."""
    import matplotlib

    return matplotlib.colormaps["viridis"]


def alpha_heatmap(probabilities, operations, title=""):
    """softmax(alpha) of one cell slot ([num_edges, num_ops]) as an image, uint8 [H, W, 3]:
    edges (node<-input) down, operations across, colour scale fixed to 0..1. For TensorBoard:
    `tf.summary.image(name, image[None], step)`."""
    p = np.asarray(probabilities, dtype=np.float64)
    operations = [str(op) for op in operations]
    if p.ndim != 2 or p.shape[1] != len(operations) or p.shape[0] == 0:
        raise ValueError(
            f"probabilities of shape {p.shape}: expected [num_edges, "
            f"{len(operations)}] (one column per operation)"
        )
    num_edges, num_ops = p.shape
    fig = figure(1.6 + 0.75 * num_ops, 1.4 + 0.32 * num_edges)
    ax = fig.add_subplot()
    image = ax.imshow(
        p, cmap=heatmap_colormap(), vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    ax.set_xticks(range(num_ops), operations, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(num_edges), edge_labels(num_edges), fontsize=8)
    ax.set_xlabel("operation", fontsize=8)
    ax.set_ylabel("edge (node <- input)", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()


class AlphaHistoryError(errors.InputError):
    """A malformed alphas_history.json."""


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def validate_alpha_history(history, where="alphas history"):
    """Checks the format of `alphas_history.json`; returns (operations, slots, records) with
    records sorted by (epoch, step) and probabilities as float arrays. AlphaHistoryError (an
    errors.InputError) names the first problem."""

    def fail(message):
        raise AlphaHistoryError(f"{where}: {message}")

    if not isinstance(history, dict):
        fail(
            f"expected a JSON object with keys operations, slots, records; got "
            f"{type(history).__name__}"
        )
    missing = [k for k in ("operations", "slots", "records") if k not in history]
    if missing:
        fail(f"missing key(s) {', '.join(missing)} (expected operations, slots, records)")
    for key in ("operations", "slots"):
        names = history[key]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            fail(f"{key} must be a non-empty list of names, got {names!r}")
        if len(set(names)) != len(names):
            fail(f"{key} has duplicate names: {names}")
    operations, slots, records = history["operations"], history["slots"], history["records"]
    if not isinstance(records, list):
        fail(f"records must be a list, got {type(records).__name__}")
    edges_per_slot = {}  # every record's slot has as many edges as the first's
    checked = [
        _checked_record(f"records[{r}]", record, operations, slots, edges_per_slot, fail)
        for r, record in enumerate(records)
    ]
    checked.sort(key=lambda rec: (rec["epoch"], rec["step"]))
    return list(operations), list(slots), checked


def _checked_record(at, record, operations, slots, edges_per_slot, fail):
    """One record of an alphas history, its probabilities as float arrays."""
    if not isinstance(record, dict):
        fail(f"{at} must be an object with epoch, step, probabilities")
    for key in ("epoch", "step"):
        if not _is_int(record.get(key)) or record[key] < 0:
            fail(f"{at}.{key} must be a non-negative integer, got {record.get(key)!r}")
    probabilities = record.get("probabilities")
    if not isinstance(probabilities, list) or len(probabilities) != len(slots):
        count = len(probabilities) if isinstance(probabilities, list) else "no list"
        fail(
            f"{at}.probabilities must hold one [num_edges x {len(operations)}] matrix per "
            f"slot ({len(slots)}), got {count}"
        )
    matrices = []
    for s, matrix in enumerate(probabilities):
        at_slot = f"{at}.probabilities[{s}] ({slots[s]})"
        matrices.append(
            _checked_probabilities(at_slot, matrix, len(operations), s, edges_per_slot, fail)
        )
    return {"epoch": record["epoch"], "step": record["step"], "probabilities": matrices}


def _checked_probabilities(at, matrix, num_ops, slot, edges_per_slot, fail):
    """A [num_edges, num_ops] matrix of softmax(alpha) rows, as a float array."""
    try:
        p = np.asarray(matrix, dtype=np.float64)
    except (ValueError, TypeError):
        fail(f"{at} is not a rectangular matrix of numbers")
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] != num_ops:
        fail(
            f"{at} has shape {list(p.shape)}, expected [num_edges, "
            f"{num_ops}] (one column per operation)"
        )
    if edges_per_slot.setdefault(slot, p.shape[0]) != p.shape[0]:
        fail(f"{at} has {p.shape[0]} edges, earlier records {edges_per_slot[slot]}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1 + 1e-6):
        fail(
            f"{at} holds values outside [0, 1]: probabilities (softmax of alpha) "
            "expected, not alpha logits"
        )
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1) > 1e-2):
        fail(
            f"{at}: a row sums to {sums[np.argmax(np.abs(sums - 1))]:.4g}, "
            "expected 1 (softmax of alpha over the operations)"
        )
    return p


def load_alpha_history(path):
    """Reads and validates an `alphas_history.json` (AlphaHistoryError naming the problem, an
    unreadable file included). Returns the history dict as stored."""
    try:
        with open(path, encoding="utf-8") as f:
            history = json.load(f)
    except OSError as e:
        raise AlphaHistoryError(f"cannot read {path}: {e.strerror or e}") from None
    except RecursionError:
        raise AlphaHistoryError(f"{path}: not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as e:
        raise AlphaHistoryError(f"{path}: not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise AlphaHistoryError(f"{path}: not a text file: {e}") from None
    validate_alpha_history(history, str(path))
    return history


def _op_colours(num_ops):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if num_ops <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(num_ops)]


def uniform_shares(candidates):
    """Each operation's mean softmax mass over a cell's edges at uniform alphas, as exact
    fractions: `candidates`, [num_edges, num_ops] bool, the operations each edge's softmax
    takes (1 / their number each; 0 for the ones masked out, as RobustDARTS' S1 has)."""
    candidates = np.asarray(candidates, dtype=bool)
    counts = candidates.sum(axis=1)
    return [
        sum(fractions.Fraction(int(c), int(n)) for c, n in zip(column, counts)) / len(counts)
        for column in candidates.T
    ]


def plot_alpha_history(history, path):
    """Plots softmax(alpha) over the records of `history` (the alphas_history.json dict): one
    subplot per slot, one line per operation (its mean over the slot's edges; the same colour
    in every subplot), dotted: the operations' shares at uniform alphas. x is the epoch, or the
    step when there are several records per epoch. Saved as PNG, SVG or PDF by the extension
    of `path`, atomically. Returns `path`."""
    fmt = os.path.splitext(str(path))[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise errors.InputError(
            f"{path}: plot format by extension must be one of {', '.join('.' + f for f in FORMATS)}"
        )
    operations, slots, records = validate_alpha_history(history)
    if not records:
        raise AlphaHistoryError("alphas history has no records to plot")
    epochs = [r["epoch"] for r in records]
    by_step = len(set(epochs)) != len(epochs)
    x = [r["step"] for r in records] if by_step else epochs
    # means[s]: [num_records, num_ops]
    means = [
        np.stack([r["probabilities"][s].mean(axis=0) for r in records]) for s in range(len(slots))
    ]
    columns = min(len(slots), 3)
    rows = math.ceil(len(slots) / columns)
    fig = figure(4.2 * columns + 1.8, 3.0 * rows + 0.6)
    colours = _op_colours(len(operations))
    # A column masked out of an edge's softmax has probability exactly 0 (masked_softmax),
    # so the first record tells each edge's candidates: the uniform shares per operation.
    uniform = [
        [float(u) for u in uniform_shares(np.asarray(p) > 0)] for p in records[0]["probabilities"]
    ]
    lines = []
    for s, slot in enumerate(slots):
        ax = fig.add_subplot(rows, columns, s + 1)
        lines = [
            ax.plot(
                x,
                means[s][:, o],
                color=colours[o],
                marker="." if len(x) < 30 else None,
                linewidth=1.5,
                label=op,
            )[0]
            for o, op in enumerate(operations)
        ]
        if len(set(uniform[s])) == 1:  # every edge takes every operation
            ax.axhline(uniform[s][0], color="gray", linewidth=0.8, linestyle=":")
        else:
            for o, share in enumerate(uniform[s]):
                ax.axhline(share, color=colours[o], linewidth=0.8, linestyle=":")
        ax.set_title(slot, fontsize=10)
        ax.set_xlabel("step" if by_step else "epoch", fontsize=9)
        ax.set_ylabel("mean softmax(alpha)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    fig.legend(lines, operations, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / (4.2 * columns + 1.8), 1))
    return save_figure(fig, path, fmt)
