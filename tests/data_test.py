"""Tests of tf_amended_darts.data: sources (offline) and deterministic pipelines."""

import colorsys
import json
import os
import shutil
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import absltest

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


class Mnist5kTest(tf.test.TestCase):
    def test_loads_shipped_mnist_subset(self):
        ds = data.load_dataset("mnist5k")
        info = ds.info
        self.assertEqual(
            (info.name, info.image_shape, info.num_classes), ("mnist5k", (28, 28, 1), 10)
        )
        self.assertEqual(info.num_examples, {"train": 4000, "test": 1000})
        train_x, train_y = next(iter(ds.train.batch(5000)))
        test_x, test_y = next(iter(ds.test.batch(5000)))
        self.assertEqual((train_x.dtype, train_y.dtype), (tf.uint8, tf.int64))
        # 500 images per class in the subset, 100 of each held out (the stated split).
        self.assertAllEqual(np.bincount(train_y.numpy()), [400] * 10)
        self.assertAllEqual(np.bincount(test_y.numpy()), [100] * 10)

        def rows(x):
            return {bytes(row) for row in x.numpy().reshape(len(x), -1)}

        self.assertEmpty(rows(train_x) & rows(test_x))
        # MNIST's published training-set pixel mean and std (0..1 units): 0.1307, 0.3081.
        self.assertAllClose(info.mean, [0.1307], atol=0.01)
        self.assertAllClose(info.std, [0.3081], atol=0.01)
        self.assertFalse(data.default_augmentation(info).flip)  # a mirrored digit is no digit

    def test_search_split_of_every_shipped_dataset_holds_every_class(self):
        # The search splits the training set by position (first half: weights, rest:
        # architecture). A file sorted by class gave mnist5k's weights digits 0-4 and its
        # architecture 5-9. Each class's share in each part is within a factor 1.5 of its
        # share of the whole (shipped now: digits 0.90-1.10, mnist5k 0.93-1.07).
        for name in data.SHIPPED:
            ds = data.load_dataset(name)
            n = ds.info.num_examples["train"]
            whole = np.bincount(next(iter(ds.train.batch(n)))[1].numpy(), minlength=10) / n
            for part in data.search_split(ds.train, n, 0.5):
                labels = np.concatenate([y.numpy() for _, y in part.batch(n)])
                share = np.bincount(labels, minlength=10) / len(labels)
                with self.subTest(dataset=name):
                    self.assertAllInRange(share / whole, 1 / 1.5, 1.5)

    def test_missing_file_names_the_script(self):
        with mock.patch.dict(data.SHIPPED, mnist5k=("/nonexistent/m.npz", "scripts/x.py")):
            with self.assertRaisesRegex(data.DatasetError, "/nonexistent/m.npz.*scripts/x.py"):
                data.load_dataset("mnist5k")


class CifarBinaryTest(tf.test.TestCase):
    def test_cifar10_layout_and_labels(self):
        root = os.path.join(self.get_temp_dir(), "c10", "cifar-10-batches-bin")
        os.makedirs(root)
        train = [
            _write_cifar(os.path.join(root, f"data_batch_{i}.bin"), [i, (i + 3) % 10], 1, i)
            for i in range(1, 6)
        ]
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
        self.assertAllEqual(
            _batches(ds.train.batch(10))[0][1], _batches(again.train.batch(10))[0][1]
        )

    def test_train_test_folders_resized(self):
        root = self.get_temp_dir() + "/tt"
        for split, n in (("train", 3), ("test", 1)):
            for name in ("a", "b"):
                os.makedirs(os.path.join(root, split, name))
                for i in range(n):
                    _write_png(
                        os.path.join(root, split, name, f"{i}.png"),
                        np.full((9, 7, 1), 50, np.uint8),
                    )
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
            small = data.load_dataset(
                "mnist", self.get_temp_dir() + "/tfds", download=True, image_size=(8, 6)
            )
        self.assertEqual(small.info.image_shape, (8, 6, 1))
        self.assertEqual(small.info.num_examples, {"train": 3, "test": 3})
        self.assertLen(small.info.mean, 1)
        self.assertEqual(next(iter(small.test))[0].shape, (8, 6, 1))

    def test_not_prepared_gives_clear_error_without_download(self):
        empty = self.get_temp_dir() + "/empty_tfds"
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare:
            with self.assertRaisesRegex(
                data.DatasetError, "not prepared in .*download=True.*dataset=cifar10_binary"
            ) as cm:
                data.load_dataset("cifar10", empty)
        prepare.assert_not_called()
        self.assertNotIn("\n", str(cm.exception))
        with self.assertRaisesRegex(data.DatasetError, "needs data_dir"):
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
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 4, 1)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

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
        with self.assertRaisesRegex(
            data.DatasetError, "not prepared in .*download=True.*downloads/manual"
        ):
            data.load_dataset("tiny_manual_dataset", root)
        with self.assertRaisesRegex(
            data.DatasetError, "could not prepare .*place its source files in .*downloads/manual"
        ) as cm:
            data.load_dataset("tiny_manual_dataset", root, download=True)  # no file there yet
        self.assertNotIn("\n", str(cm.exception))
        rng = np.random.default_rng(0)
        arrays = {
            "train_images": rng.integers(0, 256, (5, 4, 4, 1), dtype=np.uint8),
            "train_labels": np.array([0, 1, 2, 0, 1]),
            "test_images": rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8),
            "test_labels": np.array([2, 2]),
        }
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

        def make(**k):
            return _batches(
                data.epoch_batches(
                    self.ds.train, 100, seed=3, **{"augmentation": aug, **self.kw, **k}
                )
            )

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
        out = _batches(
            data.epoch_batches(
                ds,
                10,
                mean=(0.0,),
                std=(1 / 255,),
                seed=0,
                epoch=0,
                augmentation=None,
                shuffle_buffer=4,
                drop_remainder=False,
            )
        )
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


