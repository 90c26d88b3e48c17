"""IFMR activation calibration (SPEC §4.3), exact over all calibration data.

The search evaluates ~60 clip candidates.  Running the quantize/dequantize
round trip over every value for every candidate costs 60 passes over the data
(hundreds of millions of values on ResNet-50).  Instead the data is sorted
once and every candidate's loss is read off prefix sums:

For a candidate with scale ``s`` and clip range ``[lo, hi]`` the quantized
value of ``x`` is ``q(x)·s`` with integer levels ``q`` from ``qlo =
round(lo/s)`` to ``qhi = round(hi/s)``; values below ``lo`` land on ``qlo``
and values above ``hi`` on ``qhi``, so level ``q`` takes exactly the sorted
values between the boundaries ``(q-1/2)·s`` and ``(q+1/2)·s``.  (A value on a
boundary has error ``s/2`` whichever way it rounds, so tie handling does not
change the loss.)  With ``j_q`` the number of values below boundary
``(q+1/2)·s`` and ``S1`` the prefix sums of the sorted values,

    n·loss = Σx² − 2s·(qhi·Σx − Σ_q S1(j_q)) + s²·(qhi²·n − Σ_q (2q+1)·j_q)

(the sums over q run over the boundaries qlo..qhi−1).  That is one
``searchsorted`` of ~256 boundaries per candidate: the cost is one sort of
the data.  Exact zeros (half of every post-ReLU tensor) quantize without
error under every candidate (0 is inside every clip range), so they are only
counted, never stored or sorted.
"""
from __future__ import annotations

import numpy as np

from amct.errors import CalibrationError
from amct.quant.rounding import FLT_EPSILON, round_half_away


def _percentile_k(n: int, pct: float) -> int:
    """How many values to skip from the end (SPEC §4.3: k-th largest/smallest)."""
    if 1.0 - pct < FLT_EPSILON:
        return 1
    return min(max(n - int(pct * n), 1), n)


def _candidates(search_range: tuple[float, float], search_step: float) -> np.ndarray:
    start, end = (float(v) for v in search_range)
    return np.arange(start, end, float(search_step), dtype=np.float64)


