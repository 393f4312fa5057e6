"""CIFAR-10 loader: python pickle batches or JPEG image folders, decoded once and cached.

Two layouts are read (Krizhevsky 2009 release, and the image-folder copy in ``../shared/data/cifar10``):

* **pickle batches**: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in ``root``, in
  ``root/cifar-10-batches-py/``, or inside ``cifar-10-python.tar.gz`` (``root`` may be that file).
* **image folders**: ``root/<split>.tar.gz`` holding ``<split>/<class>/<name>.jpg`` (``root`` may be
  that archive), or the same tree unpacked as ``root/<split>/<class>/*.jpg``.

Decoding 50,000 JPEGs takes tens of seconds, so the decoded arrays (uint8 NHWC images, int64 labels)
are cached in ``cache_dir`` (default ``$IMCFLOW_CACHE`` or ``~/.cache/imcflow``) under a key made of
the source files' paths, sizes and modification times; a changed source gets a fresh cache entry.
Order is deterministic: class index first, then file name (image folders); file order (pickles).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from imcflow.errors import DataError

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
_PICKLE_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_PICKLE_TARBALL = "cifar-10-python.tar.gz"
_PICKLE_DIR = "cifar-10-batches-py"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    """``$IMCFLOW_CACHE`` if set, else ``~/.cache/imcflow``."""
    env = os.environ.get("IMCFLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "imcflow"


def load_cifar10(root: str | os.PathLike, split: str = "train",
                 cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train" or "test") from ``root``: images uint8 (N, 32, 32, 3), labels int64 (N,).

    The first call decodes the source and writes a cache entry; later calls read the cache.
    Raises DataError when ``root`` holds neither layout or a file in it is malformed.
    """
    if split not in SPLITS:
        raise DataError(f"CIFAR-10 split {split!r} is unknown: use 'train' or 'test'")
    kind, sources = _find_sources(Path(root), split)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache / f"cifar10-{split}-{_cache_key(kind, sources)}.npz"
    if entry.is_file():
        return _read_cache(entry)
    images, labels = _DECODERS[kind](sources, split)
    _check_arrays(images, labels, str(root))
    _write_cache(entry, images, labels)
    return images, labels


# ---------------------------------------------------------------- finding the layout

def _find_sources(root: Path, split: str) -> tuple[str, list[Path]]:
    """(layout kind, source paths) for ``split`` under ``root``; DataError naming what was looked for."""
    if root.is_file():
        if root.name == _PICKLE_TARBALL or _tar_has_pickles(root):
            return "pickle_tar", [root]
        return "image_tar", [root]
    if not root.exists():
        raise DataError(f"CIFAR-10 path {root} does not exist: give the folder holding train.tar.gz/test.tar.gz "
                        f"or the CIFAR-10 python batches")
    for folder in (root, root / _PICKLE_DIR):
        files = [folder / name for name in _PICKLE_FILES[split]]
        if all(f.is_file() for f in files):
            return "pickle_dir", files
    if (root / _PICKLE_TARBALL).is_file():
        return "pickle_tar", [root / _PICKLE_TARBALL]
    if (root / f"{split}.tar.gz").is_file():
        return "image_tar", [root / f"{split}.tar.gz"]
    if (root / split).is_dir() and any((root / split / c).is_dir() for c in CLASSES):
        return "image_dir", [root / split]
    raise DataError(
        f"no CIFAR-10 {split} data in {root}: looked for {split}.tar.gz or {split}/<class>/*.jpg (image folders), "
        f"{', '.join(_PICKLE_FILES[split])} (in the folder or in {_PICKLE_DIR}/), and {_PICKLE_TARBALL}")


def _tar_has_pickles(path: Path) -> bool:
    try:
        with tarfile.open(path) as tar:
            return any(Path(m.name).name == "test_batch" for m in tar.getmembers())
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path} is not a readable tar archive ({exc}); give a CIFAR-10 folder or archive") from exc


