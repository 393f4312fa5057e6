"""CIFAR-10 loader: both layouts on tiny fake datasets, caching, errors, and the real test archive."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imcflow.data import CLASSES, load_cifar10
from imcflow.errors import DataError

# The shared folder sits beside the repository root (../shared) in every checkout and in CI;
# IMCFLOW_SHARED points elsewhere (e.g. a clone in /tmp).
SHARED = Path(os.environ.get("IMCFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
REAL = SHARED / "data" / "cifar10"


def _solid(value: int) -> np.ndarray:
    return np.full((32, 32, 3), value, dtype=np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, raw: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def _image_tar(path: Path, split: str, per_class: dict[str, list[str]]) -> None:
    """A tar.gz of solid-grey JPEGs, written in scrambled order; grey level = 20 * class + file number."""
    with tarfile.open(path, "w:gz") as tar:
        entries = [(cls, name) for cls, names in per_class.items() for name in names]
        for cls, name in reversed(entries):
            value = 20 * CLASSES.index(cls) + int(Path(name).stem)
            _add(tar, f"{split}/{cls}/{name}", _jpeg(_solid(value)))


def _pickle_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_image_tar_layout_order_labels_and_cache(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "jpg"
    root.mkdir()
    _image_tar(root / "test.tar.gz", "test", {"truck": ["0001.jpg", "0000.jpg"], "airplane": ["0002.jpg"],
                                              "cat": ["0000.jpg"]})
    images, labels = load_cifar10(root, "test", cache_dir=cache)
    assert images.dtype == np.uint8 and images.shape == (4, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 3, 9, 9]  # class index, then file name
    expected = [2, 60, 180, 181]
    assert np.abs(images.reshape(4, -1).astype(int).mean(1) - expected).max() < 2  # JPEG rounding only
    assert len(list(cache.glob("cifar10-test-*.npz"))) == 1

    # Second call reads the cache: prove it by replacing the cached arrays.
    entry = next(cache.glob("cifar10-test-*.npz"))
    np.savez(entry, images=np.zeros_like(images), labels=labels)
    again, _ = load_cifar10(root, "test", cache_dir=cache)
    assert again.max() == 0

    # A changed archive (new size/mtime) gets a fresh entry, decoded again.
    time.sleep(0.01)
    _image_tar(root / "test.tar.gz", "test", {"dog": ["0000.jpg"]})
    images2, labels2 = load_cifar10(root, "test", cache_dir=cache)
    assert labels2.tolist() == [5] and len(list(cache.glob("cifar10-test-*.npz"))) == 2


def test_archive_path_and_unpacked_folder(tmp_path: Path, cache: Path) -> None:
    _image_tar(tmp_path / "train.tar.gz", "train", {"bird": ["0000.jpg", "0001.jpg"]})
    images, labels = load_cifar10(tmp_path / "train.tar.gz", "train", cache_dir=cache)
    assert images.shape == (2, 32, 32, 3) and labels.tolist() == [2, 2]
    with tarfile.open(tmp_path / "train.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    images2, labels2 = load_cifar10(tmp_path / "unpacked", "train", cache_dir=cache)
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(labels, labels2)


def test_pickle_batches_folder_and_tarball(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": _pickle_batch(3, i) for i in range(1, 6)}
    batches["test_batch"] = _pickle_batch(4, 99)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))

    train_x, train_y = load_cifar10(tmp_path, "train", cache_dir=cache)  # finds the sub-folder
    assert train_x.shape == (15, 32, 32, 3) and train_y.shape == (15,)
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(train_x[0], first)  # CHW rows -> HWC
    assert train_y[:3].tolist() == [int(v) for v in batches["data_batch_1"][b"labels"]]

    tarball = tmp_path / "dl" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    test_x, test_y = load_cifar10(tarball.parent, "test", cache_dir=cache)
    assert test_x.shape == (4, 32, 32, 3)
    assert test_y.tolist() == [int(v) for v in batches["test_batch"][b"labels"]]
    train_x2, _ = load_cifar10(tarball, "train", cache_dir=cache)
    np.testing.assert_array_equal(train_x, train_x2)


def test_errors_name_the_path(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match=r"no CIFAR-10 test data in .*test.tar.gz.*test_batch"):
        load_cifar10(tmp_path, "test", cache_dir=cache)
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "missing", "test", cache_dir=cache)
    with pytest.raises(DataError, match="split 'val'"):
        load_cifar10(tmp_path, "val", cache_dir=cache)
    with tarfile.open(tmp_path / "test.tar.gz", "w:gz") as tar:
        _add(tar, "test/unicorn/0000.jpg", _jpeg(_solid(0)))
    with pytest.raises(DataError, match="unicorn"):
        load_cifar10(tmp_path, "test", cache_dir=cache)
    with tarfile.open(tmp_path / "test.tar.gz", "w:gz") as tar:
        _add(tar, "test/cat/0000.jpg", _jpeg(np.zeros((16, 16, 3), np.uint8)))
    with pytest.raises(DataError, match="16x16"):
        load_cifar10(tmp_path, "test", cache_dir=cache)


@pytest.mark.skipif(not (REAL / "test.tar.gz").is_file(), reason="shared CIFAR-10 copy absent")
def test_real_test_archive(tmp_path: Path) -> None:
    images, labels = load_cifar10(REAL, "test", cache_dir=tmp_path)
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert (np.diff(labels) >= 0).all()  # sorted by class
    assert 100 < images.mean() < 140  # real photos, not blanks
    assert os.listdir(tmp_path)
