"""IFMR (exact, SPEC §4.3) and HFMG (streaming histogram, SPEC §4.4)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amct.errors import CalibrationError
from amct.quant.hfmg import HfmgCollector, StreamingHistogram, hfmg_search
from amct.quant.ifmr import IfmrCollector, SortedData, ifmr_factors, ifmr_losses, make_run
from amct.quant.rounding import round_half_away

EPS = 1.1920929e-7


def ifmr_brute_force(x, with_offset=True, search_range=(0.7, 1.3), step=0.01,
                     max_pct=0.999999, min_pct=0.999999):
    """SPEC §4.3 written out literally: one full quantize/dequantize pass per candidate."""
    x = np.sort(np.asarray(x, np.float64).ravel())
    n = x.size
    k_max = 1 if 1 - max_pct < EPS else n - int(max_pct * n)
    k_min = 1 if 1 - min_pct < EPS else n - int(min_pct * n)
    vmax, vmin = max(x[n - k_max], 0.0), min(x[k_min - 1], 0.0)
    if not with_offset:
        vmax = max(abs(vmax), abs(vmin))
    losses, scales = [], []
    for c in np.arange(search_range[0], search_range[1], step) * vmax:
        if with_offset:
            s, lo, hi = (c - vmin) / 255, vmin, c
        else:
            s, lo, hi = c / 127, -c, c
        s = 1.0 if s < EPS else s
        losses.append(np.mean((round_half_away(np.clip(x, lo, hi) / s) * s - x) ** 2))
        scales.append(s)
    best = int(np.argmin(losses))
    scale = float(np.float32(scales[best]))
    offset = int(-round_half_away(vmin / scale) - 128) if with_offset else 0
    return scale, offset, np.array(losses)


def test_ifmr_symmetric_by_hand() -> None:
    # n = 4, percentile 0.6: k = 4 - int(2.4) = 2 -> vmax = 2nd largest = 1.0,
    # vmin = min(2nd smallest, 0) = 0; symmetric: vmax = 1.0.
    # Candidates 0.5 and 1.0: scales 0.5/127 and 1/127.
    #   c = 0.5: 4 -> 0.5 (err 3.5^2), 1 -> 0.5 (0.25), 0.52 -> 0.5 (4e-4): loss ~ 3.125
    #   c = 1.0: 4 -> 1.0 (err 9), 1.0, 0.52, -0.26 nearly exact:           loss ~ 2.25
    x = np.array([4.0, 1.0, 0.52, -0.26], np.float32)
    scale, offset = ifmr_factors(x, False, (0.5, 1.5), 0.5, 0.6, 0.6)
    assert scale == pytest.approx(1 / 127, rel=1e-7) and offset == 0


def test_ifmr_asymmetric_by_hand() -> None:
    # k = 2 on both sides: vmax = 1.0, vmin = -0.5.  Candidates 0.5, 1.0;
    # asymmetric scale (c - vmin)/255: 1/255 and 1.5/255.  Clipping 4 and 1 to
    # ~0.5 costs more than clipping 4 to 1, so c = 1.0 wins:
    # scale_d = 1.5/255, offset_d = -round(-0.5 / scale_d) - 128 = 85 - 128 = -43.
    x = np.array([4.0, 1.0, -0.5, -3.0], np.float32)
    scale, offset = ifmr_factors(x, True, (0.5, 1.5), 0.5, 0.6, 0.6)
    assert scale == pytest.approx(1.5 / 255, rel=1e-7) and offset == -43


def test_ifmr_all_zero_data() -> None:
    # vmax = vmin = 0: every scale is 0 -> 1.0, offset -round(0) - 128.
    assert ifmr_factors(np.zeros(10, np.float32), True) == (1.0, -128)
    assert ifmr_factors(np.zeros(10, np.float32), False) == (1.0, 0)


@pytest.mark.parametrize("kind", ["normal", "relu", "grid", "negative", "small"])
@pytest.mark.parametrize("with_offset", [True, False])
def test_ifmr_matches_brute_force(kind, with_offset) -> None:
    rng = np.random.default_rng(["normal", "relu", "grid", "negative", "small"].index(kind))
    x = (rng.standard_normal(30000) * 2 + 0.5).astype(np.float32)
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "grid":             # integer-valued pixels / 256, like MNIST input
        x = (rng.integers(0, 256, 30000) / 256).astype(np.float32)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "small":
        x = x[:37]
    pct = 0.999 if kind != "small" else 0.9
    want = ifmr_brute_force(x, with_offset, max_pct=pct, min_pct=pct)
    assert ifmr_factors(x, with_offset, max_percentile=pct, min_percentile=pct) == want[:2]


def test_ifmr_losses_equal_brute_force_losses() -> None:
    x = (np.random.default_rng(3).standard_normal(20000) * 3).astype(np.float32)
    x[::3] = 0
    _, _, want = ifmr_brute_force(x, True, max_pct=1.0, min_pct=1.0)
    run, zeros = make_run(x.copy())
    data = SortedData([run], zeros)
    vmax, vmin = float(x.max()), float(x.min())
    cands = np.arange(0.7, 1.3, 0.01) * vmax
    got = ifmr_losses(data, (cands - vmin) / 255, np.full_like(cands, vmin), cands)
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_ifmr_collector_equals_one_shot_and_ignores_extra_batches() -> None:
    rng = np.random.default_rng(7)
    batches = [np.maximum(rng.standard_normal((2, 3, 5, 5)), 0).astype(np.float32) * (i + 1)
               for i in range(3)]
    c = IfmrCollector(3, True, (0.7, 1.3), 0.01, 0.99, 0.99)
    for b in batches:
        assert not c.done
        c.update(b)
    assert c.done
    c.update(np.full((2, 3, 5, 5), 1e6, np.float32))       # a 4th batch is ignored
    assert c.compute() == ifmr_factors(np.concatenate([b.ravel() for b in batches]), True,
                                       (0.7, 1.3), 0.01, 0.99, 0.99)


def test_ifmr_collector_errors() -> None:
    with pytest.raises(CalibrationError, match="batch_num"):
        IfmrCollector(0)
    # A NaN/Inf is found by the batch's sort and reported with the factors.
    for bad in (np.nan, np.inf, -np.inf):
        c = IfmrCollector(1, name="layer 'x'")
        c.update(np.array([1.0, bad, 0.0], np.float32))
        with pytest.raises(CalibrationError, match="layer 'x': calibration input of batch 1 "
                                                   "contains NaN or Inf"):
            c.compute()
    with pytest.raises(CalibrationError, match="no batch"):
        IfmrCollector(1).compute()


# ---------------------------------------------------------------- HFMG

def test_histogram_merge_is_exact_rebinning() -> None:
    h = StreamingHistogram(8)
    h.add(np.array([0.0, 0.5, 1.0, 3.5, 7.0], np.float32))   # width 7/(8-1) = 1, edges 0..8
    assert h.width == 1.0 and h.k0 == 0
    np.testing.assert_array_equal(h.counts, [2, 1, 0, 1, 0, 0, 0, 1])
    h.add(np.array([-3.0, 12.0], np.float32))
    # width doubles once: w = 2, k0 = floor(-3/2) = -2, top edge (−2+8)·2 = 12 covers 12.
    assert h.width == 2.0 and h.k0 == -2
    # old [0,2) -> new bin 2, [2,4) -> 3, [6,8) -> 5; -3 -> bin 0; 12 (top edge) -> bin 7
    np.testing.assert_array_equal(h.counts, [1, 0, 3, 1, 0, 1, 0, 1])
    assert h.total == 7


def test_histogram_zeros_before_range() -> None:
    h = StreamingHistogram(16)
    h.add(np.zeros(5, np.float32))
    assert h.width == 0.0 and h.total == 5
    h.add(np.array([1.0, 2.0], np.float32))
    assert h.total == 7 and h.counts[-h.k0] == 5


def test_hfmg_memory_is_independent_of_batch_num() -> None:
    c = HfmgCollector(50, num_of_bins=1024)
    rng = np.random.default_rng(0)
    for i in range(50):
        c.update(rng.standard_normal(1000).astype(np.float32) * (1 + i / 10))
        assert c.hist.counts.size == 1024
    assert c.hist.total == 50000


def test_hfmg_symmetric_keeps_uniform_range() -> None:
    # Uniform data on [-1, 1]: clipping anything costs more than it saves.
    x = np.linspace(-1, 1, 200001).astype(np.float32)
    c = HfmgCollector(1, with_offset=False, num_of_bins=2048)
    c.update(x)
    scale, offset = c.compute()
    # the model clips a hair (rounding noise shrinks faster than the tails grow)
    assert offset == 0 and scale == pytest.approx(1 / 127, rel=5e-3)


def test_hfmg_asymmetric_clips_outlier_where_the_model_says() -> None:
    # 100000 values on [0, 1] and one at 100.  Error of the range [0, b]:
    # N·(b/255)²/12 inside + (100 − b)² for the outlier, minimal at
    # b* = 100 / (1 + N/(12·255²)) ~ 88.6: the outlier is clipped, not kept.
    n = 100000
    x = np.concatenate([np.linspace(0, 1, n), [100.0]]).astype(np.float32)
    c = HfmgCollector(1, with_offset=True, num_of_bins=4096)
    c.update(x)
    scale, offset = c.compute()
    b_star = 100 / (1 + (n + 1) / (12 * 255 ** 2))
    assert offset == -128                                    # range starts at 0
    assert abs(scale * 255 - b_star) < 2 * c.hist.width


def test_hfmg_error_model_by_hand() -> None:
    # All mass in the first bin [0, w): the narrowest range [0, w] has the
    # smallest rounding noise and clips nothing -> scale = w/255, offset -128.
    h = StreamingHistogram(1024)
    h.add(np.array([0.0, 2.0], np.float32))
    h.counts[:] = 0
    h.counts[0] = 1000
    scale, offset = hfmg_search(h, True)
    assert scale == pytest.approx(h.width / 255, rel=1e-6) and offset == -128


def _hfmg_brute(h: StreamingHistogram) -> tuple[int, int]:
    """The error model evaluated bin by bin for every (a, b) pair (asymmetric)."""
    e = h.edges()
    m = (e[:-1] + e[1:]) / 2
    n = h.counts.astype(np.float64)
    z = -h.k0
    best = (np.inf, 0, 0)
    for i in range(0, z + 1):
        for j in range(z, h.num_bins + 1):
            if e[j] <= e[i]:
                continue
            step = (e[j] - e[i]) / 255
            err = n[i:j].sum() * step ** 2 / 12
            err += (n[:i] * ((m[:i] - e[i]) ** 2 + h.width ** 2 / 12)).sum()
            err += (n[j:] * ((m[j:] - e[j]) ** 2 + h.width ** 2 / 12)).sum()
            if err < best[0] - 1e-9 * abs(err):
                best = (err, i, j)
    return best[1], best[2]


def test_hfmg_search_equals_bin_by_bin_model() -> None:
    rng = np.random.default_rng(11)
    h = StreamingHistogram(1024)
    h.add(np.concatenate([rng.standard_normal(5000) * 0.3 - 0.5, rng.exponential(1.0, 3000)])
          .astype(np.float32))
    # Coarsen to 32 bins' worth of work for the O(B^3) reference.
    small = StreamingHistogram(1024)
    small.width, small.k0 = h.width * 32, int(np.floor(h.k0 / 32))
    small.num_bins = 1024 // 32 + 1
    idx = np.floor_divide(h.k0 + np.arange(1024), 32) - small.k0
    small.counts = np.bincount(idx, weights=h.counts, minlength=small.num_bins).astype(np.int64)
    i, j = _hfmg_brute(small)
    e = small.edges()
    scale, offset = hfmg_search(small, True)
    assert scale == pytest.approx((e[j] - e[i]) / 255, rel=1e-6)
    assert offset == int(-round_half_away(e[i] / scale) - 128)


def test_hfmg_collector_validation() -> None:
    with pytest.raises(CalibrationError, match="num_of_bins"):
        HfmgCollector(1, num_of_bins=1000)
    c = HfmgCollector(1)
    with pytest.raises(CalibrationError, match="batch 1.*NaN"):
        c.update(np.array([np.inf], np.float32))


def test_histogram_survives_a_huge_range_jump() -> None:
    h = StreamingHistogram(1024)
    h.add(np.array([0.0, 1e-25], np.float32))         # a tiny first range
    h.add(np.array([-3.0, 5.0], np.float32))          # ~2^82 times wider
    assert h.total == 4 and h.k0 * h.width <= -3.0 and (h.k0 + 1024) * h.width >= 5.0
    assert h.counts[-h.k0] == 2                        # 0 and 1e-25 share the bin at 0


# ------------------------------------------------- IFMR's sorted runs
def test_make_run_by_hand() -> None:
    run, zeros = make_run(np.array([3.0, 0.0, -1.5, -0.0, 2.0, 0.0], np.float32))
    np.testing.assert_array_equal(run.values, [-1.5, 2.0, 3.0])
    assert zeros == 3                                   # -0.0 counts as a zero
    run, zeros = make_run(np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(run.values, [0.25, 0.5])
    assert zeros == 0


def test_prefix_sums_by_hand() -> None:
    from amct.quant.ifmr import BLOCK, Run

    r = Run(np.array([1.0, 2.0, 4.0, 8.0], np.float32))
    np.testing.assert_array_equal(r.prefix_sums(np.array([0, 4, 2, 2, 1, 3, 0])),
                                  [0, 15, 3, 3, 1, 7, 0])
    assert (r.s1, r.s2) == (15.0, 85.0)
    # Across block edges: 1 + 2 + ... + j = j (j + 1) / 2.
    n = 2 * BLOCK + 22
    r = Run(np.arange(1, n + 1, dtype=np.float32))
    j = np.array([0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 2 * BLOCK + 2, n])
    np.testing.assert_array_equal(r.prefix_sums(j), j * (j + 1) / 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-40, 40), max_size=30), min_size=1, max_size=5),
       st.lists(st.integers(-45, 45), min_size=1, max_size=20), st.integers(1, 8))
def test_runs_answer_like_one_sorted_array(runs, bounds, k) -> None:
    """Counts, sums and order statistics over several sorted runs equal those
    of all the data taken together (values on a 1/4 grid, so sums are exact)."""
    arrays = [np.array(r, np.float32) / 4 for r in runs]
    parts = [make_run(a.copy()) for a in arrays]
    data = SortedData([p[0] for p in parts], sum(p[1] for p in parts))
    allv = np.sort(np.concatenate(arrays))
    b = np.array(bounds, np.float64) / 4 + 0.125
    counts, sums = data.below(b)
    np.testing.assert_array_equal(counts, [(allv < x).sum() for x in b])
    np.testing.assert_array_equal(sums, [allv[allv < x].astype(np.float64).sum() for x in b])
    assert data.n == allv.size
    if k <= allv.size:
        assert data.kth_smallest(k) == allv[k - 1]
        assert data.kth_largest(k) == allv[-k]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_ifmr_collector_works_in_a_forked_child() -> None:
    """The background sorter is per process: a child forked after the parent
    used it gets its own thread instead of waiting forever."""
    import multiprocessing as mp

    x = np.linspace(-1, 3, 1001, dtype=np.float32)
    c = IfmrCollector(1)
    c.update(x)
    want = c.compute()
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_collect_in_child, (x,)).get(timeout=20)
    assert got == want


def _collect_in_child(x):
    c = IfmrCollector(1)
    c.update(x)
    return c.compute()
