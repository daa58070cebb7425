"""This project's search iteration against the reference DARTS implementation's, same
configuration, same machine, same run.

  python benchmarks/reference_benchmark.py --steps=3                  # the paper's setting
  python benchmarks/reference_benchmark.py --channels=8 --cells=5 --batch_size=16 \\
      --threads=1 --steps=5 --format=json

The reference is quark0/darts' own code (PyTorch, CPU) run by ../shared/bench/reference_bench.py
in a Python environment of its own (set-up at that script's top); PyTorch is never imported
here, the reference only runs as a separate process. Each estimator is paired with the
reference's mode that computes the same gradient: first_order with `first`, second_order with
`second` (the reference's finite-difference Hessian product), amended with `amended` (the
authors' code: two finite-difference products). Each pair runs alternately, ours then the
reference's, --repeats times, before the next pair, so that a change of the machine's load
falls on both sides; every measurement is a fresh process, so its peak memory is its own.

Both sides build the supernet (3-channel random images, 10 classes) and time --steps search
iterations (architecture step + weight step, as the search's loop) after a first call: ours
traces and optimises its graph there, the reference has nothing to build. Both get --threads
intra-op threads (and ours as many inter-op threads; the reference script sets only
torch.set_num_threads). Our Hessian products are --products (exact by default); the
reference's are always finite differences. Ours does not trace the weight step alone (the
search does so only in warm-up epochs), so its peak memory is the search iteration's. The
reference script has no option for the nodes of a cell (its cells have 4), so other --nodes
values are refused unless --reference_script offers --nodes.

Printed: the date, the CPU count, os.getloadavg() at start and end, the configuration, and one
row per estimator: s/iteration (median over the timed steps, then over repeats), images/s,
first call s, peak RSS MB of each side, and the ratios
  x ref            ours / the reference's, same estimator (s/iteration; RSS x ref likewise),
  x ref 2nd order  ours / the reference's second order (s/iteration; RSS likewise),
  x our 1st order  ours / our first order (s/iteration).
--format=json prints the same plus every run in the order it ran; --results=benchmarks/RESULTS.md
also appends the report there (results_log.py).
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import reference_comparison as comparison
import results_log
import search_timing  # first: puts this checkout's package on sys.path
from absl import flags

from tf_amended_darts import errors
from tf_amended_darts.bin import cli

_DEFAULT_REFERENCE_PYTHON = "/work/torchvenv/bin/python"
_REFERENCE_NODES = 4  # model_search.Network's default steps=4

_CONFIGURATION, _THREADS = search_timing.define_configuration_flags(
    "the paper's: C=16, 8 cells, 4 nodes, batch 64, 32x32"
)
_ESTIMATORS = flags.DEFINE_list(
    "estimators",
    ",".join(comparison.REFERENCE_MODES),
    f"Estimators to compare, each with its reference mode: {comparison.REFERENCE_MODES}.",
)
_PRODUCTS = flags.DEFINE_enum(
    "products", "exact", ["exact", "finite_difference"], "Our Hessian products."
)
_SUB_BATCHES = flags.DEFINE_integer(
    "sub_batches",
    1,
    "Our search's --sub_batches for second order and amended (their products summed over that "
    "many sub-batches: less memory).",
    lower_bound=1,
)
_STEPS = flags.DEFINE_integer(
    "steps", 3, "Timed iterations of each measurement, after its first call.", lower_bound=1
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Measurements of each side per estimator, alternating.", lower_bound=1
)
_REFERENCE_PYTHON = flags.DEFINE_string(
    "reference_python",
    None,
    "Python of the environment with PyTorch that runs the reference (default: "
    f"{_DEFAULT_REFERENCE_PYTHON} if it exists, else $REFERENCE_PYTHON).",
)
_REFERENCE_SCRIPT = flags.DEFINE_string(
    "reference_script",
    os.path.normpath(
        os.path.join(search_timing.ROOT, "..", "shared", "bench", "reference_bench.py")
    ),
    "The reference's benchmark script (prints one JSON line: first_call_s, median_s, peak_rss_mb).",
)
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
_RESULTS = results_log.define_results_flag()
_CHILD = flags.DEFINE_string("child", None, "Internal: the measurement to make, as JSON.")


def _reference_python():
    python = _REFERENCE_PYTHON.value
    if not python:
        if os.path.exists(_DEFAULT_REFERENCE_PYTHON):
            python = _DEFAULT_REFERENCE_PYTHON
        else:
            python = os.environ.get("REFERENCE_PYTHON")
    if not python:
        raise errors.InputError(
            f"--reference_python not given, {_DEFAULT_REFERENCE_PYTHON} does not exist and "
            "$REFERENCE_PYTHON is not set: give the Python of an environment with PyTorch "
            "(set-up at the top of reference_bench.py)"
        )
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise errors.InputError(f"--reference_python {python} is not an executable file")
    return python


def _reference_command(configuration, threads):
    """The reference's command line without --mode; refuses what it cannot compare."""
    python, script = _reference_python(), _REFERENCE_SCRIPT.value
    if not os.path.isfile(script):
        raise errors.InputError(f"--reference_script {script} does not exist")
    # Also proves, before any long measurement, that the reference's environment works.
    usage = subprocess.run([python, script, "--help"], capture_output=True, text=True, check=False)
    if usage.returncode != 0:
        tail = (usage.stderr.strip().splitlines() or ["no output"])[-1]
        raise errors.InputError(
            f"--reference_script {script} --help failed with --reference_python {python}: {tail}"
        )
    command = [
        python,
        script,
        f"--channels={configuration.channels}",
        f"--layers={configuration.cells}",
        f"--batch={configuration.batch_size}",
        f"--size={configuration.image_size}",
        f"--steps={_STEPS.value}",
        f"--threads={threads}",
    ]
    if "--nodes" in usage.stdout:
        command.append(f"--nodes={configuration.nodes}")
    elif configuration.nodes != _REFERENCE_NODES:
        raise errors.InputError(
            f"--nodes={configuration.nodes}: {script} has no nodes option (its cells have "
            f"{_REFERENCE_NODES} nodes), so only --nodes={_REFERENCE_NODES} is comparable"
        )
    return command