def _cache_key(kind: str, sources: list[Path]) -> str:
    parts = [_CACHE_VERSION, kind]
    for src in sources:
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file())
            parts += [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
        else:
            st = src.stat()
            parts.append(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- decoders

def _decode_pickle_dir(sources: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    batches = [_unpickle_batch(path.read_bytes(), str(path)) for path in sources]
    return _concat(batches)


def _decode_pickle_tar(sources: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    (path,) = sources
    wanted = _PICKLE_FILES[split]
    found: dict[str, bytes] = {}
    with _open_tar(path) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in wanted:
                found[name] = tar.extractfile(member).read()
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{path} lacks CIFAR-10 batches {', '.join(missing)}; is it the python version of CIFAR-10?")
    return _concat([_unpickle_batch(found[name], f"{path}:{name}") for name in wanted])


def _unpickle_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # a corrupt or foreign pickle may raise anything
        raise DataError(f"{where} is not a CIFAR-10 python batch (needs keys b'data' and b'labels'): {exc}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{where}: data has shape {data.shape} for {labels.shape[0]} labels; expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _concat(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(np.concatenate([b[0] for b in batches]))
    return images, np.concatenate([b[1] for b in batches])


def _decode_image_tar(sources: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    (path,) = sources
    with _open_tar(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(_IMAGE_SUFFIXES)]
        entries = _sorted_entries([(m.name, m) for m in members], str(path))
        blobs = [(tar.extractfile(m).read(), name) for name, m, _ in entries]
    return _decode_blobs(blobs, [label for _, _, label in entries], str(path))


def _decode_image_dir(sources: list[Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    (folder,) = sources
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)]
    entries = _sorted_entries([(str(p.relative_to(folder.parent)), p) for p in files], str(folder))
    blobs = [(p.read_bytes(), name) for name, p, _ in entries]
    return _decode_blobs(blobs, [label for _, _, label in entries], str(folder))


def _sorted_entries(named: list[tuple[str, object]], where: str) -> list[tuple[str, object, int]]:
    """(name, handle, label) sorted by class index then file name; the class is the parent folder."""
    if not named:
        raise DataError(f"{where} holds no .jpg/.png images under <split>/<class>/")
    out = []
    for name, handle in named:
        cls = Path(name).parent.name
        if cls not in CLASSES:
            raise DataError(f"{where}: image {name} lies in folder {cls!r}, not a CIFAR-10 class "
                            f"({', '.join(CLASSES)})")
        out.append((name, handle, CLASSES.index(cls)))
    return sorted(out, key=lambda e: (e[2], Path(e[0]).name))


def _decode_blobs(blobs: list[tuple[bytes, str]], labels: list[int], where: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(blobs),) + IMAGE_SHAPE, dtype=np.uint8)
    for i, (raw, name) in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(raw)) as img:
                arr = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{where}: cannot decode image {name}: {exc}") from exc
        if arr.shape != IMAGE_SHAPE:
            raise DataError(f"{where}: image {name} is {arr.shape[1]}x{arr.shape[0]}, CIFAR-10 images are 32x32")
        images[i] = arr
    return images, np.asarray(labels, dtype=np.int64)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path} is not a readable tar archive ({exc})") from exc


_DECODERS = {
    "pickle_dir": _decode_pickle_dir,
    "pickle_tar": _decode_pickle_tar,
    "image_tar": _decode_image_tar,
    "image_dir": _decode_image_dir,
}


# ---------------------------------------------------------------- cache

def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.shape[1:] != IMAGE_SHAPE or images.shape[0] != labels.shape[0]:
        raise DataError(f"{where}: decoded {images.shape} images for {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{where}: labels outside 0..{len(CLASSES) - 1}")


def _write_cache(entry: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write atomically (temporary file, then rename), so a killed process never leaves half a cache."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, images=images, labels=labels)
    os.replace(tmp, entry)


def _read_cache(entry: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(entry) as npz:
            images, labels = npz["images"], npz["labels"]
    except Exception as exc:  # a damaged cache file: say which and how to fix
        raise DataError(f"cache file {entry} is unreadable ({exc}); delete it to decode the data again") from exc
    _check_arrays(images, labels, str(entry))
    return images.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False)
