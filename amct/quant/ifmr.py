"""IFMR activation calibration (SPEC §4.3), exact over all calibration data.

The search evaluates ~60 clip candidates.  Running the quantize/dequantize
round trip over every value for every candidate costs 60 passes over the data
(hundreds of millions of values on ResNet-50).  Instead each batch is sorted
as it arrives and every candidate's loss is read off prefix sums:

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
``searchsorted`` of ~256 boundaries per candidate and batch, and the prefix
sums are needed only at those positions (one segment-sum pass per batch):
the cost is one sort of the data.  Exact zeros (half of every post-ReLU tensor) quantize without
error under every candidate (0 is inside every clip range), so they are only
counted, never stored or sorted.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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


#: Values per block of a run's block prefix sums (``Run``): a boundary's
#: prefix sum is a block total plus at most BLOCK - 1 values.
BLOCK = 16


def _strip_zeros(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Sorted ``a`` without its run of zeros (-0.0 included: it quantizes to
    0), and how many there were.  Sorting first and cutting the run out is
    cheaper than a boolean mask (numpy's float sort is SIMD; a masked gather
    is not)."""
    lo = int(np.searchsorted(a, np.float32(0.0), side="left"))
    hi = int(np.searchsorted(a, np.float32(0.0), side="right"))
    if lo == hi:
        return a, 0
    if lo == 0:
        return a[hi:].copy(), hi               # a copy, so the zeros' memory is freed
    return np.concatenate((a[:lo], a[hi:])), hi - lo


class Run:
    """One batch's non-zero values, sorted, with what every search needs of
    them precomputed in one pass: the sum, the sum of squares and the float64
    prefix sums at every BLOCK-th value (1/8 more memory than the values)."""

    def __init__(self, values: np.ndarray):
        self.values = values
        n = values.size
        nb = n // BLOCK
        self.blocks = np.zeros(nb + 1, dtype=np.float64)       # sum of values[:k*BLOCK]
        if nb:
            np.cumsum(values[:nb * BLOCK].reshape(nb, BLOCK).sum(axis=1, dtype=np.float64),
                      out=self.blocks[1:])
        tail = float(np.add.reduce(values[nb * BLOCK:], dtype=np.float64))
        self.s1 = float(self.blocks[-1]) + tail
        self.s2 = float(np.einsum("i,i->", values, values, dtype=np.float64))

    def prefix_sums(self, j: np.ndarray) -> np.ndarray:
        """``sum(values[:j_i])`` for every ``j_i`` in [0, n], in float64."""
        blk = j // BLOCK
        length = j - blk * BLOCK
        out = self.blocks[blk]
        part = length > 0
        if part.any():
            # The partial blocks: each boundary's block, gathered as one row
            # and summed up to the boundary.  In the run's last, short block
            # the row is padded with the last value, which a prefix up to the
            # boundary never includes.
            idx = (blk[part] * BLOCK)[:, None] + np.arange(BLOCK - 1)
            rows = self.values[np.minimum(idx, self.values.size - 1)]
            run = np.cumsum(rows, axis=1, dtype=np.float64)
            out = out.copy()
            out[part] += run[np.arange(rows.shape[0]), length[part] - 1]
        return out


def make_run(a: np.ndarray, where: str = "IFMR") -> tuple[Run, int]:
    """``(Run of a's non-zero values, number of zeros)``; ``a`` (1-D float32)
    is sorted in place: the caller gives it away.

    Sorting also finds non-finite values for free: NaN and +Inf end up last,
    -Inf first.
    """
    a.sort()
    if a.size and not (np.isfinite(a[0]) and np.isfinite(a[-1])):
        raise CalibrationError(f"{where} contains NaN or Inf")
    values, n_zero = _strip_zeros(a)
    return Run(values), n_zero


