"""The deploy model for ATC (SPEC §6.4): int8 weights, int32 bias, packed deq_scale.

Same topology as the fake-quant model.  L's blobs become ``[w_q int8,
bias_q int32]`` (written as BlobProto int8_data / int32_data); its DeQuant
carries one uint64 blob ``[C]`` or ``[1]`` packing deq_scale with shift 0
and offset_w 0 (SPEC §4.5).  Every other layer stays float.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Graph
from amct.quant.deq_scale import pack_deq_scale
from amct.backends.ascend._qgraph import WEIGHTED_TYPES, emitted_copy, f32, set_bias_term


def build_deploy(qgraph: Graph) -> Graph:
    """The deploy graph of a quantized graph (``qgraph`` is not modified)."""
    g, layers, dequant = emitted_copy(qgraph)
    for layer, q in layers:
        if layer.type in WEIGHTED_TYPES:
            blobs = [np.ascontiguousarray(q.w_q, dtype=np.int8)]
            if q.bias_q is not None:
                blobs.append(np.ascontiguousarray(q.bias_q, dtype=np.int32).reshape(-1))
            set_bias_term(layer, q.bias_q is not None)
            layer.blobs = blobs
        dequant[layer.name].blobs = [pack_deq_scale(f32(q.deq_scale).reshape(-1))]
    return g
