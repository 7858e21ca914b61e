"""experiments.common.images: both folder layouts, CIFAR-10 batches, colour modes, crops, and every data fault.

All images are written by the tests (tiny, solid colours, so the expected normalized values are known exactly
from the ImageNet mean/std: a solid image stays solid through any resize). The CLI fault tests expect exit status
2 with one ``lenet: error:`` line: one runs ``python -m experiments.lenet`` in a subprocess, the others call
``lenet.main`` in this process.
"""

from __future__ import annotations

import codecs
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.common import images as data
from experiments.common.images import DataError, DataWarning

ROOT = Path(__file__).resolve().parents[2]
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
RED, BLUE = (200, 30, 40), (20, 60, 220)


def expected(rgb) -> np.ndarray:
    """The normalized value of a solid uint8 colour, computed independently of experiments.data."""
    return (np.asarray(rgb, np.float64) / 255.0 - MEAN) / STD


def write(path: Path, rgb=RED, size=(40, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path, format=fmt)
    return path


def image_folder(root: Path, n_train=3, n_valid=2, classes=(("cat", RED), ("dog", BLUE)), ext="png") -> Path:
    for name, rgb in classes:
        for i in range(n_train):
            write(root / "train" / name / f"{i}.{ext}", rgb)
        for i in range(n_valid):
            write(root / "valid" / name / f"{i}.{ext}", rgb)
    return root


def lenet_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "experiments.lenet", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------------ layouts
def test_image_folder_layout_labels_shapes_and_normalization(tmp_path):
    ds = data.load_folder(image_folder(tmp_path))
    assert ds.classes == ["cat", "dog"]
    assert ds.train_x.shape == (6, 32, 32, 3) and ds.train_x.dtype == np.float32
    assert ds.valid_x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.valid_y, [0, 0, 1, 1])
    # JPEG-free PNG round trip: exact pixels, so only float32 rounding separates us from the formula
    np.testing.assert_allclose(ds.train_x[0], np.broadcast_to(expected(RED), (32, 32, 3)), atol=1e-5)
    np.testing.assert_allclose(ds.valid_x[-1], np.broadcast_to(expected(BLUE), (32, 32, 3)), atol=1e-5)
    assert ds.skipped == []


def test_kaggle_flat_layout(tmp_path):
    for split, n in (("train", 3), ("valid", 2)):
        for i in range(n):
            write(tmp_path / split / f"cat.{i}.jpg", RED, fmt="JPEG")
            write(tmp_path / split / f"dog.{100 + i}.jpg", BLUE, fmt="JPEG")
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    ds = data.load_folder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    np.testing.assert_array_equal(np.bincount(ds.train_y), [3, 3])
    np.testing.assert_array_equal(np.bincount(ds.valid_y), [2, 2])
    # JPEG is lossy (and decoded at reduced scale): a solid colour comes back within a couple of levels
    np.testing.assert_allclose(ds.train_x[ds.train_y == 0][0], np.broadcast_to(expected(RED), (32, 32, 3)),
                               atol=4 / 255 / 0.224)


def test_jpeg_draft_decoding_matches_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((50, 50, 1))).astype(np.uint8)  # 400x400 blocks
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    fast = data.decode_image(path).astype(float)
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR), float)
    assert np.abs(fast - full).mean() < 3.0  # mean absolute difference in 0..255 levels


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_non_rgb_images_are_converted(tmp_path, mode):
    rgb = (90, 90, 90) if mode in ("L", "LA") else RED  # gray modes can only hold a gray
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    if mode == "P":  # an explicit palette holds RED exactly (converting RGB -> P would dither to a web palette)
        img = Image.new("P", (40, 30), 1)
        img.putpalette([0, 0, 0, *RED] + [0] * (256 * 3 - 6))
        img.save(path)
    else:
        write(path, rgb, mode=mode)
    with Image.open(path) as img:
        assert img.mode == mode
    out = data.decode_image(path)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    tol = 3 if mode == "CMYK" else 0
    np.testing.assert_allclose(out.reshape(-1, 3).astype(int), np.broadcast_to(rgb, (32 * 32, 3)), atol=tol)


def test_palette_with_transparency_is_converted(tmp_path):
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, *RED] + [0] * (256 * 3 - 6))
    img.info["transparency"] = 0
    path = tmp_path / "t.png"
    img.save(path, transparency=0)
    np.testing.assert_array_equal(data.decode_image(path)[0, 0], RED)


