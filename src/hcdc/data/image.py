"""Image classification datasets as one typed object, :class:`ImageData`, and their loaders.

Loaders: the CIFAR-10 JPEG archive (decoded once, then cached), the CIFAR-10/100 python batches,
an image folder (``[train|test]/<class>/<image>``) and an ``.npz`` of uint8 arrays. Each one
holds out a seeded, class-stratified validation split of the training images and raises a single
:class:`~hcdc.errors.DataError` for any bad input.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..io import atomic_write_bytes
from ..paths import cache_dir
from .npz import load_npz
from .safe_pickle import load_pickle

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class ImageData:
    """An image classification dataset: uint8 images [N,H,W,C] and int64 labels [N] per split.

    ``classes[i]`` names label ``i``. Every loader returns one of these, already validated.
    """

    name: str
    classes: tuple[str, ...]
    x_train: torch.Tensor
    x_val: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor
    y_val: torch.Tensor
    y_test: torch.Tensor

    def validate(self) -> ImageData:
        """Check dtypes, shapes, lengths and label range; return self or raise one DataError."""
        problem = self._problem()
        if problem:
            raise DataError(f"image dataset '{self.name}': {problem}")
        return self

    def _problem(self) -> str | None:
        if not self.classes:
            return "no classes"
        k = len(self.classes)
        for split in SPLITS:
            x, y = self.split(split)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
                return f"x_{split} must be a uint8 tensor [N,H,W,C], got {_describe(x)}"
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
                return f"y_{split} must be an int64 tensor [N], got {_describe(y)}"
            if x.shape[1:] != self.x_train.shape[1:]:
                shapes = tuple(x.shape[1:]), tuple(self.x_train.shape[1:])
                return f"x_{split} images are {shapes[0]} (H,W,C) but x_train's are {shapes[1]}"
            if len(x) != len(y):
                return f"x_{split} has {len(x)} images but y_{split} has {len(y)} labels"
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
                return f"y_{split} has labels in [{int(y.min())}, {int(y.max())}], outside [0, {k}) for {k} classes"
        if len(self.x_train) == 0:
            return "the training set is empty"
        if k < 2:
            return f"{k} class {list(self.classes)}: ranking classifiers needs at least 2 classes"
        return None

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) pair of ``split``: 'train', 'val' or 'test'."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        h, w, c = self.x_train.shape[1:]
        return (h, w, c)

    @cached_property
    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.x_train.shape[-1]
        counts = torch.zeros(c, 256, dtype=torch.float64)  # per-channel histograms: exact and fast
        for chunk in self.x_train.split(4096):
            for channel in range(c):
                counts[channel] += torch.bincount(chunk[..., channel].reshape(-1), minlength=256)
        values = torch.arange(256, dtype=torch.float64) / 255
        n = counts.sum(1)
        mean = counts @ values / n
        std = (counts @ values.square() / n - mean.square()).clamp_min(0).sqrt()
        return mean, std

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean of x_train in [0, 1] units, float64 [C]."""
        return self._stats[0]

    @property
    def std(self) -> torch.Tensor:
        """Per-channel standard deviation of x_train in [0, 1] units, float64 [C]."""
        return self._stats[1]

    def normalized(self, split: str) -> torch.Tensor:
        """The images of ``split`` as float32 [N,C,H,W]: ``(x / 255 - mean) / std`` with train stats."""
        x, _ = self.split(split)
        n, h, w, c = x.shape
        out = torch.empty((n, c, h, w), dtype=torch.float32).copy_(x.permute(0, 3, 1, 2))
        std = torch.where(self.std > 0, self.std, 1.0)  # a constant channel maps to 0, not NaN
        return out.div_(255).sub_(self.mean.float().view(1, c, 1, 1)).div_(std.float().view(1, c, 1, 1))

    def summary(self) -> dict[str, Any]:
        """Name, classes, image shape and split sizes as a JSON-ready dict."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "train": len(self.x_train),
            "val": len(self.x_val),
            "test": len(self.x_test),
        }


def data_fingerprint(data: ImageData) -> str:
    """A hash of ``data``'s content (name, classes, every split's images and labels), for cache keys."""
    h = hashlib.sha256(json.dumps([data.name, list(data.classes), list(data.image_shape)]).encode())
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        h.update(f"{split}:{len(y)}".encode())
        h.update(x.contiguous().numpy().data)
        h.update(y.contiguous().numpy().data)
    return h.hexdigest()[:16]


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{value.dtype} with shape {tuple(value.shape)}"
    return type(value).__name__


def _stratified_mask(labels: np.ndarray, size: Any, seed: int, what: str) -> np.ndarray:
    """Boolean mask of ``size`` items drawn per class in proportion to its count (largest remainder)."""
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= size < n:
        raise DataError(f"{what} must be an integer in [0, {n}) for a training set of {n} images, got {size!r}")
    classes, counts = np.unique(labels, return_counts=True)
    take, remainder = np.divmod(int(size) * counts, n)
    take[np.argsort(-remainder, kind="stable")[: int(size) - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for label, k in zip(classes, take):
        mask[rng.permutation(np.flatnonzero(labels == label))[:k]] = True
    return mask


def split_validation(
    x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified hold-out: returns ``(x_train, y_train, x_val, y_val)``.

    Each class gives ``val_size`` times its share of the images (10,000 of CIFAR-10's 50,000 is
    1,000 per class); both parts keep the original order. ``val_size`` may be 0; a negative one or
    one of at least ``len(x)`` is a DataError.
    """
    mask = _stratified_mask(np.asarray(y), val_size, seed, "val_size")
    keep, held = np.flatnonzero(~mask), np.flatnonzero(mask)
    return x[keep], y[keep], x[held], y[held]


