"""Tests of tf_amended_darts.data: sources (offline) and deterministic pipelines."""

import os
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_amended_darts import data


def _batches(ds):
  return [(x.numpy(), y.numpy()) for x, y in ds]


def _write_cifar(path, labels, label_bytes, seed):
  """Writes records of label bytes + R, G, B planes; returns the HWC images."""
  rng = np.random.default_rng(seed)
  planes = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
  header = np.asarray(labels, np.uint8).reshape(len(labels), label_bytes)
  records = np.concatenate([header, planes.reshape(len(labels), -1)], axis=1)
  records.tofile(path)
  return planes.transpose(0, 2, 3, 1)


def _write_png(path, image):
  tf.io.write_file(path, tf.io.encode_png(image))


class DigitsTest(tf.test.TestCase):

  def test_loads_shipped_digits(self):
    ds = data.load_dataset("digits")
    info = ds.info
    self.assertEqual(info.name, "digits")
    self.assertEqual(info.image_shape, (8, 8, 1))
    self.assertEqual(info.num_classes, 10)
    self.assertEqual(info.class_names, tuple(str(d) for d in range(10)))
    self.assertEqual(info.num_examples, {"train": 1437, "test": 360})
    images, labels = next(iter(ds.train.batch(2000)))
    self.assertEqual(images.dtype, tf.uint8)
    self.assertEqual(labels.dtype, tf.int64)
    self.assertEqual(images.shape, (1437, 8, 8, 1))
    self.assertEqual(sorted(set(labels.numpy().tolist())), list(range(10)))
    self.assertEqual(int(tf.reduce_max(images)), 255)
    x = images.numpy() / 255.0
    self.assertAllClose(info.mean, [x.mean()], atol=1e-6)
    self.assertAllClose(info.std, [x.std()], atol=1e-6)
    self.assertEqual(sum(1 for _ in ds.test), 360)
    levels = {round(v * 255 / 16) for v in range(17)}  # UCI values 0..16 rescaled
    self.assertContainsSubset(set(np.unique(images.numpy()).tolist()), levels)


class CifarBinaryTest(tf.test.TestCase):

  def test_cifar10_layout_and_labels(self):
    root = os.path.join(self.get_temp_dir(), "c10", "cifar-10-batches-bin")
    os.makedirs(root)
    train = [_write_cifar(os.path.join(root, f"data_batch_{i}.bin"), [i, (i + 3) % 10], 1, i)
             for i in range(1, 6)]
    test = _write_cifar(os.path.join(root, "test_batch.bin"), [7, 8, 9], 1, 0)
    ds = data.load_dataset("cifar10_binary", os.path.dirname(root))
    self.assertEqual(ds.info.name, "cifar10")
    self.assertEqual(ds.info.image_shape, (32, 32, 3))
    self.assertEqual(ds.info.num_examples, {"train": 10, "test": 3})
    self.assertEqual(ds.info.class_names[0], "airplane")
    images, labels = _batches(ds.train.batch(100))[0]
    self.assertAllEqual(images, np.concatenate(train))
    self.assertAllEqual(labels, [1, 4, 2, 5, 3, 6, 4, 7, 5, 8])
    images, labels = _batches(ds.test.batch(100))[0]
    self.assertAllEqual(images, test)
    self.assertAllEqual(labels, [7, 8, 9])
    self.assertEqual(images[0, 0, 0, 1], test[0, 0, 0, 1])
    self.assertAllClose(ds.info.mean, np.concatenate(train).mean(axis=(0, 1, 2)) / 255.0)

  def test_cifar100_uses_fine_labels(self):
    root = self.get_temp_dir() + "/c100"
    os.makedirs(root)
    train = _write_cifar(os.path.join(root, "train.bin"), [[3, 42], [19, 99]], 2, 1)
    _write_cifar(os.path.join(root, "test.bin"), [[0, 5]], 2, 2)
    ds = data.load_dataset("cifar100_binary", root)
    self.assertEqual(ds.info.num_classes, 100)
    images, labels = _batches(ds.train.batch(10))[0]
    self.assertAllEqual(labels, [42, 99])
    self.assertAllEqual(images, train)

  def test_errors(self):
    root = self.get_temp_dir() + "/bad"
    os.makedirs(root)
    with self.assertRaisesRegex(data.DatasetError, "does not exist.*cifar-10-binary.tar.gz"):
      data.load_dataset("cifar10_binary", root + "/nowhere")
    with self.assertRaisesRegex(data.DatasetError, "train.bin, test.bin not found"):
      data.load_dataset("cifar100_binary", root)
    _write_cifar(os.path.join(root, "train.bin"), [[1, 2]], 2, 0)
    with open(os.path.join(root, "test.bin"), "wb") as f:
      f.write(b"\x01\x02" + b"\x00" * 100)
    with self.assertRaisesRegex(data.DatasetError, r"test.bin is truncated or corrupt") as cm:
      data.load_dataset("cifar100_binary", root)
    self.assertNotIn("\n", str(cm.exception))


