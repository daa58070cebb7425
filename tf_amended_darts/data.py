"""Dataset sources and deterministic input pipelines.

Sources (`load_dataset(dataset, data_dir, download)`):
  - "digits": the 1,797 8x8 UCI handwritten digits shipped in `datasets/digits.npz`;
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
"""

import dataclasses
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tf_amended_darts import errors

DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets", "digits.npz")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# Per-channel statistics (0..1 units) of the training splits.
_KNOWN_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2


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


def default_augmentation(info: DatasetInfo, cutout: int = 0) -> Augmentation:
  """DARTS' CIFAR augmentation scaled to the image size: pad 4 at 32 px, 1 at 8 px; no flip
  for digits (a mirrored digit is not the same digit)."""
  height = info.image_shape[0] or 32
  return Augmentation(pad=max(1, round(height / 8)), flip=info.name != "digits", cutout=cutout)


# ----------------------------------------------------------------------------------- sources

def load_dataset(dataset: str, data_dir: Optional[str] = None, download: bool = False,
                 image_size: Union[int, Sequence[int], None] = None,
                 test_fraction: float = 0.2) -> Dataset:
  """Loads a dataset by name (see the module docstring).

  Args:
    dataset: "digits", "cifar10_binary", "cifar100_binary", "image_folder" or a tfds name.
    data_dir: directory of the data (tfds: its data_dir; None means tfds' default).
    download: tfds only: build the dataset when it is not prepared (may download).
    image_size: image_folder and tfds: resize every image to this (int or (H, W)); for
      image_folder None means the size of the first image.
    test_fraction: image_folder without train/test folders: share of each class held out.
  """
  size = (image_size, image_size) if isinstance(image_size, int) else image_size
  if dataset == "digits":
    if not os.path.exists(DIGITS_PATH):
      raise DatasetError(f"the shipped digits file {DIGITS_PATH} is missing: reinstall "
                         "tf_amended_darts or run scripts/make_digits.py")
    with np.load(DIGITS_PATH) as f:
      arrays = {k: f[k] for k in f.files}
    return _in_memory("digits", arrays["train_images"], arrays["train_labels"],
                      arrays["test_images"], arrays["test_labels"],
                      tuple(str(c) for c in arrays["class_names"]))
  if dataset in ("cifar10_binary", "cifar100_binary"):
    return _load_cifar_binary(dataset == "cifar100_binary", data_dir)
  if dataset == "image_folder":
    return _load_image_folder(data_dir, size, test_fraction)
  return _load_tfds(dataset, data_dir, download, size)


def _in_memory(name, train_x, train_y, test_x, test_y, class_names, stats=None) -> Dataset:
  mean, std = stats or _channel_stats(train_x)
  info = DatasetInfo(name=name, image_shape=tuple(int(d) for d in train_x.shape[1:]),
                     num_classes=len(class_names), class_names=tuple(class_names),
                     num_examples={"train": len(train_y), "test": len(test_y)},
                     mean=mean, std=std)
  make = lambda x, y: tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))
  return Dataset(info, make(train_x, train_y), make(test_x, test_y))


