"""A study of searches: a plan (JSON) of datasets x search spaces x estimators x seeds, each
searched through search.search, recorded per epoch, and its genotype re-trained.

Plan (`load_plan(path)`), a JSON object (studies/collapse.json is one):
  "description":   free text;
  "search":        SearchConfig fields shared by every run (epochs, batch_size, ...);
  "datasets":      dataset names (data.load_dataset);
  "search_spaces": {name: SearchConfig overrides (search_space, operations, nodes, ...)};
  "estimators":    {name: SearchConfig overrides (arch_gradient, amending_coefficient, ...)};
  "seeds":         seeds of the searches (and of the re-training);
  "retrain":       TrainConfig fields of the re-training (null: none); dataset comes from the run;
  "hessian":       {"iterations": power iterations, "examples": architecture-part examples};
  "cosines":       {"every": N epochs (0: never), "estimators": [...],
                   "amending_coefficient", "implicit_iterations", "cosines_damping",
                   "batch_size"; defaults: diagnostics.DiagnoseConfig's}: diagnostics.diagnose
                   at the live search
                   (bin/diagnose --search_dir's measure): each estimator's cosine to the
                   implicit reference (amended's also its best eta there), and the
                   reference's CG relative residual (late in a search A = H + wd I can be
                   indefinite and CG diverge: a residual near 1 or above voids the cosines;
                   `cosines_damping` regularises A). The estimators are traced at a run's first
                   measurement (minutes) and reused after it (one call each): off by default.

Layout of `output_dir`: runs/<run>/search (the search run), runs/<run>/retrain (the training
run), records/<run>.json (this module's record of the run, rewritten atomically after each
epoch): per epoch the number of parameter-free operations of the derived genotype, the mean
softmax mass on skip_connect and on the pools (normal and reduction slots), the supernet's
validation accuracy and the dominant eigenvalue of the alpha-Hessian of the validation loss
(diagnostics.alpha_hessian_eigenvalue), measured on the live supernet at the epoch's end by
the search's epoch_callback (the eigenvalue and cosines also reach the search's log.txt and
TensorBoard); then the re-training's test accuracy.

Continuing over several sittings: each search is one search.search call (its tf.functions are
traced once); a run whose record holds every epoch is not searched again, an interrupted one
resumes from its last checkpoint (the search's own resume): an epoch recorded but interrupted
before its checkpoint runs again and its record entry is replaced. Re-training resumes the
same way.
"""

import collections
import dataclasses
import fnmatch
import json
import os

import numpy as np

from tf_amended_darts import (
    checkpointing,
    diagnostics,
    errors,
    genotypes,
    io_utils,
    operations,
    run_dir,
    search,
    train,
)

PLAN_KEYS = (
    "description",
    "search",
    "datasets",
    "search_spaces",
    "estimators",
    "seeds",
    "retrain",
    "hessian",
    "cosines",
)
# Record field of a cosine measurement: diagnostics.diagnose's key (also the log's metric name,
# "<key>/<estimator>"); amended's best eta: diagnostics.best_eta.
COSINE_FIELDS = {
    "cosine": "cosine_to_implicit",
    "correction_cosine": "correction_cosine_to_implicit",
    "best_eta": "best_eta",
    "cosine_at_best_eta": "cosine_to_implicit_at_best_eta",
    "relative_residual": "relative_residual",  # the implicit reference's CG solve
}


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    name: str  # <dataset>-<space>-<estimator>-s<seed>
    search: search.SearchConfig
    retrain: dict  # TrainConfig fields without the genotype, or None


def load_plan(path):
    """The plan in the JSON file `path` (InputError naming the file when unusable)."""
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise errors.InputError(f"study plan {path}: {e}") from None
    if not isinstance(plan, dict) or set(plan) - set(PLAN_KEYS) or "estimators" not in plan:
        unknown = sorted(set(plan) - set(PLAN_KEYS)) if isinstance(plan, dict) else plan
        raise errors.InputError(
            f"study plan {path}: expected an object with estimators and keys from "
            f"{', '.join(PLAN_KEYS)} (unknown: {unknown})"
        )
    for key, known in (("hessian", {"iterations", "examples"}), ("cosines", _COSINE_KEYS)):
        unknown = sorted(set(plan.get(key) or {}) - known)
        if unknown:  # a misspelt or renamed key would silently fall back to its default
            known = ", ".join(sorted(known))
            raise errors.InputError(f"study plan {path}: unknown {key} keys {unknown} ({known})")
    return plan


