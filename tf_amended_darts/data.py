"""Dataset sources and deterministic input pipelines.

Sources (`load_dataset(dataset, data_dir, download)`):
  - "digits": the 1,797 8x8 UCI handwritten digits shipped in `datasets/digits.npz`;
  - "mnist5k": 5,000 28x28 MNIST digits (4,000 train / 1,000 test, 100 test images per
    class) shipped in `datasets/mnist5k.npz` (scripts/convert_mnist_subset.py);
  - "cifar10_binary" / "cifar100_binary": the CIFAR binary files in `data_dir` (the extracted
    cifar-10-binary.tar.gz / cifar-100-binary.tar.gz, or the .bin files directly);
  - "image_folder": `data_dir/train/<class>/*` and `data_dir/test/<class>/*`, or just
    `data_dir/<class>/*` (then split deterministically);
  - any other name: a tensorflow-datasets image-classification dataset prepared in `data_dir`
    (built only when `download=True`).
Each split is a `tf.data.Dataset` of (uint8 image [H, W, C], int64 label). Every failure
raises `DatasetError` with a one-line message saying what is missing and how to provide it.

Pipelines: `epoch_batches` (training: seeded shuffle, augmentation, normalisation, batching at
the global batch size, resumable with `skip_batches`), `eval_batches`, `search_split`. All
randomness is stateless and derived from (seed, epoch, example index), so a batch depends
only on those and not on parallelism, the TF global seed or what ran before.

Protocols (`load_for_training(protocol, ...)`): "cifar" trains on images of one size with
DARTS' CIFAR pad-crop + flip (+ cutout); "imagenet" is DARTS' ImageNet protocol: training
images at their native sizes, each randomly resized-cropped to `image_size` (torchvision's
RandomResizedCrop), flipped and colour-jittered; test images resized (shorter side) to
image_size * 256 / 224 and centre-cropped to image_size.
"""

import contextlib
import dataclasses
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging

from tf_amended_darts import errors

_SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")
DIGITS_PATH = os.path.join(_SHIPPED_DIR, "digits.npz")
# Datasets shipped as .npz files in datasets/: name -> (path, the script that makes it).
SHIPPED = {
    "digits": (DIGITS_PATH, "scripts/make_digits.py"),
    "mnist5k": (os.path.join(_SHIPPED_DIR, "mnist5k.npz"), "scripts/convert_mnist_subset.py"),
}
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel statistics (0..1 units) of the training splits.
_KNOWN_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2
# Bytes assumed per image when sizes vary (ImageNet's are about 500x400 RGB): sizes the
# default shuffle buffer.
_VARYING_IMAGE_BYTES = 500 * 400 * 3
# ImageNet evaluation: the shorter side resized to 256 for 224 crops (and in proportion).
_EVAL_RESIZE_RATIO = 256 / 224
PROTOCOLS = ("cifar", "imagenet")


class DatasetError(errors.InputError):
    """A dataset is missing, unknown or corrupt; the message says how to provide it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_shape: Tuple[Optional[int], Optional[int], int]  # (H, W, C); None for varying sizes
    num_classes: int
    class_names: Tuple[str, ...]
    num_examples: dict  # split name -> count
    mean: Tuple[float, ...]  # per channel, 0..1 units
    std: Tuple[float, ...]


def dataset_info_dict(info: DatasetInfo) -> dict:
    """The JSON form of a DatasetInfo that run.json records (without the split sizes)."""
    return {
        "name": info.name,
        "image_shape": list(info.image_shape),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "mean": list(info.mean),
        "std": list(info.std),
    }


@dataclasses.dataclass(frozen=True)
class Dataset:
    """`train` and `test` yield (uint8 image [H, W, C], int64 label), in a fixed order."""

    info: DatasetInfo
    train: tf.data.Dataset
    test: tf.data.Dataset


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random crop after zero-padding by `pad` px, horizontal flip, cutout of side `cutout`."""

    pad: int = 0
    flip: bool = False
    cutout: int = 0


@dataclasses.dataclass(frozen=True)
class ResizedCropAugmentation:
    """DARTS' ImageNet training augmentation, as torchvision's RandomResizedCrop(size) (a box of
    `scale` times the image area and aspect ratio w/h in `ratio`, log-uniform; after 10 misses
    the central crop of the ratio nearest the image's), RandomHorizontalFlip and
    ColorJitter(brightness, contrast, saturation, hue); then cutout of side `cutout`."""

    size: int = 224
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.2
    cutout: int = 0