def _channel_stats(images: np.ndarray, chunk: int = 4096):
  """Per-channel mean and std of uint8 images [N, H, W, C] in 0..1 units."""
  total, total_sq, count = 0.0, 0.0, 0
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].astype(np.float64) / 255.0
    total = total + x.sum(axis=(0, 1, 2))
    total_sq = total_sq + (x * x).sum(axis=(0, 1, 2))
    count += x.shape[0] * x.shape[1] * x.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  std = np.where(std > 0, std, 1.0)
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _load_cifar_binary(cifar100: bool, data_dir: Optional[str]) -> Dataset:
  name, archive = ("cifar100", "cifar-100-binary") if cifar100 else ("cifar10", "cifar-10-binary")
  how = (f"extract {archive}.tar.gz into it and pass --dataset={name}_binary "
         f"--data_dir=<the directory>")
  if not data_dir:
    raise DatasetError(f"--dataset={name}_binary needs --data_dir: {how}")
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
        raise DatasetError(f"{os.path.join(root, f)} is truncated or corrupt ({raw.size} bytes, "
                           f"not a multiple of {record}-byte records): re-extract {archive}.tar.gz")
      parts.append(raw.reshape(-1, record))
    records = np.concatenate(parts)
    labels = records[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: (coarse, fine) -> fine
    if labels.max() >= num_classes:
      raise DatasetError(f"labels in {root} exceed {num_classes - 1}: these are not "
                         f"{name} files; {how}")
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
  return sorted(os.path.join(path, f) for f in os.listdir(path)
                if f.lower().endswith(_IMAGE_EXTENSIONS))


def _load_image_folder(data_dir, size, test_fraction) -> Dataset:
  how = ("pass --dataset=image_folder --data_dir=DIR with DIR/train/<class>/*.png|jpg and "
         "DIR/test/<class>/*, or DIR/<class>/*")
  if not data_dir:
    raise DatasetError(f"--dataset=image_folder needs --data_dir: {how}")
  if not os.path.isdir(data_dir):
    raise DatasetError(f"image folder {data_dir!r} does not exist: {how}")
  rng = np.random.default_rng(0)
  train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
  if os.path.isdir(train_dir) and os.path.isdir(test_dir):
    class_names = _list_class_dirs(train_dir)
    unknown = sorted(set(_list_class_dirs(test_dir)) - set(class_names))
    if unknown:
      raise DatasetError(f"test classes {unknown} of {test_dir} have no train folder: {how}")
    train = [(p, c) for c, n in enumerate(class_names)
             for p in _list_images(os.path.join(train_dir, n))]
    test = [(p, c) for c, n in enumerate(class_names)
            if os.path.isdir(os.path.join(test_dir, n))
            for p in _list_images(os.path.join(test_dir, n))]
  else:
    class_names = _list_class_dirs(data_dir)
    train, test = [], []
    for c, n in enumerate(class_names):
      files = _list_images(os.path.join(data_dir, n))
      files = [files[i] for i in rng.permutation(len(files))]
      num_test = min(int(round(test_fraction * len(files))), max(len(files) - 1, 0))
      test += [(p, c) for p in files[:num_test]]
      train += [(p, c) for p in files[num_test:]]
  if not class_names or not train:
    raise DatasetError(f"no class folders with images (.png, .jpg, ...) in {data_dir}: {how}")
  train = [train[i] for i in rng.permutation(len(train))]  # mix classes (for search_split)
  first = tf.io.decode_image(tf.io.read_file(train[0][0]), expand_animations=False)
  channels = 1 if first.shape[-1] == 1 else 3
  size = tuple(size) if size else tuple(int(d) for d in first.shape[:2])

  def decode(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    resized = lambda: tf.cast(tf.clip_by_value(tf.round(
        tf.image.resize(image, size, antialias=True)), 0, 255), tf.uint8)
    return tf.ensure_shape(tf.cond(same, lambda: image, resized), size + (channels,))

  def read(pairs):
    if not pairs:
      return np.zeros((0,) + size + (channels,), np.uint8), np.zeros([0], np.int64)
    paths = tf.data.Dataset.from_tensor_slices([p for p, _ in pairs])
    try:
      batches = paths.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      images = np.concatenate([b.numpy() for b in batches.batch(1024)])
    except tf.errors.OpError as e:
      raise DatasetError(f"cannot decode an image in {data_dir} ({e.message.splitlines()[0]}): "
                         "remove or fix it") from None
    return images, np.array([c for _, c in pairs], np.int64)

  train_x, train_y = read(train)
  test_x, test_y = read(test)
  return _in_memory("image_folder", train_x, train_y, test_x, test_y, class_names)


def _load_tfds(name, data_dir, download, size) -> Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  alternatives = ("use --dataset=digits, cifar10_binary, cifar100_binary, image_folder or a "
                  "tensorflow-datasets image-classification name")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(f"unknown dataset {name!r}: {alternatives}") from None
  base = name.split("/")[0].split(":")[0]
  where = data_dir or tfds.core.constants.DATA_DIR
  manual = os.path.join(os.path.expanduser(where), "downloads", "manual")
  hint = {
      "cifar10": " (cifar-10-binary.tar.gz), or use --dataset=cifar10_binary --data_dir=DIR "
                 "with that archive extracted in DIR",
      "cifar100": " (cifar-100-binary.tar.gz), or use --dataset=cifar100_binary --data_dir=DIR "
                  "with that archive extracted in DIR",
      "imagenet2012": " (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)",
  }.get(base, "")
  if not builder.is_prepared():
    if not download:
      raise DatasetError(f"tensorflow-datasets dataset {name!r} is not prepared in {where}: pass "
                         f"--download (download=True) to build it, from the internet or from "
                         f"files placed in {manual}{hint}")
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except Exception as e:  # pylint: disable=broad-except  (network, checksum, manual files)
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise DatasetError(f"could not prepare tensorflow-datasets dataset {name!r} in {where} "
                         f"({first}): place its source files in {manual}{hint}") from None
  info = builder.info
  keys = info.supervised_keys
  features = info.features
  if (not keys or len(keys) != 2 or not isinstance(features[keys[0]], tfds.features.Image)
      or not isinstance(features[keys[1]], tfds.features.ClassLabel)):
    raise DatasetError(f"tensorflow-datasets dataset {name!r} is not an (image, label) "
                       f"classification dataset: {alternatives}")
  splits = info.splits  # empty when the metadata is unknown (e.g. tfds.testing.mock_data)
  test_split = "validation" if base.startswith("imagenet") or (
      splits and "test" not in splits) else "test"
  if splits and ("train" not in splits or test_split not in splits):
    raise DatasetError(f"tensorflow-datasets dataset {name!r} has no train and test/validation "
                       f"splits: {alternatives}")
  shape = tuple(features[keys[0]].shape)
  if size:
    shape = tuple(size) + shape[-1:]

  def split(s):
    ds = builder.as_dataset(split=s, as_supervised=True, shuffle_files=False)

    def convert(image, label):
      if size:
        image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size, antialias=True)),
                                         0, 255), tf.uint8)
      return image, tf.cast(label, tf.int64)
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  train, test = split("train"), split(test_split)
  if base in _KNOWN_STATS and shape[-1] == 3:
    stats = _KNOWN_STATS[base]
  else:  # estimated from (at most) the first 10,000 training examples
    total, total_sq, count = 0.0, 0.0, 0
    for image, _ in train.take(10_000).as_numpy_iterator():
      x = image.astype(np.float64) / 255.0
      total, total_sq = total + x.sum(axis=(0, 1)), total_sq + (x * x).sum(axis=(0, 1))
      count += x.shape[0] * x.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean * mean, 0.0))
    stats = (tuple(float(v) for v in mean), tuple(float(v) if v > 0 else 1.0 for v in std))
  label = features[keys[1]]
  info = DatasetInfo(name=base, image_shape=shape, num_classes=label.num_classes,
                     class_names=tuple(label.names),
                     num_examples={"train": _count(splits, "train", train),
                                   "test": _count(splits, test_split, test)},
                     mean=tuple(stats[0]), std=tuple(stats[1]))
  return Dataset(info, train, test)


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


