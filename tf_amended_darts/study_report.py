"""The report of a study (tf_amended_darts/study.py): tables and plots from its per-run records
alone, so they can be redrawn without re-running anything.

  summarize(records)  -> {(dataset, space, estimator): Group}: per-epoch curves and final
                         values over the group's seeds (mean, sample standard deviation, n);
  markdown(summary)   -> the tables of docs/STUDY.md: final values, collapse, each estimator
                         against first order (difference of means, exact permutation p-value
                         over seeds), cosines;
  plot(summary, dir)  -> PNGs: parameter-free operations (all cells, normal cells), the
                         softmax mass on skip_connect and on the pools (with their uniform
                         shares), the Hessian eigenvalue against epoch (mean +- sample std
                         over seeds over each run's thin line), test accuracy, and, when the
                         records have them, the cosines to the implicit reference;
  write_report(records_dir, output_dir) -> all of them (report.md + PNGs).

Runs are grouped by the name study.py gives them, <dataset>-<space>-<estimator>-s<seed>; a run
still in progress counts in the curves for the epochs it has, and in the final columns only
once it has every epoch of its search (its "final" is then its last epoch).
"""

import dataclasses
import functools
import glob
import itertools
import json
import os
import warnings

import numpy as np

from tf_amended_darts import errors, genotypes, io_utils, operations, search_space, visualize

# Per-epoch quantities: (label, function of an epoch entry).
CURVES = {
    "parameter_free_ops": lambda e: e["parameter_free_ops"],
    "parameter_free_normal": lambda e: _parameter_free_normal(e.get("genotype"))[0],
    "parameter_free_normal_share": lambda e: _parameter_free_normal(e.get("genotype"))[1],
    "skip_mass_normal": lambda e: e["alpha_mass"]["skip_connect"]["normal"],
    "pool_mass_normal": lambda e: e["alpha_mass"]["pools"]["normal"],
    "hessian_eigenvalue": lambda e: e.get("hessian_eigenvalue"),
    "valid_acc": lambda e: e.get("valid_acc"),
}
# Cosines to the implicit reference (study plans with "cosines"), measured every few epochs
# (NaN in between) of these estimators at each run's supernet, and the reference's CG
# relative residual ||v - A x|| / ||v||.
COSINE_ESTIMATORS = ("first_order", "second_order", "amended")
# A reference solve that leaves more than this share of v unexplained is no reference: its
# measurement's cosines are left out of the tables and plots (counted as void); converged
# solves in the studies end at 3e-10-4e-3, failed ones at 0.37-20.
VOID_RESIDUAL = 0.1
# A power iteration whose estimate still moved by more than this share in its last iteration
# has not converged: its eigenvalue is left out of the tables and plots (counted as void).
VOID_EIGENVALUE_CHANGE = 0.1
# Collapse (defined before the pilot ran): at least this share of the normal cells' kept
# edges parameter-free (6 of 8 in a DARTS cell) in every epoch of the search's last tenth.
COLLAPSE_SHARE = 0.75
COLLAPSE_TAIL = 0.1


@functools.lru_cache(maxsize=None)
def _parameter_free_normal(genotype):
    """(parameter-free edges, their share of the kept edges) of the normal cells of a recorded
    genotype string; (None, None) without one."""
    if genotype is None:
        return None, None
    cells = genotypes.Genotype.parse(genotype).normal_cells
    edges = [op for cell in cells for node in cell.nodes for op, _ in node]
    free = sum(op in operations.PARAMETER_FREE_OPS for op in edges)
    return free, free / len(edges)


def _cosine_field(name, field):
    return lambda e: ((e.get("cosine_to_implicit") or {}).get(name) or {}).get(field)


CURVES.update({f"cosine_{n}": _cosine_field(n, "cosine") for n in COSINE_ESTIMATORS})
CURVES["reference_residual"] = _cosine_field("implicit", "relative_residual")


@dataclasses.dataclass
class Group:
    runs: list  # run names, by seed
    curves: dict  # name -> [epochs, seeds] array (NaN where a run has no such epoch yet)
    finished: int  # runs with every epoch of their search
    planned: int  # runs the plan has for this group (the records' count when not given)
    test_acc: list  # re-trained test accuracies of the runs that have one
    void_eigenvalues: int = 0  # eigenvalues left out as unconverged (VOID_EIGENVALUE_CHANGE)
    eigenvalues: int = 0  # eigenvalues recorded, void ones included
    uniform: dict = None  # {"skip_connect", "pools"}: their softmax mass at uniform alphas