class SortedData:
    """Calibration values as sorted runs (one per batch): non-zeros sorted, zeros counted.

    The runs are never merged: the loss only needs, at ~256 boundaries per
    candidate, how many values lie below and their sum, and a few order
    statistics for the percentiles.  Both add up over runs, so a merge sort
    of all the data would be wasted work.
    """

    def __init__(self, runs: list[Run], n_zero: int = 0):
        self.runs = [r for r in runs if r.values.size]
        self.n_zero = int(n_zero)
        self.n = sum(r.values.size for r in self.runs) + self.n_zero
        self.s1_total = sum(r.s1 for r in self.runs)
        self.s2 = sum(r.s2 for r in self.runs)

    def kth_smallest(self, k: int) -> float:
        """The k-th smallest value (1-based) of all data, zeros included."""
        return self._kth(k, largest=False)

    def kth_largest(self, k: int) -> float:
        """The k-th largest value (1-based) of all data, zeros included."""
        return self._kth(k, largest=True)

    def _kth(self, k: int, largest: bool) -> float:
        # Only the k extreme values of each run can be among the k extreme
        # values overall; zeros join as k (or fewer) explicit zeros.
        parts = [r.values[-k:] if largest else r.values[:k] for r in self.runs]
        parts.append(np.zeros(min(k, self.n_zero), dtype=np.float32))
        cand = np.sort(np.concatenate(parts))
        return float(cand[-k] if largest else cand[k - 1])

    def below(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For boundaries ``b``: (number of values < b, float64 sum of those values)."""
        # Sorted distinct needles: numpy's searchsorted then narrows each
        # search with the previous answer.
        ub, inv = np.unique(b.astype(np.float32).ravel(), return_inverse=True)
        counts = np.where(ub > 0, self.n_zero, 0).astype(np.int64)
        sums = np.zeros(ub.shape, dtype=np.float64)
        for r in self.runs:
            j = np.searchsorted(r.values, ub, side="left")
            counts += j
            sums += r.prefix_sums(j)
        return counts[inv].reshape(b.shape), sums[inv].reshape(b.shape)


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
    counts, sums = data.below(np.where(valid, bounds, 0.0).ravel())
    counts = np.where(valid, counts.reshape(q.shape), 0).astype(np.float64)
    s1 = np.where(valid, sums.reshape(q.shape), 0.0)
    s1_total = data.s1_total
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
    vmax = max(data.kth_largest(_percentile_k(n, max_percentile)), 0.0)
    vmin = min(data.kth_smallest(_percentile_k(n, min_percentile)), 0.0)
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
    run, n_zero = make_run(np.array(x, dtype=np.float32).reshape(-1))
    return ifmr_search(SortedData([run], n_zero), with_offset, search_range,
                       search_step, max_percentile, min_percentile)


_SORTER: ThreadPoolExecutor | None = None
_SORTER_PID = 0


def _sorter() -> ThreadPoolExecutor:
    """One background thread that sorts the collected batches.

    numpy releases the GIL while it sorts, and the runtime's forward pass
    leaves part of a second core idle (its GEMMs run single-threaded), so a
    batch is sorted while the next layers run.  One worker: more would only
    compete with the forward pass on a small machine.
    """
    global _SORTER, _SORTER_PID
    # A forked child inherits the executor but not its thread: make a new one.
    if _SORTER is None or _SORTER_PID != os.getpid():
        _SORTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amct-ifmr")
        _SORTER_PID = os.getpid()
    return _SORTER


class IfmrCollector:
    """Accumulates ``batch_num`` batches of one layer input, then runs IFMR.

    Keeps every batch: a copy is taken as it arrives and sorted in a
    background thread, after which only its non-zero values (float32) and
    the number of zeros remain; memory therefore grows with batch_num (use
    HFMG to bound it).
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
        self._chunks: list = []          # futures of (sorted non-zeros, zero count)

    @property
    def done(self) -> bool:
        return self.batches >= self.batch_num

    def update(self, x: np.ndarray) -> None:
        """Add one batch (ignored once ``batch_num`` batches were seen)."""
        if self.done:
            return
        # The copy is the only synchronous work: the runtime may reuse the
        # input's buffer once the forward pass moves on.  A NaN/Inf is found
        # by the sort and reported when the factors are computed.
        where = f"{self.name}: calibration input of batch {self.batches + 1}"
        self._chunks.append(_sorter().submit(
            make_run, np.array(x, dtype=np.float32).reshape(-1), where))
        self.batches += 1

    def compute(self) -> tuple[float, int]:
        """``(scale_d, offset_d)`` over everything collected; frees the data."""
        if self.batches == 0:
            raise CalibrationError(f"{self.name}: no batch was collected")
        parts = [f.result() for f in self._chunks]
        self._chunks = []
        data = SortedData([run for run, _ in parts], sum(z for _, z in parts))
        return ifmr_search(data, self.with_offset, self.search_range, self.search_step,
                           self.max_percentile, self.min_percentile)