def _finish(name, classes, x_train, y_train, x_test, y_test, val_size, seed) -> ImageData:
    """Validate the arrays as an ImageData, then hold out the validation split."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, x_test)]
    labels = [torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in (y_train, y_test)]
    data = ImageData(name, tuple(classes), tensors[0], tensors[0][:0], tensors[1], labels[0], labels[0][:0], labels[1])
    data.validate()
    if val_size is None:
        val_size = round(0.2 * len(data.x_train))
    x_tr, y_tr, x_val, y_val = split_validation(data.x_train, data.y_train, val_size, seed)
    return replace(data, x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val).validate()


# --- image files: JPEG archive and image folder -------------------------------------------------


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _decode(data: bytes, where: str) -> np.ndarray:
    """One encoded image as uint8 RGB [H,W,3]."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError(f"{where}: not a readable image (unknown or corrupt format)") from None
    except Exception as exc:  # Pillow raises many types for damaged files
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None


class _Images:
    """Decoded images grouped by split ('train'/'test') and class, all of one size."""

    def __init__(self, where: str, size: tuple[int, int] | None = None, size_note: str = ""):
        self.where, self.size, self.size_note = where, size, size_note
        self.items: dict[str, dict[str, list]] = {"train": {}, "test": {}}

    def add_class(self, split: str, cls: str) -> None:
        self.items[split].setdefault(cls, [])

    def add(self, split: str, cls: str, filename: str, data: bytes, where: str) -> None:
        if not filename.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f"{where}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
        image = _decode(data, where)
        if self.size is None:
            self.size, self.size_note = image.shape[:2], f" like {where} (all images must have one size)"
        if image.shape[:2] != self.size:
            (h, w), (eh, ew) = image.shape[:2], self.size
            raise DataError(f"{where} is {w}x{h} pixels, expected {ew}x{eh}{self.size_note}")
        self.items[split].setdefault(cls, []).append((_natural_key(filename), filename, image.tobytes()))

    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(classes, x_train, y_train, x_test, y_test); classes are the sorted train class names."""
        classes = sorted(self.items["train"])
        if not classes or self.size is None:
            raise DataError(f"{self.where}: no training images found (expected [train/]<class>/<image>)")
        empty = [c for c in classes if not self.items["train"][c]]
        if empty:
            raise DataError(f"{self.where}: training class '{empty[0]}' has no images")
        test_classes = sorted(self.items["test"])
        if test_classes and test_classes != classes:
            raise DataError(f"{self.where}: test classes {test_classes} differ from train classes {classes}")
        out: list[np.ndarray] = []
        for split in ("train", "test"):
            blobs, labels = [], []
            for label, cls in enumerate(classes):
                files = sorted(self.items[split].get(cls, []))
                blobs += [blob for _, _, blob in files]
                labels += [label] * len(files)
            x = np.frombuffer(bytearray().join(blobs), dtype=np.uint8).reshape(-1, *self.size, 3)
            out += [x, np.array(labels, dtype=np.int64)]
        return classes, *out


_CACHE_KEYS = ("classes", "x_train", "y_train", "x_test", "y_test")


def _archive_key(archive: Path) -> str:
    """Cache key of an archive: the SHA-256 of its bytes (a fraction of a second for CIFAR-10's 18.5 MB), so a copied
    or re-downloaded archive with a new mtime still finds its decoded arrays and a changed one never does."""
    digest = hashlib.sha256(b"image-cache-v2:")
    with open(archive, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the cache file is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in _CACHE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _decode_jpg_archive(archive: Path) -> dict[str, np.ndarray]:
    """Decode every ``[prefix/]{train,test}/<class>/<image>`` member of a tar.gz into uint8 arrays."""
    images = _Images(str(archive), size=(32, 32), size_note=" for CIFAR-10")
    try:
        with (
            open(archive, "rb") as raw,
            tqdm.wrapattr(raw, "read", total=archive.stat().st_size, desc=f"decoding {archive.name}") as fh,
            tarfile.open(fileobj=fh, mode="r|gz") as tar,
        ):
            for member in tar:
                parts = PurePosixPath(member.name).parts
                in_class_folder = len(parts) >= 3 and parts[-3] in ("train", "test")
                if not member.isfile() or not in_class_folder or parts[-1].startswith("."):
                    continue
                data = tar.extractfile(member).read()
                images.add(parts[-3], parts[-2], parts[-1], data, f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"cannot read {archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    classes, x_train, y_train, x_test, y_test = images.arrays()
    return {"classes": np.array(classes), "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def load_cifar10_jpg(
    archive: str | Path, val_size: int = 10000, seed: int = 0, cache: str | Path | None = None
) -> ImageData:
    """CIFAR-10 from the JPEG export (``[prefix/]train/<class>/*.jpg``, ``test/<class>/*.jpg``).

    The archive is decoded once (15-30 s for 60,000 images) and the uint8 arrays are cached as
    an ``.npz`` in ``cache`` (default :func:`hcdc.paths.cache_dir`), keyed by a hash of the
    archive's bytes. Classes are the sorted folder names (CIFAR-10's standard order); within a
    class the images keep their file-name order.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"missing CIFAR-10 archive: {archive}")
    cache_root = Path(cache) if cache is not None else cache_dir()
    cache_file = cache_root / f"{archive.name.split('.')[0]}-{_archive_key(archive)}.npz"
    arrays = _read_cache(cache_file)
    if arrays is None:
        arrays = _decode_jpg_archive(archive)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            atomic_write_bytes(cache_file, buffer.getvalue())
        except OSError as exc:
            warnings.warn(f"could not cache decoded images at {cache_file}: {exc}", stacklevel=2)
    classes = arrays["classes"].tolist()
    return _finish("cifar10", classes, *(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")), val_size, seed)


def load_image_folder(root: str | Path, val_size: int | None = None, seed: int = 0, test_size: int = 0) -> ImageData:
    """An image folder: ``root/train/<class>/<image>`` (and optional ``root/test/<class>/``) or ``root/<class>/<image>``.

    Images (.png, .jpg, .jpeg, .bmp, .webp) are converted to RGB and must all have one size.
    Classes are the sorted train class folders; test classes must be the same set. Without a
    ``test/`` folder, ``test_size`` images (stratified, seeded) become the test split, else it is
    empty. ``val_size`` defaults to 20% of the remaining training images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"missing image folder: {root}")
    has_splits = (root / "train").is_dir()
    if has_splits and (root / "test").is_dir() and test_size:
        raise DataError(f"{root} has a test/ folder, so test_size must be 0, got {test_size!r}")
    images = _Images(str(root))
    files = []
    folders = {"train": root / "train", "test": root / "test"} if has_splits else {"train": root}
    for split, folder in folders.items():
        if not folder.is_dir():
            continue
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images.add_class(split, class_dir.name)
            visible = [f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith(".")]
            files += [(split, class_dir.name, f) for f in visible]
    for split, cls, file in tqdm(files, desc=f"decoding {root.name}", unit="img", disable=len(files) < 1000):
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {file}: {exc}") from None
        images.add(split, cls, file.name, data, str(file))
    classes, x_train, y_train, x_test, y_test = images.arrays()
    if test_size:
        mask = _stratified_mask(y_train, test_size, seed, "test_size")
        x_train, y_train, x_test, y_test = x_train[~mask], y_train[~mask], x_train[mask], y_train[mask]
    return _finish(root.resolve().name, classes, x_train, y_train, x_test, y_test, val_size, seed)


# --- array files: CIFAR python batches and npz --------------------------------------------------


class _CifarLayout(NamedTuple):
    name: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    names_key: str
    labels_key: str


_CIFAR_LAYOUTS = (
    _CifarLayout(
        "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", "label_names", "labels",
    ),
    _CifarLayout("cifar100", "cifar-100-python", ("train",), "test", "meta", "fine_label_names", "fine_labels"),
)


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _cifar_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (Python 2 pickles give bytes or latin-1 str keys)."""
    content = load_pickle(path, encoding="latin1")
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {_text(key): value for key, value in content.items()}


def _cifar_batch(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as uint8 [N,32,32,3] images (rows are stored CHW) and int64 labels."""
    batch = _cifar_pickle(path)
    missing = [key for key in ("data", labels_key) if key not in batch]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing} (found {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be a uint8 array [N, 3072], got {_describe(data)}")
    try:
        labels = np.asarray(batch[labels_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: '{labels_key}' is not a list of integer labels ({exc})") from None
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but '{labels_key}' has shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar_python(root: str | Path, val_size: int = 10000, seed: int = 0) -> ImageData:
    """CIFAR-10 or CIFAR-100 from the official python batches (fine labels for CIFAR-100).

    ``root`` is ``cifar-10-batches-py`` / ``cifar-100-python`` or the folder holding one of them.
    The dataset is named 'cifar10' or 'cifar100'.
    """
    root = Path(root)
    found = [(root, layout) for layout in _CIFAR_LAYOUTS if (root / layout.meta).is_file()]
    if not found:
        found = [(root / layout.folder, layout) for layout in _CIFAR_LAYOUTS if (root / layout.folder).is_dir()]
    if len(found) > 1:
        raise DataError(f"{root}: holds both CIFAR-10 and CIFAR-100; pass one of their folders")
    if not found:
        raise DataError(f"{root}: found neither cifar-10-batches-py nor cifar-100-python, nor their files")
    folder, layout = found[0]
    meta = _cifar_pickle(folder / layout.meta)
    names = meta.get(layout.names_key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{folder / layout.meta}: missing or empty '{layout.names_key}'")
    train = [_cifar_batch(folder / f, layout.labels_key) for f in layout.train]
    x_test, y_test = _cifar_batch(folder / layout.test, layout.labels_key)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _finish(layout.name, [_text(n) for n in names], x_train, y_train, x_test, y_test, val_size, seed)


def load_image_npz(path: str | Path, val_size: int | None = None, seed: int = 0) -> ImageData:
    """Images from an ``.npz``: ``x`` uint8 [N,H,W,C] and integer ``y`` [N]; optional ``x_test``, ``y_test``, ``classes``.

    Without ``classes`` the labels 0..max are named '0', '1', ...; without a test pair the test
    split is empty. ``val_size`` defaults to 20% of ``x``. The dataset is named after the file stem.
    """
    path = Path(path)
    arrays = load_npz(path)
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise DataError(f"{path}: needs arrays 'x' and 'y' (and 'x_test' with 'y_test'), found {sorted(arrays)}")
    for key in ("x", "x_test"):
        x = arrays.get(key)
        if x is not None and (x.dtype != np.uint8 or x.ndim != 4):
            hint = (" (convert float images first, e.g. (x * 255).round().clip(0, 255).astype(np.uint8))"
                    if x.dtype.kind == "f" else " (give grayscale images a channel axis: x[..., None])"
                    if x.ndim == 3 else "")
            raise DataError(f"{path}: '{key}' must be uint8 images [N,H,W,C], got {_describe(x)}{hint}")
    for key in ("y", "y_test"):
        y = arrays.get(key)
        if y is not None and (y.dtype.kind not in "iu" or y.ndim != 1):
            raise DataError(f"{path}: '{key}' must be integer labels [N], got {_describe(y)}")
    x, y = arrays["x"], arrays["y"]
    x_test = arrays.get("x_test", np.zeros((0, *x.shape[1:]), dtype=np.uint8))
    y_test = arrays.get("y_test", np.zeros(0, dtype=np.int64))
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.dtype.kind not in "US" or classes.ndim != 1:
            raise DataError(f"{path}: 'classes' must be a 1-D string array, got {_describe(classes)}")
        names = [_text(c) for c in classes]
    else:
        k = int(max(y.max(initial=0), y_test.max(initial=0))) + 1
        if k > len(y) + len(y_test):
            n = len(y) + len(y_test)
            raise DataError(f"{path}: labels go up to {k - 1} for {n} images; store a 'classes' array naming them")
        names = [str(i) for i in range(k)]
    return _finish(path.stem, names, x, y, x_test, y_test, val_size, seed)