def test_grayscale_folder_loads_as_rgb(tmp_path):
    root = image_folder(tmp_path)
    write(root / "train" / "cat" / "gray.png", (77, 77, 77), mode="L")
    ds = data.load_folder(root)
    gray = ds.train_x[3]  # sorted file names: 0, 1, 2, gray
    np.testing.assert_allclose(gray, np.broadcast_to(expected((77, 77, 77)), (32, 32, 3)), atol=1e-5)


# ------------------------------------------------------------------------------------------------ CIFAR-10
def _cifar_batch(path: Path, labels: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)  # CIFAR stores planes: R, G, B
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(labels), -1), b"labels": labels, b"batch_label": b"x"}, f)
    return images


def test_cifar10_reader_keeps_cat_and_dog(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    train_labels = [3, 5, 0, 3, 9, 5, 5]
    train = _cifar_batch(d / "data_batch_1", train_labels, 0)
    test = _cifar_batch(d / "test_batch", [1, 5, 3], 1)
    ds = data.load_folder(tmp_path)  # the parent folder is recognised too
    assert ds.classes == ["cat", "dog"]
    np.testing.assert_array_equal(ds.train_y, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(ds.valid_y, [1, 0])
    # image 1 of the batch (label 5) is the second kept one; pixel (row 2, col 7) in HWC order
    want = (train[1, :, 2, 7] / 255.0 - MEAN) / STD
    np.testing.assert_allclose(ds.train_x[1, 2, 7], want, atol=1e-5)
    np.testing.assert_allclose(ds.valid_x[1, 0, 0], (test[2, :, 0, 0] / 255.0 - MEAN) / STD, atol=1e-5)


def test_cifar10_without_test_batch_is_a_data_error(tmp_path):
    _cifar_batch(tmp_path / "data_batch_1", [3, 5], 0)
    with pytest.raises(DataError, match="test_batch"):
        data.load_cifar10(tmp_path)


def test_cifar10_unreadable_batch_names_the_file(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    _cifar_batch(tmp_path / "test_batch", [3, 5], 0)
    with pytest.raises(DataError, match="data_batch_1"):
        data.load_cifar10(tmp_path)


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as CIFAR-10's batches were written (Python 2's cPickle, NumPy 1): every str and bytes a Python 2
    ``str`` (BINSTRING, read back as bytes under ``encoding="bytes"``) and arrays rebuilt by
    ``numpy.core.multiarray._reconstruct``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _cifar_release(root: Path, batches: dict[str, list[int]], how) -> dict[str, np.ndarray]:
    """A CIFAR-10 "python version" folder: every batch a dict of b"batch_label", b"labels" (a list of ints), b"data"
    ((n, 3072) uint8) and b"filenames", plus batches.meta; written by Python 2 (``how="python2"``) or by this Python
    at protocol ``how``. Returns each batch's (n, 3, 32, 32) images."""
    root.mkdir(parents=True, exist_ok=True)

    def dump(obj, path):
        with open(path, "wb") as f:
            _Python2Pickler(f).dump(obj) if how == "python2" else pickle.dump(obj, f, protocol=how)

    out = {}
    for k, (name, labels) in enumerate(batches.items()):
        out[name] = np.random.default_rng(k).integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        dump({b"batch_label": f"{name} of 1".encode(), b"labels": labels,
              b"data": out[name].reshape(len(labels), -1), b"filenames": [f"img_{i}.png".encode() for i in labels]},
             root / name)
    dump({b"num_cases_per_batch": 10000, b"num_vis": 3072,
          b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
                           b"truck"]}, root / "batches.meta")
    return out


def _globals_named(path: Path) -> set[str]:
    ops = list(pickletools.genops(path.read_bytes()))
    assert "STACK_GLOBAL" not in {op.name for op, _, _ in ops}  # protocol <= 3: every global is a GLOBAL opcode
    return {arg for op, arg, _ in ops if op.name == "GLOBAL"}


@pytest.mark.parametrize("how", ["python2", 2, 5])
def test_cifar10_batches_as_cifar_ships_them_and_as_python3_writes_them_load(tmp_path, how):
    d = tmp_path / "cifar-10-batches-py"
    made = _cifar_release(d, {"data_batch_1": [3, 0, 5, 5], "data_batch_2": [9, 3], "test_batch": [5, 3, 1]}, how)
    if how == "python2":  # the globals Python 2 cPickle names for a NumPy 1 array, as in the real batches
        assert _globals_named(d / "data_batch_1") == {"numpy.core.multiarray _reconstruct", "numpy ndarray",
                                                      "numpy dtype"}
    ds = data.load_folder(tmp_path)
    np.testing.assert_array_equal(ds.train_y, [0, 1, 1, 0])
    np.testing.assert_array_equal(ds.valid_y, [1, 0])
    kept = np.concatenate([made["data_batch_1"][[0, 2, 3]], made["data_batch_2"][[1]]]).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ds.train_x, (kept / 255.0 - MEAN) / STD, atol=1e-6)
    np.testing.assert_allclose(ds.valid_x, (made["test_batch"][:2].transpose(0, 2, 3, 1) / 255.0 - MEAN) / STD,
                               atol=1e-6)


