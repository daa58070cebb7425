"""Compares architecture-gradient estimators on one (train, val) batch pair of a supernet:
a search-space preset (fresh, warmed up) or the latest checkpoint of a search run
(--search_dir). What is measured: tf_amended_darts/diagnostics.py.

  python -m tf_amended_darts.bin.diagnose --search_space=darts --cells=5 --channels=8
  python -m tf_amended_darts.bin.diagnose --estimators=amended --amending_coefficient=0.05 \
      --format=json
  python -m tf_amended_darts.bin.diagnose --search_dir=runs/quickstart --format=json
"""

import json

from tf_amended_darts import diagnostics, options
from tf_amended_darts.bin import cli

# Every flag is a declared option (diagnostics.DiagnoseConfig, options.OutputOptions).
_CONFIG = cli.define_flags(diagnostics.DiagnoseConfig)
_OUTPUT = cli.define_flags(options.OutputOptions)


def main(argv):
    del argv
    d = diagnostics.diagnose(diagnostics.DiagnoseConfig(**cli.option_values(_CONFIG)))
    if _OUTPUT["format"].value == "json":
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
        f"reference: implicit, {c['implicit_iterations']} CG iterations, "
        f"damping {c['cosines_damping']}, "
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
