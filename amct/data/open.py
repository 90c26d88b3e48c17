"""Open data by path: pick the reader from what the path is.

``open_dataset(["images/"], {"data": (3, 224, 224)}, preprocess=...)`` returns
a ``Dataset`` for a network whose input ``data`` takes 3x224x224 samples.  A
spec is ``path`` (for a single-input network, or an .npz holding every input)
or ``name=path``.  Recognised:

* a folder of images (jpg/png/bmp/...; sorted by name), of ``.bin`` files or of
  ``.npy`` files (concatenated in name order);
* one image file;
* ``.npy`` (N, C, H, W) or one sample; ``.npz`` with one array per input name
  (or a single array) and optionally ``label``/``labels``;
* ``.bin``: raw values of ``data_type`` (AMCT's CLI format), N whole samples;
* MNIST idx files (``*-images-idx3-ubyte[.gz]``; the matching labels file
  beside it is picked up);
* ``.csv``/``.csv.gz``: rows of pixels with an optional label column.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from amct.data.dataset import ArraySource, Dataset, Source
from amct.data.images import ImageSource, is_image, labels_for_files, list_images
from amct.data.preprocess import Preprocess
from amct.data.tensors import (fit_samples, idx_labels_beside, is_idx, load_bin, load_csv, load_idx,
                               load_npy, load_npz)
from amct.errors import DataError

Shape = tuple[int, ...]
LABEL_KEYS = ("label", "labels")


def parse_data_specs(specs: Sequence[str] | Mapping[str, str], input_names: Sequence[str]) -> dict[str | None, str]:
    """``["name=path", ...]`` -> {name: path}; an unnamed single path maps to None."""
    if isinstance(specs, Mapping):
        return dict(specs)
    out: dict[str | None, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name in input_names:
            key: str | None = name
        elif sep and not os.path.exists(spec) and name and "/" not in name:
            raise DataError(f"--data {spec}: the network has no input '{name}' "
                            f"(inputs: {', '.join(input_names)})")
        else:
            key, path = None, spec
        if key in out:
            raise DataError(f"--data given twice for {'input ' + repr(key) if key else 'the input'}")
        out[key] = path
    if None in out and len(out) > 1:
        raise DataError("mix of named (name=path) and unnamed --data; name every input")
    return out


def open_dataset(specs: Sequence[str] | Mapping[str, str], sample_shapes: Mapping[str, Shape], *,
                 preprocess: Preprocess | None = None, data_type: str = "float32",
                 labels: str | None = None) -> Dataset:
    """A dataset feeding the inputs ``sample_shapes`` ({name: per-sample shape})."""
    pre = preprocess or Preprocess()
    names = list(sample_shapes)
    paths = parse_data_specs(specs, names)
    if not paths:
        raise DataError("no data given")
    sources: dict[str, Source] = {}
    found_labels: tuple[np.ndarray, str] | None = None
    if None in paths:
        path = paths[None]
        if len(names) > 1:
            if not path.lower().endswith(".npz"):
                raise DataError(f"{path}: the network has {len(names)} inputs ({', '.join(names)}); "
                                "give one --data name=path per input, or an .npz with one array each")
            arrays = load_npz(path)
            lab = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
            missing = [n for n in names if n not in arrays]
            if missing:
                raise DataError(f"{path}: no array for input(s) {', '.join(missing)} "
                                f"(arrays: {', '.join(sorted(arrays)) or 'none'})")
            for n in names:
                sources[n] = ArraySource(fit_samples(arrays[n], sample_shapes[n], f"{path}[{n}]"),
                                         f"{path}[{n}]")
            if lab is not None:
                found_labels = (lab, path)
        else:
            src, lab = open_source(path, names[0], sample_shapes[names[0]], pre, data_type)
            sources[names[0]] = src
            found_labels = lab
    else:
        missing = [n for n in names if n not in paths]
        if missing:
            raise DataError(f"no --data for input(s) {', '.join(missing)}")
        for n in names:
            src, lab = open_source(paths[n], n, sample_shapes[n], pre, data_type)
            sources[n] = src
            found_labels = found_labels or lab
    if labels is not None:
        first = next(iter(sources.values()))
        arr = read_labels(labels, first)
        return Dataset(sources, arr, labels)
    if found_labels is not None:
        return Dataset(sources, found_labels[0], found_labels[1])
    return Dataset(sources)


def open_source(path: str, name: str, sample_shape: Shape, pre: Preprocess,
                data_type: str = "float32") -> tuple[Source, tuple[np.ndarray, str] | None]:
    """The source of one input, plus labels found alongside (csv column, idx pair, npz key)."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    low = path.lower()
    if os.path.isdir(path):
        return _open_folder(path, name, sample_shape, pre, data_type), None
    if is_image(low):
        return ImageSource([path], pre, _image_shape(sample_shape, path), path), None
    if low.endswith(".npy"):
        return ArraySource(fit_samples(load_npy(path), sample_shape, path), path), None
    if low.endswith(".npz"):
        arrays = load_npz(path)
        lab = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
        if name in arrays:
            arr = arrays[name]
        elif len(arrays) == 1:
            arr = next(iter(arrays.values()))
        else:
            raise DataError(f"{path}: holds arrays {', '.join(sorted(arrays))}; none is named "
                            f"'{name}' (the network input)")
        src = ArraySource(fit_samples(arr, sample_shape, path), path)
        return src, (None if lab is None else (lab, path))
    if low.endswith(".bin"):
        return ArraySource(load_bin(path, sample_shape, data_type), path), None
    if is_idx(low):
        pixels = load_idx(path)
        src = _pixel_source(pixels, sample_shape, pre, path)
        lab_path = idx_labels_beside(path)
        return src, (None if lab_path is None else (load_idx(lab_path), lab_path))
    if low.endswith((".csv", ".csv.gz")):
        if pre.resize is not None or pre.crop is not None:
            raise DataError(f"{path}: --resize/--crop are not supported for csv rows")
        pixels, lab = load_csv(path, int(np.prod(sample_shape)))
        src = _pixel_source(pixels.reshape((-1,) + tuple(sample_shape)), sample_shape, pre, path)
        return src, (None if lab is None else (lab, path))
    raise DataError(f"{path}: unknown data format (expected an image folder or file, .npy, .npz, "
                    ".bin, MNIST idx or .csv)")


