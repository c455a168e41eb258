"""calibration.sources and calibration.sampling: folders and IDX files in, deterministic decoded batches out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx, write_idx_split
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_deploy.calibration import sources
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import MAX_BAD_FRACTION, choose, decode
from resnet_deploy.calibration.sources import (
    FASHION_MNIST_CLASSES,
    ArraySource,
    ImageFolderSource,
    check_classes,
    open_idx,
    open_source,
    read_idx,
)
from resnet_deploy.errors import DataError

PREP32 = Preprocessing((32, 32), 3, (0.5,) * 3, (0.25,) * 3)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_folder(root: Path, per_class: dict[str, list[str]], *, size=(20, 12)) -> Path:
    """root/<class>/<n>.<ext>: a real image for every listed extension, coloured by class."""
    for label, (name, exts) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i, ext in enumerate(exts):
            img = Image.new("RGB", size, (40 * label, 10 * i, 200))
            img.save(root / name / f"{i:02d}{ext}")
    return root


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = make_folder(tmp_path / "data", {
        "zebra": [".png", ".jpg", ".webp"],
        "cat": [".png", ".jpeg", ".bmp", ".JPG"],
        "dog": [".webp", ".png"],
    })
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(root / ".cache" / "hidden.png")
    (root / "dog" / "more").mkdir()
    Image.new("L", (9, 9), 3).save(root / "dog" / "more" / "nested.png")
    return root


class TestImageFolder:
    def test_classes_files_and_labels(self, folder):
        src = ImageFolderSource.open(folder)
        assert src.class_names == ("cat", "dog", "zebra")  # sorted, hidden folder ignored
        assert len(src) == 4 + 3 + 3
        assert src.labels.dtype == np.int64
        assert src.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert all(f.suffix.lower() != ".txt" for f in src.files)
        assert src.ident(4) == "dog/00.webp" and "dog/more/nested.png" in {src.ident(i) for i in range(len(src))}
        assert src.name == str(folder.resolve())

    def test_every_format_decodes(self, folder):
        src = ImageFolderSource.open(folder)
        for i in range(len(src)):
            img = src.read(i)
            assert img.size in ((20, 12), (9, 9))
        batch = decode(src, np.arange(len(src)), PREP32, flag="--data")
        assert batch.pixels.shape == (10, 32, 32, 3) and batch.pixels.dtype == np.uint8
        assert batch.skipped == ()
        np.testing.assert_array_equal(batch.labels, src.labels)
        assert batch.inputs(PREP32).shape == (10, 3, 32, 32)

    def test_missing_folder_names_the_flag(self, tmp_path):
        with pytest.raises(DataError, match=r"^--calib-data: folder .* does not exist"):
            ImageFolderSource.open(tmp_path / "nowhere", flag="--calib-data")

    def test_file_instead_of_folder(self, tmp_path):
        (tmp_path / "f.png").write_bytes(b"x")
        with pytest.raises(DataError, match=r"^--data: .* is not a folder"):
            ImageFolderSource.open(tmp_path / "f.png")

    def test_empty_folder(self, tmp_path):
        with pytest.raises(DataError, match=r"^--data: .* holds no images in class subfolders"):
            ImageFolderSource.open(tmp_path)

    def test_class_folders_without_images(self, tmp_path):
        (tmp_path / "cat").mkdir()
        (tmp_path / "cat" / "readme.md").write_text("nothing here")
        with pytest.raises(DataError, match="holds no images"):
            ImageFolderSource.open(tmp_path)

    def test_images_loose_in_the_root_are_not_a_dataset(self, tmp_path):
        Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
        with pytest.raises(DataError, match="<class>/<image>"):
            ImageFolderSource.open(tmp_path)

    def test_train_and_test_split_layout(self, tmp_path):
        make_folder(tmp_path / "train", {"a": [".png"] * 1, "b": [".png"]})
        make_folder(tmp_path / "test", {"a": [".jpg"], "b": [".jpg"]})
        assert open_source(tmp_path, "test", flag="--data").ident(0) == "a/00.jpg"
        assert open_source(tmp_path, "train", flag="--data").ident(1) == "b/00.png"

    def test_check_classes(self, folder):
        src = ImageFolderSource.open(folder)
        check_classes(src, 3, flag="--data")
        with pytest.raises(DataError, match=r"^--data: .* has 3 classes but the model predicts 10"):
            check_classes(src, 10, flag="--data")


class TestUnreadableImages:
    @pytest.fixture()
    def twenty(self, tmp_path) -> Path:
        return make_folder(tmp_path / "data", {"a": [".png"] * 10, "b": [".jpg"] * 10})

    def break_files(self, root: Path, n: int) -> None:
        files = sorted(root.rglob("*.*"))
        for k, f in enumerate(files[:n]):
            data = f.read_bytes()
            # alternate garbage and truncation: PIL raises OSError/SyntaxError/ValueError for these
            f.write_bytes(b"\x00garbage" * 8 if k % 2 == 0 else data[: len(data) // 2])

    def test_a_few_are_skipped_and_counted(self, twenty):
        self.break_files(twenty, 1)
        src = ImageFolderSource.open(twenty)
        batch = decode(src, np.arange(len(src)), PREP32, flag="--data")
        assert len(batch) == 19 and len(batch.skipped) == 1
        assert batch.skipped[0].startswith("a/00.png: ")
        assert "a/00.png" not in batch.idents
        assert batch.labels.tolist() == [0] * 9 + [1] * 10

    def test_too_many_is_a_data_error(self, twenty):
        assert MAX_BAD_FRACTION * 20 < 2
        self.break_files(twenty, 2)
        src = ImageFolderSource.open(twenty)
        with pytest.raises(DataError, match=r"^--calib-data: 2 of 20 images .* could not be read"):
            decode(src, np.arange(len(src)), PREP32, flag="--calib-data")

    def test_truncated_jpeg_alone_is_skipped(self, twenty):
        f = twenty / "b" / "03.jpg"
        f.write_bytes(f.read_bytes()[:100])
        batch = decode(ImageFolderSource.open(twenty), np.arange(20), PREP32, flag="--data")
        assert batch.skipped and batch.skipped[0].startswith("b/03.jpg")

    def test_all_unreadable(self, tmp_path):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "x.png").write_bytes(b"nope")
        with pytest.raises(DataError, match="--data"):
            decode(ImageFolderSource.open(tmp_path), np.arange(1), PREP32, flag="--data")


class TestIdx:
    @pytest.mark.parametrize("gz", [False, True])
    def test_round_trip(self, tmp_path, gz):
        images = np.random.default_rng(0).integers(0, 256, (5, 6, 7), dtype=np.uint8)
        path = write_idx(tmp_path / ("x.idx" + (".gz" if gz else "")), images)
        np.testing.assert_array_equal(read_idx(path), images)
        labels = np.arange(5, dtype=np.uint8)
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "y.idx", labels)), labels)

    def test_decoded_once_per_process_until_the_file_changes(self, tmp_path):
        path = write_idx(tmp_path / "x.idx.gz", np.zeros((4, 3, 3), dtype=np.uint8))
        first = read_idx(path)
        assert read_idx(path) is first and not first.flags.writeable  # shared, so nobody may write into it
        ones = np.ones((5, 3, 3), dtype=np.uint8)
        write_idx(path, ones)
        os.utime(path, ns=(1, 1))  # a new size and mtime: decoded again
        np.testing.assert_array_equal(read_idx(path), ones)
        path.unlink()
        with pytest.raises(DataError, match="is not a readable IDX file"):
            read_idx(path)

    @pytest.mark.parametrize("damage", ["magic", "dtype", "truncated", "empty", "bad-gzip"])
    def test_damaged_files(self, tmp_path, damage):
        good = write_idx(tmp_path / "good.idx", np.zeros((3, 4, 4), dtype=np.uint8)).read_bytes()
        data = {
            "magic": b"\x01\x00" + good[2:],
            "dtype": good[:2] + b"\x0d" + good[3:],  # float32 IDX: not what images are stored as
            "truncated": good[:-5],
            "empty": b"",
            "bad-gzip": b"\x1f\x8b not really gzip",
        }[damage]
        path = tmp_path / ("bad.idx.gz" if damage == "bad-gzip" else "bad.idx")
        path.write_bytes(data)
        with pytest.raises(DataError, match="is not a readable IDX file"):
            read_idx(path)

    @pytest.mark.parametrize("gz", [False, True])
    def test_folder_of_idx_files(self, tmp_path, gz):
        rng = np.random.default_rng(1)
        write_idx_split(tmp_path, "train", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
                        np.arange(12, dtype=np.uint8) % 10, gz=gz)
        write_idx_split(tmp_path, "t10k", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
                        np.arange(4, dtype=np.uint8), gz=gz)
        train = open_source(tmp_path, "train", flag="--data")
        test = open_source(tmp_path, "test", flag="--data")
        assert isinstance(train, ArraySource) and (len(train), len(test)) == (12, 4)
        assert train.class_names == FASHION_MNIST_CLASSES
        assert train.labels.dtype == np.int64 and train.read(3).shape == (28, 28)
        assert train.ident(3) == f"{tmp_path.name}/train#3"

    def test_images_and_labels_disagree(self, tmp_path):
        write_idx_split(tmp_path, "train", np.zeros((5, 8, 8), np.uint8), np.zeros(4, np.uint8))
        with pytest.raises(DataError, match=r"^--data: .* do not match"):
            open_idx(tmp_path, "train", flag="--data")

    def test_missing_split(self, tmp_path):
        write_idx_split(tmp_path, "train", np.zeros((5, 8, 8), np.uint8), np.zeros(5, np.uint8))
        with pytest.raises(DataError, match=r"^--test-data: .* no t10k-images"):
            open_idx(tmp_path, "test", flag="--test-data")

    def test_fashion_mnist_location_from_the_environment(self, tmp_path, monkeypatch):
        write_idx_split(tmp_path, "train", np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8), gz=True)
        monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", ())
        monkeypatch.setenv("RESNET_DEPLOY_FASHION_MNIST", str(tmp_path))
        assert len(open_source("fashion-mnist", "train", flag="--data")) == 3
        assert len(open_source(None, "train", flag="--data")) == 3

    def test_fashion_mnist_not_installed(self, monkeypatch):
        monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", ())
        monkeypatch.delenv("RESNET_DEPLOY_FASHION_MNIST", raising=False)
        with pytest.raises(DataError, match=r"^--data: Fashion-MNIST is not installed.*apt-get install"):
            open_source("fashion-mnist", "train", flag="--data")


class TestChoose:
    def test_deterministic_sorted_and_unique(self):
        a = choose(1000, 50, seed=7)
        np.testing.assert_array_equal(a, choose(1000, 50, seed=7))
        assert len(a) == 50 and len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()
        assert not np.array_equal(a, choose(1000, 50, seed=8))

    def test_shuffled_draws_the_same_set_in_drawn_order(self):
        a, b = choose(1000, 50, seed=7), choose(1000, 50, seed=7, shuffled=True)
        np.testing.assert_array_equal(a, np.sort(b))
        assert not (np.diff(b) > 0).all()
        everything = choose(100, None, seed=3, shuffled=True, exclude=np.arange(10))
        np.testing.assert_array_equal(np.sort(everything), np.arange(10, 100))
        assert not (np.diff(everything) > 0).all()
        np.testing.assert_array_equal(everything, choose(100, None, seed=3, shuffled=True, exclude=np.arange(10)))

    def test_exclude_makes_disjoint_sets(self):
        calib = choose(500, 100, seed=0)
        evaluation = choose(500, 300, seed=0, exclude=calib)
        assert len(evaluation) == 300
        assert not set(calib.tolist()) & set(evaluation.tolist())

    def test_all_when_count_is_none_or_too_large(self):
        np.testing.assert_array_equal(choose(10, None, seed=0), np.arange(10))
        np.testing.assert_array_equal(choose(10, 99, seed=0, exclude=np.array([2, 3])), [0, 1, 4, 5, 6, 7, 8, 9])

    @settings(max_examples=60, deadline=None)
    @given(n=st.integers(1, 300), count=st.none() | st.integers(0, 400), seed=st.integers(0, 2**32 - 1),
           excluded=st.lists(st.integers(0, 299), max_size=50))
    def test_properties(self, n, count, seed, excluded):
        exclude = np.array(excluded, dtype=np.int64)
        out = choose(n, count, seed=seed, exclude=exclude)
        pool = sorted(set(range(n)) - set(excluded))
        assert set(out.tolist()) <= set(pool)
        assert len(out) == (len(pool) if count is None else min(count, len(pool)))
        assert len(set(out.tolist())) == len(out)
        np.testing.assert_array_equal(out, choose(n, count, seed=seed, exclude=exclude))


class TestDecodeArrays:
    def test_native_size_takes_the_fast_path(self):
        images = np.random.default_rng(2).integers(0, 256, (20, 28, 28), dtype=np.uint8)
        src = ArraySource("toy", images, np.arange(20) % 10, FASHION_MNIST_CLASSES)
        prep = Preprocessing((28, 28), 1, (0.5,), (0.5,))
        idx = choose(20, 5, seed=3)
        batch = decode(src, idx, prep, flag="--data")
        np.testing.assert_array_equal(batch.pixels[:, :, :, 0], images[idx])
        assert batch.idents == tuple(f"toy#{i}" for i in idx)

    def test_resized_when_sizes_differ(self):
        images = np.full((4, 28, 28), 100, dtype=np.uint8)
        src = ArraySource("toy", images, np.zeros(4, dtype=np.int64), ("a",))
        batch = decode(src, np.arange(4), PREP32, flag="--data")
        assert batch.pixels.shape == (4, 32, 32, 3) and (batch.pixels == 100).all()

    def test_digest_names_the_image_set(self):
        src = ArraySource("toy", np.zeros((10, 8, 8), np.uint8), np.zeros(10, np.int64), ("a",))
        prep = Preprocessing((8, 8), 1, (0.5,), (0.5,))
        a = decode(src, np.array([1, 5, 7]), prep, flag="--data")
        b = decode(src, np.array([7, 1, 5]), prep, flag="--data")
        c = decode(src, np.array([1, 5, 8]), prep, flag="--data")
        assert a.digest() == b.digest() != c.digest()
        assert len(a.digest()) == 64


class TestRealData:
    def test_fashion_mnist(self, fashion_mnist):
        train = open_source("fashion-mnist", "train", flag="--data")
        test = open_source("fashion-mnist", "test", flag="--data")
        assert (len(train), len(test)) == (60_000, 10_000)
        assert train.images.shape[1:] == (28, 28) and train.class_names == FASHION_MNIST_CLASSES
        assert np.bincount(test.labels).tolist() == [1000] * 10
        prep = Preprocessing((28, 28), 1, (0.286,), (0.353,))
        batch = decode(test, choose(len(test), 64, seed=0), prep, flag="--data")
        assert batch.pixels.shape == (64, 28, 28, 1) and batch.pixels.std() > 10

    @pytest.mark.cifar
    def test_cifar10_imagefolder(self, cifar10_dir):
        train = open_source(cifar10_dir, "train", flag="--data")
        test = open_source(cifar10_dir, "test", flag="--data")
        assert train.class_names == test.class_names == CIFAR10_CLASSES
        assert (len(train), len(test)) == (10_000, 10_000)
        calib = choose(len(train), 40, seed=0)
        batch = decode(train, calib, PREP32, flag="--calib-data")
        assert batch.pixels.shape == (40, 32, 32, 3) and batch.skipped == ()
        assert np.array_equal(batch.labels, train.labels[calib])
        assert all(i.endswith(".jpg") for i in batch.idents)
