"""Insert the Quant layers: float input -> int8 (SPEC §6.3).

One Quant per (input value, scale_d, offset_d, with_offset): consumers of the
same blob with equal factors share it.  It is named ``{L}_quant_layer`` after
the first such layer L, placed right before L, writes a new blob of the same
name, and every layer of the group reads that blob instead of the float input.
"""
from __future__ import annotations

import numpy as np

from amct.errors import PassError
from amct.ir import Graph, Layer
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.registry import register_pass


def quant_layer(name: str, bottom: str, scale_d: float, offset_d: int, with_offset: bool,
                object_layer: str) -> Layer:
    layer = Layer(name, "Quant", [bottom], [name])
    p = layer.params.quant_param
    p.with_offset = with_offset
    p.scale = float(np.float32(1.0) / np.float32(scale_d))
    p.offset = bytes([int(offset_d) & 0xFF])
    p.object_layer = object_layer
    return layer


@register_pass
class InsertQuant(Pass):
    """A (shared) Quant layer in front of every quantized layer."""

    name = "insert_quant"
    requires = ("build_layer_quant",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        groups: dict[tuple, list[Layer]] = {}
        for layer in graph.layers:
            q = layer.meta.get("quant")
            if q is not None:
                key = (graph.input_values(layer)[0], q.scale_d, q.offset_d,
                       bool(layer.meta["quant_config"].asymmetric))
                groups.setdefault(key, []).append(layer)
        blobs = {t for x in graph.layers for t in x.tops}
        for (_, scale_d, offset_d, with_offset), members in groups.items():
            first = members[0]
            name = f"{first.name}_quant_layer"
            if name in graph or name in blobs:
                raise PassError(f"insert_quant: layer or blob '{name}' already exists")
            graph.add_layer(quant_layer(name, first.bottoms[0], scale_d, offset_d, with_offset,
                                        first.name), before=first)
            for m in members:
                m.bottoms[0] = name
                m.meta["quant"].quant_layer = name
        return PassResult(bool(groups), {"quant_layers": len(groups)})
