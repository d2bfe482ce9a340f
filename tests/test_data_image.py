"""Tests for hcdc.data.image: every image loader on tiny stand-in files, the split, stats and errors."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hcdc.data import image
from hcdc.data.image import (
    ImageData,
    load_cifar10_jpg,
    load_cifar_python,
    load_image_folder,
    load_image_npz,
    split_validation,
)
from hcdc.errors import ConfigError, DataError

# ---------------------------------------------------------------- helpers


def _colour(label: int, index: int) -> tuple[int, int, int]:
    return (40 * label + 10 * index, 100 + 5 * index, 220 - 60 * label)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _solid(colour, h=32, w=32) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()


JPG_CLASSES = ("cat", "airplane", "dog")  # written out of order: loaders sort class names
N_TRAIN, N_TEST = 4, 2


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _jpg_members(size=(32, 32)) -> dict[str, bytes]:
    members = {"cifar10-jpg/README.md": b"# not an image, outside the class folders\n"}
    for cls in JPG_CLASSES:
        label = sorted(JPG_CLASSES).index(cls)
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            for i in reversed(range(n)):  # archive order differs from file-name order
                members[f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg"] = _encoded(_solid(_colour(label, i), *size), "JPEG")
    return members


@pytest.fixture
def jpg_archive(tmp_path) -> Path:
    return _write_tar(tmp_path / "cifar10-jpg.tar.gz", _jpg_members())


class _Py2Pickler(pickle._Pickler):
    """Writes bytes with Python 2's str opcodes, as in the official CIFAR batches (pickled by Python 2)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str(self, obj: bytes) -> None:
        n = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str


def _py2_pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


def _cifar_rows(labels: list[int], start: int) -> np.ndarray:
    """uint8 [N, 3072] rows in CHW order; row r has pixel (row 1, col 2) = (start + r, 100, 50)."""
    rows = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    rows[:, 0, 1, 2] = start + np.arange(len(labels))
    rows[:, 1, 1, 2] = 100
    rows[:, 2, 1, 2] = 50
    return rows.reshape(len(labels), 3072)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar10(parent: Path) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir()
    names = [n.encode() for n in CIFAR10_NAMES]
    _py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": 4, b"label_names": names, b"num_vis": 3072})
    for b in range(5):
        labels = [(4 * b + i) % 10 for i in range(4)]
        batch = {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": labels,
            b"data": _cifar_rows(labels, 4 * b),
            b"filenames": [b"x.png"] * 4,
        }
        _py2_pickle(folder / f"data_batch_{b + 1}", batch)
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [9, 0, 1], b"data": _cifar_rows([9, 0, 1], 200)}
    _py2_pickle(folder / "test_batch", {**test, b"filenames": [b"y.png"] * 3})
    return folder


def _write_cifar100(parent: Path) -> Path:
    folder = parent / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"fine{i:02d}".encode() for i in range(100)]
    coarse_names = [f"coarse{i}".encode() for i in range(20)]
    _py2_pickle(folder / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names})
    for name, fine in (("train", [99, 5, 5, 0, 42, 7]), ("test", [3, 98])):
        batch = {
            b"filenames": [b"z.png"] * len(fine),
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": _cifar_rows(fine, 10),
        }
        _py2_pickle(folder / name, batch)
    return folder


def _write_folder(root: Path, layout: dict[str, dict[str, int]], size=(6, 8), fmt="PNG", ext=".png") -> dict:
    """Write ``layout[split][class] = count`` solid images of ``size`` (H, W); return them by path."""
    written = {}
    for split, classes in layout.items():
        for cls, count in classes.items():
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array = _solid((11 * len(written) % 256, 20 * (i % 10), 90), *size)
                (folder / f"{i}{ext}").write_bytes(_encoded(array, fmt))
                written[str(folder / f"{i}{ext}")] = array
    return written