def _uniform_shares(search):
    """The softmax mass of skip_connect and of the pools at uniform alphas, from a record's
    search config (None when it names no search space)."""
    if "search_space" not in search:
        return None
    space = search_space.get_search_space(search["search_space"])
    if search.get("operations"):
        space = space.replace(operations=search["operations"])
    # The normal cells' mean over edges (RobustDARTS' s1 gives each edge its own candidates).
    mask = space.candidate_mask(reduction=False)
    if mask is None:  # every edge takes every operation
        mask = np.ones((space.num_edges, len(space.operations)), bool)
    shares = dict(zip(space.operations, visualize.uniform_shares(mask)))
    return {
        label: float(sum(shares.get(op, 0) for op in names))
        for label, names in (("skip_connect", ("skip_connect",)), ("pools", operations.POOL_OPS))
    }


def _key(run_name):
    parts = run_name.split("-")
    if len(parts) != 4 or not parts[3].startswith("s"):
        raise errors.InputError(
            f"study record {run_name!r}: expected <dataset>-<space>-<estimator>-s<seed>"
        )
    return tuple(parts[:3])


def load_records(records_dir):
    """The records (JSON) in `records_dir`, by run name (InputError if there are none)."""
    paths = sorted(glob.glob(os.path.join(records_dir, "*.json")))
    if not paths:
        raise errors.InputError(f"no study records (*.json) in {records_dir}")
    records = []
    for path in paths:
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise errors.InputError(f"study record {path}: {e}") from None
    return records


# Within a (dataset, space) panel, estimators are listed first order, second order, amended by
# increasing coefficient (auto last), implicit; then any other in the records' order.
_GRADIENT_RANK = {"first_order": 0, "second_order": 1, "amended": 2, "implicit": 3}


def _estimator_rank(record):
    search = record["search"]
    gradient = search.get("arch_gradient")
    coefficient = 0.0
    if gradient == "amended":
        value = search.get("amending_coefficient", 0.0)
        coefficient = float("inf") if value == "auto" else float(value)
    return _GRADIENT_RANK.get(gradient, len(_GRADIENT_RANK)), coefficient


def summarize(records, planned_seeds=None):
    """{(dataset, space, estimator): Group}: panels in the records' order, estimators within a
    panel as _estimator_rank orders them. planned_seeds: the plan's seeds per group (the
    "seeds done" denominator; default: the records found)."""
    grouped = {}
    for record in records:
        grouped.setdefault(_key(record["run"]), []).append(record)
    panels = list(dict.fromkeys(key[:2] for key in grouped))
    order = sorted(
        grouped,
        key=lambda key: (panels.index(key[:2]), _estimator_rank(grouped[key][0])),
    )
    summary = {}
    for key in order:
        group = grouped[key]
        epochs = max(r["search"]["epochs"] for r in group)
        curves = {name: np.full([epochs, len(group)], np.nan) for name in CURVES}
        void = measured = 0
        for j, record in enumerate(group):
            for entry in record["epochs"]:
                row = entry["epoch"] - 1
                for name, value_of in CURVES.items():
                    value = value_of(entry)
                    curves[name][row, j] = np.nan if value is None else value
                if curves["reference_residual"][row, j] > VOID_RESIDUAL:
                    for name in COSINE_ESTIMATORS:
                        curves[f"cosine_{name}"][row, j] = np.nan
                measured += entry.get("hessian_eigenvalue") is not None
                if (entry.get("hessian_relative_change") or 0.0) > VOID_EIGENVALUE_CHANGE:
                    curves["hessian_eigenvalue"][row, j] = np.nan
                    void += 1
        summary[key] = Group(
            runs=[r["run"] for r in group],
            curves=curves,
            finished=sum(len(r["epochs"]) == r["search"]["epochs"] for r in group),
            planned=planned_seeds or len(group),
            test_acc=[r["test_acc"] for r in group if r.get("test_acc") is not None],
            void_eigenvalues=void,
            eigenvalues=measured,
            uniform=_uniform_shares(group[0]["search"]),
        )
    return summary


def _present(row):
    """The values of a curve's row (an epoch) that runs have (not NaN)."""
    return row[~np.isnan(row)]


def _final(group, name):
    """The values of `name` at the last epoch of the group's finished runs."""
    return _present(group.curves[name][-1])


