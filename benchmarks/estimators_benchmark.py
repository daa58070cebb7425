"""Cost of each architecture-gradient estimator in the search: time per step, images/s, memory.

  python benchmarks/estimators_benchmark.py                  # small supernet, every estimator
  python benchmarks/estimators_benchmark.py --setting=paper --steps=3 \
      --estimators=first_order,second_order,amended --products=exact,finite_difference

Every (estimator, products, grappler) choice runs in a fresh process, so its peak memory is its
own. The process builds the supernet and both optimizers as the search does
(search._Searcher) and, on random data of the setting's shape (the input pipeline is not
measured), times `--steps` weight steps and `--steps` search steps (one architecture step + one
weight step, the search's iteration), each after one first call that traces it. Reported per pair:
  search s/step and images/s   (batch / search step: the search's throughput),
  arch ms/step                 (search step - weight step: the estimator + the Adam step),
  x first order, x second order  (arch-step time ratios, same products),
  first call                   (tracing + graph optimisation + one step of the search step),
  peak RSS                     (the process's maximum resident memory, tracing included), and
  RSS after build              (the model and optimizers built, nothing traced),
  traces                       (tf.function traces of each step function: 1 each, or a retrace).
`--grappler=on,off` also times each with TensorFlow's graph optimizer off (disable_meta_optimizer);
measured on the small supernet: first calls 25-35 % shorter, steps up to 15 % faster, but
peak memory about 50 % higher, so the binaries keep it on.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

_SETTING = flags.DEFINE_enum(
    "setting",
    "small",
    ["small", "paper"],
    "small: the quickstart's supernet (digits 8x8, 5 cells, 2 nodes, "
    "C=8, batch 32); paper: CIFAR 32x32x3, 8 cells, 4 nodes, C=16, "
    "batch 64.",
)
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
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
_CHILD = flags.DEFINE_string("child", None, "Internal: time one 'estimator:products' pair.")

SETTINGS = {  # input shape, classes, SearchConfig overrides
    "small": ((8, 8, 1), 10, dict(cells=5, nodes=2, channels=8, batch_size=32)),
    "paper": ((32, 32, 3), 10, dict(batch_size=64)),
}


def _rss_mb():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def _timed(step, args, steps):
    """(seconds of the first call, median seconds of the next `steps` calls)."""
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        metrics = step(*args)
        float(metrics["train_loss"])  # wait for the step
        times.append(time.perf_counter() - start)
    rest = sorted(times[1:])
    return times[0], rest[len(rest) // 2]


def measure(setting, estimator, products, steps, implicit_iterations, grappler):
    """Times one estimator in this process; returns a JSON-ready dict."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": grappler == "off"})
    from tf_amended_darts import search  # pylint: disable=g-import-not-at-top

    shape, classes, overrides = SETTINGS[setting]
    config = search.SearchConfig(
        arch_gradient=estimator,
        products=products,
        implicit_iterations=implicit_iterations,
        **overrides,
    )
    strategy = tf.distribute.get_strategy()
    searcher = search._Searcher(config, strategy, shape, classes)  # pylint: disable=protected-access
    rss_built = _rss_mb()
    batch = config.batch_size
    rng = tf.random.Generator.from_seed(0)
    pair = [
        (rng.normal((batch,) + shape), rng.uniform([batch], 0, classes, tf.int64)) for _ in range(2)
    ]
    weight_first, weight = _timed(searcher.weight_step, pair[:1], steps)
    search_first, search_step = _timed(searcher.search_step, pair, steps)
    return {
        "estimator": estimator,
        "products": products if estimator != "first_order" else "-",
        "grappler": grappler,
        "search_s": search_step,
        "images_per_s": batch / search_step,
        "weight_ms": 1000 * weight,
        "arch_ms": 1000 * (search_step - weight),
        "first_call_s": search_first,
        "weight_first_call_s": weight_first,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mb": rss_built,
        "traces": dict(searcher.traces),
        "model_variables": len(searcher.model.variables),
    }


def _run_child(pair):
    """Runs `pair` ("estimator:products:grappler") in a fresh interpreter; returns its dict
    (or an error entry)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--child={pair}",
        f"--setting={_SETTING.value}",
        f"--steps={_STEPS.value}",
        f"--implicit_iterations={_IMPLICIT_ITERATIONS.value}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"estimator": pair, "error": f"exit {done.returncode}: {tail}"}


def _add_ratios(results):
    arch = {
        (r["estimator"], r["products"], r["grappler"]): r["arch_ms"]
        for r in results
        if "error" not in r
    }
    for r in results:
        if "error" in r:
            continue
        first = arch.get(("first_order", "-", r["grappler"]))
        second = arch.get(("second_order", r["products"], r["grappler"]))
        r["x_first_order"] = r["arch_ms"] / first if first else None
        r["x_second_order"] = r["arch_ms"] / second if second else None


def _table(results):
    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    lines = [
        "| estimator | products | grappler | search s/step | images/s | arch ms/step "
        "| x first order | x second order | first call s | peak RSS MB | RSS after build MB "
        "| traces |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['estimator']} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['estimator']} | {r['products']} | {r['grappler']} | {r['search_s']:.3f} "
            f"| {r['images_per_s']:.1f} "
            f"| {r['arch_ms']:.0f} | {ratio(r['x_first_order'])} | {ratio(r['x_second_order'])} "
            f"| {r['first_call_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_after_build_mb']:.0f} "
            f"| {r['traces']['search_step']}+{r['traces']['weight_step']} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if _STEPS.value < 1:
        raise app.UsageError("--steps must be at least 1")
    if _CHILD.value:
        estimator, products, grappler = _CHILD.value.split(":")
        result = measure(
            _SETTING.value, estimator, products, _STEPS.value, _IMPLICIT_ITERATIONS.value, grappler
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    known = ("first_order", "second_order", "amended", "implicit")
    for name in _ESTIMATORS.value:
        if name not in known:
            raise app.UsageError(f"unknown estimator {name!r}; expected some of {', '.join(known)}")
    for products in _PRODUCTS.value:
        if products not in ("exact", "finite_difference"):
            raise app.UsageError(f"unknown products {products!r}")
    for grappler in _GRAPPLER.value:
        if grappler not in ("on", "off"):
            raise app.UsageError(f"--grappler takes on and/or off, got {grappler!r}")
    pairs = list(
        dict.fromkeys(
            f"{name}:{'exact' if name == 'first_order' else products}:{grappler}"
            for grappler in _GRAPPLER.value
            for products in _PRODUCTS.value
            for name in _ESTIMATORS.value
        )
    )
    shape, _, overrides = SETTINGS[_SETTING.value]
    print(
        f"setting {_SETTING.value}: input {shape}, {overrides}, {_STEPS.value} timed steps, "
        f"implicit CG iterations {_IMPLICIT_ITERATIONS.value}, {os.cpu_count()} CPUs",
        file=sys.stderr,
        flush=True,
    )
    results = []
    for pair in pairs:
        results.append(_run_child(pair))
        print(f"  {pair}: {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    _add_ratios(results)
    print(json.dumps(results, indent=1) if _FORMAT.value == "json" else _table(results))


if __name__ == "__main__":
    app.run(main)
