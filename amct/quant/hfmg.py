"""HFMG activation calibration (SPEC §4.4): a streaming histogram, then a clip search.

Histogram.  Bin edges lie on a grid anchored at 0: edge i is ``(k0 + i)·w``
for i = 0..B.  The first non-degenerate batch sets ``w = (max − min)/(B − 1)``
over its range widened to include 0.  When a later batch falls outside, the
width doubles (``w' = w·2^m`` with the smallest m that covers both ranges);
since the grid stays anchored at 0, every old bin lies inside exactly one new
bin and the merge is an exact integer re-binning (no interpolation, no
dependence on batch order beyond the final resolution).  Memory is the B
counts, whatever batch_num is.

Search (the error model).  Values are taken as uniform within their bin.  For
a clip range ``[a, b]`` made of two bin edges with ``a <= 0 <= b`` (0 must be
representable exactly for the asymmetric offset), the quantization step is
``Δ = (b − a)/255`` (symmetric: ``[−c, c]``, ``Δ = c/127``) and the expected
squared error is

    E = N_in·Δ²/12 + Σ_{bins left of a} n_k·((m_k − a)² + w²/12)
                   + Σ_{bins right of b} n_k·((m_k − b)² + w²/12)

with ``m_k`` the bin centre: uniform rounding noise inside the range, exact
mean squared clipping error outside.  All ranges are evaluated from prefix
sums; the first minimum (smallest a, then smallest b) wins.  The rounding
error of the clipped values at the boundary level is neglected.

Clip floor (an option, off by default).  With ``clip_floor`` f in (0, 1] the
search only considers ranges that keep at least f times the observed extremes
(``b >= f·max``, ``a <= f·min``; symmetric: ``c >= f·max|x|``); f = 1 never
clips a calibration value.  The extremes are tracked exactly beside the
histogram.  Without the option the search is the one above, unchanged.
"""
from __future__ import annotations

import math

import numpy as np

from amct.errors import CalibrationError
from amct.quant.rounding import FLT_EPSILON, round_half_away

NUM_OF_BINS = (1024, 2048, 4096, 8192)