def _flips(info: DatasetInfo) -> bool:
    """Whether mirrored images stay in their class: not for digits."""
    return info.name not in SHIPPED


def default_augmentation(info: DatasetInfo, cutout: int = 0) -> Augmentation:
    """DARTS' CIFAR augmentation scaled to the image size: pad 4 at 32 px, 1 at 8 px; no flip
    for digits (a mirrored digit is not the same digit)."""
    height = info.image_shape[0] or 32
    return Augmentation(pad=max(1, round(height / 8)), flip=_flips(info), cutout=cutout)


# ----------------------------------------------------------------------------------- sources


def load_dataset(
    dataset: str,
    data_dir: Optional[str] = None,
    download: bool = False,
    image_size: Union[int, Sequence[int], None] = None,
    test_fraction: float = 0.2,
    native_size: bool = False,
) -> Dataset:
    """Loads a dataset by name (see the module docstring).

    Args:
      dataset: "digits", "mnist5k" (shipped), "cifar10_binary", "cifar100_binary",
        "image_folder" or a tfds name.
      data_dir: directory of the data (tfds: its data_dir; None means tfds' default).
      download: tfds only: build the dataset when it is not prepared (may download).
      image_size: image_folder and tfds: resize every image to this (int or (H, W)); for
        image_folder None means the size of the first image.
      test_fraction: image_folder without train/test folders: share of each class held out.
      native_size: image_folder and tfds: keep every image's own size (image_shape is then
        (None, None, C); image_folder decodes the files as they are read); needs no image_size.
    """
    if native_size and image_size:
        raise ValueError("load_dataset: pass image_size or native_size, not both")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if dataset in SHIPPED:
        return _load_shipped(dataset)
    if dataset in ("cifar10_binary", "cifar100_binary"):
        return _load_cifar_binary(dataset == "cifar100_binary", data_dir)
    if dataset == "image_folder":
        return _load_image_folder(data_dir, size, test_fraction, native_size)
    return _load_tfds(dataset, data_dir, download, size)


def _load_shipped(name) -> Dataset:
    path, script = SHIPPED[name]
    if not os.path.exists(path):
        raise DatasetError(
            f"the shipped {name} file {path} is missing: reinstall tf_amended_darts or run {script}"
        )
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return _in_memory(
        name,
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        tuple(str(c) for c in arrays["class_names"]),
    )


def _in_memory(name, train_x, train_y, test_x, test_y, class_names, stats=None) -> Dataset:
    mean, std = stats or _channel_stats(train_x)
    info = DatasetInfo(
        name=name,
        image_shape=tuple(int(d) for d in train_x.shape[1:]),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        num_examples={"train": len(train_y), "test": len(test_y)},
        mean=mean,
        std=std,
    )

    def make(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))

    return Dataset(info, make(train_x, train_y), make(test_x, test_y))


