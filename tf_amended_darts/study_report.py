"""The report of a study (tf_amended_darts/study.py): tables and plots from its per-run records
alone, so they can be redrawn without re-running anything.

  summarize(records)  -> {(dataset, space, estimator): Group}: per-epoch curves and final
                         values over the group's seeds (mean, sample standard deviation, n);
  markdown(summary)   -> the tables of docs/STUDY.md;
  plot(summary, dir)  -> PNGs: parameter-free operations, skip_connect mass and the Hessian
                         eigenvalue against epoch (mean +- std over seeds), test accuracy,
                         and, when the records have them, the cosines to the implicit
                         reference;
  write_report(records_dir, output_dir) -> all of them (report.md + PNGs).

Runs are grouped by the name study.py gives them, <dataset>-<space>-<estimator>-s<seed>; a run
still in progress counts in the curves for the epochs it has, and in the final columns only
once it has every epoch of its search (its "final" is then its last epoch).
"""

import dataclasses
import glob
import json
import os
import warnings

import numpy as np

from tf_amended_darts import errors, io_utils, visualize

# Per-epoch quantities: (label, function of an epoch entry).
CURVES = {
    "parameter_free_ops": lambda e: e["parameter_free_ops"],
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
        for j, record in enumerate(group):
            for entry in record["epochs"]:
                for name, value_of in CURVES.items():
                    value = value_of(entry)
                    curves[name][entry["epoch"] - 1, j] = np.nan if value is None else value
                if curves["reference_residual"][entry["epoch"] - 1, j] > VOID_RESIDUAL:
                    for name in COSINE_ESTIMATORS:
                        curves[f"cosine_{name}"][entry["epoch"] - 1, j] = np.nan
        summary[key] = Group(
            runs=[r["run"] for r in group],
            curves=curves,
            finished=sum(len(r["epochs"]) == r["search"]["epochs"] for r in group),
            planned=planned_seeds or len(group),
            test_acc=[r["test_acc"] for r in group if r.get("test_acc") is not None],
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
            "| supernet valid acc | re-trained test acc |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for estimator, group in groups:
            eigenvalues = group.curves["hessian_eigenvalue"]
            peak = np.nanmax(eigenvalues[:, ~np.isnan(eigenvalues[-1])], axis=0)
            lines.append(
                f"| {estimator} | {group.finished}/{group.planned} "
                f"| {_mean_std(_final(group, 'parameter_free_ops'), 2)} "
                f"| {_mean_std(_final(group, 'skip_mass_normal'), 3)} "
                f"| {_mean_std(_final(group, 'pool_mass_normal'), 3)} "
                f"| {_mean_std(_final(group, 'hessian_eigenvalue'), 3)} "
                f"| {_mean_std(peak, 3)} "
                f"| {_mean_std(_final(group, 'valid_acc'), 4)} "
                f"| {_mean_std(group.test_acc, 4)} |"
            )
        lines.append("")
        lines += _cosine_table(groups)
    return "\n".join(lines)


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


def plot(summary, output_dir):
    """Writes <curve>.png per plotted curve and test_acc.png; returns their paths."""
    panels = _by_panel(summary)
    paths = []
    titles = {
        "parameter_free_ops": "parameter-free operations in the derived genotype",
        "skip_mass_normal": "softmax mass on skip_connect (normal cells)",
        "hessian_eigenvalue": "dominant eigenvalue of the alpha-Hessian of L_val",
    }
    for name, title in titles.items():
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
                axes.fill_between(
                    epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15
                )
            axes.set_title(f"{dataset}, {space} space", fontsize=10)
            axes.set_xlabel("search epoch")
            axes.legend(fontsize=7)
        figure.suptitle(title + " (mean ± std over seeds)", fontsize=10)
        figure.tight_layout()
        path = os.path.join(output_dir, f"{name}.png")
        paths.append(visualize.save_figure(figure, path, "png", dpi=90))
    if any(_has_cosines(groups) for groups in panels.values()):
        paths.append(_plot_cosines(panels, output_dir))
    figure = visualize.figure(5.5 * len(panels), 4)
    for i, ((dataset, space), groups) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), i + 1)
        for x, (_, group) in enumerate(groups):
            values = group.test_acc
            axes.scatter([x] * len(values), values, color="k", s=12)
            if values:
                axes.errorbar(x + 0.15, np.mean(values), yerr=np.std(values), fmt="o")
        axes.set_xticks(range(len(groups)), [e for e, _ in groups], rotation=30, fontsize=7)
        axes.set_title(f"{dataset}, {space} space: re-trained test accuracy", fontsize=10)
    figure.tight_layout()
    path = os.path.join(output_dir, "test_acc.png")
    paths.append(visualize.save_figure(figure, path, "png", dpi=90))
    return paths


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