def _make_data(x_train, y_train, classes=("a", "b"), x_test=None, y_test=None) -> ImageData:
    x_test = x_train[:0] if x_test is None else x_test
    y_test = y_train[:0] if y_test is None else y_test
    return ImageData("toy", classes, x_train, x_train[:0], x_test, y_train, y_train[:0], y_test)


# ---------------------------------------------------------------- CIFAR-10 JPEG archive


def test_jpg_archive_shapes_labels_and_pixels(jpg_archive, tmp_path):
    data = load_cifar10_jpg(jpg_archive, val_size=0, cache=tmp_path / "cache")
    assert data.name == "cifar10" and data.classes == ("airplane", "cat", "dog")
    assert data.x_train.shape == (12, 32, 32, 3) and data.x_test.shape == (6, 32, 32, 3)
    assert data.x_val.shape == (0, 32, 32, 3)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for j in range(12):  # file-name order within a class, whatever the archive order; JPEG is lossy
        expected = torch.tensor(_colour(j // N_TRAIN, j % N_TRAIN)).float()
        assert (data.x_train[j].float() - expected).abs().mean() < 3
    split = load_cifar10_jpg(jpg_archive, val_size=3, seed=1, cache=tmp_path / "cache")
    assert torch.bincount(split.y_val).tolist() == [1, 1, 1] and len(split.x_train) == 9


def test_jpg_archive_is_decoded_once_and_cached(jpg_archive, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_cifar10_jpg(jpg_archive, val_size=3, cache=cache)
    assert [p.suffix for p in cache.iterdir()] == [".npz"]  # one file, no temporary leftovers

    def no_decoding(archive):
        raise AssertionError("the archive was decoded again")

    monkeypatch.setattr(image, "_decode_jpg_archive", no_decoding)
    copy = tmp_path / "elsewhere" / jpg_archive.name  # a copy with a new mtime is the same archive
    copy.parent.mkdir()
    copy.write_bytes(jpg_archive.read_bytes())
    os.utime(copy, (1, 1))
    second = load_cifar10_jpg(copy, val_size=3, cache=cache)
    assert second.classes == first.classes
    for split in ("train", "val", "test"):
        assert torch.equal(first.split(split)[0], second.split(split)[0])
        assert torch.equal(first.split(split)[1], second.split(split)[1])
    monkeypatch.undo()
    members = _jpg_members()  # a changed archive (one training image fewer) at the same path is decoded afresh
    del members[next(k for k in members if "/train/" in k)]
    _write_tar(copy, members)
    assert len(load_cifar10_jpg(copy, val_size=0, cache=cache).x_train) == len(first.x_train) + len(first.x_val) - 1


def test_jpg_archive_unreadable_cache_is_rebuilt(jpg_archive, tmp_path):
    cache = tmp_path / "cache"
    load_cifar10_jpg(jpg_archive, val_size=0, cache=cache)
    (cache_file,) = cache.iterdir()
    cache_file.write_bytes(b"garbage")
    assert len(load_cifar10_jpg(jpg_archive, val_size=0, cache=cache).x_train) == 12
    assert cache_file.stat().st_size > 1000


def test_jpg_archive_missing_and_truncated(jpg_archive, tmp_path):
    with pytest.raises(DataError, match="missing CIFAR-10 archive"):
        load_cifar10_jpg(tmp_path / "nope.tar.gz", cache=tmp_path)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(jpg_archive.read_bytes()[: jpg_archive.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated archive"):
        load_cifar10_jpg(truncated, val_size=0, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    not_gzip = tmp_path / "plain.tar.gz"
    not_gzip.write_bytes(b"definitely not gzip data" * 10)
    with pytest.raises(DataError, match="corrupt or truncated archive"):
        load_cifar10_jpg(not_gzip, val_size=0, cache=tmp_path / "cache")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "cifar10-jpg/train/cat/0009.jpg",
            _encoded(_solid((1, 2, 3), 16, 24), "JPEG"),
            "0009.jpg is 24x16 pixels, expected 32x32 for CIFAR-10",
        ),
        ("cifar10-jpg/train/cat/notes.txt", b"hello", r"notes.txt: not an image file"),
        ("cifar10-jpg/test/dog/0005.jpg", b"\xff\xd8 broken jpeg", r"0005.jpg: not a readable image \(unknown or corrupt format\)"),
    ],
)
def test_jpg_archive_bad_members(tmp_path, name, data, message):
    archive = _write_tar(tmp_path / "bad.tar.gz", {**_jpg_members(), name: data})
    with pytest.raises(DataError, match=message):
        load_cifar10_jpg(archive, val_size=0, cache=tmp_path / "cache")


def test_jpg_archive_test_classes_must_match(tmp_path):
    members = {k: v for k, v in _jpg_members().items() if "/test/dog/" not in k}
    with pytest.raises(DataError, match="test classes"):
        load_cifar10_jpg(_write_tar(tmp_path / "a.tar.gz", members), val_size=0, cache=tmp_path)


# ---------------------------------------------------------------- CIFAR python batches


def test_cifar10_python_batches(tmp_path):
    folder = _write_cifar10(tmp_path)
    for root in (tmp_path, folder):
        data = load_cifar_python(root, val_size=0)
        assert data.name == "cifar10" and data.classes == tuple(CIFAR10_NAMES)
        assert data.x_train.shape == (20, 32, 32, 3) and data.x_test.shape == (3, 32, 32, 3)
        assert data.y_train.tolist() == [i % 10 for i in range(20)] and data.y_test.tolist() == [9, 0, 1]
        assert data.x_train[7, 1, 2].tolist() == [7, 100, 50]  # CHW rows became HWC images
        assert data.x_test[2, 1, 2].tolist() == [202, 100, 50]
        assert int(data.x_train[7].sum()) == 7 + 150
    split = load_cifar_python(tmp_path, val_size=10, seed=3)
    assert torch.bincount(split.y_val, minlength=10).tolist() == [1] * 10 and len(split.x_train) == 10


def test_cifar100_python_uses_fine_labels(tmp_path):
    _write_cifar100(tmp_path)
    data = load_cifar_python(tmp_path, val_size=0)
    assert data.name == "cifar100" and data.num_classes == 100 and data.classes[42] == "fine42"
    assert data.y_train.tolist() == [99, 5, 5, 0, 42, 7] and data.y_test.tolist() == [3, 98]
    assert data.x_train[3, 1, 2].tolist() == [13, 100, 50]


def test_cifar_python_errors(tmp_path):
    with pytest.raises(DataError, match="neither"):
        load_cifar_python(tmp_path)
    _write_cifar10(tmp_path)
    _write_cifar100(tmp_path)
    with pytest.raises(DataError, match="both CIFAR-10 and CIFAR-100"):
        load_cifar_python(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing file.*data_batch_3"):
        load_cifar_python(folder)
    _py2_pickle(folder / "data_batch_3", {b"labels": [1, 2], b"data": np.zeros((2, 3072), dtype=np.float32)})
    with pytest.raises(DataError, match="'data' must be a uint8 array"):
        load_cifar_python(folder)
    _py2_pickle(folder / "data_batch_3", {b"labels": [1, 2, 3], b"data": np.zeros((2, 3072), dtype=np.uint8)})
    with pytest.raises(DataError, match="2 images but 'labels'"):
        load_cifar_python(folder)
    _py2_pickle(folder / "data_batch_3", {b"labels": [1, 10], b"data": np.zeros((2, 3072), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"labels in \[.*, 10\], outside \[0, 10\)"):
        load_cifar_python(folder)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_1").read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated pickle"):
        load_cifar_python(folder)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_python_refuses_malicious_pickle(tmp_path):
    folder = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": _Exploit(marker), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_2: refusing to load"):
        load_cifar_python(folder)
    assert not marker.exists()


# ---------------------------------------------------------------- image folders


def test_image_folder_with_train_and_test(tmp_path):
    written = _write_folder(tmp_path / "pets", {"train": {"dog": 5, "cat": 5}, "test": {"cat": 2, "dog": 1}})
    data = load_image_folder(tmp_path / "pets", val_size=0)
    assert data.name == "pets" and data.classes == ("cat", "dog") and data.image_shape == (6, 8, 3)
    assert data.x_train.shape == (10, 6, 8, 3) and data.x_test.shape == (3, 6, 8, 3)
    assert data.y_train.tolist() == [0] * 5 + [1] * 5 and data.y_test.tolist() == [0, 0, 1]
    dog0 = written[str(tmp_path / "pets/train/dog/0.png")]
    assert torch.equal(data.x_train[5], torch.from_numpy(dog0))  # PNG is lossless
    assert load_image_folder(tmp_path / "pets").summary() == {
        "name": "pets",
        "classes": ["cat", "dog"],
        "num_classes": 2,
        "image_shape": [6, 8, 3],
        "train": 8,
        "val": 2,
        "test": 3,
    }


def test_image_folder_flat_layout_and_formats(tmp_path):
    _write_folder(tmp_path, {"": {"b": 3, "a": 2}})
    _write_folder(tmp_path, {"": {"c": 2}}, fmt="JPEG", ext=".JPG")
    _write_folder(tmp_path, {"": {"d": 2}}, fmt="BMP", ext=".bmp")
    Image.fromarray(_solid((9, 9, 9), 6, 8)).convert("L").save(tmp_path / "d" / "gray.png")  # greyscale becomes RGB
    (tmp_path / "d" / ".hidden").write_text("skipped")
    data = load_image_folder(tmp_path, val_size=0)
    assert data.classes == ("a", "b", "c", "d") and data.y_train.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert data.x_test.shape == (0, 6, 8, 3) and data.y_test.shape == (0,)
    held = load_image_folder(tmp_path, val_size=0, test_size=4, seed=5)
    assert torch.bincount(held.y_test).tolist() == [1, 1, 1, 1] and len(held.x_train) == 6


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing image folder"):
        load_image_folder(tmp_path / "nope")
    _write_folder(tmp_path / "mixed", {"": {"a": 2}})
    _write_folder(tmp_path / "mixed", {"": {"b": 1}}, size=(5, 5))
    with pytest.raises(DataError, match=r"b/0.png is 5x5 pixels, expected 8x6 like .*a/0.png"):
        load_image_folder(tmp_path / "mixed")
    _write_folder(tmp_path / "split", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "c": 1}})
    with pytest.raises(DataError, match=r"test classes \['a', 'c'\] differ from train classes \['a', 'b'\]"):
        load_image_folder(tmp_path / "split")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no training images"):
        load_image_folder(tmp_path / "empty")
    _write_folder(tmp_path / "notes", {"": {"a": 1, "b": 1}})
    (tmp_path / "notes" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        load_image_folder(tmp_path / "notes")
    (tmp_path / "notes" / "a" / "notes.txt").unlink()
    with pytest.raises(DataError, match=r"val_size must be an integer in \[0, 2\)"):
        load_image_folder(tmp_path / "notes", val_size=2)
    with pytest.raises(DataError, match=r"test_size must be an integer in \[0, 2\)"):
        load_image_folder(tmp_path / "notes", test_size=5)
    with pytest.raises(DataError, match="has a test/ folder, so test_size must be 0"):
        load_image_folder(tmp_path / "split", test_size=1)


# ---------------------------------------------------------------- npz


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_image_npz(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 5, 4, 1), dtype=np.uint8), np.repeat(np.arange(3), 10)
    path = _npz(tmp_path / "toy-set.npz", x=x, y=y, x_test=x[:4], y_test=y[:4], classes=np.array(["r", "g", "b"]))
    data = load_image_npz(path, seed=1)
    assert data.name == "toy-set" and data.classes == ("r", "g", "b") and data.image_shape == (5, 4, 1)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (24, 6, 4)  # default: 20% validation
    assert torch.bincount(data.y_val).tolist() == [2, 2, 2]
    plain = load_image_npz(_npz(tmp_path / "plain.npz", x=x, y=y.astype(np.uint8)), val_size=0)
    assert plain.classes == ("0", "1", "2") and plain.x_test.shape == (0, 5, 4, 1)
    assert torch.equal(plain.x_train, torch.from_numpy(x))


X, Y = np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4, int)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": X}, r"needs arrays 'x' and 'y'"),
        ({"x": X, "y": Y, "x_test": X[:1]}, r"'x_test' with 'y_test'"),
        ({"x": X.astype(np.float32), "y": Y}, r"'x' must be uint8 images .*float32.*convert float images"),
        ({"x": X[..., 0], "y": Y}, r"'x' must be uint8 images \[N,H,W,C\], got uint8 with shape \(4, 2, 2\) "
                                   r"\(give grayscale images a channel axis: x\[\.\.\., None\]\)"),
        ({"x": X, "y": Y}, r"1 class \['0'\]: ranking classifiers needs at least 2 classes"),
        ({"x": X, "y": np.full(4, np.nan)}, "'y' must be integer labels"),
        ({"x": X, "y": Y[:, None]}, "'y' must be integer labels"),
        ({"x": X, "y": np.zeros(5, int)}, "x_train has 4 images but y_train has 5 labels"),
        ({"x": X, "y": np.array([0, 1, 2, 1]), "classes": np.array(["a", "b"])}, r"in \[0, 2\], outside \[0, 2\)"),
        ({"x": X, "y": np.array([0, 1, -1, 1])}, r"labels in \[-1, 1\]"),
        ({"x": X, "y": np.array([0, 1, 10**9, 1])}, "store a 'classes' array"),
        ({"x": X, "y": Y, "x_test": X[:1, :1], "y_test": Y[:1]}, r"x_test images are \(1, 2, 3\)"),
        ({"x": X, "y": Y, "classes": np.array([1.5])}, "'classes' must be a 1-D string array"),
    ],
)
def test_image_npz_errors(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_image_npz(_npz(tmp_path / "bad.npz", **arrays), val_size=0)


def test_image_npz_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="missing file"):
        load_image_npz(tmp_path / "nope.npz")
    good = _npz(tmp_path / "good.npz", x=np.zeros((4, 2, 2, 3), np.uint8), y=np.zeros(4, int))
    (tmp_path / "half.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="half.npz: not a readable .npz archive"):
        load_image_npz(tmp_path / "half.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"single.npy: not a readable .npz archive \(not a zip file\)"):
        load_image_npz(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=r"text.npz: not a readable .npz archive \(not a zip file\)"):
        load_image_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="objects.npz: holds object arrays, which are refused"):
        load_image_npz(tmp_path / "objects.npz")


# ---------------------------------------------------------------- split and ImageData


def test_split_validation_is_stratified_and_seeded():
    y = torch.arange(4).repeat_interleave(torch.tensor([50, 50, 50, 50]))
    x = torch.arange(200)
    x_tr, y_tr, x_val, y_val = split_validation(x, y, 40, seed=0)
    assert torch.bincount(y_val).tolist() == [10] * 4 and torch.bincount(y_tr).tolist() == [40] * 4
    assert torch.equal(torch.sort(torch.cat([x_tr, x_val])).values, x) and torch.equal(y[x_val], y_val)
    assert torch.all(x_tr[1:] > x_tr[:-1])  # original order kept
    assert torch.equal(split_validation(x, y, 40, seed=0)[2], x_val)
    assert not torch.equal(split_validation(x, y, 40, seed=1)[2], x_val)
    imbalanced = torch.tensor([0] * 10 + [1] * 30 + [2] * 3)
    assert torch.bincount(split_validation(imbalanced, imbalanced, 9, seed=0)[3], minlength=3).tolist() == [2, 6, 1]
    assert len(split_validation(x, y, 0, seed=0)[2]) == 0


@pytest.mark.parametrize("val_size", [200, 201, -1, 2.5])
def test_split_validation_rejects_bad_sizes(val_size):
    y = torch.zeros(200, dtype=torch.long)
    with pytest.raises(DataError, match=r"val_size must be an integer in \[0, 200\)"):
        split_validation(y, y, val_size, seed=0)


def test_normalisation_and_stats():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 5, 7, 3), dtype=torch.uint8, generator=gen)
    x[..., 2] //= 4  # channels with different statistics
    data = _make_data(x, torch.arange(64) % 2, x_test=x[:3], y_test=torch.zeros(3, dtype=torch.long)).validate()
    scaled = x.double() / 255
    assert torch.allclose(data.mean, scaled.mean((0, 1, 2)), atol=1e-12)
    assert torch.allclose(data.std, scaled.std((0, 1, 2), correction=0), atol=1e-12)
    z = data.normalized("train")
    assert z.shape == (64, 3, 5, 7) and z.dtype == torch.float32
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    assert torch.allclose(data.normalized("test"), z[:3])
    assert data.normalized("val").shape == (0, 3, 5, 7)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        data.normalized("dev")
    flat = _make_data(torch.full((4, 2, 2, 3), 7, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    assert torch.equal(flat.normalized("train"), torch.zeros(4, 3, 2, 2))  # constant channel: 0, not NaN


def test_validate_reports_one_clear_problem():
    x, y = torch.zeros(4, 2, 2, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    cases = [
        (_make_data(x.float(), y), "x_train must be a uint8 tensor"),
        (_make_data(x, y.int()), "y_train must be an int64 tensor"),
        (_make_data(x[0], y), r"x_train must be a uint8 tensor \[N,H,W,C\], got torch.uint8 with shape \(2, 2, 3\)"),
        (_make_data(x, y, x_test=x[:1, :, :1], y_test=y[:1]), r"x_test images are \(2, 1, 3\)"),
        (_make_data(x, y[:3]), "x_train has 4 images but y_train has 3 labels"),
        (_make_data(x, y + 2), r"labels in \[2, 2\], outside \[0, 2\)"),
        (_make_data(x[:0], y[:0]), "the training set is empty"),
        (_make_data(x, y, classes=()), "no classes"),
    ]
    for data, message in cases:
        with pytest.raises(DataError, match=message):
            data.validate()
    assert _make_data(x, y).validate().num_classes == 2


# ---------------------------------------------------------------- the real archive


def _real_archive() -> Path | None:
    roots = [Path(os.environ["HCDC_DATA"])] if os.environ.get("HCDC_DATA") else []
    roots.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((r / "cifar10/cifar10-jpg.tar.gz" for r in roots if (r / "cifar10/cifar10-jpg.tar.gz").is_file()), None)


def test_real_cifar10_jpg_archive(tmp_path):
    archive = _real_archive()
    if archive is None:
        pytest.skip("cifar10/cifar10-jpg.tar.gz not found under $HCDC_DATA or ../shared/data")
    full = load_cifar10_jpg(archive, val_size=0, cache=tmp_path)
    assert full.classes == tuple(CIFAR10_NAMES)
    assert full.x_train.shape == (50000, 32, 32, 3) and full.x_test.shape == (10000, 32, 32, 3)
    assert torch.bincount(full.y_train).tolist() == [5000] * 10 and torch.bincount(full.y_test).tolist() == [1000] * 10
    assert torch.allclose(full.mean, torch.tensor([0.4913, 0.4821, 0.4465], dtype=torch.float64), atol=0.01)
    data = load_cifar10_jpg(archive, cache=tmp_path)  # from the cache, default 10,000 validation images
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (40000, 10000, 10000)
    assert torch.bincount(data.y_val).tolist() == [1000] * 10