def _channel_stats(images: np.ndarray, chunk: int = 4096):
    """Per-channel mean and std of uint8 images [N, H, W, C] in 0..1 units."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].astype(np.float64) / 255.0
        total = total + x.sum(axis=(0, 1, 2))
        total_sq = total_sq + (x * x).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _load_cifar_binary(cifar100: bool, data_dir: Optional[str]) -> Dataset:
    name, archive = ("cifar100", "cifar-100-binary") if cifar100 else ("cifar10", "cifar-10-binary")
    how = (
        f"extract {archive}.tar.gz into it and pass dataset={name}_binary data_dir=<the directory>"
    )
    if not data_dir:
        raise DatasetError(f"dataset={name}_binary needs data_dir: {how}")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"CIFAR binary directory {data_dir!r} does not exist: {how}")
    subdir = os.path.join(data_dir, "cifar-100-binary" if cifar100 else "cifar-10-batches-bin")
    root = subdir if os.path.isdir(subdir) else data_dir
    if cifar100:
        train_files, test_files, label_bytes = ["train.bin"], ["test.bin"], 2
    else:
        train_files = [f"data_batch_{i}.bin" for i in range(1, 6)]
        test_files, label_bytes = ["test_batch.bin"], 1
    missing = [f for f in train_files + test_files if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise DatasetError(f"CIFAR binary files {', '.join(missing)} not found in {root}: {how}")
    num_classes = 100 if cifar100 else 10

    def read(files):
        record = label_bytes + 3072
        parts = []
        for f in files:
            raw = np.fromfile(os.path.join(root, f), dtype=np.uint8)
            if raw.size == 0 or raw.size % record:
                raise DatasetError(
                    f"{os.path.join(root, f)} is truncated or corrupt ({raw.size} bytes, "
                    f"not a multiple of {record}-byte records): re-extract {archive}.tar.gz"
                )
            parts.append(raw.reshape(-1, record))
        records = np.concatenate(parts)
        labels = records[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: (coarse, fine) -> fine
        if labels.max() >= num_classes:
            raise DatasetError(
                f"labels in {root} exceed {num_classes - 1}: these are not {name} files; {how}"
            )
        images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), labels

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    names_file = os.path.join(root, "fine_label_names.txt" if cifar100 else "batches.meta.txt")
    class_names = CIFAR10_CLASSES if not cifar100 else tuple(str(i) for i in range(100))
    if os.path.isfile(names_file):
        with open(names_file) as f:
            lines = [line.strip() for line in f if line.strip()]
        if len(lines) == num_classes:
            class_names = tuple(lines)
    return _in_memory(name, train_x, train_y, test_x, test_y, class_names)


def _list_class_dirs(path):
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def _list_images(path):
    return sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(_IMAGE_EXTENSIONS)
    )


_IMAGE_FOLDER_HOW = (
    "pass dataset=image_folder data_dir=DIR with DIR/train/<class>/*.png|jpg and "
    "DIR/test/<class>/*, or DIR/<class>/*"
)


def _resized(image, size):
    """uint8 image resized (antialiased) to `size`, rounded back to uint8."""
    return tf.cast(
        tf.clip_by_value(tf.round(tf.image.resize(image, size, antialias=True)), 0, 255), tf.uint8
    )


def _load_image_folder(data_dir, size, test_fraction, native_size=False) -> Dataset:
    how = _IMAGE_FOLDER_HOW
    if not data_dir:
        raise DatasetError(f"dataset=image_folder needs data_dir: {how}")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"image folder {data_dir!r} does not exist: {how}")
    rng = np.random.default_rng(0)
    class_names, train, test = _image_folder_files(data_dir, test_fraction, rng)
    if not class_names or not train:
        raise DatasetError(f"no class folders with images (.png, .jpg, ...) in {data_dir}: {how}")
    train = [train[i] for i in rng.permutation(len(train))]  # mix classes (for search_split)
    first = tf.io.decode_image(tf.io.read_file(train[0][0]), expand_animations=False)
    channels = 1 if first.shape[-1] == 1 else 3

    def decode_native(path):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=channels, expand_animations=False
        )
        image.set_shape([None, None, channels])
        return image

    if native_size:
        return _image_files(class_names, train, test, decode_native, channels)
    size = tuple(size) if size else tuple(int(d) for d in first.shape[:2])

    def decode(path):
        image = decode_native(path)
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
        resized = tf.cond(same, lambda: image, lambda: _resized(image, size))
        return tf.ensure_shape(resized, size + (channels,))

    train_x, train_y = _decoded(train, decode, size + (channels,), data_dir)
    test_x, test_y = _decoded(test, decode, size + (channels,), data_dir)
    return _in_memory("image_folder", train_x, train_y, test_x, test_y, class_names)


def _image_folder_files(data_dir, test_fraction, rng):
    """(class names, train (path, class) pairs, test pairs) of an image folder: its train/ and
    test/ folders, or else each class folder's files split by `test_fraction`."""
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        class_names = _list_class_dirs(train_dir)
        unknown = sorted(set(_list_class_dirs(test_dir)) - set(class_names))
        if unknown:
            raise DatasetError(
                f"test classes {unknown} of {test_dir} have no train folder: {_IMAGE_FOLDER_HOW}"
            )
        train = [
            (p, c)
            for c, n in enumerate(class_names)
            for p in _list_images(os.path.join(train_dir, n))
        ]
        test = [
            (p, c)
            for c, n in enumerate(class_names)
            if os.path.isdir(os.path.join(test_dir, n))
            for p in _list_images(os.path.join(test_dir, n))
        ]
        return class_names, train, test
    class_names = _list_class_dirs(data_dir)
    train, test = [], []
    for c, n in enumerate(class_names):
        files = _list_images(os.path.join(data_dir, n))
        files = [files[i] for i in rng.permutation(len(files))]
        num_test = min(int(round(test_fraction * len(files))), max(len(files) - 1, 0))
        test += [(p, c) for p in files[:num_test]]
        train += [(p, c) for p in files[num_test:]]
    return class_names, train, test


