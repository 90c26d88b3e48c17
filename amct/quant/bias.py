"""Bias quantization (SPEC §4.5): ``bias_q = round(bias / deq_scale)`` as int32."""
from __future__ import annotations

import numpy as np

from amct.errors import QuantizationError
from amct.quant.rounding import round_half_away

_I32 = np.iinfo(np.int32)


def quantize_bias(bias: np.ndarray, deq_scale: np.ndarray, layer_name: str) -> np.ndarray:
    """Quantize ``bias`` [C] with ``deq_scale`` [C] or [1] to int32.

    The int32 bias is added to the int32 accumulator on the NPU, so a value
    outside int32 cannot be represented: the layer then has to stay in float.
    """
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    d = np.asarray(deq_scale, dtype=np.float64).reshape(-1)
    if d.size not in (1, b.size):
        raise QuantizationError(f"layer '{layer_name}': bias has {b.size} channels but "
                                f"deq_scale has {d.size}")
    q = round_half_away(b / d)
    bad = ~np.isfinite(q) | (q < _I32.min) | (q > _I32.max)
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise QuantizationError(
            f"layer '{layer_name}': quantized bias of channel {c} ({b[c]:g} / deq_scale "
            f"{d[c if d.size > 1 else 0]:g}) overflows int32; skip this layer from "
            "quantization (skip_layers / quant_enable: false)")
    return q.astype(np.int32)
