"""Rounding, ARQ, bias quantization and deq_scale packing: hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amct.errors import QuantizationError
from amct.quant import (arq_weights, channel_scale_view, pack_deq_scale, quantize_bias,
                        round_half_away, unpack_deq_scale)


def test_round_half_away_from_zero() -> None:
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 2.4, -2.6, 0])
    np.testing.assert_array_equal(round_half_away(x), [1, -1, 2, -2, 3, -3, 0, -0, 2, -3, 0])
    # The largest double below 0.5: floor(x + 0.5) would give 1.
    assert round_half_away(np.nextafter(0.5, 0.0)) == 0.0
    assert round_half_away(np.float32(2.5)).dtype == np.float32
    assert round_half_away(3) == 3.0


def _round_reference(a: np.ndarray) -> np.ndarray:
    """Half away from zero from the exact fractional part (the first implementation)."""
    mag = np.abs(a)
    whole = np.floor(mag)
    with np.errstate(invalid="ignore"):
        return np.copysign(whole + (mag - whole >= 0.5), a)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-300, 300, width=32), st.integers(-600, 600).map(lambda k: k / 2),
                          st.sampled_from([0.49999997, -0.49999997, 8388607.5, -8388607.5,
                                           float("inf"), float("-inf")])),
                min_size=1, max_size=40),
       st.sampled_from([np.float32, np.float64]), st.booleans())
def test_round_half_away_matches_reference(values, dtype, transposed) -> None:
    # Any layout: a transposed (non-contiguous) input must get its ties fixed in place too.
    a = np.array(values + values, dtype).reshape(2, -1)
    a = a.T if transposed else a
    got = round_half_away(a)
    assert got.dtype == dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, _round_reference(a))


def test_arq_per_channel_conv_by_hand() -> None:
    w = np.array([[[[1.0, -2.54]]], [[[0.0, 0.0]]], [[[0.9921875, 0.50390625]]]],
                 np.float32)                                     # shape (3, 1, 1, 2)
    scale, w_q = arq_weights(w, True, "Convolution")
    # channel 0: amax 2.54 -> scale 0.02, 1/0.02 = 50, -2.54/0.02 = -127
    # channel 1: all zero -> scale below FLT_EPSILON -> 1.0, weights 0
    # channel 2: amax 127/128 -> scale 1/128 (exact); 64.5/128 / (1/128) = 64.5 -> 65
    np.testing.assert_allclose(scale, [0.02, 1.0, 1 / 128], rtol=1e-6)
    assert scale.dtype == np.float32 and w_q.dtype == np.int8 and w_q.shape == w.shape
    np.testing.assert_array_equal(w_q.reshape(3, 2), [[50, -127], [0, 0], [127, 65]])


def test_arq_per_tensor_inner_product() -> None:
    w = np.array([[0.5, -1.27], [0.01, 0.635]], np.float32)
    scale, w_q = arq_weights(w, False, "InnerProduct")
    np.testing.assert_allclose(scale, [0.01], rtol=1e-6)
    np.testing.assert_array_equal(w_q, [[50, -127], [1, 64]])


def test_arq_deconvolution_group_output_channels() -> None:
    # Deconvolution weights (Cin=4, Cout/g=3, 1, 1), group 2: output channel
    # c = g*3 + j reads rows 2g, 2g+1 of column j.
    w = np.zeros((4, 3, 1, 1), np.float32)
    w[:, :, 0, 0] = [[1, 2, 3], [-4, 5, 6], [7, 8, -90], [10, 11, 12]]
    scale, w_q = arq_weights(w, True, "Deconvolution", group=2)
    amax = np.array([4, 5, 6, 10, 11, 90], np.float64)
    np.testing.assert_allclose(scale, amax / 127, rtol=1e-6)
    view = channel_scale_view(scale, w.shape, "Deconvolution", 2)
    assert view.shape == (4, 3, 1, 1)
    np.testing.assert_array_equal(view[:2, :, 0, 0], np.broadcast_to(scale[:3], (2, 3)))
    np.testing.assert_array_equal(view[2:, :, 0, 0], np.broadcast_to(scale[3:], (2, 3)))
    # the largest |w| of every output channel maps to +-127
    assert w_q[1, 0, 0, 0] == -127 and w_q[2, 2, 0, 0] == -127 and w_q[3, 0, 0, 0] == 127
    # group 1 would mix the groups: channel 0 = column 0 over all rows, amax 10
    s1, _ = arq_weights(w, True, "Deconvolution", group=1)
    np.testing.assert_allclose(s1, np.array([10, 11, 90]) / 127, rtol=1e-6)


def test_arq_rejects_nan() -> None:
    with pytest.raises(QuantizationError):
        arq_weights(np.array([[np.nan]], np.float32), True, "Convolution")


def test_quantize_bias_by_hand_and_overflow() -> None:
    q = quantize_bias(np.array([1.0, -0.3125, 0.0], np.float32),
                      np.array([0.5, 0.125, 0.3], np.float32), "conv1")
    np.testing.assert_array_equal(q, [2, -3, 0])     # -0.3125/0.125 = -2.5 -> -3
    assert q.dtype == np.int32
    np.testing.assert_array_equal(quantize_bias([3.0, 5.0], [2.0], "fc"), [2, 3])  # 1.5, 2.5
    with pytest.raises(QuantizationError, match="'conv9'.*overflows int32.*skip"):
        quantize_bias(np.array([1.0, 3e4], np.float32), np.array([1.0, 1e-5], np.float32), "conv9")


def test_pack_deq_scale_bit_patterns() -> None:
    p = pack_deq_scale(np.array([1.0, 0.5, -2.0], np.float32))
    assert p.dtype == np.uint64
    assert [int(v) for v in p] == [0x3F800000, 0x3F000000, 0xC0000000]
    p = pack_deq_scale(np.array([1.0], np.float32), shift=3, offset_w=-1)
    assert int(p[0]) == 0xFF_03_3F800000
    p = pack_deq_scale(np.array([0.25, 0.25], np.float32), shift=[0, 255], offset_w=[127, -128])
    assert [int(v) for v in p] == [0x7F_00_3E800000, 0x80_FF_3E800000]
    deq, shift, off = unpack_deq_scale(p)
    np.testing.assert_array_equal(deq, [0.25, 0.25])
    np.testing.assert_array_equal(shift, [0, 255])
    np.testing.assert_array_equal(off, [127, -128])
    assert deq.dtype == np.float32 and off.dtype == np.int8
    with pytest.raises(QuantizationError):
        pack_deq_scale(np.ones(1, np.float32), offset_w=128)


def test_pack_unpack_roundtrip_exact() -> None:
    d = np.random.default_rng(0).uniform(1e-6, 1.0, 100).astype(np.float32)
    back, shift, off = unpack_deq_scale(pack_deq_scale(d))
    assert back.tobytes() == d.tobytes() and not shift.any() and not off.any()