def _decoded(pairs, decode, shape, data_dir):
    """uint8 images [N, *shape] and int64 labels of (path, class) pairs."""
    if not pairs:
        return np.zeros((0,) + shape, np.uint8), np.zeros([0], np.int64)
    paths = tf.data.Dataset.from_tensor_slices([p for p, _ in pairs])
    try:
        batches = paths.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        images = np.concatenate([b.numpy() for b in batches.batch(1024)])
    except tf.errors.OpError as e:
        raise DatasetError(
            f"cannot decode an image in {data_dir} ({e.message.splitlines()[0]}): remove or fix it"
        ) from None
    return images, np.array([c for _, c in pairs], np.int64)


def _image_files(class_names, train, test, decode, channels) -> Dataset:
    """An image folder read lazily at native sizes; statistics from its first images."""

    def files(pairs):
        paths = tf.constant([p for p, _ in pairs], tf.string, shape=[len(pairs)])
        labels = tf.constant([c for _, c in pairs], tf.int64, shape=[len(pairs)])
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            lambda path, label: (decode(path), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    train_ds, test_ds = files(train), files(test)
    try:
        mean, std = _estimated_stats(train_ds)
    except tf.errors.OpError as e:
        raise DatasetError(
            f"cannot decode an image of the image folder "
            f"({e.message.splitlines()[0]}): remove or fix it"
        ) from None
    info = DatasetInfo(
        name="image_folder",
        image_shape=(None, None, channels),
        num_classes=len(class_names),
        class_names=tuple(class_names),
        num_examples={"train": len(train), "test": len(test)},
        mean=mean,
        std=std,
    )
    return Dataset(info, train_ds, test_ds)


def _estimated_stats(train: tf.data.Dataset, limit: int = 10_000):
    """Per-channel mean and std (0..1 units, std 0 -> 1) of the first `limit` images."""
    total, total_sq, count = 0.0, 0.0, 0
    for image, _ in train.take(limit).as_numpy_iterator():
        x = image.astype(np.float64) / 255.0
        total, total_sq = total + x.sum(axis=(0, 1)), total_sq + (x * x).sum(axis=(0, 1))
        count += x.shape[0] * x.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean * mean, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) if v > 0 else 1.0 for v in std)


