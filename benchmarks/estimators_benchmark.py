"""Cost of each architecture-gradient estimator in the search: time per step, images/s, memory.

  python benchmarks/estimators_benchmark.py                  # small supernet, every estimator
  python benchmarks/estimators_benchmark.py --setting=paper --steps=3 \
      --estimators=first_order,second_order,amended --products=exact,finite_difference
  python benchmarks/estimators_benchmark.py --setting=paper --channels=8 --cells=5 \
      --batch_size=16 --threads=1             # a preset, with some of its values overridden

Every (estimator, products, grappler) choice runs in a fresh process, so its peak memory is its
own. The process builds the supernet and both optimizers as the search does
(search._Searcher) and, on random data of the configuration's shape (the input pipeline is not
measured), times `--steps` weight steps and `--steps` search steps (one architecture step + one
weight step, the search's iteration), each after one first call that traces it. Reported per pair:
  search s/step and images/s   (batch / search step: the search's throughput),
  arch ms/step                 (search step - weight step: the estimator + the Adam step),
  x first order, x second order  (arch-step time ratios, same products),
  first call                   (tracing + graph optimisation + one step of the search step),
  trace s, graph nodes         (one device: the search step traced alone first, its Python
                                graph's nodes and constants, RSS after that trace),
  peak RSS                     (the process's maximum resident memory, tracing included), and
  RSS after build              (the model and optimizers built, nothing traced),
  traces                       (tf.function traces of each step function: 1 each, or a retrace).
`--logical_cpus=1,2` also times each under MirroredStrategy over 2 logical CPUs (the replicas'
overhead); `--metrics_every=1,10` reads the metrics every step or every 10 (the search's flag);
`--mixed_precision=off,bfloat16,float16` also times each in half precision (the search's
--mixed_precision; float16 with its loss scale);
`--rounds=3` runs the whole list three times, alternating. `--grappler=on,off` also times
each with TensorFlow's graph optimizer off (disable_meta_optimizer; the binaries keep it on:
benchmarks/RESULTS.md has what it changed). `--results=benchmarks/RESULTS.md` appends the table
there (results_log.py).
"""

import json
import os
import sys

import results_log
import search_timing
from absl import app, flags