def augment_image(image, seed, augmentation: Augmentation, mean, std):
  """One uint8 image [H, W, C] -> augmented, normalised float32 image; `seed` is int [2]."""
  crop_seed, flip_seed, y_seed, x_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  if augmentation.pad:
    p = augmentation.pad
    shape = tf.shape(image)
    padded = tf.pad(image, [[p, p], [p, p], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
  if augmentation.flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  image = normalize(image, mean, std)
  if augmentation.cutout:  # as DARTS: a zeroed square (after normalisation), clipped at edges
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    cy = tf.random.stateless_uniform([], y_seed, minval=0, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], x_seed, minval=0, maxval=w, dtype=tf.int32)
    half = augmentation.cutout // 2
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = ((ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half))
    image = image * tf.cast(~inside, tf.float32)[:, :, None]
  return image


def _shuffle(dataset, buffer_size, seed):
  """Stateless shuffle of (index, image, label) elements: each block of `buffer_size`
  consecutive elements is permuted (the whole set when buffer_size >= its size). Images of
  varying size cannot be batched: they fall back to tf.data's shuffle (seeded, but its order
  then also depends on the TF global seed: resize them with `image_size` to avoid that)."""
  if not dataset.element_spec[1].shape.is_fully_defined():  # varying sizes: cannot batch
    return dataset.shuffle(buffer_size, seed=int(seed.numpy()[0] % 2**31),
                           reshuffle_each_iteration=False)

  def permute(block, elements):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(tf.shape(elements[0])[0]), seed=tf.random.experimental.stateless_fold_in(
            seed, block))
    return tuple(tf.gather(t, order) for t in elements)
  return dataset.batch(buffer_size).enumerate().map(permute).unbatch()


def epoch_batches(dataset: tf.data.Dataset, batch_size: int, *, mean, std, seed: int,
                  epoch: int, augmentation: Optional[Augmentation] = Augmentation(),
                  shuffle: bool = True, shuffle_buffer: Optional[int] = None,
                  drop_remainder: bool = True, skip_batches: int = 0) -> tf.data.Dataset:
  """One training epoch: (float32 images [B, H, W, C], int64 labels [B]) at the GLOBAL
  batch size B (distribute it with strategy.experimental_distribute_dataset).

  The order depends only on (seed, epoch) and the augmentation of an example only on (seed,
  epoch, its index in `dataset`), so `skip_batches=k` yields exactly batches k, k+1, ... of
  the same epoch without it (for resuming). Use different seeds for different streams (e.g.
  the weights and architecture parts of `search_split`). `augmentation=None` only normalises.
  `shuffle_buffer` defaults to the examples fitting in ~1 GiB, at most 50,000 (all of CIFAR).
  """
  ds = dataset.enumerate().map(lambda index, example: (index,) + tuple(example))
  if shuffle:
    if shuffle_buffer is None:
      shape = dataset.element_spec[0].shape
      size = shape.num_elements() if shape.is_fully_defined() else 224 * 224 * 3
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
  ds = dataset.map(lambda image, label: (normalize(image, mean, std), label),
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
