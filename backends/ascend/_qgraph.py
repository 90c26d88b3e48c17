"""Reading the quantized graph (the passes/emitters contract) for the emitters."""
from __future__ import annotations

import numpy as np

from amct.errors import QuantizationError
from amct.ir import Graph, Layer
from amct.quant.info import LayerQuant

#: Calibration layers are never part of an emitted model.
CALIBRATION_TYPES = frozenset({"IFMR", "HFMG", "SearchN"})
WEIGHTED_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def quantized_layers(graph: Graph) -> list[tuple[Layer, LayerQuant]]:
    """Every layer carrying ``meta["quant"]``, in execution order, checked."""
    out = []
    for layer in graph.layers:
        q = layer.meta.get("quant")
        if q is None:
            continue
        if not isinstance(q, LayerQuant):
            raise QuantizationError(f"layer '{layer.name}': meta['quant'] is a "
                                    f"{type(q).__name__}, not a LayerQuant")
        if layer.type in WEIGHTED_TYPES and (q.w_q is None or not layer.blobs
                                             or q.w_q.shape != layer.blobs[0].shape):
            raise QuantizationError(f"layer '{layer.name}' ({layer.type}): int8 weights missing "
                                    "or of a different shape than the float weights")
        out.append((layer, q))
    return out


def group_count(layer: Layer) -> int:
    if layer.type in ("Convolution", "Deconvolution"):
        return int(layer.params.convolution_param.group)
    return 1


def set_bias_term(layer: Layer, has_bias: bool) -> None:
    """Keep the layer's bias_term consistent with the blobs it will carry
    (written only when it changes, so untouched layers keep their text)."""
    if layer.type in ("Convolution", "Deconvolution"):
        param = layer.params.convolution_param
    elif layer.type == "InnerProduct":
        param = layer.params.inner_product_param
    else:
        return
    if param.bias_term != has_bias:
        param.bias_term = has_bias


def emitted_copy(qgraph: Graph) -> tuple[Graph, list[tuple[Layer, LayerQuant]], dict[str, Layer]]:
    """A copy of ``qgraph`` without calibration layers, its quantized layers and
    its DeQuant layers by object layer name (the caller edits only the copy)."""
    g = qgraph.copy()
    for layer in g.layers:
        if layer.type in CALIBRATION_TYPES:
            g.remove_layer(layer)
    layers = quantized_layers(g)
    dequant: dict[str, Layer] = {}
    for layer in g.layers:
        if layer.type == "DeQuant":
            dequant[layer.params.dequant_param.object_layer] = layer
    for layer, q in layers:
        if layer.name not in dequant:
            raise QuantizationError(f"layer '{layer.name}': quantized but no DeQuant layer has "
                                    "it as object_layer")
        has_quant = any(x.type == "Quant" and x.params.quant_param.object_layer
                        and x.tops and x.tops[0] in layer.bottoms for x in g.layers)
        if not has_quant:
            raise QuantizationError(f"layer '{layer.name}': quantized but no Quant layer feeds it")
    return g, layers, dequant


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
