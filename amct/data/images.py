"""Image folders (jpg/png/... via Pillow) and ``filename label`` label files."""
from __future__ import annotations

import os

import numpy as np

from amct.data.preprocess import HW, Preprocess
from amct.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")


def is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS)


def list_images(folder: str) -> list[str]:
    """The image files directly in ``folder``, sorted by name for a deterministic order."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise DataError(f"{folder}: cannot list folder: {e.strerror}") from None
    return [os.path.join(folder, n) for n in names
            if is_image(n) and os.path.isfile(os.path.join(folder, n))]


class ImageSource:
    """Image files decoded and preprocessed on demand, one (C, H, W) sample each."""

    def __init__(self, files: list[str], preprocess: Preprocess, sample_shape: tuple[int, int, int],
                 where: str) -> None:
        if not files:
            raise DataError(f"{where}: no image files ({', '.join(IMAGE_EXTS)})")
        self.files = list(files)
        self.preprocess = preprocess
        self.channels = int(sample_shape[0])
        self.net_hw: HW = (int(sample_shape[1]), int(sample_shape[2]))
        self.where = where

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.preprocess.image(f, self.channels, self.net_hw)
                         for f in self.files[start:stop]])


def read_labels_file(path: str) -> dict[str, int]:
    """``filename label`` lines (blank lines and ``#`` comments ignored) -> {basename: label}."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read labels file: {e}") from None
    out: dict[str, int] = {}
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.replace(",", " ").split()
        if len(parts) != 2:
            raise DataError(f"{path}:{no}: expected 'filename label', got {line!r}")
        try:
            out[os.path.basename(parts[0])] = int(parts[1])
        except ValueError:
            raise DataError(f"{path}:{no}: label {parts[1]!r} is not an integer") from None
    if not out:
        raise DataError(f"{path}: no labels")
    return out


def labels_for_files(files: list[str], path: str) -> np.ndarray:
    """The label of every image in ``files`` from the labels file ``path``."""
    table = read_labels_file(path)
    missing = [f for f in files if os.path.basename(f) not in table]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"{path}: no label for image {missing[0]}{more}")
    return np.array([table[os.path.basename(f)] for f in files], dtype=np.int64)