def planned_runs(plan, runs=None):
    """Every PlannedRun of `plan`, in plan order (InputError on a bad field).

    runs: glob patterns of run names (fnmatch): only the runs matching one of them; a pattern
    that matches no run is an InputError (a typo would otherwise run nothing). Disjoint
    patterns let several processes share a plan (each run has its own lock).
    """
    fields = {f.name for f in dataclasses.fields(search.SearchConfig)}
    retrain = plan.get("retrain")
    unknown = sorted(set(retrain or {}) - {f.name for f in dataclasses.fields(train.TrainConfig)})
    if unknown or "genotype" in (retrain or {}):
        raise errors.InputError(f"study plan: unusable retrain fields {unknown or ['genotype']}")
    planned = []
    for dataset in plan.get("datasets", ["digits"]):
        for space_name, space in plan.get("search_spaces", {"darts": {}}).items():
            for estimator_name, estimator in plan["estimators"].items():
                for seed in plan.get("seeds", [0]):
                    settings = {
                        **plan.get("search", {}),
                        **space,
                        **estimator,
                        "dataset": dataset,
                        "seed": seed,
                    }
                    unknown = sorted(set(settings) - fields)
                    if unknown:
                        raise errors.InputError(f"study plan: unknown search fields {unknown}")
                    planned.append(
                        PlannedRun(
                            f"{dataset}-{space_name}-{estimator_name}-s{seed}",
                            search.SearchConfig(**settings),
                            None
                            if retrain is None
                            else {**retrain, "dataset": dataset, "seed": seed},
                        )
                    )
    # A run is selected alone by its name as a --runs pattern (bin/study's processes).
    for name, count in collections.Counter(p.name for p in planned).items():
        if count > 1 or "," in name:
            problem = "repeated" if count > 1 else "not usable (a comma)"
            raise errors.InputError(f"study plan: run name {name!r} is {problem}")
    if runs is None:
        return planned
    for pattern in runs:
        if not any(fnmatch.fnmatchcase(p.name, pattern) for p in planned):
            raise errors.InputError(f"study plan: no run matches {pattern!r}")
    return [p for p in planned if any(fnmatch.fnmatchcase(p.name, r) for r in runs)]


def alpha_masses(probabilities, operations_, slots):
    """{"skip_connect"|"pools": {"normal"|"reduce": mean softmax mass over the slots' edges}}."""
    masses = {}
    for label, names in (("skip_connect", ("skip_connect",)), ("pools", operations.POOL_OPS)):
        columns = [i for i, op in enumerate(operations_) if op in names]
        masses[label] = {}
        for kind in ("normal", "reduce"):
            edges = [
                np.asarray(p)[:, columns].sum(axis=1)
                for p, s in zip(probabilities, slots)
                if s.startswith(kind)
            ]
            masses[label][kind] = float(np.mean(np.concatenate(edges))) if edges else None
    return masses


# The plan's "cosines" keys: diagnostics' COSINE_SETTINGS (DiagnoseConfig options), and
# "every" (epochs).
_COSINE_KEYS = {"every", *diagnostics.COSINE_SETTINGS}


def _cosines(run, cosines, traced):
    """{estimator: {"cosine", "correction_cosine", ...}} to the implicit reference at the
    live search `run`, and {"implicit": {"relative_residual"}}, with the estimate functions
    kept in `traced` from one measurement to the next (traced once per run); the plan's
    "cosines" settings (diagnostics.estimator_cosines)."""
    settings = {k: v for k, v in cosines.items() if k != "every"}
    measured = diagnostics.estimator_cosines(run, traced, **settings)
    return {
        name: {field: values[key] for field, key in COSINE_FIELDS.items() if key in values}
        for name, values in measured.items()
    }


