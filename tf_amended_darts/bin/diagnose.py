"""Compares architecture-gradient estimators on one (train, val) batch pair of a supernet:
a search-space preset (fresh, warmed up) or the latest checkpoint of a search run
(--search_dir). What is measured: tf_amended_darts/diagnostics.py.

  python -m tf_amended_darts.bin.diagnose --search_space=darts --cells=5 --channels=8
  python -m tf_amended_darts.bin.diagnose --estimators=amended --amending_coefficient=0.05 \
      --format=json
  python -m tf_amended_darts.bin.diagnose --search_dir=runs/quickstart --format=json
"""

import json

from absl import flags

from tf_amended_darts.bin import cli

_SEARCH_DIR = flags.DEFINE_string(
    "search_dir",
    None,
    "A search's --output_dir: its latest checkpoint's supernet instead of a preset.",
)
_SEARCH_SPACE = flags.DEFINE_string("search_space", None, "Search-space preset (default darts).")
_CHANNELS = flags.DEFINE_integer("channels", None, "Override the preset's C.")
_CELLS = flags.DEFINE_integer("cells", None, "Override the preset's number of cells.")
_NODES = flags.DEFINE_integer("nodes", None, "Override the preset's intermediate nodes per cell.")
_DATASET = flags.DEFINE_string(
    "dataset",
    None,
    "Dataset (tf_amended_darts.data.load_dataset); default: digits, or the search run's.",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset directory, when it needs one.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size of the train and val batches.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators",
    "first_order,second_order,amended",
    "Estimators to compare (the implicit reference is always run).",
)
_AMENDING = flags.DEFINE_float(
    "amending_coefficient", 0.1, "eta of the amended estimator (a number: best_eta scales it)."
)
_CG_ITERATIONS = flags.DEFINE_integer("cg_iterations", 20, "CG iterations of the reference.")
_DAMPING = flags.DEFINE_float("damping", 0.0, "Damping added to H in the reference.")
_PRODUCTS = flags.DEFINE_enum(
    "products",
    "exact",
    ["exact", "finite_difference"],
    "Second-derivative products of the compared estimators (the "
    "reference always uses exact products).",
)
_FD_RADIUS = flags.DEFINE_float("fd_radius", 0.01, "Finite-difference radius (R = r / ||vector||).")
_WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", None, "SGD steps on a preset's fresh weights first (default 20)."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per estimator after the first.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the supernet and of the batch order.")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
cli.validate_flags(globals().values())


def main(argv):
    del argv
    from tf_amended_darts import diagnostics  # pylint: disable=g-import-not-at-top

    d = diagnostics.diagnose(
        _SEARCH_SPACE.value,
        _CHANNELS.value,
        _CELLS.value,
        _NODES.value,
        _DATASET.value,
        _DATA_DIR.value,
        _BATCH_SIZE.value,
        _ESTIMATORS.value,
        _AMENDING.value,
        _CG_ITERATIONS.value,
        _DAMPING.value,
        _PRODUCTS.value,
        _FD_RADIUS.value,
        _WARMUP_STEPS.value,
        _REPEATS.value,
        _SEED.value,
        search_dir=_SEARCH_DIR.value,
    )
    if _FORMAT.value == "json":
        print(json.dumps(d))
        return
    c = d["config"]
    print(
        f"supernet {c['search_space']} (C={c['space']['channels']}, "
        f"{c['space']['cells']} cells, {c['space']['nodes']} nodes), "
        f"{d['weight_count']:,} weights, "
        f"{c['dataset']} batch {c['batch_size']}; weights: {c['weights']}"
    )
    print(
        f"reference: implicit, {c['cg_iterations']} CG iterations, damping {c['damping']}, "
        f"exact products; compared estimators use {c['products']} products"
    )
    header = (
        f"{'estimator':<14}{'cos(ref)':>9}{'cos corr':>9}{'|g1|':>10}{'|corr|':>10}"
        f"{'|total|':>10}{'ms/call':>10}{'first s':>9}"
    )
    print(header)
    for key, r in d["estimators"].items():
        print(
            f"{key:<14}{r['cosine_to_implicit']:>9.4f}{r['correction_cosine_to_implicit']:>9.4f}"
            f"{r['g1_norm']:>10.3e}{r['correction_norm']:>10.3e}{r['total_norm']:>10.3e}"
            f"{1e3 * r['seconds_per_call']:>10.1f}{r['first_call_seconds']:>9.1f}"
        )
    print("pairwise cosine of the architecture gradients:")
    keys = list(d["cosine"])
    print(" " * 14 + "".join(f"{k[:12]:>13}" for k in keys))
    for a in keys:
        print(f"{a:<14}" + "".join(f"{d['cosine'][a][b]:>13.4f}" for b in keys))


if __name__ == "__main__":
    cli.run(main)