@contextlib.contextmanager
def _absl_errors_only():
    """tensorflow-datasets warns through absl while it looks for a dataset that is not
    prepared ("Variant folder ... has no dataset_info.json"): the error that follows says it."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


_TFDS_ALTERNATIVES = (
    "use dataset=digits, mnist5k, cifar10_binary, cifar100_binary, image_folder or a "
    "tensorflow-datasets image-classification name"
)
# Where a tfds dataset's manual source files come from when it cannot download them.
_TFDS_MANUAL_HINTS = {
    "cifar10": " (cifar-10-binary.tar.gz), or use dataset=cifar10_binary data_dir=DIR "
    "with that archive extracted in DIR",
    "cifar100": " (cifar-100-binary.tar.gz), or use dataset=cifar100_binary data_dir=DIR "
    "with that archive extracted in DIR",
    "imagenet2012": " (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)",
}


def _load_tfds(name, data_dir, download, size) -> Dataset:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)

    base = name.split("/")[0].split(":")[0]
    builder = _prepared_builder(tfds, name, base, data_dir, download)
    image, label = _image_and_label(tfds, name, builder.info)
    splits = builder.info.splits  # empty when the metadata is unknown (tfds.testing.mock_data)
    test_split = (
        "validation" if base.startswith("imagenet") or (splits and "test" not in splits) else "test"
    )
    if splits and ("train" not in splits or test_split not in splits):
        raise DatasetError(
            f"tensorflow-datasets dataset {name!r} has no train and test/validation "
            f"splits: {_TFDS_ALTERNATIVES}"
        )
    shape = tuple(image.shape)
    if size:
        shape = tuple(size) + shape[-1:]

    def convert(image, label):
        return (_resized(image, size) if size else image), tf.cast(label, tf.int64)

    def split(s):
        ds = builder.as_dataset(split=s, as_supervised=True, shuffle_files=False)
        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    train, test = split("train"), split(test_split)
    if base in _KNOWN_STATS and shape[-1] == 3:
        mean, std = _KNOWN_STATS[base]
    else:
        mean, std = _estimated_stats(train)
    info = DatasetInfo(
        name=base,
        image_shape=shape,
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        num_examples={
            "train": _count(splits, "train", train),
            "test": _count(splits, test_split, test),
        },
        mean=tuple(mean),
        std=tuple(std),
    )
    return Dataset(info, train, test)


def _prepared_builder(tfds, name, base, data_dir, download):
    """The tfds builder of `name`, prepared (built first when `download`)."""
    try:
        with _absl_errors_only():
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(f"unknown dataset {name!r}: {_TFDS_ALTERNATIVES}") from None
    if prepared:
        return builder
    where = data_dir or tfds.core.constants.DATA_DIR
    manual = os.path.join(os.path.expanduser(where), "downloads", "manual")
    hint = _TFDS_MANUAL_HINTS.get(base, "")
    if not download:
        raise DatasetError(
            f"tensorflow-datasets dataset {name!r} is not prepared in {where}: pass "
            f"download=True to build it, from the internet or from "
            f"files placed in {manual}{hint}"
        )
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual)
        )
    except Exception as e:  # pylint: disable=broad-except  (network, checksum, manual files)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatasetError(
            f"could not prepare tensorflow-datasets dataset {name!r} in {where} "
            f"({first}): place its source files in {manual}{hint}"
        ) from None
    return builder


def _image_and_label(tfds, name, info):
    """The Image and ClassLabel features of a supervised (image, label) dataset."""
    keys = info.supervised_keys
    features = info.features
    if (
        not keys
        or len(keys) != 2
        or not isinstance(features[keys[0]], tfds.features.Image)
        or not isinstance(features[keys[1]], tfds.features.ClassLabel)
    ):
        raise DatasetError(
            f"tensorflow-datasets dataset {name!r} is not an (image, label) "
            f"classification dataset: {_TFDS_ALTERNATIVES}"
        )
    return features[keys[0]], features[keys[1]]


def _count(splits, name, dataset) -> int:
    if splits and name in splits:
        return int(splits[name].num_examples)
    count = int(dataset.cardinality())
    if count < 0:
        count = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, *_: n + 1))
    return count


# --------------------------------------------------------------------------------- pipelines


def normalize(images, mean, std):
    """uint8 images [..., C] -> float32 (x / 255 - mean) / std. Used by training and serving."""
    mean = tf.cast(tf.convert_to_tensor(mean), tf.float32)
    std = tf.cast(tf.convert_to_tensor(std), tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def search_split(dataset: tf.data.Dataset, num_examples: int, train_portion: float = 0.5):
    """Splits a training set into (weights part, architecture part): the first
    floor(train_portion * num_examples) examples and the rest, as DARTS does."""
    n = int(np.floor(train_portion * num_examples))
    return dataset.take(n), dataset.skip(n)


def _seed(*data) -> tf.Tensor:
    seed = tf.constant([0, 0], tf.int64)
    for d in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
    return seed


def augment_image(image, seed, augmentation, mean, std):
    """One uint8 image [H, W, C] -> augmented, normalised float32 image; `seed` is int [2];
    `augmentation` an Augmentation or a ResizedCropAugmentation."""
    if isinstance(augmentation, ResizedCropAugmentation):
        return _resized_crop_augment(image, seed, augmentation, mean, std)
    crop_seed, flip_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    if augmentation.pad:
        p = augmentation.pad
        shape = tf.shape(image)
        padded = tf.pad(image, [[p, p], [p, p], [0, 0]])
        image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    if augmentation.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return _cutout(normalize(image, mean, std), augmentation.cutout, y_seed, x_seed)


def _cutout(image, side, y_seed, x_seed):
    """As DARTS: a zeroed square of `side` (after normalisation), clipped at the edges."""
    if not side:
        return image
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    cy = tf.random.stateless_uniform([], y_seed, minval=0, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], x_seed, minval=0, maxval=w, dtype=tf.int32)
    half = side // 2
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return image * tf.cast(~inside, image.dtype)[:, :, None]


def resized_crop_box(
    height, width, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10
):
    """(top, left, box height, box width), int32, of torchvision's RandomResizedCrop for an
    image of `height` x `width`: the first of `attempts` draws (area fraction uniform in
    `scale`, aspect ratio w/h log-uniform in `ratio`, sides rounded) that fits, at a uniform
    position; if none fits, the central crop of the ratio in `ratio` nearest the image's."""
    area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = (
        height_f
        * width_f
        * tf.random.stateless_uniform([attempts], area_seed, minval=scale[0], maxval=scale[1])
    )
    aspect = tf.exp(
        tf.random.stateless_uniform(
            [attempts], ratio_seed, minval=np.log(ratio[0]), maxval=np.log(ratio[1])
        )
    )
    box_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    box_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # 0 when none fits
    box_h, box_w = box_h[first], box_w[first]

    # Uniform integer offsets in [0, free]: floor(u * (free + 1)), u in [0, 1).
    def offset(free, s):
        return tf.cast(
            tf.floor(tf.random.stateless_uniform([], s) * tf.cast(free + 1, tf.float32)), tf.int32
        )

    drawn = (offset(height - box_h, top_seed), offset(width - box_w, left_seed), box_h, box_w)
    in_ratio = width_f / height_f
    fallback_w = tf.where(
        in_ratio > ratio[1], tf.cast(tf.round(height_f * ratio[1]), tf.int32), width
    )
    fallback_h = tf.where(
        in_ratio < ratio[0], tf.cast(tf.round(width_f / ratio[0]), tf.int32), height
    )
    central = ((height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h, fallback_w)
    return tuple(tf.where(fits[first], d, c) for d, c in zip(drawn, central))


def _blend(image, other, factor):
    """torchvision's blend: factor * image + (1 - factor) * other, clipped to [0, 1]."""
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def color_jitter(image, seed, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2):
    """torchvision's ColorJitter on a float image [H, W, C] in [0, 1]: brightness, contrast and
    saturation factors uniform in [1 - b, 1 + b], a hue shift uniform in [-hue, hue] (turns),
    applied in a random order. One-channel images get brightness and contrast only."""
    factor_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    low = tf.constant(
        [max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue]
    )
    high = tf.constant([1 + brightness, 1 + contrast, 1 + saturation, hue])
    factors = tf.random.stateless_uniform([4], factor_seed) * (high - low) + low
    rgb = image.shape[-1] == 3

    def gray(x):
        return tf.image.rgb_to_grayscale(x) if rgb else x

    adjust = [
        lambda x: _blend(x, tf.zeros_like(x), factors[0]),
        lambda x: _blend(x, tf.reduce_mean(gray(x)), factors[1]),
        lambda x: _blend(x, gray(x), factors[2]) if rgb else x,
        lambda x: tf.image.adjust_hue(x, factors[3]) if rgb else x,
    ]
    order = tf.random.experimental.stateless_shuffle(tf.range(4), seed=order_seed)
    for i in range(4):
        image = tf.ensure_shape(
            # switch_case calls the branch at once, with this iteration's image.
            tf.switch_case(order[i], [lambda f=f: f(image) for f in adjust]),  # noqa: B023
            image.shape,
        )
    return image


def _resized_crop_augment(image, seed, augmentation: ResizedCropAugmentation, mean, std):
    a = augmentation
    box_seed, flip_seed, jitter_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    shape = tf.shape(image)
    top, left, box_h, box_w = resized_crop_box(shape[0], shape[1], box_seed, a.scale, a.ratio)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([box_h, box_w, -1]))
    crop = tf.image.resize(tf.cast(crop, tf.float32) / 255.0, [a.size, a.size], antialias=True)
    crop = tf.clip_by_value(crop, 0.0, 1.0)
    if a.flip:
        crop = tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)
    crop = color_jitter(crop, jitter_seed, a.brightness, a.contrast, a.saturation, a.hue)
    return _cutout(normalize(crop * 255.0, mean, std), a.cutout, y_seed, x_seed)


