"""Prints the trainable parameter count and mult-adds of a network or a search supernet.

python -m tf_amended_darts.bin.describe --genotype=DARTS_V2 --network=cifar
python -m tf_amended_darts.bin.describe --genotype=genotype.json --network=imagenet --format=json
python -m tf_amended_darts.bin.describe --search_space=darts
"""

import json

from absl import flags

from tf_amended_darts import errors
from tf_amended_darts.bin import cli

_GENOTYPE = flags.DEFINE_string("genotype", None, "Published name, JSON file, or genotype text.")
_SEARCH_SPACE = flags.DEFINE_string(
    "search_space", None, "Describe this preset's supernet instead of a genotype."
)
_NETWORK = flags.DEFINE_enum("network", "cifar", ["cifar", "imagenet"], "Evaluation network.")
_CHANNELS = flags.DEFINE_integer(
    "channels", None, "C (default: cifar 36, imagenet 48, supernet: preset's)."
)
_CELLS = flags.DEFINE_integer(
    "cells", None, "Cells (default: cifar 20, imagenet 14, supernet: preset's)."
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classes (default: cifar 10, imagenet 1000)."
)
_AUXILIARY = flags.DEFINE_bool("auxiliary", False, "Count the auxiliary head's parameters.")
_INPUT_SIZE = flags.DEFINE_integer(
    "input_size", None, "Input height = width (default: cifar 32, imagenet 224)."
)
_INPUT_CHANNELS = flags.DEFINE_integer("input_channels", 3, "Input channels.")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
cli.validate_flags(globals().values())

_DEFAULTS = {"cifar": (36, 20, 10, 32), "imagenet": (48, 14, 1000, 224)}


def describe(
    genotype=None,
    search_space=None,
    network="cifar",
    channels=None,
    cells=None,
    num_classes=None,
    auxiliary=False,
    input_size=None,
    input_channels=3,
):
    """Returns {"trainable_params", "mult_adds", ...} for a genotype's network or a supernet."""
    from tf_amended_darts import genotypes, model, profiling, search_model
    from tf_amended_darts import search_space as search_space_lib

    c, n, k, size = _DEFAULTS[network]
    num_classes = num_classes or k
    input_shape = (input_size or size, input_size or size, input_channels)
    if (genotype is None) == (search_space is None):
        raise errors.InputError("give exactly one of --genotype and --search_space")
    if search_space is not None:
        space = search_space_lib.get_search_space(search_space)
        space = space.replace(channels=channels or space.channels, cells=cells or space.cells)
        net = search_model.SearchNetwork(space, num_classes)
        description = {"search_space": search_space, "arch_params": None}
    else:
        g = genotypes.load_genotype(genotype)
        net = model.NETWORKS[network](
            g, channels or c, cells or n, num_classes, auxiliary=auxiliary
        )
        description = {"genotype": g.to_string(), "network": network, "auxiliary": auxiliary}
    net.build((None,) + input_shape)
    description.update(
        trainable_params=profiling.trainable_params(net, include_auxiliary=auxiliary),
        mult_adds=profiling.mult_adds(net, input_shape),
        input_shape=list(input_shape),
        num_classes=num_classes,
    )
    if search_space is not None:
        description["arch_params"] = profiling.count_params(net.arch_variables)
    return description


def main(argv):
    del argv
    d = describe(
        _GENOTYPE.value,
        _SEARCH_SPACE.value,
        _NETWORK.value,
        _CHANNELS.value,
        _CELLS.value,
        _NUM_CLASSES.value,
        _AUXILIARY.value,
        _INPUT_SIZE.value,
        _INPUT_CHANNELS.value,
    )
    if _FORMAT.value == "json":
        print(json.dumps(d))
        return
    what = (
        f"supernet of search space {d['search_space']}"
        if "search_space" in d
        else f"{d['network']} network{' with auxiliary head' if d['auxiliary'] else ''}"
    )
    print(f"{what}, input {'x'.join(map(str, d['input_shape']))}, {d['num_classes']} classes")
    print(
        f"trainable parameters: {d['trainable_params']:,}"
        + (f" (+ {d['arch_params']:,} architecture parameters)" if d.get("arch_params") else "")
    )
    print(f"mult-adds per image:  {d['mult_adds']:,}")


if __name__ == "__main__":
    cli.run(main)
