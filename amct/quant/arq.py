"""ARQ weight quantization (SPEC §4.2): symmetric int8, per output channel or per tensor."""
from __future__ import annotations

import numpy as np

from amct.errors import QuantizationError
from amct.quant.rounding import FLT_EPSILON, round_half_away


def _output_channel_rows(w: np.ndarray, layer_type: str, group: int) -> np.ndarray:
    """``w`` viewed as [Cout, -1] with row c holding output channel c's weights.

    Convolution and InnerProduct store the output channel on axis 0.
    Deconvolution stores [Cin, Cout/g, kh, kw]: input channels of group gi are
    rows gi*Cin/g .. (gi+1)*Cin/g and its output channels are c = gi*(Cout/g) + j,
    so the per-group blocks are swapped into [g, Cout/g, Cin/g, k] first.
    """
    if layer_type != "Deconvolution":
        return w.reshape(w.shape[0], -1)
    cin, cout_g = w.shape[0], w.shape[1]
    if group < 1 or cin % group:
        raise QuantizationError(f"Deconvolution weights {w.shape}: {cin} input channels "
                                f"cannot be split into {group} groups")
    blocks = w.reshape(group, cin // group, cout_g, -1)
    return blocks.transpose(0, 2, 1, 3).reshape(group * cout_g, -1)


def channel_scale_view(scale: np.ndarray, w_shape: tuple[int, ...], layer_type: str,
                       group: int = 1) -> np.ndarray:
    """Reshape a per-output-channel vector so it broadcasts against weights of ``w_shape``.

    A one-element ``scale`` (per-tensor) is returned as is.  Used to build
    ``w_q * scale_w`` in the original weight layout.
    """
    s = np.asarray(scale)
    if s.size == 1:
        return s.reshape(())
    if layer_type != "Deconvolution":
        return s.reshape((-1,) + (1,) * (len(w_shape) - 1))
    cin, cout_g = w_shape[0], w_shape[1]
    # [g, 1, Cout/g, 1...] broadcast over [g, Cin/g, Cout/g, ...] then merged back.
    view = s.reshape(group, 1, cout_g, *([1] * (len(w_shape) - 2)))
    full = np.broadcast_to(view, (group, cin // group, cout_g, *([1] * (len(w_shape) - 2))))
    return full.reshape((cin, cout_g) + (1,) * (len(w_shape) - 2))


def arq_weights(w: np.ndarray, channel_wise: bool, layer_type: str,
                group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a weight blob: returns ``(scale_w float32 [Cout] or [1], w_q int8)``.

    ``scale_w = max|w| / 127`` per output channel (or over the tensor);
    a scale below FLT_EPSILON (an all-zero channel) becomes 1.0 so the channel
    quantizes to zeros instead of dividing by zero.  ``w_q`` has ``w``'s shape.
    ``group`` only matters for Deconvolution (output channel layout).
    """
    w = np.asarray(w)
    if w.ndim < 1 or w.size == 0:
        raise QuantizationError(f"{layer_type} weights of shape {w.shape} cannot be quantized")
    if not np.isfinite(w).all():
        raise QuantizationError(f"{layer_type} weights contain NaN or Inf")
    if channel_wise:
        amax = np.abs(_output_channel_rows(w, layer_type, group)).max(axis=1)
    else:
        amax = np.abs(w).max().reshape(1)
    scale = (amax.astype(np.float64) / 127.0).astype(np.float32)
    scale[scale < FLT_EPSILON] = 1.0
    view = channel_scale_view(scale, w.shape, layer_type, group).astype(np.float64)
    w_q = np.clip(round_half_away(w.astype(np.float64) / view), -128, 127).astype(np.int8)
    return scale, w_q
