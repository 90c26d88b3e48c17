"""Tensor files: .npy, .npz, raw .bin (AMCT's CLI format), MNIST idx and pixel csv.

``.npy``/``.npz``/``.bin`` hold network-ready values and are fed as they are.
MNIST idx and csv hold raw pixels and get the numeric preprocessing (mean,
scale, crop) like images do.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from amct.errors import DataError

Shape = tuple[int, ...]

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def fit_samples(arr: np.ndarray, sample_shape: Shape, where: str) -> np.ndarray:
    """View ``arr`` as (N, *sample_shape): accepts (N, *s), one sample (*s), or flat rows."""
    s = tuple(int(d) for d in sample_shape)
    if tuple(arr.shape[1:]) == s:
        return arr
    if tuple(arr.shape) == s:
        return arr[None]
    size = int(np.prod(s))
    if arr.ndim >= 1 and arr.size % size == 0 and arr.size > 0 and (
            arr.ndim == 1 or int(np.prod(arr.shape[1:])) == size):
        return arr.reshape((-1,) + s)
    raise DataError(f"{where}: data of shape {tuple(arr.shape)} does not fit the network input "
                    f"{s} per sample (expected (N, {', '.join(map(str, s))}))")


def load_npy(path: str) -> np.ndarray:
    """A .npy array, memory-mapped when possible."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file: {e}") from None


def load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file: {e}") from None


def load_bin(path: str, sample_shape: Shape, dtype: str = "float32") -> np.ndarray:
    """A raw little-endian tensor file: N samples of ``sample_shape`` values of ``dtype``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DataError(f"{path}: unknown data type {dtype!r}") from None
    try:
        nbytes = os.path.getsize(path)
    except OSError:
        raise DataError(f"{path}: no such file") from None
    per = int(np.prod(sample_shape)) * dt.itemsize
    if nbytes == 0 or nbytes % per:
        raise DataError(f"{path}: {nbytes} bytes is not a whole number of samples of shape "
                        f"{tuple(sample_shape)} in {dt.name} ({per} bytes each)")
    arr = np.memmap(path, dtype=dt, mode="r")
    return arr.reshape((-1,) + tuple(sample_shape))


def _open_maybe_gz(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip data: {e}") from None
    return raw


def is_idx(path: str) -> bool:
    name = os.path.basename(path).lower()
    return "idx" in name and ("ubyte" in name or name.endswith((".idx", ".idx.gz")))


def load_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST format), gzip-compressed or not."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dt.itemsize
    if len(raw) - head != need:
        raise DataError(f"{path}: IDX header promises {dims} ({need} bytes of data) but the "
                        f"file holds {len(raw) - head}")
    return np.frombuffer(raw, dt, offset=head).reshape(dims)


def idx_labels_beside(images_path: str) -> str | None:
    """The MNIST labels file paired with an images file (``images-idx3`` -> ``labels-idx1``)."""
    d, name = os.path.split(images_path)
    if "images-idx3" not in name:
        return None
    cand = os.path.join(d, name.replace("images-idx3", "labels-idx1"))
    return cand if os.path.isfile(cand) else None


def load_csv(path: str, sample_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of pixel values (+ an optional label), as in MNIST csv dumps.

    A row of ``sample_size + 1`` values carries a label: the last column, or
    the first when a header names the first column ``label``.  Returns
    (pixels (N, sample_size) float32, labels or None).
    """
    text = _open_maybe_gz(path).decode("utf-8", errors="replace")
    lines = text.splitlines()
    label_first = False
    if lines and not _numeric_row(lines[0]):
        label_first = lines[0].split(",")[0].strip().strip('"').lower() == "label"
        lines = lines[1:]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise DataError(f"{path}: no data rows")
    try:
        table = np.array([ln.split(",") for ln in lines], dtype=np.float32)
    except ValueError as e:
        bad = _first_bad_row(lines)
        raise DataError(f"{path}:{bad}: not a row of numbers of equal length ({e})") from None
    cols = table.shape[1] if table.ndim == 2 else -1
    if cols == sample_size:
        return table, None
    if cols == sample_size + 1:
        if label_first:
            return table[:, 1:], table[:, 0].astype(np.int64)
        return table[:, :-1], table[:, -1].astype(np.int64)
    raise DataError(f"{path}: rows have {cols} values; the network input needs {sample_size} "
                    f"pixels per sample (plus an optional label)")


def _numeric_row(line: str) -> bool:
    try:
        np.array(line.split(","), dtype=np.float64)
    except ValueError:
        return False
    return True


def _first_bad_row(lines: list[str]) -> int:
    n = len(lines[0].split(","))
    for i, ln in enumerate(lines):
        if len(ln.split(",")) != n or not _numeric_row(ln):
            return i + 1
    return 1
