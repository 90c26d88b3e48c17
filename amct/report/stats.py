"""Streaming error statistics between a reference tensor and an approximation.

Sums are accumulated in float64 over batches, so cosine and SQNR over a whole
data set come out exactly as if every batch had been concatenated.
"""
from __future__ import annotations

import math

import numpy as np


class PairStats:
    """Cosine similarity, SQNR and max |error| of ``approx`` against ``ref``."""

    def __init__(self) -> None:
        self.count = 0
        self.ab = self.aa = self.bb = self.dd = 0.0
        self.max_err = 0.0

    def update(self, ref: np.ndarray, approx: np.ndarray) -> None:
        a = np.asarray(ref, np.float64).reshape(-1)
        b = np.asarray(approx, np.float64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {np.shape(ref)} vs {np.shape(approx)}")
        d = a - b
        self.count += a.size
        self.ab += float(a @ b)
        self.aa += float(a @ a)
        self.bb += float(b @ b)
        self.dd += float(d @ d)
        if d.size:
            self.max_err = max(self.max_err, float(np.abs(d).max()))

    @property
    def cosine(self) -> float | None:
        if self.count == 0:
            return None
        if self.aa == 0.0 and self.bb == 0.0:
            return 1.0
        if self.aa == 0.0 or self.bb == 0.0:
            return 0.0
        return self.ab / math.sqrt(self.aa * self.bb)

    @property
    def sqnr_db(self) -> float | None:
        """10·log10(signal power / error power); +inf for an exact match."""
        if self.count == 0:
            return None
        if self.dd == 0.0:
            return math.inf
        if self.aa == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.aa / self.dd)

    def to_json(self) -> dict:
        return {"cosine": self.cosine, "sqnr_db": _finite(self.sqnr_db), "max_abs_error": self.max_err}


class ClipStats:
    """Fraction of values outside [lo, hi] (the activation quantization range),
    and how far beyond it the data reached."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.count = 0
        self.clipped = 0
        self.seen_min = math.inf
        self.seen_max = -math.inf

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        self.count += x.size
        self.clipped += int(np.count_nonzero((x < self.lo) | (x > self.hi)))
        self.seen_min = min(self.seen_min, float(x.min()))
        self.seen_max = max(self.seen_max, float(x.max()))

    @property
    def ratio(self) -> float | None:
        return self.clipped / self.count if self.count else None

    @property
    def reach(self) -> float | None:
        """The span the data needed, in units of the range's width: the larger
        of ``(max - lo) / (hi - lo)`` and ``(hi - min) / (hi - lo)``.

        At most 1.0 when nothing was clipped.  IFMR clips deliberately, to
        about 1/0.7 of its range on the calibration data itself; far beyond
        that, the data reach values that calibration never saw."""
        width = self.hi - self.lo
        if not self.count or width <= 0:
            return None
        return max((self.seen_max - self.lo) / width, (self.hi - self.seen_min) / width)


class Agreement:
    """How often two classifiers pick the same top-1 class."""

    def __init__(self) -> None:
        self.count = 0
        self.same = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        ta = np.asarray(a).reshape(len(a), -1).argmax(axis=1)
        tb = np.asarray(b).reshape(len(b), -1).argmax(axis=1)
        self.count += len(ta)
        self.same += int((ta == tb).sum())

    @property
    def ratio(self) -> float | None:
        return self.same / self.count if self.count else None


def _finite(v: float | None):
    """JSON has no inf: encode it as a string so the file stays standard JSON."""
    if v is None or math.isfinite(v):
        return v
    return "inf" if v > 0 else "-inf"