class _Payload:
    """Unpickling this calls ``call(*args)`` (pickle's ``__reduce__``): what a planted data_batch_1 could do."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("attack", ["open", "os.system"])
def test_cifar10_batch_that_would_run_code_is_refused_before_anything_runs(tmp_path, capsys, attack):
    d = tmp_path / "cifar"
    _cifar_release(d, {"data_batch_1": [3, 5], "test_batch": [3, 5]}, 2)
    created = tmp_path / "created-by-the-pickle"
    payload = (_Payload(open, str(created), "w") if attack == "open"
               else _Payload(os.system, f"touch {shlex.quote(str(created))}"))
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": payload, b"labels": [3]}, protocol=2))
    proc = lenet_main(capsys, "--data", str(d), "--out", str(tmp_path / "o"))
    assert not created.exists()  # the payload never ran
    _assert_cli_data_error(proc, f"refusing CIFAR-10 batch {d / 'data_batch_1'}", "which a CIFAR-10 batch never holds")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cifar10_batch_naming_a_codec_other_than_latin1_is_refused(tmp_path):
    _cifar_release(tmp_path, {"data_batch_1": [3, 5], "test_batch": [3, 5]}, 2)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_Payload(codecs.encode, "abc", "rot13"), protocol=2))
    with pytest.raises(DataError, match=r"refusing CIFAR-10 batch .*test_batch: it asks to load _codecs.encode with "
                                        r"encoding 'rot13'"):
        data.load_cifar10(tmp_path)


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_set_is_labelled_deterministic_and_balanced():
    a, b = data.synthetic_dataset(3), data.synthetic_dataset(3)
    assert "SYNTHETIC" in a.source and "SYNTHETIC" in a.describe()
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert not np.array_equal(a.train_x, data.synthetic_dataset(4).train_x)
    assert a.train_x.shape == (160, 32, 32, 3) and a.valid_x.shape == (40, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(a.train_y), [80, 80])


def test_synthetic_classes_differ_in_stripe_orientation():
    ds = data.synthetic_dataset(0)
    gray = ds.train_x.mean(-1)
    # variance across rows (of row means) is large for horizontal stripes, small for vertical ones
    row_var = gray.mean(2).var(1)
    col_var = gray.mean(1).var(1)
    horizontal = row_var > col_var
    assert (horizontal == (ds.train_y == 0)).mean() > 0.9


# ------------------------------------------------------------------------------------------------ crops
def test_crop_at_center_offset_is_identity_and_padding_is_black():
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))
    np.testing.assert_array_equal(data.crop(x, jnp.array([[4, 4], [4, 4]])), x)
    shifted = np.asarray(data.crop(x, jnp.array([[0, 0], [8, 8]])))
    # offset (0, 0): the top-left 4x4 is padding, whose value is a black pixel after normalization
    np.testing.assert_allclose(shifted[0, :4, :4], np.broadcast_to(-MEAN / STD, (4, 4, 3)), rtol=1e-6)
    np.testing.assert_array_equal(shifted[0, 4:, 4:], x[0, :28, :28])
    np.testing.assert_array_equal(shifted[1, :28, :28], x[1, 4:, 4:])


def test_random_crop_offsets_are_uniform_and_keyed():
    import jax

    offs = np.asarray(data.crop_offsets(jax.random.key(0), 20000))
    assert offs.min() == 0 and offs.max() == 8
    np.testing.assert_allclose(np.bincount(offs.ravel()) / offs.size, 1 / 9, atol=0.01)
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    a = np.asarray(data.random_crop(jax.random.key(5), x))
    np.testing.assert_array_equal(a, np.asarray(data.random_crop(jax.random.key(5), x)))
    assert not np.array_equal(a, np.asarray(data.random_crop(jax.random.key(6), x)))


# ------------------------------------------------------------------------------------------------ faults
def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*nope"):
        data.load_folder(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no 'train' split"):
        data.load_folder(tmp_path)


def test_empty_split(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "valid").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*train"):
        data.load_folder(tmp_path)


def test_one_class(tmp_path):
    image_folder(tmp_path, classes=(("cat", RED),))
    with pytest.raises(DataError, match=r"at least 2 classes .*found 1: \['cat'\]"):
        data.load_folder(tmp_path)


def test_no_valid_split(tmp_path):
    image_folder(tmp_path)
    for p in (tmp_path / "valid").rglob("*.png"):
        p.unlink()
    for d in sorted((tmp_path / "valid").rglob("*"), reverse=True):
        d.rmdir()
    (tmp_path / "valid").rmdir()
    with pytest.raises(DataError, match=r"no 'valid' split in .*"):
        data.load_folder(tmp_path)


def test_valid_class_unknown_to_train(tmp_path):
    image_folder(tmp_path)
    write(tmp_path / "valid" / "bird" / "0.png", RED)
    with pytest.raises(DataError, match=r"\['bird'\]"):
        data.load_folder(tmp_path)


def test_corrupt_image_is_skipped_with_warnings_naming_it(tmp_path):
    root = image_folder(tmp_path, n_train=6, n_valid=2)  # 16 images
    bad = root / "train" / "dog" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # 1 of 17 = 6% bad: skipped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_folder(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any(str(bad) in m for m in messages), messages
    assert any("skipped 1 unreadable image(s) of 17" in m for m in messages), messages
    assert ds.skipped == [str(bad)]
    np.testing.assert_array_equal(np.bincount(ds.train_y), [6, 6])


def test_truncated_jpeg_is_skipped(tmp_path):
    root = image_folder(tmp_path, n_train=6, n_valid=2)
    full = write(tmp_path / "full.jpg", RED, size=(64, 64), fmt="JPEG").read_bytes()
    bad = root / "train" / "cat" / "9.jpg"
    bad.write_bytes(full[: len(full) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_folder(root)
    assert any(str(bad) in str(w.message) for w in caught if issubclass(w.category, DataWarning))
    assert ds.skipped == [str(bad)]


def test_too_many_corrupt_images_is_a_clean_error(tmp_path):
    root = image_folder(tmp_path, n_train=3, n_valid=2)  # 10 good
    for i in range(2):  # 2 of 12 = 17% bad
        (root / "valid" / "cat" / f"bad{i}.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"2 of 12 images under .* cannot be read .*bad0.png"):
        data.load_folder(root)


def _assert_cli_data_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lenet: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def lenet_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``lenet.main(args)`` in this process, as a CompletedProcess: what the subprocess would show, without paying
    an interpreter and a JAX import per case (test_cli_missing_path runs the real command)."""
    from experiments import lenet

    capsys.readouterr()
    try:
        lenet.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_missing_path(tmp_path):
    _assert_cli_data_error(lenet_cli("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")),
                           str(tmp_path / "missing"))


