"""Draws a genotype's cells (Graphviz, as the DARTS papers do) and plots the alpha history.

  python -m tf_amended_darts.bin.visualize --genotype=DARTS_V2 --output_dir=pictures
  python -m tf_amended_darts.bin.visualize --run_dir=runs/search --formats=svg
  python -m tf_amended_darts.bin.visualize --alphas_history=runs/search/alphas_history.json

Genotype pictures: OUTPUT_DIR/PREFIX_normal.FMT and PREFIX_reduce.FMT (per-stage genotypes:
PREFIX_normal_0 .. PREFIX_reduce_1), each with its .dot source; rendering needs the `dot`
executable (apt-get install graphviz). Alpha history: OUTPUT_DIR/alphas_history.FMT. The paths
written are printed, one a line.
"""

import os

from absl import flags

from tf_amended_darts import errors
from tf_amended_darts.bin import cli

_GENOTYPE = flags.DEFINE_string(
    "genotype", None, "Published name, JSON or string-form file, or genotype text."
)
_ALPHAS_HISTORY = flags.DEFINE_string(
    "alphas_history", None, "alphas_history.json written by the search."
)
_RUN_DIR = flags.DEFINE_string(
    "run_dir",
    None,
    "Search output directory: uses its genotype.json and "
    "alphas_history.json when present (--genotype and "
    "--alphas_history take precedence).",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", ".", "Where to write the pictures.")
_PREFIX = flags.DEFINE_string("prefix", "genotype", "File name prefix of the cell pictures.")
_FORMATS = flags.DEFINE_list("formats", ["png", "svg"], "Picture formats: png, svg, pdf.")
cli.validate_flags(globals().values())

HISTORY_NAME = "alphas_history"


def inputs(genotype=None, alphas_history=None, run_dir=None):
    """(genotype spec, history path) from the flags, resolving --run_dir."""
    if run_dir is not None:
        if not os.path.isdir(run_dir):
            raise errors.InputError(f"--run_dir {run_dir} is not a directory")
        found = {
            name: os.path.join(run_dir, name) for name in ("genotype.json", HISTORY_NAME + ".json")
        }
        found = {name: path for name, path in found.items() if os.path.isfile(path)}
        if not found and genotype is None and alphas_history is None:
            raise errors.InputError(
                f"--run_dir {run_dir} holds neither genotype.json nor {HISTORY_NAME}.json"
            )
        genotype = genotype if genotype is not None else found.get("genotype.json")
        alphas_history = (
            alphas_history if alphas_history is not None else found.get(HISTORY_NAME + ".json")
        )
    if genotype is None and alphas_history is None:
        raise errors.InputError("give --genotype, --alphas_history or --run_dir")
    return genotype, alphas_history


def visualize(
    genotype=None,
    alphas_history=None,
    run_dir=None,
    output_dir=".",
    prefix="genotype",
    formats=("png", "svg"),
):
    """Writes the pictures; returns the paths written."""
    from tf_amended_darts import visualize as vis

    genotype, alphas_history = inputs(genotype, alphas_history, run_dir)
    formats = vis.check_formats(formats)
    if not prefix or os.sep in prefix or prefix in (".", ".."):
        raise errors.InputError(f"--prefix {prefix!r} must be a plain file name prefix")
    # Check every input before writing anything.
    history = vis.load_alpha_history(alphas_history) if alphas_history is not None else None
    if history is not None and not history["records"]:
        raise errors.InputError(f"{alphas_history} has no records yet")
    g = None
    if genotype is not None:
        from tf_amended_darts import genotypes

        g = genotypes.load_genotype(genotype)
    written = []
    if history is not None:
        for fmt in formats:
            written.append(
                vis.plot_alpha_history(history, os.path.join(output_dir, f"{HISTORY_NAME}.{fmt}"))
            )
    if g is not None:  # last: without `dot` it writes the .dot sources, then raises
        written += vis.render_genotype(g, os.path.join(output_dir, prefix), formats)
    return written


def main(argv):
    del argv
    for path in visualize(
        _GENOTYPE.value,
        _ALPHAS_HISTORY.value,
        _RUN_DIR.value,
        _OUTPUT_DIR.value,
        _PREFIX.value,
        _FORMATS.value,
    ):
        print(path)


if __name__ == "__main__":
    cli.run(main)