class StreamingHistogram:
    """Counts over a 0-anchored grid that coarsens by powers of two as the range grows."""

    def __init__(self, num_bins: int):
        self.num_bins = int(num_bins)
        self.width = 0.0          # 0: no non-zero value seen yet
        self.k0 = 0
        self.counts = np.zeros(self.num_bins, dtype=np.int64)
        self.pending_zeros = 0    # zeros seen before the grid existed
        self.vmin = 0.0           # exact extremes seen (0 included), for clip_floor
        self.vmax = 0.0

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.pending_zeros

    def edges(self) -> np.ndarray:
        return (self.k0 + np.arange(self.num_bins + 1, dtype=np.float64)) * self.width

    def _regrid(self, lo: float, hi: float) -> None:
        """Widen the grid (by 2^m) until it covers [lo, hi]; merge the counts."""
        b = self.num_bins
        old_lo, old_hi = self.k0 * self.width, (self.k0 + b) * self.width
        lo, hi = min(lo, old_lo), max(hi, old_hi)
        m = 0
        while True:
            m += 1
            w = self.width * 2.0 ** m
            k0 = math.floor(lo / w)
            if k0 + b >= math.ceil(hi / w):
                break
        # |k0 + i| < 2^62, so capping the divisor keeps floor division exact
        # (and int64) even after a huge range jump.
        factor = 2 ** min(m, 62)
        new_idx = np.floor_divide(self.k0 + np.arange(b, dtype=np.int64), factor) - k0
        # Old bin i falls entirely into new bin new_idx[i]: an exact integer merge.
        merged = np.bincount(new_idx, weights=self.counts.astype(np.float64), minlength=b)[:b]
        self.counts = np.rint(merged).astype(np.int64)
        self.width, self.k0 = w, k0

    def add(self, x: np.ndarray) -> None:
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        lo = min(float(flat.min()), 0.0)
        hi = max(float(flat.max()), 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise CalibrationError("HFMG: calibration input contains NaN or Inf")
        self.vmin, self.vmax = min(self.vmin, lo), max(self.vmax, hi)
        if hi == lo:                         # all zeros: nothing to place on a grid yet
            if self.width == 0.0:
                self.pending_zeros += flat.size
                return
        elif self.width == 0.0:
            self.width = (hi - lo) / (self.num_bins - 1)
            self.k0 = math.floor(lo / self.width)
            self.counts[min(max(-self.k0, 0), self.num_bins - 1)] += self.pending_zeros
            self.pending_zeros = 0
        elif lo < self.k0 * self.width or hi > (self.k0 + self.num_bins) * self.width:
            self._regrid(lo, hi)
        idx = np.floor(flat.astype(np.float64) / self.width).astype(np.int64) - self.k0
        np.clip(idx, 0, self.num_bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.num_bins)


def _clip_sums(counts: np.ndarray, centres: np.ndarray):
    """Prefix sums (with a leading 0) of n, n·m, n·m² over the bins."""
    n = counts.astype(np.float64)
    pre = np.zeros((3, n.size + 1))
    np.cumsum(n, out=pre[0, 1:])
    np.cumsum(n * centres, out=pre[1, 1:])
    np.cumsum(n * centres * centres, out=pre[2, 1:])
    return pre


def _first_edge_at_least(edges: np.ndarray, v: float, tol: float) -> int:
    """Index of the first edge >= ``v`` (within ``tol``); the last edge if none."""
    return min(int(np.searchsorted(edges, v - tol, side="left")), edges.size - 1)


def hfmg_search(hist: StreamingHistogram, with_offset: bool,
                clip_floor: float | None = None) -> tuple[float, int]:
    """The clip range minimising the histogram error model: ``(scale_d, offset_d)``.

    ``clip_floor``: keep at least that share of the observed extremes (module doc).
    """
    if clip_floor is not None and not 0.0 < clip_floor <= 1.0:
        raise CalibrationError(f"HFMG: clip_floor must be in (0, 1], got {clip_floor}")
    if hist.total == 0:
        raise CalibrationError("HFMG: no calibration data")
    if hist.width == 0.0:                     # only zeros were seen
        return 1.0, (-128 if with_offset else 0)
    b, w = hist.num_bins, hist.width
    edges = hist.edges()
    centres = (edges[:-1] + edges[1:]) / 2
    pre = _clip_sums(hist.counts, centres)
    total = pre[:, -1]
    noise = w * w / 12.0
    z = -hist.k0                              # index of the edge at 0 (0 <= z <= b)
    tol = w * 1e-6                            # edges are products: allow float noise

    def left_err(i: np.ndarray, a: np.ndarray) -> np.ndarray:   # bins [0, i) clipped to a
        nl, m1, m2 = pre[0, i], pre[1, i], pre[2, i]
        return nl * a * a - 2 * a * m1 + m2 + nl * noise

    def right_err(j: np.ndarray, c: np.ndarray) -> np.ndarray:  # bins [j, B) clipped to c
        nr, m1, m2 = total[0] - pre[0, j], total[1] - pre[1, j], total[2] - pre[2, j]
        return nr * c * c - 2 * c * m1 + m2 + nr * noise

    if with_offset:
        i_end, j_start = z + 1, z
        if clip_floor is not None:
            # a <= f·vmin: the last edge at or below it; b >= f·vmax: the first at or above.
            i_end = min(int(np.searchsorted(edges, clip_floor * hist.vmin + tol, side="right")),
                        z + 1)
            i_end = max(i_end, 1)
            j_start = max(_first_edge_at_least(edges, clip_floor * hist.vmax, tol), z)
        i = np.arange(0, i_end)
        j = np.arange(j_start, b + 1)
        ri = right_err(j, edges[j])
        best = (math.inf, 0, 0)
        for start in range(0, i.size, 256):          # bounded memory: 256 rows at a time
            ii = i[start:start + 256, None]
            a, c = edges[ii], edges[j][None, :]
            step = (c - a) / 255.0
            inside = pre[0, j][None, :] - pre[0, ii]
            err = inside * step * step / 12.0 + left_err(ii, a) + ri[None, :]
            err = np.where(c > a, err, np.inf)
            k = int(np.argmin(err))
            if err.flat[k] < best[0]:
                best = (float(err.flat[k]), int(ii[k // j.size, 0]), int(j[k % j.size]))
        _, ia, jb = best
        lo, hi = edges[ia], edges[jb]
        scale = (hi - lo) / 255.0
        scale = 1.0 if scale < FLT_EPSILON else scale
        scale_d = float(np.float32(scale))
        offset_d = int(np.clip(-round_half_away(lo / scale_d) - 128, -128, 127))
        return scale_d, offset_d
    t = np.arange(1, max(z, b - z) + 1)
    if clip_floor is not None:
        need = clip_floor * max(-hist.vmin, hist.vmax)
        t = t[t * w >= need - tol] if (t * w >= need - tol).any() else t[-1:]
    c = t * w
    il = np.clip(z - t, 0, b)
    jr = np.clip(z + t, 0, b)
    step = c / 127.0
    inside = pre[0, jr] - pre[0, il]
    err = inside * step * step / 12.0 + left_err(il, -c) + right_err(jr, c)
    k = int(np.argmin(err))
    scale = c[k] / 127.0
    return float(np.float32(1.0 if scale < FLT_EPSILON else scale)), 0


class HfmgCollector:
    """Streams ``batch_num`` batches into a histogram, then runs the HFMG search."""

    def __init__(self, batch_num: int, with_offset: bool = True, num_of_bins: int = 4096,
                 name: str = "HFMG", clip_floor: float | None = None):
        if batch_num < 1:
            raise CalibrationError(f"{name}: batch_num must be >= 1, got {batch_num}")
        if num_of_bins not in NUM_OF_BINS:
            raise CalibrationError(f"{name}: num_of_bins must be one of {NUM_OF_BINS}, "
                                   f"got {num_of_bins}")
        self.batch_num = int(batch_num)
        if clip_floor is not None and not 0.0 < clip_floor <= 1.0:
            raise CalibrationError(f"{name}: clip_floor must be in (0, 1], got {clip_floor}")
        self.with_offset = bool(with_offset)
        self.clip_floor = clip_floor
        self.name = name
        self.batches = 0
        self.hist = StreamingHistogram(num_of_bins)

    @property
    def done(self) -> bool:
        return self.batches >= self.batch_num

    def update(self, x: np.ndarray) -> None:
        if self.done:
            return
        try:
            self.hist.add(x)
        except CalibrationError as e:
            raise CalibrationError(f"{self.name}: batch {self.batches + 1}: {e}") from None
        self.batches += 1

    def compute(self) -> tuple[float, int]:
        if self.batches == 0:
            raise CalibrationError(f"{self.name}: no batch was collected")
        return hfmg_search(self.hist, self.with_offset, self.clip_floor)