def _image_shape(sample_shape: Shape, where: str) -> tuple[int, int, int]:
    if len(sample_shape) != 3:
        raise DataError(f"{where}: images need a (C, H, W) network input, this one takes "
                        f"samples of shape {tuple(sample_shape)}")
    return tuple(int(d) for d in sample_shape)  # type: ignore[return-value]


def _pixel_source(pixels: np.ndarray, sample_shape: Shape, pre: Preprocess, where: str) -> ArraySource:
    """Raw pixel arrays (N, H, W) or (N, C, H, W) with numeric preprocessing."""
    c, h, w = _image_shape(sample_shape, where)
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    if pixels.ndim != 4 or pixels.shape[1] != c:
        raise DataError(f"{where}: pixel data of shape {tuple(pixels.shape)} does not fit a "
                        f"{c}-channel network input")
    net_hw = (h, w)
    return ArraySource(pixels, where, transform=lambda x, wh: pre.pixels(x, wh, net_hw))


def _open_folder(path: str, name: str, sample_shape: Shape, pre: Preprocess, data_type: str) -> Source:
    images = list_images(path)
    if images:
        return ImageSource(images, pre, _image_shape(sample_shape, path), path)
    entries = sorted(os.listdir(path))
    bins = [os.path.join(path, e) for e in entries if e.lower().endswith(".bin")]
    npys = [os.path.join(path, e) for e in entries if e.lower().endswith(".npy")]
    if bins:
        arrays = [load_bin(f, sample_shape, data_type) for f in bins]
    elif npys:
        arrays = [fit_samples(load_npy(f), sample_shape, f) for f in npys]
    else:
        raise DataError(f"{path}: folder holds no images (jpg/png/...), .bin or .npy files")
    return ArraySource(np.concatenate(arrays) if len(arrays) > 1 else arrays[0], path)


def read_labels(path: str, first: Source) -> np.ndarray:
    """Labels from an idx file, .npy, or a text file (``filename label`` lines or one per line)."""
    low = path.lower()
    if is_idx(low):
        return load_idx(path).astype(np.int64)
    if low.endswith(".npy"):
        return np.asarray(load_npy(path)).reshape(-1).astype(np.int64)
    try:
        with open(path, encoding="utf-8") as f:
            rows = [ln.split() for ln in f.read().splitlines() if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError:
        raise DataError(f"{path}: labels file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read labels file: {e}") from None
    if rows and all(len(r) == 1 for r in rows):
        try:
            return np.array([int(r[0]) for r in rows], dtype=np.int64)
        except ValueError as e:
            raise DataError(f"{path}: labels must be integers: {e}") from None
    if isinstance(first, ImageSource):
        return labels_for_files(first.files, path)
    raise DataError(f"{path}: 'filename label' lines need an image folder as data; for tensors "
                    "give one integer label per line, an .npy or an idx labels file")
