"""Regenerates tf_amended_darts/datasets/digits.npz, the small dataset shipped for the quickstart.

The 1,797 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten Digits" data
(E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), read from the copy inside scikit-learn
(sklearn/datasets/data/digits.csv.gz, pixel values 0..16). scikit-learn is needed only to run this
script (`pip install scikit-learn`); it is not a runtime dependency of tf_amended_darts.

Usage: python scripts/make_digits.py [--output PATH]
"""

import argparse
import hashlib
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_TEST = 360
SEED = 0
DEFAULT_OUTPUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    os.pardir,
    "tf_amended_darts",
    "datasets",
    "digits.npz",
)


def make_arrays():
    """Returns the dict of arrays stored in digits.npz."""
    digits = load_digits()
    values = np.asarray(digits.images, dtype=np.float64)  # [1797, 8, 8], 0..16
    if values.shape != (1797, 8, 8) or values.min() < 0 or values.max() > 16:
        raise SystemExit(f"unexpected digits data: shape {values.shape}")
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = np.asarray(digits.target, dtype=np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=NUM_TEST, random_state=SEED, shuffle=True, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return {
        "train_images": images[train_idx],
        "train_labels": labels[train_idx],
        "test_images": images[test_idx],
        "test_labels": labels[test_idx],
        "class_names": np.array([str(d) for d in range(10)]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    arrays = make_arrays()
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
