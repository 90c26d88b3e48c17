"""int32 bias of every quantized layer: ``bias_q = round(bias / deq_scale)`` (SPEC §4.5).

An overflow raises ``QuantizationError`` naming the layer (the user should skip
it).  Layers without a bias keep ``bias_q = None``.
"""
from __future__ import annotations

from amct.ir import Graph
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.quantizable import WEIGHTED_TYPES
from amct.passes.registry import register_pass
from amct.quant.bias import quantize_bias


@register_pass
class QuantizeBias(Pass):
    """Fill ``LayerQuant.bias_q`` from the layer's float bias."""

    name = "quantize_bias"
    requires = ("build_layer_quant",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = 0
        for layer in graph.layers:
            q = layer.meta.get("quant")
            if q is None or layer.type not in WEIGHTED_TYPES or len(layer.blobs) < 2:
                continue
            q.bias_q = quantize_bias(layer.blobs[1], q.deq_scale, layer.name)
            n += 1
        return PassResult(n > 0, {"biases": n})
