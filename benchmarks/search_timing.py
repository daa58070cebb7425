"""What the search benchmarks share: the supernet configuration and its flags, timing one
estimator's search iteration in this process, and running a measurement in a fresh process.

A measurement runs in a process of its own so that its peak memory (the process's maximum
resident set size, tracing included) is its own; the child prints its result as one JSON line.
"""

import dataclasses
import itertools
import json
import os
import resource
import subprocess
import sys
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmarks run from a checkout, installed or not: its package comes first, here and in
# the measuring processes (PYTHONPATH below), so they measure the code beside them.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@dataclasses.dataclass(frozen=True)
class Configuration:
    """The supernet and the batch a search iteration is timed on (random data, 10 classes)."""

    channels: int
    cells: int
    nodes: int
    batch_size: int
    image_size: int
    image_channels: int = 3
    classes: int = 10

    def input_shape(self):
        return (self.image_size, self.image_size, self.image_channels)


PRESETS = {
    # The quickstart's supernet on digits.
    "small": Configuration(
        channels=8, cells=5, nodes=2, batch_size=32, image_size=8, image_channels=1
    ),
    # DARTS' search on CIFAR-10.
    "paper": Configuration(channels=16, cells=8, nodes=4, batch_size=64, image_size=32),
}


def define_configuration_flags(preset_help):
    """Defines --channels, --cells, --nodes, --batch_size, --image_size (each overrides the
    preset's value; `preset_help` says which preset) and --threads; returns their holders."""
    holders = {
        name: flags.DEFINE_integer(name, None, f"{text} (default: {preset_help})", lower_bound=low)
        for name, text, low in (
            ("channels", "Channels C of the first cells.", 1),
            ("cells", "Cells of the supernet (two are reductions).", 3),
            ("nodes", "Intermediate nodes per cell.", 1),
            ("batch_size", "Images per batch (the train and the validation batch each).", 1),
            ("image_size", "Height and width of the random images.", 1),
        )
    }
    threads = flags.DEFINE_integer(
        "threads",
        None,
        "Intra-op and inter-op threads of each measured process (default: the CPU count).",
        lower_bound=1,
    )
    return holders, threads


def configuration_from_flags(preset, holders):
    """`preset` with the values of the flags in `holders` that were given."""
    given = {name: h.value for name, h in holders.items() if h.value is not None}
    return dataclasses.replace(preset, **given)


def threads_from_flag(threads):
    return threads.value or os.cpu_count()


def _rss_mb():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def graph_nodes(graph):
    """(nodes, constants) of a traced FuncGraph, the bodies of its functions (while loops and
    their nested loops, all registered in the outer graph; private attribute) included."""
    types = [op.type for op in graph.get_operations()]
    for function in graph._functions.values():  # pylint: disable=protected-access
        types += [node.op for node in function.definition.node_def]
    return len(types), types.count("Const")


