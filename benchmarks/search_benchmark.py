"""Images/second of the search step per architecture-gradient estimator.

  python benchmarks/search_benchmark.py                       # quickstart setting, all estimators
  python benchmarks/search_benchmark.py --setting=paper --steps=3 --estimators=first_order,amended

Times `steps` search steps (one architecture + one weight step each) after a first, traced
one, on random data of the setting's shape (the input pipeline is not measured here).
"""

import time

from absl import app, flags

_SETTING = flags.DEFINE_enum("setting", "quickstart", ["quickstart", "paper"],
                             "quickstart: digits 8x8, flags/quickstart_search.cfg's supernet; "
                             "paper: CIFAR 32x32, 8 cells, C=16, batch 64.")
_ESTIMATORS = flags.DEFINE_list("estimators", "first_order,second_order,amended,implicit",
                                "Estimators to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per estimator.")
_LOGICAL_CPUS = flags.DEFINE_integer("logical_cpus", 1, "Split the CPU (mirrored on CPU).")

SETTINGS = {  # input shape, classes, SearchConfig overrides
    "quickstart": ((8, 8, 1), 10, dict(cells=5, nodes=2, channels=8, batch_size=32)),
    "paper": ((32, 32, 3), 10, dict(batch_size=64)),
}


def main(argv):
    del argv
    from tf_amended_darts import distribute  # pylint: disable=g-import-not-at-top
    distribute.configure_logical_cpus(_LOGICAL_CPUS.value)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tf_amended_darts import search  # pylint: disable=g-import-not-at-top
    shape, classes, overrides = SETTINGS[_SETTING.value]
    strategy = distribute.make_strategy("auto")
    print(f"setting {_SETTING.value}: input {shape}, {overrides}, {distribute.describe(strategy)}")
    for name in _ESTIMATORS.value:
        config = search.SearchConfig(arch_gradient=name, **overrides)
        # pylint: disable-next=protected-access
        searcher = search._Searcher(config, strategy, shape, classes)
        batch = config.batch_size
        data = tf.data.Dataset.from_tensors((tf.random.normal((batch,) + shape),
                                             tf.zeros([batch], tf.int64))).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(data))
        start = time.time()
        float(searcher.search_step(next(iterator), next(iterator))["train_loss"])
        first = time.time() - start
        start = time.time()
        for _ in range(_STEPS.value):
            metrics = searcher.search_step(next(iterator), next(iterator))
        float(metrics["train_loss"])
        seconds = time.time() - start
        print(f"{name:>13}: {_STEPS.value * batch / seconds:8.1f} images/s "
              f"({seconds / _STEPS.value:.3f} s/step; first step with tracing {first:.1f} s)",
              flush=True)


if __name__ == "__main__":
    app.run(main)
