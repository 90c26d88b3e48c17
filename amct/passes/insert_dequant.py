"""Insert the DeQuant layers: int32 accumulator -> float, in place on L's top (SPEC §6.3).

Blobs: deq_scale float32 [C] (or [1]), shift_bit zeros, offset_w zeros - the
float form the fake-quant model carries; the deploy emitter packs them.
"""
from __future__ import annotations

import numpy as np

from amct.errors import PassError
from amct.ir import Graph, Layer
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.registry import register_pass


@register_pass
class InsertDequant(Pass):
    """``{L}_dequant_layer`` right after every quantized layer L."""

    name = "insert_dequant"
    requires = ("build_layer_quant",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = 0
        for layer in graph.layers:
            q = layer.meta.get("quant")
            if q is None:
                continue
            name = f"{layer.name}_dequant_layer"
            if name in graph:
                raise PassError(f"insert_dequant: a layer named '{name}' already exists")
            top = layer.tops[0]
            deq = np.asarray(q.deq_scale, np.float32).reshape(-1)
            dq = Layer(name, "DeQuant", [top], [top],
                       [deq, np.zeros(deq.size, np.float32), np.zeros(deq.size, np.float32)])
            p = dq.params.dequant_param
            p.channel_wise = bool(q.channel_wise)
            p.object_layer = layer.name
            p.layer_type = layer.type
            graph.add_layer(dq, after=layer)
            q.dequant_layer = name
            n += 1
        return PassResult(n > 0, {"dequant_layers": n})