def center_crop(image, size: int):
    """The ImageNet evaluation view of a uint8 image [H, W, C]: the shorter side resized to
    round(size * 256 / 224) (the longer in proportion, truncated, as torchvision's Resize),
    then the central size x size crop (offsets rounded half to even, as torchvision)."""
    short = int(round(size * _EVAL_RESIZE_RATIO))
    shape = tf.shape(image)
    height, width = shape[0], shape[1]

    def longer(long_side, short_side):
        return tf.cast(
            short * long_side // short_side, tf.int32
        )  # int(short * long / short_side) for ints

    new_h = tf.where(height <= width, short, longer(height, width))
    new_w = tf.where(height <= width, longer(width, height), short)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2), tf.int32)
    crop = tf.slice(resized, tf.stack([top, left, 0]), [size, size, -1])
    crop = tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)
    return tf.ensure_shape(crop, [size, size, image.shape[-1]])


def _shuffle(dataset, buffer_size, seed):
    """Stateless shuffle of (index, image, label) elements: each block of `buffer_size`
    consecutive elements is permuted (the whole set when buffer_size >= its size). Images of
    varying size are blocked as ragged tensors."""
    varying = not dataset.element_spec[1].shape.is_fully_defined()

    def permute(block, elements):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(elements[0])[0]),
            seed=tf.random.experimental.stateless_fold_in(seed, block),
        )
        return tuple(tf.gather(t, order) for t in elements)

    if not varying:
        return dataset.batch(buffer_size).enumerate().map(permute).unbatch()
    blocks = dataset.ragged_batch(buffer_size).enumerate().map(permute).unbatch()

    def dense(t):
        return t.to_tensor() if isinstance(t, tf.RaggedTensor) else t  # [H, (W), C]

    return blocks.map(lambda index, image, label: (index, dense(image), label))