_SETTING = flags.DEFINE_enum(
    "setting",
    "small",
    ["small", "paper"],
    "Preset configuration, overridden by --channels etc.: small: the quickstart's supernet "
    "(digits 8x8, 5 cells, 2 nodes, C=8, batch 32); paper: CIFAR 32x32x3, 8 cells, 4 nodes, "
    "C=16, batch 64.",
)
_CONFIGURATION, _THREADS = search_timing.define_configuration_flags("the --setting's")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", "first_order,second_order,amended,implicit", "Estimators to time."
)
_PRODUCTS = flags.DEFINE_list(
    "products",
    "exact",
    "Second-derivative products to time each estimator with "
    "(exact, finite_difference); first_order has none.",
)
_IMPLICIT_ITERATIONS = flags.DEFINE_integer(
    "implicit_iterations", 20, "CG iterations of the implicit estimator."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps of each step function.")
_GRAPPLER = flags.DEFINE_list(
    "grappler",
    "on",
    "TensorFlow's graph optimizer (grappler) for the step functions: on, "
    "off (tf.config.optimizer disable_meta_optimizer), or both.",
)
_LOGICAL_CPUS = flags.DEFINE_list(
    "logical_cpus",
    "1",
    "Replicas to time each estimator with: 1 (one device) and/or N > 1 (the CPU split into N "
    "logical devices under MirroredStrategy, the global batch split over them).",
)
_METRICS_EVERY = flags.DEFINE_list(
    "metrics_every",
    "1",
    "Read the step metrics on the host every N steps (the search's --metrics_every); "
    "compare by the mean s/step (the median is over groups of N steps).",
)
_SUB_BATCHES = flags.DEFINE_list(
    "sub_batches",
    "1",
    "The search's --sub_batches to time each estimator with (products summed over that many "
    "sub-batches, one at a time; first order has none).",
)
_MIXED_PRECISION = flags.DEFINE_list(
    "mixed_precision",
    "off",
    "The search's --mixed_precision to time each estimator with: off, bfloat16, float16 "
    "(exact products only), or several.",
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Times the whole list of measurements is run, one after the other."
)
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
_RESULTS = results_log.define_results_flag()
_CHILD = flags.DEFINE_string("child", None, "Internal: the measurement to make, as JSON.")


def _run_child(configuration, pair, threads):
    """Times `pair` ("estimator:products:grappler:logical_cpus:metrics_every:sub_batches:
    mixed_precision") in a fresh process; returns its dict (or an error entry)."""
    estimator, products, grappler, logical_cpus, metrics_every, sub_batches, mixed = pair.split(":")
    request = {
        "mixed_precision": None if mixed == "off" else mixed,
        "sub_batches": int(sub_batches),
        "logical_cpus": int(logical_cpus),
        "metrics_every": int(metrics_every),
        "configuration": configuration.__dict__,
        "estimator": estimator,
        "products": products,
        "grappler": grappler,
        "steps": _STEPS.value,
        "threads": threads,
        "implicit_iterations": _IMPLICIT_ITERATIONS.value,
    }
    result = search_timing.measure_in_fresh_process(os.path.abspath(__file__), request)
    return result if "error" not in result else {"estimator": pair, **result}


def _add_ratios(results):
    def key(r, estimator, products):
        return (
            estimator,
            products,
            r["grappler"],
            r["logical_cpus"],
            r["metrics_every"],
            r["sub_batches"] if estimator != "first_order" else 1,
            r["mixed_precision"],
            r["round"],
        )

    arch = {
        key(r, r["estimator"], r["products"]): r["arch_ms"] for r in results if "error" not in r
    }
    for r in results:
        if "error" in r:
            continue
        first = arch.get(key(r, "first_order", "-"))
        second = arch.get(key(r, "second_order", r["products"]))
        r["x_first_order"] = r["arch_ms"] / first if first else None
        r["x_second_order"] = r["arch_ms"] / second if second else None


def _get(result, key, spec):
    return format(result[key], spec) if key in result else ""


def _table(results):
    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    lines = [
        "| estimator | products | sub-batches | mixed precision | grappler | replicas "
        "| metrics every "
        "| search s/step | mean "
        "| images/s | arch ms/step "
        "| x first order | x second order | first call s | trace s | graph nodes (constants) "
        "| peak RSS MB | RSS after build MB | RSS after trace MB | traces |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['estimator']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['estimator']} | {r['products']} | {r['sub_batches']} "
            f"| {r['mixed_precision'] or 'off'} | {r['grappler']} "
            f"| {r['logical_cpus']} "
            f"| {r['metrics_every']} | {r['search_s']:.3f} | {r['search_mean_s']:.3f} "
            f"| {r['images_per_s']:.1f} "
            f"| {r['arch_ms']:.0f} | {ratio(r['x_first_order'])} | {ratio(r['x_second_order'])} "
            f"| {r['first_call_s']:.0f} | {_get(r, 'trace_s', '.0f')} "
            f"| {_get(r, 'graph_nodes', ',')} ({_get(r, 'graph_constants', ',')}) "
            f"| {r['peak_rss_mb']:.0f} | {r['rss_after_build_mb']:.0f} "
            f"| {_get(r, 'rss_after_trace_mb', '.0f')} "
            f"| {r['traces']['search_step']}+{r['traces']['weight_step']} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if _STEPS.value < 1:
        raise app.UsageError("--steps must be at least 1")
    if _CHILD.value:
        search_timing.child_main(_CHILD.value)
        return
    known = ("first_order", "second_order", "amended", "implicit")
    for name in _ESTIMATORS.value:
        if name not in known:
            raise app.UsageError(f"unknown estimator {name!r}; expected some of {', '.join(known)}")
    for products in _PRODUCTS.value:
        if products not in ("exact", "finite_difference"):
            raise app.UsageError(f"unknown products {products!r}")
    for name, values, choices in (
        ("grappler", _GRAPPLER, ("on", "off")),
        ("mixed_precision", _MIXED_PRECISION, ("off", "bfloat16", "float16")),
    ):
        if not set(values.value) <= set(choices):
            raise app.UsageError(
                f"--{name} takes some of {', '.join(choices)}, got {','.join(values.value)}"
            )
    if set(_MIXED_PRECISION.value) - {"off"} and "finite_difference" in _PRODUCTS.value:
        raise app.UsageError("--mixed_precision other than off needs exact products")
    for name, values in (
        ("logical_cpus", _LOGICAL_CPUS),
        ("metrics_every", _METRICS_EVERY),
        ("sub_batches", _SUB_BATCHES),
    ):
        if not all(v.isdigit() and int(v) >= 1 for v in values.value):
            raise app.UsageError(f"--{name} takes integers >= 1, got {','.join(values.value)}")
    if _ROUNDS.value < 1:
        raise app.UsageError("--rounds must be at least 1")
    pairs = list(
        dict.fromkeys(
            f"{name}:{'exact' if name == 'first_order' else products}:{grappler}:{cpus}:{every}:"
            f"{1 if name == 'first_order' else sub}:{mixed}"
            for mixed in _MIXED_PRECISION.value
            for cpus in _LOGICAL_CPUS.value
            for sub in _SUB_BATCHES.value
            for every in _METRICS_EVERY.value
            for grappler in _GRAPPLER.value
            for products in _PRODUCTS.value
            for name in _ESTIMATORS.value
        )
    )
    configuration = search_timing.configuration_from_flags(
        search_timing.PRESETS[_SETTING.value], _CONFIGURATION
    )
    threads = search_timing.threads_from_flag(_THREADS)
    run = results_log.start_run()
    print(
        f"setting {_SETTING.value}: {configuration}, {_STEPS.value} timed steps, "
        f"implicit CG iterations {_IMPLICIT_ITERATIONS.value}, {threads} threads, "
        f"{os.cpu_count()} CPUs",
        file=sys.stderr,
        flush=True,
    )
    results = []
    for round_ in range(_ROUNDS.value):
        for pair in pairs:
            results.append({**_run_child(configuration, pair, threads), "round": round_})
            print(f"  {pair}: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    _add_ratios(results)
    table = _table(results)
    print(json.dumps(results, indent=1) if _FORMAT.value == "json" else table)
    if _RESULTS.value:
        description = (
            f"Setting {_SETTING.value}: {configuration}, {_STEPS.value} timed steps, "
            f"{threads} threads, {os.cpu_count()} CPUs."
        )
        results_log.append_section(_RESULTS.value, run, f"{description}\n\n{table}")


if __name__ == "__main__":
    app.run(main)