def test_cli_empty_folder(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    _assert_cli_data_error(lenet_main(capsys, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")),
                           str(tmp_path / "d"))


def test_cli_one_class(tmp_path, capsys):
    image_folder(tmp_path / "d", classes=(("cat", RED),))
    _assert_cli_data_error(lenet_main(capsys, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")),
                           str(tmp_path / "d" / "train"), "2 classes")


def test_cli_no_valid_split(tmp_path, capsys):
    for name, rgb in (("cat", RED), ("dog", BLUE)):
        write(tmp_path / "d" / "train" / name / "0.png", rgb)
    _assert_cli_data_error(lenet_main(capsys, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")),
                           "no 'valid' split", str(tmp_path / "d"))


@pytest.mark.parametrize("empty", ["train", "valid"])
def test_cli_photo_arrays_with_an_empty_split(tmp_path, capsys, empty):
    n = {"train": 2, "valid": 2, empty: 0}
    x = {s: np.zeros((n[s], 32, 32, 3), np.uint8) for s in n}
    y = {s: (np.arange(n[s]) % 2).astype(np.int32) for s in n}
    path = data.save_arrays(data.Photos(x["train"], y["train"], x["valid"], y["valid"], ["a", "b"]), tmp_path / "p.npz")
    _assert_cli_data_error(lenet_main(capsys, "--data", str(path), "--out", str(tmp_path / "o")),
                           f"{path} has no {empty} images ({empty}_y is empty); need at least 1")


def test_cli_too_many_unreadable(tmp_path, capsys):
    image_folder(tmp_path / "d", n_train=1, n_valid=1)
    (tmp_path / "d" / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    _assert_cli_data_error(lenet_main(capsys, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")),
                           "broken.jpg", "cannot be read")