def print_alternating_medians(steps, args, rounds=4, calls=20):
    """For each round, each of `steps` ({name: tf.function}) in turn: one warm call, then the
    median of `calls` calls on `args` (outputs read back), printed in ms."""
    width = max(len(name) for name in steps)
    for round_ in range(rounds):
        for name, step in steps.items():
            step(*args)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                [o.numpy() for o in step(*args)]
                times.append(time.perf_counter() - start)
            median = sorted(times)[calls // 2] * 1e3
            print(f"round {round_} {name:{width}s} {median:7.2f} ms", flush=True)


def _timed(step, batches, steps, metrics_every=1):
    """(seconds of the first call, seconds per step of the next `steps` calls: the median
    over groups of steps, and the mean).

    `batches()` gives a step's arguments. The metrics are read on the host every
    `metrics_every` steps, as the search's loop reads them (1: before each next step); a
    group is the steps between two reads. Compare different `metrics_every` by the mean: a
    median over groups of 10 steps keeps slow steps that a median over single steps drops.
    """

    def read(metrics):
        return {k: float(v) for k, v in metrics.items()}

    start = time.perf_counter()
    read(step(*batches()))
    first = time.perf_counter() - start
    times, unread = [], []
    start = began = time.perf_counter()
    for index in range(steps):
        unread.append(step(*batches()))
        if len(unread) >= metrics_every or index == steps - 1:
            for metrics in unread:
                read(metrics)
            times.append((time.perf_counter() - start) / len(unread))
            unread.clear()
            start = time.perf_counter()
    mean = (time.perf_counter() - began) / steps
    times.sort()
    return first, times[len(times) // 2], mean


def measure(
    configuration,
    estimator,
    products,
    steps,
    threads,
    implicit_iterations=20,
    grappler="on",
    time_weight_step=True,
    logical_cpus=1,
    metrics_every=1,
    sub_batches=1,
    mixed_precision=None,
):
    """Times one estimator's search iteration in this process; returns a JSON-ready dict.

    Builds the supernet and both optimizers as the search does (search._Searcher) and, on
    random data of the configuration's shape, times `steps` search steps (one architecture
    step + one weight step) after one first call that traces it. With `time_weight_step`, the
    weight step alone is first timed the same way (to split off the architecture step's cost);
    the search traces it only for warm-up epochs, so leave it out to measure a search's memory.
    With `logical_cpus` > 1 the CPU is split and the steps run under MirroredStrategy, each
    global batch split over the replicas; `metrics_every`: see _timed; `mixed_precision`: the
    search's (None, "bfloat16" or "float16").
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    # Before any op: the thread pools are fixed when the runtime starts.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": grappler == "off"})
    from tf_amended_darts import distribute, search  # pylint: disable=g-import-not-at-top

    distribute.configure_logical_cpus(logical_cpus)
    if isinstance(configuration, dict):
        configuration = Configuration(**configuration)
    config = search.SearchConfig(
        arch_gradient=estimator,
        products=products,
        sub_batches=sub_batches,
        mixed_precision=mixed_precision,
        implicit_iterations=implicit_iterations,
        channels=configuration.channels,
        cells=configuration.cells,
        nodes=configuration.nodes,
        batch_size=configuration.batch_size,
    )
    shape, classes = configuration.input_shape(), configuration.classes
    strategy = distribute.make_strategy("mirrored" if logical_cpus > 1 else "one_device")
    searcher = search._Searcher(config, strategy, shape, classes)  # pylint: disable=protected-access
    rss_built = _rss_mb()
    batch = config.batch_size
    rng = tf.random.Generator.from_seed(0)
    pair = [
        (rng.normal((batch,) + shape), rng.uniform([batch], 0, classes, tf.int64)) for _ in range(2)
    ]
    # The same two global batches every step, split over the replicas as the search splits
    # its batches (one device: the batches as they are).
    if logical_cpus > 1:
        datasets = [
            iter(
                distribute.distribute_dataset(
                    strategy, tf.data.Dataset.from_tensors(p).repeat().unbatch().batch(batch)
                )
            )
            for p in pair
        ]
    else:
        datasets = [itertools.repeat(p) for p in pair]
    result = {}
    if time_weight_step:
        weight_first, weight, _ = _timed(
            searcher.weight_step, lambda: (next(datasets[0]),), steps, metrics_every
        )
        result.update(weight_ms=1000 * weight, weight_first_call_s=weight_first)
    if logical_cpus == 1:
        # The search step traced on its own first: the Python graph's time, size and memory
        # (a graph node costs ~7 KB here); the first call below then only optimises and runs.
        start = time.perf_counter()
        graph = searcher.search_step.get_concrete_function(*pair).graph
        trace_s = time.perf_counter() - start
        nodes, constants = graph_nodes(graph)
        result.update(
            trace_s=trace_s,
            rss_after_trace_mb=_rss_mb(),
            graph_nodes=nodes,
            graph_constants=constants,
        )
        del graph
    search_first, search_step, search_mean = _timed(
        searcher.search_step, lambda: tuple(next(d) for d in datasets), steps, metrics_every
    )
    if "trace_s" in result:
        search_first += result["trace_s"]
    if time_weight_step:
        result["arch_ms"] = 1000 * search_step - result["weight_ms"]
    return {
        "estimator": estimator,
        "products": products if estimator != "first_order" else "-",
        "grappler": grappler,
        "threads": threads,
        "logical_cpus": logical_cpus,
        "metrics_every": metrics_every,
        "sub_batches": sub_batches,
        "mixed_precision": mixed_precision,
        "search_s": search_step,
        "search_mean_s": search_mean,
        "images_per_s": batch / search_step,
        "first_call_s": search_first,
        **result,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mb": rss_built,
        "traces": dict(searcher.traces),
        "model_variables": len(searcher.model.variables),
    }


def child_main(request):
    """A binary's --child: `measure(**request)` (request as JSON), printed as one JSON line."""
    print(json.dumps(measure(**json.loads(request))), flush=True)


def measure_in_fresh_process(script, request):
    """Runs `script --child=<request as JSON>` (a binary whose --child calls child_main) with
    this interpreter; returns its result dict, or {"error": ...} if it failed."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    command = [sys.executable, script, "--child=" + json.dumps(request)]
    return run_json_command(command, env)


def run_json_command(command, env=None):
    """Runs `command`; returns the last line of its output that is a JSON object, or
    {"error": "exit <status>: <last line of stderr>"} if there is none."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {done.returncode}: {tail}"}
