"""Image data for the LeNet experiment: folders of photos, CIFAR-10, or a synthetic set.

Every source ends up as one :class:`Dataset` of NHWC float32 arrays, decoded **once** and normalized the way
the lesson's torchvision pipeline does it::

    Resize((32, 32)) -> RandomCrop(32, padding=4) [train only] -> ToTensor() -> Normalize(mean, std)

Resizing and normalization happen here, at load time; the random crop happens per batch inside the jitted
train step (:func:`random_crop`) with an explicit PRNG key, so that the augmentation of every epoch is a pure
function of ``(seed, epoch)``.

Normalization, per channel c, with x in [0, 1] (the pixel value / 255)::

    x_hat[c] = (x[c] - mean[c]) / std[c],   mean = (0.485, 0.456, 0.406),  std = (0.229, 0.224, 0.225)

Sources (``--data``)
--------------------
* nothing: the **embedded photos** ``data/cats_dogs_32.npz``: the 700 Kaggle Dogs vs. Cats photos of
  ``../shared/data/cats_dogs`` already decoded and resized to 32x32 by ``scripts/make_embedded_photos.py`` with
  :func:`read_folder` (the same decoding as a folder), so a fresh clone trains on real photos with nothing to fetch.
* ``synthetic``: :func:`synthetic_dataset`, two classes of generated images (horizontal vs vertical stripes under
  noise) for tests and offline demos, labelled SYNTHETIC everywhere it shows.
* a folder: :func:`load_folder`, ``DIR/train/<class>/*`` and ``DIR/valid/<class>/*`` (torchvision ImageFolder
  layout, classes sorted by name) or Kaggle's flat naming ``DIR/train/cat.1.jpg`` (the class is the file name up
  to the first dot); or the CIFAR-10 "python version" batches (:func:`load_cifar10`, cat vs dog).
* a ``.npz`` file written like the embedded one (:func:`load_arrays`).

Every problem with the data raises :class:`DataError` (a ``ValueError``) with a one-line message that names the
offending path; unreadable images are skipped with a :class:`DataWarning` each, unless more than
:data:`MAX_BAD_FRACTION` of them are bad.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# jax is imported inside the functions that use it: lenet starts decoding images in a thread while jax, flax
# and optax are still importing.

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_SIZE = 32
MAX_BAD_FRACTION = 0.10
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_CAT, CIFAR_DOG = 3, 5
# Kaggle "Dogs vs. Cats" file names: <class>.<number>.<ext>
_FLAT_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\.\d+\.[A-Za-z]+$")


class DataError(ValueError):
    """The data given to an experiment cannot be used; the message is one line and names the path."""


class DataWarning(UserWarning):
    """A recoverable data problem (e.g. an unreadable image that was skipped)."""


@dataclass
class Dataset:
    """Decoded, resized, normalized images (NHWC float32) and integer labels for both splits."""

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    classes: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        counts = lambda y: "/".join(str(int((y == i).sum())) for i in range(len(self.classes)))  # noqa: E731
        return (f"{self.source}: classes {self.classes}, train {len(self.train_y)} ({counts(self.train_y)}), "
                f"valid {len(self.valid_y)} ({counts(self.valid_y)})")


# ----------------------------------------------------------------------------------------------- normalization
def normalize_uint8(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> float32 ``(x / 255 - mean) / std`` (torchvision ToTensor + Normalize)."""
    return ((images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def pad_value() -> np.ndarray:
    """The normalized value of a black pixel, per channel.

    torchvision's RandomCrop pads the *PIL image* with 0 before ToTensor/Normalize, so in normalized space the
    padding is ``(0 - mean) / std``, not 0.
    """
    return -IMAGENET_MEAN / IMAGENET_STD


# ------------------------------------------------------------------------------------------------ augmentation
def crop_offsets(key, n: int, padding: int = 4):
    """``(n, 2)`` int32 crop offsets ``(i, j)``, uniform on ``{0, ..., 2 * padding}``, from ``key``."""
    import jax
    import jax.numpy as jnp

    return jax.random.randint(key, (n, 2), 0, 2 * padding + 1, dtype=jnp.int32)


def crop(images, offsets, padding: int = 4):
    """Pad NHWC ``images`` by ``padding`` pixels of :func:`pad_value` and cut each back to H x W at ``offsets``.

    ``offsets[k] = (i, j)`` puts the window's top-left corner at row i, column j of the padded image, so
    ``(padding, padding)`` returns the image unchanged.
    """
    import jax
    import jax.numpy as jnp

    if images.ndim != 4:
        raise ValueError(f"crop expects NHWC images (4-D), got shape {images.shape}")
    if offsets.shape != (images.shape[0], 2):
        raise ValueError(f"crop expects offsets of shape ({images.shape[0]}, 2), got {offsets.shape}")
    n, h, w, c = images.shape
    fill = jnp.asarray(pad_value(), images.dtype) if c == 3 else jnp.zeros((c,), images.dtype)
    canvas = jnp.broadcast_to(fill, (n, h + 2 * padding, w + 2 * padding, c))
    padded = jax.lax.dynamic_update_slice(canvas, images, (0, padding, padding, 0))

    def crop_one(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets)


def random_crop(key, images, padding: int = 4):
    """RandomCrop(H, padding) for a batch of normalized NHWC images, one independent offset per image.

    Each image is padded by ``padding`` pixels of :func:`pad_value` on every side and an ``H x W`` window is
    taken at offsets ``(i, j)`` drawn uniformly from ``{0, ..., 2 * padding}`` (:func:`crop_offsets`), as
    torchvision does.
    """
    if images.ndim != 4:
        raise ValueError(f"random_crop expects NHWC images (4-D), got shape {images.shape}")
    return crop(images, crop_offsets(key, images.shape[0], padding), padding)


# ------------------------------------------------------------------------------------------------ decoding
def decode_image(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """Read one image file as ``(size, size, 3)`` uint8 RGB.

    Any mode is converted to RGB as torchvision's loader does (grayscale replicated, alpha dropped, palette
    expanded). JPEGs are decoded at a reduced DCT scale (``draft``) first: the output is 32x32, so decoding
    every 400-px photo at full resolution would be wasted work (~5x slower); the result stays >= 64 px before
    the final bilinear (antialiased) resize.
    """
    with Image.open(path) as img:
        img.draft("RGB", (2 * size, 2 * size))
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # Pillow asks for this route for palette images with transparency
        img = img.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _try_decode(path: Path) -> np.ndarray | None:
    try:
        return decode_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # what Pillow raises on bad files
        return None


def decode_files(paths: list[Path], root: Path) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Decode ``paths`` in a few threads (Pillow releases the GIL while decoding).

    Returns ``(images (M, 32, 32, 3) uint8, kept_index (M,), bad_paths)``; raises :class:`DataError` when more
    than :data:`MAX_BAD_FRACTION` of the files cannot be read.
    """
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(_try_decode, paths, chunksize=16))
    bad = [p for p, img in zip(paths, decoded, strict=True) if img is None]
    if paths and len(bad) > MAX_BAD_FRACTION * len(paths):
        shown = ", ".join(str(p) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} of {len(paths)} images under {root} cannot be read "
                        f"(more than {MAX_BAD_FRACTION:.0%}): {shown}")
    for p in bad:
        warnings.warn(f"skipped unreadable image {p}", DataWarning, stacklevel=2)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(paths)} under {root}", DataWarning,
                      stacklevel=2)
    keep = np.array([i for i, img in enumerate(decoded) if img is not None], dtype=np.int64)
    images = np.stack([decoded[i] for i in keep]) if len(keep) else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3),
                                                                             np.uint8)
    return images, keep, bad


# ------------------------------------------------------------------------------------------------ folders
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_split(split_dir: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image paths}`` for one split directory, in either accepted layout.

    Subdirectories containing images are the ImageFolder layout (they win if both are present); otherwise image
    files named ``<class>.<number>.<ext>`` are the Kaggle flat layout.
    """
    by_class: dict[str, list[Path]] = {}
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if _is_image(p))
        if files:
            by_class[sub.name] = files
    if by_class:
        return by_class
    for p in sorted(split_dir.iterdir()):
        m = _FLAT_NAME.match(p.name)
        if m and _is_image(p):
            by_class.setdefault(m.group(1), []).append(p)
    return by_class


def _check_split(root: Path, name: str) -> Path:
    split_dir = root / name
    if not split_dir.is_dir():
        raise DataError(f"no '{name}' split in {root}: expected {split_dir}/<class>/* images "
                        f"(ImageFolder) or {split_dir}/<class>.<n>.jpg (Kaggle flat)")
    return split_dir


@dataclass
class Photos:
    """Decoded, resized images as uint8 NHWC (what the embedded file stores) and integer labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    classes: list[str]
    skipped: list[str] = field(default_factory=list)

    def normalized(self, source: str) -> Dataset:
        return Dataset(normalize_uint8(self.train_x), self.train_y, normalize_uint8(self.valid_x), self.valid_y,
                       self.classes, source, self.skipped)


def _folder_paths(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """``({split: [(path, label)]}, classes)`` of an image folder, checking its layout."""
    train_dir, valid_dir = _check_split(root, "train"), _check_split(root, "valid")
    train, valid = list_split(train_dir), list_split(valid_dir)
    for split_dir, files in ((train_dir, train), (valid_dir, valid)):
        if not files:
            raise DataError(f"no images found in {split_dir} (expected <class>/ subfolders or "
                            f"<class>.<n>.jpg files)")
    classes = sorted(train)
    if len(classes) < 2:
        raise DataError(f"need at least 2 classes in {train_dir}, found {len(classes)}: {classes}")
    unknown = sorted(set(valid) - set(classes))
    if unknown:
        raise DataError(f"classes {unknown} in {valid_dir} are not in {train_dir} (classes {classes})")
    return {s: [(p, classes.index(c)) for c in classes for p in d.get(c, [])]
            for s, d in (("train", train), ("valid", valid))}, classes


def read_folder(root: str | os.PathLike) -> Photos:
    """Decode an image folder (see the module docstring) to 32x32 uint8 photos.

    Raises :class:`DataError` for a missing path, no train/valid split, an empty split, fewer than two classes
    in train, validation classes unknown to train, or too many unreadable images.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a directory: {root}")
    paths, classes = _folder_paths(root)
    all_paths = [p for s in ("train", "valid") for p, _ in paths[s]]
    images, keep, bad = decode_files(all_paths, root)
    labels = np.array([y for s in ("train", "valid") for _, y in paths[s]], np.int32)[keep]
    is_train = (keep < len(paths["train"]))
    photos = Photos(images[is_train], labels[is_train], images[~is_train], labels[~is_train], classes,
                    [str(p) for p in bad])
    for split, y in (("train", photos.train_y), ("valid", photos.valid_y)):
        if len(y) == 0:
            raise DataError(f"no readable images left in {root / split}")
        if split == "train" and len(np.unique(y)) < 2:
            raise DataError(f"need at least 2 classes with readable images in {root / split}")
    return photos


def load_folder(root: str | os.PathLike) -> Dataset:
    """:func:`read_folder` (or :func:`load_cifar10` for a folder of CIFAR-10 batches), normalized."""
    root = Path(root)
    if root.is_dir() and cifar_dir(root) is not None:
        return load_cifar10(root)
    return read_folder(root).normalized(f"folder {root}")


# ------------------------------------------------------------------------------------------------ embedded
EMBEDDED = Path(__file__).resolve().parents[2] / "data" / "cats_dogs_32.npz"
EMBEDDED_LABEL = "embedded photos (700 Kaggle Dogs vs. Cats photos at 32x32, data/cats_dogs_32.npz)"


def save_arrays(photos: Photos, path: str | os.PathLike, **provenance: str) -> Path:
    """Write photos as one compressed ``.npz`` of uint8 arrays (and string provenance fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, train_x=photos.train_x, train_y=photos.train_y, valid_x=photos.valid_x,
                        valid_y=photos.valid_y, classes=np.asarray(photos.classes),
                        **{k: np.asarray(v) for k, v in provenance.items()})
    return path


def load_arrays(path: str | os.PathLike = EMBEDDED, source: str | None = None) -> Dataset:
    """Photos saved by :func:`save_arrays` (default: the embedded set), normalized."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such photo array file: {path}")
    try:
        with np.load(path) as f:
            photos = Photos(f["train_x"], f["train_y"].astype(np.int32), f["valid_x"], f["valid_y"].astype(np.int32),
                            [str(c) for c in f["classes"]])
    except (KeyError, ValueError, OSError) as e:
        raise DataError(f"{path} is not a photo array file ({type(e).__name__}: {e})") from None
    for split, y in (("train", photos.train_y), ("valid", photos.valid_y)):
        if len(y) == 0:  # the folder and CIFAR readers refuse an empty split too; nothing could train or be scored
            raise DataError(f"{path} has no {split} images ({split}_y is empty); need at least 1")
    return photos.normalized(source or f"photo arrays {path}")


# ------------------------------------------------------------------------------------------------ CIFAR-10
def cifar_dir(root: Path) -> Path | None:
    """The folder holding CIFAR-10 python batches: ``root`` or ``root/cifar-10-batches-py``, else None."""
    for d in (root, root / "cifar-10-batches-py"):
        if (d / "data_batch_1").is_file():
            return d
    return None


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a Python object that no CIFAR-10 batch holds."""


def _latin1_encode(text, encoding):
    """``_codecs.encode`` as pickle uses it: Python 3 writes ``bytes`` at protocol 2 as ``encode(str, "latin1")``."""
    if encoding != "latin1":
        raise _ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r} (pickle itself only writes 'latin1')")
    return text.encode("latin1")


def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 python batch may name: NumPy's array pickling, under NumPy 1 and 2 module names.

    The real batches (Python 2, protocol 2) name ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; NumPy 2 writes ``numpy._core...``; protocol 5 writes ``_frombuffer`` instead of
    ``_reconstruct``; Python 3 at protocol <= 2 writes bytes through ``_codecs.encode``.
    """
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # this NumPy's _reconstruct, whatever its module
    frombuffer = np.zeros(0).__reduce_ex__(5)[0]  # this NumPy's _frombuffer
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, str, numbers and NumPy arrays; refuses every other global.

    ``pickle.load`` would import and call whatever a file names (``os.system``, ``builtins.open``...), so a file
    named ``data_batch_1`` in a downloaded folder could run any code while it loads.
    """

    ALLOWED = _cifar_globals()

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], np.int64)
    except _ForbiddenGlobal as e:
        raise DataError(f"refusing CIFAR-10 batch {path}: it asks to load {e}, which a CIFAR-10 batch never holds "
                        "(only dicts, lists, bytes, str, ints and NumPy arrays)") from None
    except Exception as e:  # noqa: BLE001 -- any failure to unpickle means "not a CIFAR batch"; say which file
        raise DataError(f"cannot read CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None
    if len(labels) != len(data):
        raise DataError(f"CIFAR-10 batch {path} has {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10(root: str | os.PathLike) -> Dataset:
    """Cat (3) vs dog (5) from the CIFAR-10 python batches under ``root`` -> labels 0 (cat) and 1 (dog).

    Training uses every ``data_batch_*`` present; validation uses ``test_batch``.
    """
    root = Path(root)
    d = cifar_dir(root)
    if d is None:
        raise DataError(f"no CIFAR-10 python batches (data_batch_1, ...) in {root}")
    test = d / "test_batch"
    if not test.is_file():
        raise DataError(f"no valid split: {test} is missing")

    def pick(paths):
        xs, ys = zip(*(_read_cifar_batch(p) for p in paths), strict=True)
        x, y = np.concatenate(xs), np.concatenate(ys)
        keep = (y == CIFAR_CAT) | (y == CIFAR_DOG)
        return normalize_uint8(x[keep]), (y[keep] == CIFAR_DOG).astype(np.int32)

    tx, ty = pick(sorted(d.glob("data_batch_*")))
    vx, vy = pick([test])
    if len(np.unique(ty)) < 2 or len(vy) == 0:
        raise DataError(f"CIFAR-10 batches in {d} do not contain both cat (3) and dog (5) images")
    return Dataset(tx, ty, vx, vy, ["cat", "dog"], f"CIFAR-10 cat/dog {d}")


# ------------------------------------------------------------------------------------------------ synthetic
SYNTHETIC_LABEL = "SYNTHETIC two-class images (generated in code; not photos)"


def synthetic_dataset(seed: int = 1, n_train: int = 160, n_valid: int = 40) -> Dataset:
    """A generated two-class 32x32 RGB set: class 0 horizontal stripes, class 1 vertical stripes.

    Stripe period (4-10 px), phase, colours and brightness are random per image and strong Gaussian noise
    (sigma 60 of 255) is added, so a linear classifier does not solve it at once but LeNet learns it in a few
    epochs. Sizes default to the lesson's RMB task (10 iterations of 16 per epoch). Images go through the same
    uint8 -> normalize path as photos.
    """
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 2
        rng.shuffle(y)
        coords = np.arange(IMAGE_SIZE, dtype=np.float32)
        period = rng.uniform(4, 10, n)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
        along = np.where(y[:, None, None] == 0, coords[None, :, None], coords[None, None, :])
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * along / period + phase)  # (n, 32, 32), rows or columns vary
        c0, c1 = rng.uniform(0, 255, (2, n, 1, 1, 3))
        img = c0 + (c1 - c0) * wave[..., None] + rng.normal(0, 60, (n, IMAGE_SIZE, IMAGE_SIZE, 3))
        return normalize_uint8(np.clip(img, 0, 255).astype(np.uint8)), y.astype(np.int32)

    tx, ty = make(n_train)
    vx, vy = make(n_valid)
    return Dataset(tx, ty, vx, vy, ["horizontal", "vertical"], SYNTHETIC_LABEL)


def fingerprint(ds: Dataset) -> str:
    """A short hash of a dataset's arrays (a checkpoint records it: resuming on other data is refused)."""
    h = hashlib.sha256()
    for a in (ds.train_x, ds.train_y, ds.valid_x, ds.valid_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def load_dataset(data: str | os.PathLike | None, seed: int = 1) -> Dataset:
    """``--data`` semantics: None -> the embedded photos; ``"synthetic"`` -> :func:`synthetic_dataset`; a ``.npz``
    file -> :func:`load_arrays`; a folder -> :func:`load_folder` (image folder or CIFAR-10 batches)."""
    if data is None:
        return load_arrays(EMBEDDED, EMBEDDED_LABEL)
    if str(data) == "synthetic":
        return synthetic_dataset(seed)
    if str(data).endswith(".npz"):
        return load_arrays(data)
    return load_folder(data)