def _mean_std(values, digits, style="f"):
    """ "mean ± sample std" with `digits` in `style` (f or e), "—" for no values."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return "—"
    spread = f" ± {np.std(values, ddof=1):.{digits}{style}}" if values.size > 1 else ""
    return f"{np.mean(values):.{digits}{style}}{spread}"


def markdown(summary):
    """One table per (dataset, space): final values, mean ± sample std over finished seeds."""
    lines = []
    for (dataset, space), groups in _by_panel(summary).items():
        lines += [
            f"#### {dataset}, {space} space",
            "",
            "| estimator | seeds done | parameter-free ops | skip_connect mass (normal) "
            "| pool mass (normal) | Hessian eigenvalue | max eigenvalue over epochs "
            "| supernet valid acc | re-trained test acc | void eigenvalues |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for estimator, group in groups:
            eigenvalues = group.curves["hessian_eigenvalue"]
            finished = ~np.isnan(group.curves["parameter_free_ops"][-1])
            with warnings.catch_warnings():  # a finished run without a converged eigenvalue
                warnings.simplefilter("ignore", RuntimeWarning)
                peak = _present(np.nanmax(eigenvalues[:, finished], axis=0))
            lines.append(
                f"| {estimator} | {group.finished}/{group.planned} "
                f"| {_mean_std(_final(group, 'parameter_free_ops'), 2)} "
                f"| {_mean_std(_final(group, 'skip_mass_normal'), 3)} "
                f"| {_mean_std(_final(group, 'pool_mass_normal'), 3)} "
                f"| {_mean_std(_final(group, 'hessian_eigenvalue'), 3)} "
                f"| {_mean_std(peak, 3)} "
                f"| {_mean_std(_final(group, 'valid_acc'), 4)} "
                f"| {_mean_std(group.test_acc, 4)} "
                f"| {group.void_eigenvalues} of {group.eigenvalues} |"
            )
        lines.append("")
        lines += _collapse_table(groups)
        lines += _comparison_table(groups)
        lines += _cosine_table(groups)
    return "\n".join(lines)


def collapse_onsets(group):
    """Per finished run of `group`: the epoch from which its normal cells stay collapsed to
    the end (COLLAPSE_SHARE of their kept edges parameter-free), if they are collapsed over
    the search's last COLLAPSE_TAIL; else None. Runs without genotypes: no entries."""
    shares = group.curves["parameter_free_normal_share"]
    epochs = shares.shape[0]
    tail = max(1, int(np.ceil(COLLAPSE_TAIL * epochs)))
    onsets = []
    for run in shares[:, ~np.isnan(shares[-1])].T:
        collapsed = run >= COLLAPSE_SHARE
        if not collapsed[-tail:].all():
            onsets.append(None)
            continue
        onset = epochs
        while onset > 0 and collapsed[onset - 1]:
            onset -= 1
        onsets.append(onset + 1)
    return onsets


def _collapse_table(groups):
    """Collapsed runs per estimator and their onset epochs (no lines without genotypes)."""
    rows = [(estimator, collapse_onsets(group)) for estimator, group in groups]
    if not any(onsets for _, onsets in rows):
        return []
    lines = [
        f"Collapse: at least {COLLAPSE_SHARE:.0%} of the normal cells' kept edges "
        f"parameter-free in every epoch of the last {COLLAPSE_TAIL:.0%} of the search "
        "(finished runs); onset: the epoch from which it held to the end.",
        "",
        "| estimator | collapsed | onset epochs |",
        "|---|---|---|",
    ]
    for estimator, onsets in rows:
        collapsed = [o for o in onsets if o is not None]
        lines.append(
            f"| {estimator} | {len(collapsed)} of {len(onsets)} "
            f"| {', '.join(map(str, collapsed)) or '—'} |"
        )
    return lines + [""]


