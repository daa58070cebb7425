"""Regenerates tests/testdata/reference_fixture.npz: the reference DARTS code's outputs.

Runs the reference implementation (quark0/darts cnn/, e.g. ../shared/bench/reference_darts/
beside this repository) under PyTorch, in eval mode, and stores inputs, every weight and BN
statistic, and outputs of:
  - op/<name>/s<stride>/...   every reference operation (OPS, affine BN) plus ReLUConvBN 1x1
                              and 3x3 (our conv_1x1 and conv_3x3), at stride 1 and 2;
  - mixed/s<stride>/...       model_search.MixedOp (affine=False), with each operation's output;
  - cell/{normal,reduce}/...  model_search.Cell (4 nodes), normal after a reduction cell and
                              reduction after a normal one;
  - network/...               model.NetworkCIFAR(C=4, 5 cells, DARTS_V2), no auxiliary head
                              (its 768-channel conv alone would make the file 1.5 MB);
  - imagenet_stem/...         model.NetworkImageNet's two stride-2 stems (C=4) on 16x16 images.
Parameters are stored under their PyTorch state_dict names, in the reference's layouts
(NCHW, OIHW), as float32; the reference computes in float64 from exactly those values, so its
outputs (float64) are the exact answers that tests/reference_equivalence_test.py checks ours
against. BN running statistics (and affine BN's weight and bias) are random, so BN is not the
identity.

PyTorch is needed only here, never by tf_amended_darts or its tests. Set-up, once:
    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
Usage:
    /tmp/torchvenv/bin/python scripts/make_reference_fixture.py \
        --reference ../shared/bench/reference_darts [--output tests/testdata/reference_fixture.npz]
"""

import argparse
import contextlib
import io
import os
import sys
import types

import numpy as np
import torch
from torch import nn

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPOSITORY, "tests", "testdata", "reference_fixture.npz")
CHANNELS = 4
BATCH = 2


def import_reference(path):
    """The reference's modules, importable on CPU without torchvision."""
    sys.path.insert(0, os.path.abspath(path))
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = types.ModuleType("torchvision.transforms")
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.transforms"] = torchvision.transforms
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    import genotypes
    import model
    import model_search
    import operations

    return types.SimpleNamespace(
        genotypes=genotypes, model=model, model_search=model_search, operations=operations
    )


