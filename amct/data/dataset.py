"""The data-loader protocol: samples by index, batches as dicts of NCHW arrays.

Everything that feeds a network (calibration, evaluation, comparison) sees a
``Dataset``: a fixed number of samples, one *source* per network input, and
optional integer labels.  ``Dataset.batches(batch_size)`` yields
``{input name: float32 array (N, C, H, W)}``, the shape the runtime takes.
Library users can pass any iterable of such dicts instead (``BatchLoader`` is
one), or build a ``Dataset`` from arrays with ``ArrayDataset``.

Sources load lazily: an image folder decodes only the files of the batch being
read, ``.npy``/``.bin`` files are memory-mapped.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from amct.errors import DataError

Batch = dict[str, np.ndarray]


class Source(Protocol):
    """The samples of one network input."""

    #: What the samples come from (a file or folder), used in error messages.
    where: str

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` as one float32 array, sample axis first."""


class ArraySource:
    """Samples held in (or memory-mapped from) one array."""

    def __init__(self, array: np.ndarray, where: str = "<array>", transform=None) -> None:
        self.array = array
        self.where = where
        # Applied to every read slice: pixel sources (MNIST idx/csv) get the
        # same mean/scale preprocessing as images here.
        self.transform = transform

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        x = np.asarray(self.array[start:stop])
        if self.transform is not None:
            return self.transform(x, self.where)
        return np.ascontiguousarray(x, dtype=np.float32)


class Dataset:
    """Samples for every network input, plus optional labels.

    ``sources`` maps input names to ``Source`` objects of equal length.
    ``labels`` (optional) is an int64 array with one class per sample.
    """

    def __init__(self, sources: Mapping[str, Source], labels: np.ndarray | None = None,
                 labels_where: str | None = None) -> None:
        if not sources:
            raise DataError("a dataset needs at least one input source")
        self.sources = dict(sources)
        lengths = {name: len(s) for name, s in self.sources.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{n}: {self.sources[n].where} has {k}" for n, k in lengths.items())
            raise DataError(f"the inputs have different numbers of samples ({detail})")
        self._len = next(iter(lengths.values()))
        if self._len == 0:
            s = next(iter(self.sources.values()))
            raise DataError(f"{s.where}: no samples")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or len(labels) != self._len:
                where = labels_where or "labels"
                raise DataError(f"{where}: {labels.size} labels for {self._len} samples "
                                f"(from {next(iter(self.sources.values())).where})")
            labels = labels.astype(np.int64)
        self.labels = labels
        self.labels_where = labels_where

    @property
    def input_names(self) -> list[str]:
        return list(self.sources)

    def __len__(self) -> int:
        return self._len

    def load(self, start: int, stop: int) -> Batch:
        """Samples ``[start, stop)`` of every input."""
        return {name: src.read(start, stop) for name, src in self.sources.items()}

    def batch_count(self, batch_size: int, batch_num: int | None = None) -> int:
        n = -(-self._len // batch_size)
        return n if batch_num is None else min(n, batch_num)

    def batches(self, batch_size: int, batch_num: int | None = None) -> Iterator[Batch]:
        """Consecutive batches (the last one may be smaller), at most ``batch_num``."""
        for b, _ in self.labelled_batches(batch_size, batch_num):
            yield b

    def labelled_batches(self, batch_size: int,
                         batch_num: int | None = None) -> Iterator[tuple[Batch, np.ndarray | None]]:
        """Like ``batches`` but also yields the labels of each batch (or None)."""
        _check_batch_args(batch_size, batch_num)
        for i in range(self.batch_count(batch_size, batch_num)):
            start = i * batch_size
            stop = min(start + batch_size, self._len)
            lab = None if self.labels is None else self.labels[start:stop]
            yield self.load(start, stop), lab

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every input (reads the first sample)."""
        return {name: tuple(a.shape[1:]) for name, a in self.load(0, 1).items()}


class BatchLoader:
    """A re-iterable sequence of batches over a dataset (``len`` = number of batches).

    This is what ``amct.quantize(..., batches=...)`` and the runtime loops take.
    """

    def __init__(self, dataset: Dataset, batch_size: int, batch_num: int | None = None) -> None:
        _check_batch_args(batch_size, batch_num)
        self.dataset = dataset
        self.batch_size = batch_size
        self.batch_num = batch_num

    def __len__(self) -> int:
        return self.dataset.batch_count(self.batch_size, self.batch_num)

    def __iter__(self) -> Iterator[Batch]:
        return self.dataset.batches(self.batch_size, self.batch_num)

    @property
    def samples(self) -> int:
        """How many samples one full iteration yields."""
        return min(len(self.dataset), len(self) * self.batch_size)


def ArrayDataset(arrays: Mapping[str, np.ndarray] | np.ndarray, labels: Sequence[int] | None = None,
                 name: str = "data") -> Dataset:
    """A dataset from in-memory arrays (sample axis first); one array means input ``name``."""
    if isinstance(arrays, np.ndarray):
        arrays = {name: arrays}
    return Dataset({k: ArraySource(np.asarray(v), f"<array '{k}'>") for k, v in arrays.items()},
                   None if labels is None else np.asarray(labels))


def _check_batch_args(batch_size: int, batch_num: int | None) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    if batch_num is not None and (not isinstance(batch_num, (int, np.integer)) or batch_num < 1):
        raise DataError(f"batch count must be a positive integer, got {batch_num!r}")