class SortedData:
    """Calibration values in sorted form: non-zero values sorted, zeros counted."""

    def __init__(self, nonzero: np.ndarray, n_zero: int):
        self.values = np.sort(nonzero.astype(np.float32, copy=False))
        self.n_zero = int(n_zero)
        self.n = self.values.size + self.n_zero
        self.n_neg = int(np.searchsorted(self.values, np.float32(0.0), side="left"))
        # Prefix sums in float64 with a leading 0: S1[j] = sum of the j smallest non-zeros.
        self.s1 = np.empty(self.values.size + 1, dtype=np.float64)
        self.s1[0] = 0.0
        np.cumsum(self.values, dtype=np.float64, out=self.s1[1:])
        self.s2 = float(np.einsum("i,i->", self.values, self.values, dtype=np.float64))

    def at_rank(self, i: int) -> float:
        """The i-th smallest value (0-based) of all data, zeros included."""
        if i < self.n_neg:
            return float(self.values[i])
        if i < self.n_neg + self.n_zero:
            return 0.0
        return float(self.values[i - self.n_zero])

    def count_below(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For boundaries ``b``: (number of values < b, index into ``s1``)."""
        j = np.searchsorted(self.values, b.astype(np.float32), side="left")
        return j + np.where(b > 0, self.n_zero, 0), j


def ifmr_losses(data: SortedData, scales: np.ndarray, lo: np.ndarray,
                hi: np.ndarray) -> np.ndarray:
    """Mean squared quantize-dequantize error of every candidate (see module doc)."""
    qlo = round_half_away(lo / scales)
    qhi = round_half_away(hi / scales)
    width = int((qhi - qlo).max()) if scales.size else 0
    steps = np.arange(width, dtype=np.float64)
    q = qlo[:, None] + steps[None, :]                        # boundary of level q and q+1
    valid = q < qhi[:, None]
    bounds = (q + 0.5) * scales[:, None]
    counts, idx = data.count_below(np.where(valid, bounds, 0.0).ravel())
    counts = np.where(valid, counts.reshape(q.shape), 0).astype(np.float64)
    s1 = np.where(valid, data.s1[idx].reshape(q.shape), 0.0)
    s1_total = data.s1[-1]
    cross = qhi * s1_total - s1.sum(axis=1)
    square = qhi * qhi * data.n - ((2.0 * q + 1.0) * counts).sum(axis=1)
    total = data.s2 - 2.0 * scales * cross + scales * scales * square
    return np.maximum(total, 0.0) / max(data.n, 1)


def ifmr_search(data: SortedData, with_offset: bool, search_range: tuple[float, float],
                search_step: float, max_percentile: float,
                min_percentile: float) -> tuple[float, int]:
    """SPEC §4.3 on sorted data: returns ``(scale_d, offset_d)``."""
    n = data.n
    if n == 0:
        raise CalibrationError("IFMR: no calibration data")
    vmax = max(data.at_rank(n - _percentile_k(n, max_percentile)), 0.0)
    vmin = min(data.at_rank(_percentile_k(n, min_percentile) - 1), 0.0)
    if not with_offset:
        vmax = max(abs(vmax), abs(vmin))
    cands = _candidates(search_range, search_step) * vmax
    if cands.size == 0:
        raise CalibrationError(f"IFMR: empty search range {search_range} step {search_step}")
    if with_offset:
        scales = (cands - vmin) / 255.0
        lo = np.full_like(cands, vmin)
        hi = cands
    else:
        scales = cands / 127.0
        lo, hi = -cands, cands
    scales = np.where(scales < FLT_EPSILON, 1.0, scales)
    losses = ifmr_losses(data, scales, lo, hi)
    best = int(np.argmin(losses))
    scale_d = float(np.float32(scales[best]))
    if with_offset:
        offset_d = int(np.clip(-round_half_away(vmin / scale_d) - 128, -128, 127))
    else:
        offset_d = 0
    return scale_d, offset_d


def ifmr_factors(x: np.ndarray, with_offset: bool = True,
                 search_range: tuple[float, float] = (0.7, 1.3), search_step: float = 0.01,
                 max_percentile: float = 0.999999,
                 min_percentile: float = 0.999999) -> tuple[float, int]:
    """IFMR over one array holding all calibration data."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    nz = flat[flat != 0]
    return ifmr_search(SortedData(nz, flat.size - nz.size), with_offset, search_range,
                       search_step, max_percentile, min_percentile)


class IfmrCollector:
    """Accumulates ``batch_num`` batches of one layer input, then runs IFMR.

    Stores the non-zero values of every batch (float32) and the number of
    zeros; memory therefore grows with batch_num (use HFMG to bound it).
    """

    def __init__(self, batch_num: int, with_offset: bool = True,
                 search_range: tuple[float, float] = (0.7, 1.3), search_step: float = 0.01,
                 max_percentile: float = 0.999999, min_percentile: float = 0.999999,
                 name: str = "IFMR"):
        if batch_num < 1:
            raise CalibrationError(f"{name}: batch_num must be >= 1, got {batch_num}")
        if not 0 < search_range[0] < search_range[1] or not search_step > 0:
            raise CalibrationError(f"{name}: invalid search range {tuple(search_range)} "
                                   f"step {search_step}")
        self.batch_num = int(batch_num)
        self.with_offset = bool(with_offset)
        self.search_range = (float(search_range[0]), float(search_range[1]))
        self.search_step = float(search_step)
        self.max_percentile = float(max_percentile)
        self.min_percentile = float(min_percentile)
        self.name = name
        self.batches = 0
        self._chunks: list[np.ndarray] = []
        self._zeros = 0

    @property
    def done(self) -> bool:
        return self.batches >= self.batch_num

    def update(self, x: np.ndarray) -> None:
        """Add one batch (ignored once ``batch_num`` batches were seen)."""
        if self.done:
            return
        flat = np.asarray(x).reshape(-1)
        if flat.dtype != np.float32:
            flat = flat.astype(np.float32)
        if not np.isfinite(flat.max(initial=0.0)) or not np.isfinite(flat.min(initial=0.0)):
            raise CalibrationError(f"{self.name}: calibration input of batch {self.batches + 1} "
                                   "contains NaN or Inf")
        nz = flat[flat != 0]
        self._zeros += flat.size - nz.size
        self._chunks.append(nz)
        self.batches += 1

    def compute(self) -> tuple[float, int]:
        """``(scale_d, offset_d)`` over everything collected; frees the data."""
        if self.batches == 0:
            raise CalibrationError(f"{self.name}: no batch was collected")
        nz = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = []
        data = SortedData(nz, self._zeros)
        del nz
        return ifmr_search(data, self.with_offset, self.search_range, self.search_step,
                           self.max_percentile, self.min_percentile)
