"""``LayerQuant``: the quantization of one layer, as the passes hand it to the emitters.

Stored in ``layer.meta["quant"]`` of every quantized layer of the quantized
graph (the contract between ``amct.passes`` and ``backends.ascend``).
"""
from __future__ import annotations

import attrs
import numpy as np


@attrs.define(eq=False)
class LayerQuant:
    """Factors and integer tensors of one quantized layer ``L``.

    ``scale_d``/``offset_d``: activation factors of L's input (SPEC §4.1).
    ``scale_w``: float32 [C] (per channel) or [1]; ``w_q``: int8 in L's weight
    layout (None for Pooling); ``bias_q``: int32 [C] or None; ``deq_scale``:
    float32 [C] or [1] = scale_d * scale_w (Pooling: scale_d).
    ``fused_from``: original layer names merged into L, L's own first.
    ``quant_layer``/``dequant_layer``: names of the inserted Quant/DeQuant layers.
    """

    scale_d: float
    offset_d: int
    scale_w: np.ndarray
    w_q: np.ndarray | None
    bias_q: np.ndarray | None
    deq_scale: np.ndarray
    channel_wise: bool
    act_algo: str = "ifmr"
    fused_from: list[str] = attrs.field(factory=list)
    quant_layer: str = ""
    dequant_layer: str = ""