def permutation_p(a, b):
    """Two-sided exact permutation p-value of the difference of means of samples a and b:
    the share of all splits of the pooled values into groups of their sizes whose difference
    is at least as large in magnitude as the observed one."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    total = pooled.sum()
    extreme = count = 0
    for chosen in itertools.combinations(range(pooled.size), a.size):
        first = pooled[list(chosen)].sum()
        difference = abs(first / a.size - (total - first) / b.size)
        extreme += difference >= observed - 1e-12 * max(1.0, observed)
        count += 1
    return extreme / count


# The final values each estimator is compared on against first order.
_COMPARED = (
    ("parameter_free_normal", "parameter-free ops (normal)", 2),
    ("skip_mass_normal", "skip_connect mass (normal)", 3),
    ("hessian_eigenvalue", "Hessian eigenvalue", 3),
    ("test_acc", "re-trained test acc", 4),
)


def _comparison_table(groups):
    """Each estimator against first order: difference of the means of the finished runs'
    final values and its exact permutation p-value over seeds (no lines without first
    order or with fewer than two seeds on a side)."""
    groups = dict(groups)
    base = groups.get("first_order")

    def values(group, name):
        return group.test_acc if name == "test_acc" else _final(group, name)

    if base is None:
        return []
    rows, compared = [], False
    for estimator, group in groups.items():
        if estimator == "first_order":
            continue
        cells = []
        for name, _, digits in _COMPARED:
            a, b = values(group, name), values(base, name)
            if len(a) < 2 or len(b) < 2:
                cells.append("—")
                continue
            compared = True
            cells.append(f"{np.mean(a) - np.mean(b):+.{digits}f} (p = {permutation_p(a, b):.2f})")
        rows.append(f"| {estimator} | " + " | ".join(cells) + " |")
    if not compared:
        return []
    return [
        "Against first order: difference of the means of the final values (this estimator "
        "minus first order) and its exact two-sided permutation p-value over seeds:",
        "",
        "| estimator | " + " | ".join(label for _, label, _ in _COMPARED) + " |",
        "|---|" + "---|" * len(_COMPARED),
        *rows,
        "",
    ]


def _has_cosines(groups):
    """Whether any run of `groups` ([(estimator, Group)]) has a cosine measurement."""
    return any(not np.all(np.isnan(g.curves["reference_residual"])) for _, g in groups)


def _cosine_table(groups):
    """Cosines to the implicit reference at each run's last measurement (none: no lines)."""
    if not _has_cosines(groups):
        return []
    lines = [
        "Cosine to the implicit reference at the last measurement, of each estimator measured "
        "at the runs' supernets (the rows are the runs' own estimators); a measurement whose "
        f"reference CG relative residual is above {VOID_RESIDUAL} is void, left out of the "
        "cosines and of the residual's mean:",
        "",
        "| search run by | "
        + " | ".join(COSINE_ESTIMATORS)
        + " | reference CG residual | void measurements |",
        "|---|" + "---|" * (len(COSINE_ESTIMATORS) + 2),
    ]
    for estimator, group in groups:
        residuals = group.curves["reference_residual"]
        measured = np.flatnonzero(~np.all(np.isnan(residuals), axis=1))
        if not measured.size:
            lines.append(
                f"| {estimator} | " + " | ".join(["—"] * (len(COSINE_ESTIMATORS) + 2)) + " |"
            )
            continue
        last = measured[-1]
        cells = [
            _mean_std(_present(group.curves[f"cosine_{n}"][last]), 3) for n in COSINE_ESTIMATORS
        ]
        residual = _present(residuals[last])
        void = residual > VOID_RESIDUAL
        lines.append(
            f"| {estimator} | "
            + " | ".join(cells)
            + f" | {_mean_std(residual[~void], 1, 'e')} | {void.sum()} of {residual.size} |"
        )
    return lines + [""]


def _by_panel(summary):
    """{(dataset, space): [(estimator, Group), ...]} in the summary's order."""
    panels = {}
    for (dataset, space, estimator), group in summary.items():
        panels.setdefault((dataset, space), []).append((estimator, group))
    return panels


# Plotted curve -> (title, y-axis label, the uniform share drawn as a reference line, if any).
_CURVE_PLOTS = {
    "parameter_free_ops": (
        "parameter-free operations in the derived genotype (all cells)",
        "edges",
        None,
    ),
    "parameter_free_normal": (
        "parameter-free operations in the derived genotype's normal cells",
        "edges",
        None,
    ),
    "skip_mass_normal": (
        "softmax mass on skip_connect (normal cells)",
        "mean softmax weight per edge",
        "skip_connect",
    ),
    "pool_mass_normal": (
        "softmax mass on the pools (normal cells)",
        "mean softmax weight per edge",
        "pools",
    ),
    "hessian_eigenvalue": (
        "dominant eigenvalue of the alpha-Hessian of L_val (converged ones)",
        "eigenvalue",
        None,
    ),
}


def plot(summary, output_dir):
    """Writes <curve>.png per plotted curve and test_acc.png; returns their paths."""
    panels = _by_panel(summary)
    paths = [_plot_curve(panels, name, output_dir) for name in _CURVE_PLOTS]
    if any(_has_cosines(groups) for groups in panels.values()):
        paths.append(_plot_cosines(panels, output_dir))
    paths.append(_plot_test_acc(panels, output_dir))
    return paths