def randomize_batch_norm(module, generator):
    """Random running statistics (and affine parameters) in every BatchNorm2d of `module`."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(0.5 * torch.randn(c, generator=generator))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
            if bn.affine:
                bn.weight.data.copy_(0.5 + torch.rand(c, generator=generator))
                bn.bias.data.copy_(0.5 * torch.randn(c, generator=generator))


def prepared(module, generator):
    """`module` in eval mode, float64, with float32-representable weights and random BN."""
    with torch.no_grad():
        randomize_batch_norm(module, generator)
    return module.float().double().eval()


def parameters(module, prefix):
    """Every parameter and BN statistic as float32 arrays under `prefix` + state_dict name."""
    return {
        prefix + name: value.detach().float().numpy()
        for name, value in module.state_dict().items()
        if "num_batches_tracked" not in name
    }


def random_input(generator, *shape):
    return torch.randn(*shape, generator=generator).float().double()


def as_arrays(prefix, **tensors):
    return {
        f"{prefix}{name}": (t.detach().numpy() if torch.is_tensor(t) else np.asarray(t))
        for name, t in tensors.items()
    }


def operations_fixture(ref, generator):
    factories = dict(ref.operations.OPS)
    factories["conv_1x1"] = lambda c, stride, affine: ref.operations.ReLUConvBN(
        c, c, 1, stride, 0, affine=affine
    )
    factories["conv_3x3"] = lambda c, stride, affine: ref.operations.ReLUConvBN(
        c, c, 3, stride, 1, affine=affine
    )
    arrays = {"op/names": np.array(sorted(factories))}
    x = random_input(generator, BATCH, CHANNELS, 8, 8)
    arrays.update(as_arrays("op/", x=x))
    for name, factory in sorted(factories.items()):
        for stride in (1, 2):
            op = prepared(factory(CHANNELS, stride, True), generator)
            prefix = f"op/{name}/s{stride}/"
            arrays.update(parameters(op, prefix + "param/"))
            arrays.update(as_arrays(prefix, out=op(x)))
    return arrays


def mixed_op_fixture(ref, generator):
    primitives = ref.genotypes.PRIMITIVES
    arrays = {"mixed/primitives": np.array(primitives)}
    for stride in (1, 2):
        mixed = prepared(ref.model_search.MixedOp(CHANNELS, stride), generator)
        x = random_input(generator, BATCH, CHANNELS, 8, 8)
        weights = torch.softmax(torch.randn(len(primitives), generator=generator), -1).double()
        prefix = f"mixed/s{stride}/"
        arrays.update(parameters(mixed, prefix + "param/"))
        arrays.update(as_arrays(prefix, x=x, weights=weights, out=mixed(x, weights)))
        for name, op in zip(primitives, mixed._ops):
            arrays.update(as_arrays(f"{prefix}{name}/", out=op(x)))
    return arrays


def cell_fixture(ref, generator):
    """(kind, reduction, reduction_prev, s0 size): the preprocessing differs with both."""
    arrays = {}
    num_edges = 14
    for kind, reduction, reduction_prev, s0_size in (
        ("normal", False, True, 16),
        ("reduce", True, False, 8),
    ):
        cell = prepared(
            ref.model_search.Cell(4, 4, 6, 10, CHANNELS, reduction, reduction_prev), generator
        )
        s0 = random_input(generator, BATCH, 6, s0_size, s0_size)
        s1 = random_input(generator, BATCH, 10, 8, 8)
        alphas = torch.randn(num_edges, len(ref.genotypes.PRIMITIVES), generator=generator)
        weights = torch.softmax(alphas, -1).double()
        prefix = f"cell/{kind}/"
        arrays.update(parameters(cell, prefix + "param/"))
        arrays.update(as_arrays(prefix, s0=s0, s1=s1, weights=weights, out=cell(s0, s1, weights)))
    return arrays


def network_fixture(ref, generator):
    with contextlib.redirect_stdout(io.StringIO()):  # the reference's Cell prints its channels
        network = ref.model.NetworkCIFAR(CHANNELS, 10, 5, False, ref.genotypes.DARTS_V2)
    network = prepared(network, generator)
    network.drop_path_prob = 0.0
    x = random_input(generator, BATCH, 3, 16, 16)
    logits, _ = network(x)
    arrays = parameters(network, "network/param/")
    arrays.update(as_arrays("network/", x=x, logits=logits, channels=CHANNELS, cells=5))
    return arrays


def imagenet_stem_fixture(ref, generator):
    with contextlib.redirect_stdout(io.StringIO()):
        network = ref.model.NetworkImageNet(CHANNELS, 10, 3, False, ref.genotypes.DARTS_V2)
    network = prepared(network, generator)
    x = random_input(generator, BATCH, 3, 16, 16)
    s0 = network.stem0(x)
    # stem1 starts with an in-place ReLU: keep s0 as stem0 returned it.
    s1 = network.stem1(s0.clone())
    arrays = parameters(network.stem0, "imagenet_stem/param/stem0.")
    arrays.update(parameters(network.stem1, "imagenet_stem/param/stem1."))
    arrays.update(as_arrays("imagenet_stem/", x=x, s0=s0, s1=s1, channels=CHANNELS))
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--reference",
        required=True,
        help="directory of the reference's operations.py, model.py, ...",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    ref = import_reference(args.reference)
    torch.manual_seed(0)  # the reference's own initializers
    generator = torch.Generator().manual_seed(0)
    arrays = {}
    with torch.no_grad():
        for make in (
            operations_fixture,
            mixed_op_fixture,
            cell_fixture,
            network_fixture,
            imagenet_stem_fixture,
        ):
            arrays.update(make(ref, generator))
    temporary = args.output + ".tmp.npz"
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, args.output)
    print(f"wrote {args.output}: {len(arrays)} arrays, {os.path.getsize(args.output)} bytes")


if __name__ == "__main__":
    main()
