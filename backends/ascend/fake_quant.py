"""The fake-quant model (SPEC §6.3): float weights on the int8 grid, for accuracy simulation.

Per quantized layer L: weights ``w_q · scale_w`` (per output channel; the
Deconvolution output channel is axis 1 within each group) and **Decision**
bias ``bias_q · deq_scale`` (the value the int32 bias stands for), so the
fake-quant float computation is the deploy integer computation up to float
rounding.  DeQuant layers carry [deq_scale, shift_bit = 0, offset_w = 0] as
float blobs and act as the identity.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Graph
from amct.quant.arq import channel_scale_view
from amct.backends.ascend._qgraph import (WEIGHTED_TYPES, emitted_copy, f32, group_count,
                                          set_bias_term)


def build_fake_quant(qgraph: Graph) -> Graph:
    """The fake-quant graph of a quantized graph (``qgraph`` is not modified)."""
    g, layers, dequant = emitted_copy(qgraph)
    for layer, q in layers:
        deq = f32(q.deq_scale).reshape(-1)
        if layer.type in WEIGHTED_TYPES:
            view = channel_scale_view(q.scale_w, q.w_q.shape, layer.type, group_count(layer))
            blobs = [f32(q.w_q.astype(np.float32) * f32(view))]
            if q.bias_q is not None:
                blobs.append(f32(q.bias_q.astype(np.float64) * deq.astype(np.float64)))
            set_bias_term(layer, q.bias_q is not None)
            layer.blobs = blobs
        dequant[layer.name].blobs = [deq, np.zeros(deq.size, np.float32),
                                     np.zeros(deq.size, np.float32)]
    return g