def _plot_curve(panels, name, output_dir):
    """<name>.png: a panel per (dataset, space), mean ± std band and runs per estimator."""
    title, ylabel, uniform = _CURVE_PLOTS[name]
    figure = visualize.figure(5.5 * len(panels), 4)
    for i, ((dataset, space), groups) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), i + 1)
        for estimator, group in groups:
            curve = group.curves[name]
            epochs = np.arange(1, curve.shape[0] + 1)
            with warnings.catch_warnings():  # epochs no run has reached yet: NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(curve, axis=1)
                std = np.nanstd(curve, axis=1, ddof=1)
            line = axes.plot(epochs, mean, label=f"{estimator} (n={len(group.runs)})")[0]
            axes.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
            axes.plot(epochs, curve, color=line.get_color(), linewidth=0.5, alpha=0.4)
        share = uniform and groups[0][1].uniform and groups[0][1].uniform[uniform]
        if share:
            axes.axhline(share, color="gray", linestyle="--", linewidth=0.8)
            axes.annotate("uniform", (1, share), fontsize=7, color="gray")
        axes.set_title(f"{dataset}, {space} space", fontsize=10)
        axes.set_xlabel("search epoch")
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=7)
    figure.suptitle(title + " (mean ± sample std over seeds; thin lines: the runs)", fontsize=10)
    figure.tight_layout()
    return visualize.save_figure(figure, os.path.join(output_dir, f"{name}.png"), "png", dpi=90)


def _plot_test_acc(panels, output_dir):
    """test_acc.png: the re-trained test accuracies of each estimator's runs, per panel."""
    figure = visualize.figure(5.5 * len(panels), 4)
    for i, ((dataset, space), groups) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), i + 1)
        for x, (_, group) in enumerate(groups):
            values = group.test_acc
            axes.scatter([x] * len(values), values, color="k", s=12)
            if values:
                spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
                axes.errorbar(x + 0.15, np.mean(values), yerr=spread, fmt="o")
        axes.set_xticks(range(len(groups)), [e for e, _ in groups], rotation=30, fontsize=7)
        axes.set_ylabel("test accuracy (runs; mean ± sample std)")
        axes.set_title(f"{dataset}, {space} space: re-trained test accuracy", fontsize=10)
    figure.tight_layout()
    return visualize.save_figure(figure, os.path.join(output_dir, "test_acc.png"), "png", dpi=90)


def _plot_cosines(panels, output_dir):
    """cosine_to_implicit.png: a row per (dataset, space), a column per measured estimator,
    a line per search estimator (mean over seeds at the measured epochs)."""
    figure = visualize.figure(4.5 * len(COSINE_ESTIMATORS), 3.5 * len(panels))
    for i, ((dataset, space), groups) in enumerate(panels.items()):
        for j, measured in enumerate(COSINE_ESTIMATORS):
            axes = figure.add_subplot(
                len(panels), len(COSINE_ESTIMATORS), 1 + j + i * len(COSINE_ESTIMATORS)
            )
            for estimator, group in groups:
                curve = group.curves[f"cosine_{measured}"]
                rows = ~np.all(np.isnan(curve), axis=1)
                axes.plot(
                    np.flatnonzero(rows) + 1,
                    np.nanmean(curve[rows], axis=1),
                    "o-",
                    label=estimator,
                    markersize=3,
                )
            axes.set_title(f"{measured}: {dataset}, {space}", fontsize=9)
            axes.set_xlabel("search epoch")
            axes.set_ylabel("cosine")
            axes.set_ylim(-1, 1)
            axes.legend(fontsize=6, title="search run by", title_fontsize=6)
    figure.suptitle("cosine to the implicit reference (mean over seeds)", fontsize=10)
    figure.tight_layout()
    path = os.path.join(output_dir, "cosine_to_implicit.png")
    return visualize.save_figure(figure, path, "png", dpi=90)


def write_report(records_dir, output_dir, planned_seeds=None):
    """report.md (the tables) and the PNGs in `output_dir`, from the records in records_dir
    (planned_seeds: see summarize)."""
    summary = summarize(load_records(records_dir), planned_seeds)
    io_utils.make_directory(output_dir)
    io_utils.write_atomic(os.path.join(output_dir, "report.md"), markdown(summary))
    return [os.path.join(output_dir, "report.md")] + plot(summary, output_dir)
