"""Labelled image sources: ImageFolder trees, flat folders with a ground-truth file, IDX files (Fashion-MNIST),
read without torch."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
from PIL import Image

from resnet_deploy.calibration.images import open_image
from resnet_deploy.calibration.labels import ClassLabels, read_ground_truth
from resnet_deploy.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Where Debian's dataset-fashion-mnist installs its four IDX files; RESNET_DEPLOY_FASHION_MNIST overrides.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_IDX_NAMES = {"train": "train", "test": "t10k"}
# Folder names a split goes by beside ``train/`` (ImageNet's is ``val/``).
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val", "validation")}


class ImageSource(Protocol):
    """A labelled, indexable image collection."""

    class_names: tuple[str, ...]
    labels: np.ndarray  # int64, one per image

    @property
    def name(self) -> str: ...

    def __len__(self) -> int: ...

    def read(self, index: int, *, min_side: int | None = None) -> Image.Image | np.ndarray:
        """The image at ``index``; raises OSError/ValueError when it cannot be decoded. ``min_side`` is
        the shorter side the caller needs (huge files may then be decoded at a reduced size)."""

    def ident(self, index: int) -> str:
        """A stable identity for manifests and overlap checks (a path, or file#index)."""


@dataclass
class ImageFolderSource:
    """``root/<class>/<image>``: classes are the sorted subfolder names, as torchvision's ImageFolder."""

    root: Path
    class_names: tuple[str, ...]
    files: list[Path]
    labels: np.ndarray

    @property
    def name(self) -> str:
        return str(self.root.resolve())

    @classmethod
    def open(cls, root: str | os.PathLike, *, flag: str = "--data") -> ImageFolderSource:
        root = Path(root)
        if not root.exists():
            raise DataError(f"{flag}: folder {root} does not exist. Give an image folder with one subfolder per class.")
        if not root.is_dir():
            raise DataError(f"{flag}: {root} is not a folder. Give an image folder with one subfolder per class.")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            for f in sorted((root / name).rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    files.append(f)
                    labels.append(label)
        if not classes or not files:
            raise DataError(
                f"{flag}: {root} holds no images in class subfolders. Expected {root}/<class>/<image> "
                f"with extensions {', '.join(IMAGE_EXTENSIONS)}."
            )
        return cls(root, tuple(classes), files, np.asarray(labels, dtype=np.int64))

    @classmethod
    def open_flat(cls, root: str | os.PathLike, truth: Mapping[str, int], class_names: tuple[str, ...], *,
                  flag: str, truth_flag: str = "--ground-truth") -> ImageFolderSource:
        """``root/<image>`` labelled by ``truth`` (file name, or name without extension -> class index)."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{flag}: {root} is not a folder. With {truth_flag}, give the folder of images it labels.")
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        labels = [truth.get(f.name, truth.get(f.stem)) for f in files]
        missing = [f.name for f, label in zip(files, labels) if label is None]
        if not files or missing:
            what = f"{len(missing)} of its {len(files)} images, e.g. {missing[0]}," if missing else "no images"
            raise DataError(f"{flag}: {root} holds {what} that {truth_flag} does not label. Give the folder the "
                            f"ground-truth file describes (images directly in it, {', '.join(IMAGE_EXTENSIONS)}).")
        return cls(root, class_names, files, np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int, *, min_side: int | None = None) -> Image.Image:
        return open_image(self.files[index], min_side=min_side)

    def ident(self, index: int) -> str:
        return str(self.files[index].relative_to(self.root))


@dataclass
class ArraySource:
    """Images already decoded into a uint8 array (N, H, W) or (N, H, W, C), e.g. from IDX files."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int, *, min_side: int | None = None) -> np.ndarray:
        return self.images[index]

    def ident(self, index: int) -> str:
        return f"{self.name}#{index}"


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST. The array is read-only
    and kept for the process: a process that builds more than once (the Python API, the test suite) decompresses
    Fashion-MNIST's training images (0.34 s here) once, until the file changes."""
    try:
        st = path.stat()
    except OSError as err:
        raise DataError(f"{path} is not a readable IDX file ({err}). "
                        "Reinstall the data or point to another copy.") from None
    return _read_idx(path.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(path: Path, size: int, mtime_ns: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as err:
        raise DataError(f"{path} is not a readable IDX file ({err}). "
                        "Reinstall the data or point to another copy.") from None


def _find_idx(folder: Path, split: str) -> tuple[Path, Path] | None:
    stem = _IDX_NAMES[split]
    for suffix in (".gz", ""):
        images = folder / f"{stem}-images-idx3-ubyte{suffix}"
        labels = folder / f"{stem}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def fashion_mnist_dir() -> Path | None:
    """The folder of Fashion-MNIST's IDX files: RESNET_DEPLOY_FASHION_MNIST when set (a wrong one is an error,
    never a silent fall back to another copy), else the system copy, else None."""
    given = os.environ.get("RESNET_DEPLOY_FASHION_MNIST", "")
    if given:
        if not _find_idx(Path(given), "train"):
            state = "holds" if Path(given).is_dir() else "is not a folder, so it holds"
            raise DataError(
                f"RESNET_DEPLOY_FASHION_MNIST={given} {state} no Fashion-MNIST IDX files (train-images-idx3-ubyte"
                "[.gz] and train-labels-idx1-ubyte[.gz], t10k-* for the test split). Point the variable at the "
                f"folder holding the four files, or unset it to use the system copy ({', '.join(FASHION_MNIST_DIRS)}).")
        return Path(given)
    return next((Path(c) for c in FASHION_MNIST_DIRS if _find_idx(Path(c), "train")), None)


def open_idx(folder: Path, split: str, *, flag: str,
             class_names: tuple[str, ...] = FASHION_MNIST_CLASSES) -> ArraySource:
    found = _find_idx(folder, split)
    if not found:
        raise DataError(f"{flag}: {folder} has no {_IDX_NAMES[split]}-images/labels IDX files for the {split} split.")
    images, labels = (read_idx(p) for p in found)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{flag}: {found[0]} and {found[1]} do not match (shapes {images.shape}, {labels.shape}).")
    if labels.ndim != 1 or (len(labels) and int(labels.max()) >= len(class_names)):
        bad = int((labels >= len(class_names)).sum()) if labels.ndim == 1 else len(labels)
        raise DataError(
            f"{flag}: {found[1]} holds {bad} label(s) outside 0..{len(class_names) - 1} (largest "
            f"{int(labels.max())}), but the data has {len(class_names)} classes. The labels file is damaged "
            "or belongs to another data set."
        )
    return ArraySource(f"{folder.name}/{split}", images, labels.astype(np.int64), class_names)


def _split_folder(path: Path, split: str) -> Path | None:
    """``path/<split>`` when ``path`` holds ``train/`` and a test split (``test/``, ``val/`` or ``validation/``)."""
    tests = [path / name for name in SPLIT_FOLDERS["test"] if (path / name).is_dir()]
    if not (path / "train").is_dir() or not tests:
        return None
    return path / "train" if split == "train" else tests[0]


def open_source(spec: str | os.PathLike | None, split: str, *, flag: str, labels: ClassLabels | None = None,
                ground_truth: Path | None = None) -> ImageSource:
    """Resolve a data flag: ``fashion-mnist`` (or None), a folder of IDX files, an ImageFolder, a folder
    holding ``train/`` and ``test/`` (or ``val/``) ImageFolders (the split picks one), or with ``ground_truth``
    a flat folder of images. ``labels`` names the classes (and maps class folders by their ids)."""
    if ground_truth is not None:
        truth = read_ground_truth(ground_truth, labels)
        names = labels.names if labels is not None else tuple(str(i) for i in range(max(truth.values()) + 1))
        path = Path(FASHION_MNIST if spec is None else spec)
        return ImageFolderSource.open_flat(_split_folder(path, split) or path, truth, names, flag=flag)
    if spec is None or str(spec) == FASHION_MNIST:
        idx = fashion_mnist_dir()
        if idx is None:
            raise DataError(
                f"{flag}: Fashion-MNIST is not installed. On Debian/Ubuntu run "
                "`sudo apt-get install dataset-fashion-mnist`, or set RESNET_DEPLOY_FASHION_MNIST to a folder "
                "holding its four IDX files, or pass an image folder."
            )
        return relabel(open_idx(idx, split, flag=flag), labels, flag=flag)
    path = Path(spec)
    if path.is_dir() and _find_idx(path, split):
        return relabel(open_idx(path, split, flag=flag), labels, flag=flag)
    return relabel(ImageFolderSource.open(_split_folder(path, split) or path, flag=flag), labels, flag=flag)


def relabel(source: ImageSource, labels: ClassLabels | None, *, flag: str) -> ImageSource:
    """``source`` with the class names of ``labels``: class folders map to outputs by id when the labels
    file gives ids (a subset of the classes may be present), by sorted position otherwise."""
    if labels is None:
        return source
    if labels.ids and isinstance(source, ImageFolderSource):
        unknown = [c for c in source.class_names if c not in labels.ids]
        if unknown:
            raise DataError(f"{flag}: {source.name} has class folder(s) {', '.join(unknown[:3])} that "
                            f"{labels.origin} does not list. Point --labels at the model's class list.")
        remap = np.asarray([labels.ids.index(c) for c in source.class_names], dtype=np.int64)
        return dataclasses.replace(source, class_names=labels.names, labels=remap[source.labels])
    if len(labels) != len(source.class_names):
        raise DataError(f"{flag}: {source.name} has {len(source.class_names)} classes but {labels.origin} names "
                        f"{len(labels)}. Give a labels file with one name per class, in the model's output order.")
    return dataclasses.replace(source, class_names=labels.names)  # type: ignore[type-var]


def has_split(spec: str | os.PathLike | None, split: str) -> bool:
    """Whether ``spec`` names data with a real ``split`` (not a plain folder that any split falls back to)."""
    if spec is None or str(spec) == FASHION_MNIST:
        folder = fashion_mnist_dir()
        return folder is not None and _find_idx(folder, split) is not None
    path = Path(spec)
    return path.is_dir() and (_find_idx(path, split) is not None or _split_folder(path, split) is not None)


def check_classes(source: ImageSource, num_classes: int, *, flag: str) -> None:
    if len(source.class_names) != num_classes:
        raise DataError(
            f"{flag}: {source.name} has {len(source.class_names)} classes but the model predicts {num_classes}. "
            "Point the flag at data with the model's classes (one subfolder per class, in the model's order)."
        )