def _torchvision_crop_boxes(height, width, count, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, in numpy: [count, 4] (top, left, h, w)."""
    boxes = []
    for _ in range(count):
        for _ in range(10):
            area = height * width * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                boxes.append(
                    (rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w)
                )
                break
        else:
            in_ratio = width / height
            w, h = width, height
            if in_ratio < min(ratio):
                h = int(round(w / min(ratio)))
            elif in_ratio > max(ratio):
                w = int(round(h * max(ratio)))
            boxes.append(((height - h) // 2, (width - w) // 2, h, w))
    return np.array(boxes)


def _over_seeds(fn, count):
    """[count, ...] results of fn(seed) for `count` stateless seeds, computed in one graph."""
    seeds = tf.data.Dataset.range(count).map(lambda i: tf.stack([i, 7 * i + 1]))
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(seeds.map(fn).batch(count))))


def _triangle_resize_1d(x, size, axis):
    """Antialiased bilinear resize along `axis` in numpy: a triangle filter widened by the
    downscale factor, pixel centres at (i + 0.5), weights normalised (as PIL and TF)."""
    n = x.shape[axis]
    scale = n / size
    support = max(scale, 1.0)
    weights = np.zeros((size, n))
    for o in range(size):
        centre = (o + 0.5) * scale
        taps = np.arange(n) + 0.5
        weights[o] = np.maximum(0.0, 1.0 - np.abs(taps - centre) / support)
        weights[o] /= weights[o].sum()
    return np.moveaxis(np.tensordot(weights, np.moveaxis(x, axis, 0), axes=1), 0, axis)


class ImagenetProtocolTest(tf.test.TestCase):
    """The ImageNet protocol on an image folder of odd-sized images, at 12 px crops."""

    SIZE = 12
    TRAIN_SIZES = ((37, 53), (80, 41), (29, 64), (50, 50), (61, 33), (45, 70))
    TEST_SIZES = ((40, 31), (27, 58), (33, 33))

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        cls.addClassCleanup(shutil.rmtree, cls.root)
        rng = np.random.default_rng(0)
        cls.written = {}
        for split, sizes in (("train", cls.TRAIN_SIZES), ("test", cls.TEST_SIZES)):
            for i, (h, w) in enumerate(sizes):
                folder = os.path.join(cls.root, split, f"class{i % 3}")
                os.makedirs(folder, exist_ok=True)
                image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                _write_png(os.path.join(folder, f"{i}.png"), image)
                cls.written[(split, h, w)] = (image, i % 3)
        cls.ds, cls.aug = data.load_for_training(
            "imagenet", "image_folder", cls.root, image_size=cls.SIZE
        )
        cls.kw = dict(mean=cls.ds.info.mean, std=cls.ds.info.std)

    def _epoch(self, **kwargs):
        args = dict(seed=3, epoch=0, augmentation=self.aug, **self.kw)
        args.update(kwargs)
        return _batches(data.epoch_batches(self.ds.train, 2, **args))

    def test_loads_native_sizes_and_selects_the_protocol(self):
        info = self.ds.info
        self.assertEqual(info.image_shape, (self.SIZE, self.SIZE, 3))
        self.assertEqual(info.num_examples, {"train": 6, "test": 3})
        pixels = (
            np.concatenate(
                [
                    image.reshape(-1, 3)
                    for (split, _, _), (image, _) in self.written.items()
                    if split == "train"
                ]
            )
            / 255.0
        )
        self.assertAllClose(info.mean, pixels.mean(axis=0), atol=1e-6)  # over every pixel
        self.assertAllClose(info.std, pixels.std(axis=0), atol=1e-6)
        self.assertEqual(self.aug, data.ResizedCropAugmentation(size=self.SIZE))
        for image, label in self.ds.train.as_numpy_iterator():  # native sizes, right labels
            expected, expected_label = self.written[("train",) + image.shape[:2]]
            self.assertAllEqual(image, expected)
            self.assertEqual(label, expected_label)
        test = list(self.ds.test.as_numpy_iterator())
        self.assertLen(test, 3)
        for image, _ in test:
            self.assertEqual(image.shape, (self.SIZE, self.SIZE, 3))
            self.assertEqual(image.dtype, np.uint8)
        default, _ = data.load_for_training("imagenet", "image_folder", self.root)
        self.assertEqual(default.info.image_shape, (224, 224, 3))
        cifar, cifar_aug = data.load_for_training("cifar", "image_folder", self.root, image_size=8)
        self.assertEqual(cifar.info.image_shape, (8, 8, 3))
        self.assertEqual(cifar_aug, data.Augmentation(pad=1, flip=True))
        digits, digits_aug = data.load_for_training("imagenet", "digits", image_size=6, cutout=2)
        self.assertEqual(digits.info.image_shape, (6, 6, 1))
        self.assertEqual(digits_aug, data.ResizedCropAugmentation(size=6, flip=False, cutout=2))
        x, _ = _batches(
            data.epoch_batches(
                digits.train,
                4,
                seed=0,
                epoch=0,
                mean=digits.info.mean,
                std=digits.info.std,
                augmentation=digits_aug,
            )
        )[0]
        self.assertEqual(x.shape, (4, 6, 6, 1))  # one channel: brightness and contrast only

    def test_epoch_deterministic_resumable_and_seeded(self):
        first = self._epoch()
        self.assertLen(first, 3)
        for x, _ in first:
            self.assertEqual(x.shape, (2, self.SIZE, self.SIZE, 3))
            self.assertEqual(x.dtype, np.float32)
        labels = np.concatenate([y for _, y in first])
        self.assertAllEqual(np.sort(labels), [0, 0, 1, 1, 2, 2])
        tf.random.set_seed(99)  # the TF global seed plays no part, also for varying sizes
        again = self._epoch()
        for (x1, y1), (x2, y2) in zip(first, again):
            self.assertAllEqual(x1, x2)
            self.assertAllEqual(y1, y2)
        resumed = self._epoch(skip_batches=1)
        self.assertLen(resumed, 2)
        for (x1, y1), (x2, y2) in zip(first[1:], resumed):
            self.assertAllEqual(x1, x2)
            self.assertAllEqual(y1, y2)
        for other in (self._epoch(seed=4), self._epoch(epoch=1)):
            self.assertNotAllClose(
                np.concatenate([x for x, _ in first]), np.concatenate([x for x, _ in other])
            )

    def test_varying_sizes_shuffle_in_stateless_blocks(self):
        ds = tf.data.Dataset.range(10).map(
            lambda i: (tf.fill(tf.stack([i + 1, 2, 1]), tf.cast(i, tf.uint8)), i)
        )

        def epoch():
            return _batches(
                data.epoch_batches(
                    ds,
                    1,
                    mean=(0.0,),
                    std=(1 / 255,),
                    seed=0,
                    epoch=0,
                    augmentation=None,
                    shuffle_buffer=4,
                )
            )

        out = epoch()
        for x, y in out:  # each image keeps its own size and label
            self.assertEqual(x.shape, (1, y[0] + 1, 2, 1))
            self.assertAllClose(x, np.full(x.shape, y[0]))
        labels = np.concatenate([y for _, y in out])
        self.assertAllEqual(np.sort(labels), np.arange(10))
        self.assertNotAllEqual(labels, np.arange(10))
        self.assertAllEqual(np.sort(labels[:4]), np.arange(4))  # blocks of 4
        tf.random.set_seed(5)  # stateless: the TF global seed plays no part
        self.assertAllEqual(np.concatenate([y for _, y in epoch()]), labels)

    def test_crop_boxes_follow_torchvision(self):
        count = 4000
        rng = np.random.default_rng(0)
        for height, width in ((200, 300), (37, 53), (80, 41), (20, 90)):
            boxes = np.stack(
                _over_seeds(lambda s: data.resized_crop_box(height, width, s), count),  # noqa: B023
                1,
            )
            reference = _torchvision_crop_boxes(height, width, count, rng)
            top, left, h, w = boxes.T
            self.assertTrue(
                np.all(
                    (h >= 1)
                    & (w >= 1)
                    & (top >= 0)
                    & (left >= 0)
                    & (top + h <= height)
                    & (left + w <= width)
                )
            )
            for got, want in ((boxes, reference),):
                area = got[:, 2] * got[:, 3] / (height * width)
                area_ref = want[:, 2] * want[:, 3] / (height * width)
                # Distributions of area fraction and aspect match torchvision's: two numpy runs of
                # 4000 draws differ by up to 0.017 (area) and 0.006 (log aspect) in these quantiles;
                # a uniform instead of log-uniform aspect moves the log-aspect ones by 0.03-0.05.
                self.assertAllClose(
                    np.quantile(area, [0.1, 0.5, 0.9]),
                    np.quantile(area_ref, [0.1, 0.5, 0.9]),
                    atol=0.03,
                )
                self.assertAllClose(
                    np.quantile(np.log(got[:, 3] / got[:, 2]), [0.1, 0.5, 0.9]),
                    np.quantile(np.log(want[:, 3] / want[:, 2]), [0.1, 0.5, 0.9]),
                    atol=0.015,
                )
                central = _torchvision_crop_boxes(height, width, 1, rng, scale=(2.0, 2.0))[0]

                def fallback_rate(b):
                    return np.mean(np.all(b == central, axis=1))  # noqa: B023 (called at once)

                self.assertAllClose(fallback_rate(got), fallback_rate(want), atol=0.025)
                # Offsets uniform over the free range: mean relative offset 1/2.
                for offset, free in (
                    (got[:, 0], height - got[:, 2]),
                    (got[:, 1], width - got[:, 3]),
                ):
                    self.assertAllClose(np.mean((offset + 0.5) / (free + 1)), 0.5, atol=0.03)
            if height == 200:  # sides >= 60 px: rounding moves area and aspect by < 2 %
                self.assertBetween(area.min(), 0.08 * 0.98, 0.1)
                self.assertGreater(area.max(), 0.85)  # at most 200 x 267 px fit ratio 4/3: 0.89
                aspect = w / h
                self.assertBetween(aspect.min(), 0.75 * 0.98, 0.76)
                self.assertBetween(aspect.max(), 1.32, 4 / 3 * 1.02)
        # No draw fits a 1 x 100 strip (nor a 100 x 1 one): the central crop of ratio 4/3 (3/4).
        self.assertEqual(
            data.resized_crop_box(1, 100, tf.constant([1, 2], tf.int64)), (0, 49, 1, 1)
        )
        self.assertEqual(
            data.resized_crop_box(100, 1, tf.constant([1, 2], tf.int64)), (49, 0, 1, 1)
        )
        self.assertEqual(data.resized_crop_box(3, 40, tf.constant([1, 2], tf.int64)), (0, 18, 3, 4))

    def test_color_jitter_factors_within_bounds(self):
        count = 600

        def jitter(image, **k):
            return _over_seeds(
                lambda s: data.color_jitter(
                    tf.constant(image, tf.float32),
                    s,
                    **dict(dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0), **k),
                ),
                count,
            )

        pixels = np.array([[[0.6, 0.4, 0.3], [0.2, 0.3, 0.5]]], np.float32)  # [1, 2, 3]
        gray = pixels @ np.array([0.2989, 0.587, 0.114], np.float32)
        factors = {
            "brightness": jitter(pixels, brightness=0.4)[:, 0, 0, 0] / pixels[0, 0, 0],
            "contrast": (
                (
                    lambda out: (
                        (out[:, 0, 0, 0] - out[:, 0, 1, 0]) / (pixels[0, 0, 0] - pixels[0, 1, 0])
                    )
                )(jitter(pixels, contrast=0.4))
            ),
            "saturation": (
                (jitter(pixels, saturation=0.4)[:, 0, 0, 0] - gray[0, 0])
                / (pixels[0, 0, 0] - gray[0, 0])
            ),
        }
        for name, f in factors.items():
            self.assertBetween(f.min(), 0.6 - 1e-4, 0.62, msg=name)
            self.assertBetween(f.max(), 1.38, 1.4 + 1e-4, msg=name)
        hued = jitter(pixels, hue=0.2)
        shifts = []
        for out in hued:
            h_in, h_out = (colorsys.rgb_to_hsv(*p)[0] for p in (pixels[0, 0], out[0, 0]))
            shifts.append((h_out - h_in + 0.5) % 1.0 - 0.5)
            self.assertAllClose(
                colorsys.rgb_to_hsv(*out[0, 0])[1:],
                colorsys.rgb_to_hsv(*pixels[0, 0])[1:],
                atol=1e-4,
            )  # saturation and value kept
        self.assertBetween(min(shifts), -0.2 - 1e-4, -0.18)
        self.assertBetween(max(shifts), 0.18, 0.2 + 1e-4)
        everything = jitter(pixels, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
        self.assertBetween(everything.min(), 0.0, 1.0)
        self.assertBetween(everything.max(), 0.0, 1.0)
        self.assertAllClose(jitter(pixels)[0], pixels, atol=1e-6)

    def test_center_crop_matches_numpy_resize(self):
        size = 28  # the shorter side goes to round(28 * 256 / 224) = 32
        for height, width, crop_top, crop_left in ((90, 60, 10, 2), (50, 120, 2, 24)):
            ys, xs = np.mgrid[:height, :width].astype(np.float64)
            gradient = np.stack([ys, 1.5 * xs, 200 - ys - xs / 2], -1)[..., :3]
            image = np.round(np.clip(gradient, 0, 255)).astype(np.uint8)
            new_h, new_w = (
                (32, width * 32 // height) if height < width else (height * 32 // width, 32)
            )
            expected = _triangle_resize_1d(
                _triangle_resize_1d(image.astype(np.float64), new_h, 0), new_w, 1
            )
            expected = expected[crop_top : crop_top + size, crop_left : crop_left + size]
            got = data.center_crop(tf.constant(image), size).numpy()
            self.assertEqual(got.shape, (size, size, 3))
            self.assertAllClose(got, expected, atol=0.5 + 1e-3)  # rounded to uint8
        square = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
        self.assertAllEqual(data.center_crop(tf.constant(square), size), square[2:30, 2:30])
        self.assertAllEqual(
            [next(iter(self.ds.test))[0].numpy()],
            [data.center_crop(tf.constant(self.written[("test", 40, 31)][0]), self.SIZE).numpy()],
        )

    def test_resized_crop_augmentation_is_crop_flip_jitter(self):
        """With flip and jitter off, a training example is its box resized (numpy resize)."""
        plain = data.ResizedCropAugmentation(
            size=self.SIZE, flip=False, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
        )
        image, _ = self.written[("train", 80, 41)]
        seed = tf.constant([5, 6], tf.int64)
        box_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=5))[0]
        top, left, h, w = (int(v) for v in data.resized_crop_box(80, 41, box_seed))
        box = image[top : top + h, left : left + w].astype(np.float64)
        expected = _triangle_resize_1d(_triangle_resize_1d(box, self.SIZE, 0), self.SIZE, 1)
        got = data.augment_image(
            tf.constant(image), seed, plain, mean=(0.0,) * 3, std=(1 / 255,) * 3
        )
        self.assertAllClose(got, expected, atol=1e-3)

    def test_train_uses_the_protocol_for_the_imagenet_network(self):
        from tf_amended_darts import train  # pylint: disable=g-import-not-at-top  (builds networks)

        config = train.TrainConfig(
            genotype="DARTS_V2",
            network="imagenet",
            dataset="image_folder",
            data_dir=self.root,
            image_size=16,
            channels=4,
            cells=3,
            auxiliary=False,
            cutout=0,
            batch_size=2,
            epochs=1,
            steps_per_epoch=1,
        )
        output = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, output)
        with (
            mock.patch.object(data, "epoch_batches", wraps=data.epoch_batches) as batches,
            open(os.devnull, "w") as quiet,
        ):
            result = train.train(config, output, log_stream=quiet, progress_stream=quiet)
        self.assertEqual(
            batches.call_args.kwargs["augmentation"], data.ResizedCropAugmentation(size=16)
        )
        with open(os.path.join(output, "run.json")) as f:
            self.assertEqual(json.load(f)["dataset_info"]["image_shape"], [16, 16, 3])
        self.assertTrue(np.isfinite(result.valid["valid_loss"]))


if __name__ == "__main__":
    absltest.main()
