"""Make the embedded photo set ``data/cats_dogs_32.npz`` from a folder of cat/dog photos.

    python scripts/make_embedded_photos.py ../shared/data/cats_dogs

Decodes every photo with the experiments' own loader (``experiments.common.images.read_folder``: RGB, JPEG draft
decoding, bilinear antialiased resize to the lesson's 32x32), so the embedded set is exactly what
``python -m experiments.lenet --data DIR`` trains on, and stores the uint8 arrays, labels, class names and each
image's source file name in one compressed ``.npz``. The JPEGs themselves are never committed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the experiments live in the checkout

from experiments.common.images import EMBEDDED, read_folder, save_arrays  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="DIR/train/<class>/*.jpg and DIR/valid/<class>/*.jpg")
    p.add_argument("--out", type=Path, default=EMBEDDED, help="output file (default %(default)s)")
    args = p.parse_args(argv)
    photos = read_folder(args.folder)
    if photos.skipped:
        raise SystemExit(f"make_embedded_photos: {len(photos.skipped)} unreadable images: {photos.skipped[:3]}")
    names = {split: [p.name for c in photos.classes for p in sorted((args.folder / split / c).iterdir())]
             for split in ("train", "valid")}
    path = save_arrays(photos, args.out, train_files=np.asarray(names["train"]), valid_files=np.asarray(names["valid"]),
                       source=np.asarray("Kaggle Dogs vs. Cats (Asirra) training photos, via ../shared/data/cats_dogs"))
    counts = {s: np.bincount(getattr(photos, f"{s}_y")).tolist() for s in ("train", "valid")}
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): classes {photos.classes}, per class {counts}")
    return path


if __name__ == "__main__":
    main()