def _measure(estimator, side, configuration, threads, reference_command):
    """One measurement in a fresh process, as {side, estimator, started, ended, result}."""
    started = time.time()
    if side == "ours":
        request = {
            "configuration": dataclasses.asdict(configuration),
            "estimator": estimator,
            "products": _PRODUCTS.value,
            "sub_batches": 1 if estimator == "first_order" else _SUB_BATCHES.value,
            "steps": _STEPS.value,
            "threads": threads,
            # The search traces the weight step alone only in warm-up epochs.
            "time_weight_step": False,
        }
        result = search_timing.measure_in_fresh_process(os.path.abspath(__file__), request)
        s_per_iteration = result.get("search_s")
    else:
        mode = comparison.REFERENCE_MODES[estimator]
        result = search_timing.run_json_command(reference_command + [f"--mode={mode}"])
        s_per_iteration = result.get("median_s")
    if "error" not in result:
        result = {
            "s_per_iteration": s_per_iteration,
            "first_call_s": result["first_call_s"],
            "peak_rss_mb": result["peak_rss_mb"],
            "raw": result,
        }
    return {
        "estimator": estimator,
        "side": side,
        "started": started,
        "ended": time.time(),
        "result": result,
    }


def main(argv):
    del argv
    if _CHILD.value:
        search_timing.child_main(_CHILD.value)
        return
    estimators = list(dict.fromkeys(_ESTIMATORS.value))
    for name in estimators:
        if name not in comparison.REFERENCE_MODES:
            raise errors.InputError(
                f"--estimators: {name!r} has no reference counterpart; "
                f"expected some of {', '.join(comparison.REFERENCE_MODES)}"
            )
    configuration = search_timing.configuration_from_flags(
        search_timing.PRESETS["paper"], _CONFIGURATION
    )
    threads = search_timing.threads_from_flag(_THREADS)
    reference_command = _reference_command(configuration, threads)
    run = results_log.start_run()
    header = {
        "date": run.started.isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_start": run.load_at_start,
        "configuration": dataclasses.asdict(configuration),
        "threads": threads,
        "steps": _STEPS.value,
        "repeats": _REPEATS.value,
        "products": _PRODUCTS.value,
        "sub_batches": _SUB_BATCHES.value,
        "reference_command": reference_command,
    }
    print(json.dumps(header), file=sys.stderr, flush=True)
    runs = []
    for estimator, side in comparison.schedule(estimators, _REPEATS.value):
        runs.append(_measure(estimator, side, configuration, threads, reference_command))
        print(f"  {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    header["load_average_end"] = os.getloadavg()
    rows = comparison.rows(runs, estimators, configuration.batch_size)
    report = comparison.text_report(header, rows)
    if _FORMAT.value == "json":
        print(json.dumps({**header, "rows": rows, "runs": runs}, indent=1))
    else:
        print(report)
    if _RESULTS.value:
        results_log.append_section(_RESULTS.value, run, report, header["load_average_end"])


if __name__ == "__main__":
    cli.run(main)