class ImageFolderTest(tf.test.TestCase):

  def test_class_folders_split_deterministically(self):
    root = self.get_temp_dir() + "/folder"
    rng = np.random.default_rng(0)
    written = {}
    for name in ("cat", "dog"):
      os.makedirs(os.path.join(root, name))
      for i in range(5):
        image = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
        _write_png(os.path.join(root, name, f"{i}.png"), image)
        written[image.tobytes()] = name
    ds = data.load_dataset("image_folder", root)
    self.assertEqual(ds.info.class_names, ("cat", "dog"))
    self.assertEqual(ds.info.image_shape, (6, 5, 3))
    self.assertEqual(ds.info.num_examples, {"train": 8, "test": 2})
    seen = []
    for split in (ds.train, ds.test):
      for image, label in split.as_numpy_iterator():
        self.assertEqual(written[image.tobytes()], ds.info.class_names[label])
        seen.append(image.tobytes())
    self.assertCountEqual(seen, written)
    again = data.load_dataset("image_folder", root)
    self.assertAllEqual(_batches(ds.train.batch(10))[0][1], _batches(again.train.batch(10))[0][1])

  def test_train_test_folders_resized(self):
    root = self.get_temp_dir() + "/tt"
    for split, n in (("train", 3), ("test", 1)):
      for name in ("a", "b"):
        os.makedirs(os.path.join(root, split, name))
        for i in range(n):
          _write_png(os.path.join(root, split, name, f"{i}.png"), np.full((9, 7, 1), 50, np.uint8))
    ds = data.load_dataset("image_folder", root, image_size=4)
    self.assertEqual(ds.info.image_shape, (4, 4, 1))
    self.assertEqual(ds.info.num_examples, {"train": 6, "test": 2})
    images, _ = _batches(ds.test.batch(10))[0]
    self.assertAllEqual(images, np.full((2, 4, 4, 1), 50, np.uint8))
    with self.assertRaisesRegex(data.DatasetError, "no class folders"):
      data.load_dataset("image_folder", os.path.join(root, "train", "a"))