def epoch_batches(
    dataset: tf.data.Dataset,
    batch_size: int,
    *,
    mean,
    std,
    seed: int,
    epoch: int,
    augmentation: Optional[Augmentation] = Augmentation(),
    shuffle: bool = True,
    shuffle_buffer: Optional[int] = None,
    drop_remainder: bool = True,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """One training epoch: (float32 images [B, H, W, C], int64 labels [B]) at the GLOBAL
    batch size B (distribute it with strategy.experimental_distribute_dataset).

    The order depends only on (seed, epoch) and the augmentation of an example only on (seed,
    epoch, its index in `dataset`), so `skip_batches=k` yields exactly batches k, k+1, ... of
    the same epoch without it (for resuming). Use different seeds for different streams (e.g.
    the weights and architecture parts of `search_split`). `augmentation`: an Augmentation or a
    ResizedCropAugmentation (which takes images of any size); None only normalises.
    `shuffle_buffer` defaults to the examples fitting in ~1 GiB, at most 50,000 (all of CIFAR).
    """
    ds = dataset.enumerate().map(lambda index, example: (index,) + tuple(example))
    if shuffle:
        if shuffle_buffer is None:
            shape = dataset.element_spec[0].shape
            size = shape.num_elements() if shape.is_fully_defined() else _VARYING_IMAGE_BYTES
            shuffle_buffer = int(max(1000, min(50_000, 2**30 // max(size, 1))))
        ds = _shuffle(ds, shuffle_buffer, _seed(seed, _SHUFFLE_STREAM, epoch))
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)
    augmentation = augmentation or Augmentation()
    base = _seed(seed, _AUGMENT_STREAM, epoch)

    def transform(index, image, label):
        example_seed = tf.random.experimental.stateless_fold_in(base, index)
        return augment_image(image, example_seed, augmentation, mean, std), label

    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def eval_batches(dataset: tf.data.Dataset, batch_size: int, *, mean, std) -> tf.data.Dataset:
    """Evaluation: normalised (float32 images, int64 labels) in order, keeping the remainder."""
    ds = dataset.map(
        lambda image, label: (normalize(image, mean, std), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------- protocols


def load_for_training(
    protocol: str,
    dataset: str,
    data_dir: Optional[str] = None,
    download: bool = False,
    image_size: Optional[int] = None,
    cutout: int = 0,
):
    """(Dataset, training augmentation) of a re-training protocol (see the module docstring).

    "cifar": `load_dataset(dataset, data_dir, download, image_size)` and default_augmentation.
    "imagenet": training images at native size with ResizedCropAugmentation(image_size or 224,
    cutout=cutout) (no flip for digits); test images through `center_crop`; `info.image_shape`
    is the network's input (size, size, C), which both splits then deliver.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol == "cifar":
        loaded = load_dataset(dataset, data_dir, download, image_size=image_size)
        return loaded, default_augmentation(loaded.info, cutout)
    size = image_size or 224
    loaded = load_dataset(dataset, data_dir, download, native_size=True)
    channels = loaded.info.image_shape[-1]
    test = loaded.test.map(
        lambda image, label: (center_crop(image, size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    info = dataclasses.replace(loaded.info, image_shape=(size, size, channels))
    augmentation = ResizedCropAugmentation(size=size, flip=_flips(info), cutout=cutout)
    return Dataset(info, loaded.train, test), augmentation