def _epoch_recorder(config, record, record_path, measures):
    """The search's epoch_callback: records the completed epoch (from the live search) in
    `record`, replacing an entry of the same epoch (an epoch re-run after an interruption),
    writes it, and returns the eigenvalue and the cosines for the search's own log."""
    hessian, cosines = measures.get("hessian", {}), measures.get("cosines", {})
    eigenvalue = diagnostics.hessian_eigenvalue_callback(
        config, hessian.get("iterations", 10), hessian.get("examples", 256)
    )
    every, traced = cosines.get("every", 0), {}

    def record_epoch(epoch, run, line):
        measured = eigenvalue(epoch=epoch, run=run, line=line)
        genotype = run.network.genotype()
        space = run.network.search_space
        entry = {
            "epoch": epoch,
            "global_step": run.global_step,
            "parameter_free_ops": genotype.count_ops(operations.PARAMETER_FREE_OPS),
            "genotype": genotype.to_string(),
            "alpha_mass": alpha_masses(
                run.network.alpha_probabilities(), space.operations, search.slot_names(space)
            ),
            "valid_acc": line.get("valid_acc"),
            "valid_loss": line.get("valid_loss"),
            # amended's `auto` (loop.Epoch.ranges): the coefficient over the epoch's steps
            "amending_coefficient": {
                "mean": line["amending_coefficient"],
                "min": line["amending_coefficient_min"],
                "max": line["amending_coefficient_max"],
            }
            if "amending_coefficient" in line
            else None,
            **measured,
            "cosine_to_implicit": _cosines(run, cosines, traced)
            if every and epoch % every == 0
            else None,
        }
        kept = [e for e in record["epochs"] if e["epoch"] != epoch]
        record["epochs"] = sorted(kept + [entry], key=lambda e: e["epoch"])
        _write(record_path, record)
        for name, values in (entry["cosine_to_implicit"] or {}).items():
            measured.update(
                {f"{COSINE_FIELDS[k]}/{name}": v for k, v in values.items() if v is not None}
            )
        return measured

    return record_epoch


def _write(path, record):
    io_utils.write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _searched(search_dir, record, epochs):
    """Whether the search has recorded its last epoch and saved that epoch's checkpoint (the
    checkpoint is saved after the record: an interruption between them re-runs the epoch)."""
    if len(record["epochs"]) < epochs:
        return False
    paths = checkpointing.checkpoint_paths(os.path.join(search_dir, run_dir.CHECKPOINT_DIR))
    return bool(paths) and paths[0].endswith(f"ckpt-{record['epochs'][-1]['global_step']}")


def _run_search(planned, search_dir, record, record_path, measures, stop_after_steps, log):
    """Runs (or resumes) the search, recording every epoch; False when stopped early."""
    config = planned.search
    if _searched(search_dir, record, config.epochs):
        return True
    result = search.search(
        config,
        search_dir,
        render=False,
        epoch_callback=_epoch_recorder(config, record, record_path, measures),
        **_run_control(search_dir, stop_after_steps, log),
    )
    return result.finished


def _run_control(directory, stop_after_steps, log):
    """How the study runs a search or a re-training (loop.RunControl's keywords): continued
    where the directory holds it, both streams to the study's log."""
    return {
        "resume": run_dir.holds_run(directory),
        "stop_after_steps": stop_after_steps,
        "log_stream": log,
        "progress_stream": log,
    }


def run_study(plan, output_dir, *, runs=None, stop_after_steps=None, log_stream=None):
    """Runs (or continues) every run of `plan` (a dict, see load_plan); returns the records.

    runs: only the runs whose names match one of these glob patterns (see planned_runs).
    stop_after_steps: stop every search once its global step reaches this value (simulates an
    interruption; the next call continues).
    """
    measures = {"hessian": plan.get("hessian", {}), "cosines": plan.get("cosines", {})}
    records = []
    for planned in planned_runs(plan, runs):
        run_path = os.path.join(output_dir, "runs", planned.name)
        record_path = os.path.join(output_dir, "records", planned.name + ".json")
        record = {"run": planned.name, "search": planned.search.to_dict(), "epochs": []}
        if os.path.exists(record_path):
            with open(record_path) as f:
                record = json.load(f)
        search_dir = os.path.join(run_path, "search")
        if not _run_search(
            planned, search_dir, record, record_path, measures, stop_after_steps, log_stream
        ):
            records.append(record)
            continue
        if planned.retrain is not None and "test_acc" not in record:
            genotype = genotypes.load_genotype(os.path.join(search_dir, search.GENOTYPE_FILE))
            config = train.TrainConfig(genotype=genotype, **planned.retrain)
            retrain_dir = os.path.join(run_path, "retrain")
            result = train.train(
                config, retrain_dir, **_run_control(retrain_dir, stop_after_steps, log_stream)
            )
            if result.finished:
                record["retrain"] = config.to_dict()
                record["test_acc"] = result.valid.get("valid_acc")
                _write(record_path, record)
        records.append(record)
    return records