class TfdsTest(tf.test.TestCase):

  def test_mock_data(self):
    with tfds.testing.mock_data(num_examples=6):
      ds = data.load_dataset("cifar10", self.get_temp_dir() + "/tfds", download=True)
    self.assertEqual(ds.info.image_shape, (32, 32, 3))
    self.assertEqual(ds.info.num_classes, 10)
    self.assertEqual(ds.info.num_examples, {"train": 6, "test": 6})
    self.assertAllClose(ds.info.mean, data._KNOWN_STATS["cifar10"][0])
    images, labels = _batches(ds.train.batch(10))[0]
    self.assertEqual(images.shape, (6, 32, 32, 3))
    self.assertEqual(images.dtype, np.uint8)
    self.assertEqual(labels.dtype, np.int64)
    with tfds.testing.mock_data(num_examples=3):
      small = data.load_dataset("mnist", self.get_temp_dir() + "/tfds", download=True,
                                image_size=(8, 6))
    self.assertEqual(small.info.image_shape, (8, 6, 1))
    self.assertEqual(small.info.num_examples, {"train": 3, "test": 3})
    self.assertLen(small.info.mean, 1)
    self.assertEqual(next(iter(small.test))[0].shape, (8, 6, 1))

  def test_not_prepared_gives_clear_error_without_download(self):
    empty = self.get_temp_dir() + "/empty_tfds"
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare:
      with self.assertRaisesRegex(data.DatasetError,
                                  "not prepared in .*--download.*cifar10_binary") as cm:
        data.load_dataset("cifar10", empty)
    prepare.assert_not_called()
    self.assertNotIn("\n", str(cm.exception))
    with self.assertRaisesRegex(data.DatasetError, "needs --data_dir"):
      data.load_dataset("cifar10_binary")
    with self.assertRaisesRegex(data.DatasetError, "unknown dataset 'no_such_set'"):
      data.load_dataset("no_such_set", empty)


class TinyManualDataset(tfds.core.GeneratorBasedBuilder):
  """A real tfds builder (registered as 'tiny_manual_dataset') whose source file is read from
  the download manager's manual_dir, so `--download` can be exercised without network."""

  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = tfds.core.Path(os.path.dirname(os.path.abspath(__file__)))  # not a package
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place tiny.npz in the manual directory."

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 1)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    path = dl_manager.manual_dir / "tiny.npz"
    return {split: self._generate_examples(path, split) for split in ("train", "test")}

  def _generate_examples(self, path, split):
    with np.load(path) as f:
      images, labels = f[f"{split}_images"], f[f"{split}_labels"]
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


class TfdsDownloadTest(tf.test.TestCase):
  """download=True runs tfds' own download_and_prepare (no mocks), with the source file served
  from data_dir/downloads/manual, the directory the error messages point to."""

  def test_download_prepares_from_manual_dir(self):
    root = self.get_temp_dir() + "/tfds_download"
    with self.assertRaisesRegex(data.DatasetError,
                                "not prepared in .*--download.*downloads/manual"):
      data.load_dataset("tiny_manual_dataset", root)
    with self.assertRaisesRegex(data.DatasetError, "could not prepare .*place its source files "
                                "in .*downloads/manual") as cm:
      data.load_dataset("tiny_manual_dataset", root, download=True)  # no file there yet
    self.assertNotIn("\n", str(cm.exception))
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (5, 4, 4, 1), dtype=np.uint8),
              "train_labels": np.array([0, 1, 2, 0, 1]),
              "test_images": rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8),
              "test_labels": np.array([2, 2])}
    os.makedirs(os.path.join(root, "downloads", "manual"))
    np.savez(os.path.join(root, "downloads", "manual", "tiny.npz"), **arrays)
    ds = data.load_dataset("tiny_manual_dataset", root, download=True)
    self.assertEqual(ds.info.image_shape, (4, 4, 1))
    self.assertEqual(ds.info.class_names, ("a", "b", "c"))
    self.assertEqual(ds.info.num_examples, {"train": 5, "test": 2})
    self.assertAllClose(ds.info.mean, [arrays["train_images"].mean() / 255.0])
    for split, name in ((ds.train, "train"), (ds.test, "test")):
      images, labels = _batches(split.batch(10))[0]
      order = np.argsort([x.tobytes() for x in images])  # tfds shuffles examples by key
      expected = np.argsort([x.tobytes() for x in arrays[f"{name}_images"]])
      self.assertAllEqual(images[order], arrays[f"{name}_images"][expected])
      self.assertAllEqual(labels[order], arrays[f"{name}_labels"][expected])
    # Prepared now: loads without --download, and without the source file.
    os.remove(os.path.join(root, "downloads", "manual", "tiny.npz"))
    again = data.load_dataset("tiny_manual_dataset", root)
    self.assertEqual(again.info.num_examples, {"train": 5, "test": 2})


class PipelineTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ds = data.load_dataset("digits")
    cls.kw = dict(mean=cls.ds.info.mean, std=cls.ds.info.std)

  def test_normalize_matches_numpy(self):
    x = np.random.default_rng(0).integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = data.normalize(x, mean, std)
    self.assertEqual(y.dtype, tf.float32)
    self.assertAllClose(y, (x / 255.0 - np.array(mean)) / np.array(std), atol=1e-6)
    self.assertAllClose((y.numpy() * std + mean) * 255.0, x, atol=1e-3)

  def test_epoch_batches_deterministic_and_resumable(self):
    aug = data.Augmentation(pad=1, flip=True, cutout=3)
    make = lambda **k: _batches(data.epoch_batches(
        self.ds.train, 100, seed=3, **{"augmentation": aug, **self.kw, **k}))
    first = make(epoch=0)
    self.assertLen(first, 14)  # 1437 // 100, remainder dropped
    self.assertEqual(first[0][0].shape, (100, 8, 8, 1))
    self.assertEqual(first[0][0].dtype, np.float32)
    again = make(epoch=0)
    for (x1, y1), (x2, y2) in zip(first, again):
      self.assertAllEqual(x1, x2)
      self.assertAllEqual(y1, y2)
    tf.random.set_seed(1234)  # the TF global seed plays no part
    self.assertAllEqual(make(epoch=0)[3][0], first[3][0])
    other = make(epoch=1)
    self.assertNotAllEqual(first[0][1], other[0][1])
    resumed = make(epoch=0, skip_batches=5)
    self.assertLen(resumed, 9)
    for (x1, y1), (x2, y2) in zip(first[5:], resumed):
      self.assertAllEqual(x1, x2)
      self.assertAllEqual(y1, y2)
    plain = make(epoch=0, augmentation=None, drop_remainder=False)
    self.assertNotAllClose(plain[0][0], first[0][0])
    labels = np.concatenate([y for _, y in plain])
    all_labels = np.concatenate([y for _, y in _batches(self.ds.train.batch(2000))])
    self.assertLen(labels, 1437)
    self.assertNotAllEqual(labels, all_labels)
    self.assertAllEqual(np.sort(labels), np.sort(all_labels))

  def test_block_shuffle_is_a_permutation(self):
    ds = tf.data.Dataset.range(10).map(lambda i: (tf.fill([1, 1, 1], tf.cast(i, tf.uint8)), i))
    out = _batches(data.epoch_batches(ds, 10, mean=(0.0,), std=(1 / 255,), seed=0, epoch=0,
                                      augmentation=None, shuffle_buffer=4, drop_remainder=False))
    labels = out[0][1]
    self.assertAllEqual(np.sort(labels), np.arange(10))
    self.assertAllClose(out[0][0][:, 0, 0, 0], labels, atol=1e-5)
    self.assertAllEqual(np.sort(labels[:4]), np.arange(4))  # blocks of 4

  def test_search_split_and_eval(self):
    weights, arch = data.search_split(self.ds.train, self.ds.info.num_examples["train"])
    self.assertEqual(sum(1 for _ in weights), 718)
    self.assertEqual(sum(1 for _ in arch), 719)
    batches = _batches(data.eval_batches(self.ds.test, 100, **self.kw))
    self.assertEqual([len(y) for _, y in batches], [100, 100, 100, 60])
    images, labels = _batches(self.ds.test.batch(360))[0]
    self.assertAllEqual(np.concatenate([y for _, y in batches]), labels)
    self.assertAllClose(batches[0][0], data.normalize(images[:100], **self.kw))

  def test_default_augmentation(self):
    self.assertEqual(data.default_augmentation(self.ds.info), data.Augmentation(1, False, 0))
    info = data.DatasetInfo("cifar10", (32, 32, 3), 10, (), {}, (0.5,) * 3, (0.5,) * 3)
    self.assertEqual(data.default_augmentation(info, cutout=16), data.Augmentation(4, True, 16))


if __name__ == "__main__":
  absltest.main()
