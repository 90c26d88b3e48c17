"""What ``amct-caffe inspect`` reports: layers, shapes, parameters, quantizability, fusions.

The quantizability rule and the fusions are the passes' own
(``amct.passes.quantizable``, ``fuse_conv_bn_scale``,
``fold_bn_scale_into_next_conv``): the fusion passes are run on a copy of the
graph, so "would apply" means exactly what quantization will do.  For every
BatchNorm/Scale they leave behind, ``explain_unfused`` says why, from the
same conditions the passes check.
"""
from __future__ import annotations

import attrs
import numpy as np

from amct.ir import Graph, Layer, get_layer_def
from amct.ir.graph import INPUT_TYPES

AFFINE_TYPES = ("BatchNorm", "Scale")


@attrs.frozen
class LayerInfo:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    params: int
    #: SPEC §5.1 holds (the passes' own rule)
    quantizable: bool
    #: why not (None when quantizable or the type is never quantized)
    reason: str | None
    channel_wise: bool | None = None


@attrs.frozen
class FusionInfo:
    kind: str
    target: str
    merged: tuple[str, ...]


@attrs.frozen
class ModelInfo:
    name: str
    source: str
    weights: str | None
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    layers: tuple[LayerInfo, ...]
    fusions: tuple[FusionInfo, ...]
    #: (layer name, type, reason) for BatchNorm/Scale layers that stay unfused
    unfused: tuple[tuple[str, str, str], ...]

    @property
    def params(self) -> int:
        return sum(x.params for x in self.layers)

    @property
    def quantizable(self) -> list[str]:
        return [x.name for x in self.layers if x.quantizable]

    def to_json(self) -> dict:
        return {
            "name": self.name, "model": self.source, "weights": self.weights,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "params": self.params,
            "layers": [{"name": x.name, "type": x.type, "bottoms": list(x.bottoms), "tops": list(x.tops),
                        "output_shapes": [list(s) for s in x.out_shapes], "params": x.params,
                        "quantizable": x.quantizable, "reason": x.reason,
                        "channel_wise": x.channel_wise} for x in self.layers],
            "quantizable": self.quantizable,
            "fusions": [{"kind": f.kind, "target": f.target, "merged": list(f.merged)}
                        for f in self.fusions],
            "unfused": [{"layer": n, "type": t, "reason": r} for n, t, r in self.unfused],
        }


def inspect_graph(graph: Graph, input_shapes: dict[str, tuple[int, ...]] | None = None,
                  weights: str | None = None) -> ModelInfo:
    """Analyse ``graph`` (with or without loaded weights)."""
    from amct.passes.quantizable import CHANNEL_WISE_TYPES, QUANTIZABLE_TYPES, not_quantizable_reason

    vshapes = graph.infer_value_shapes(input_shapes)
    g = graph.copy()
    _fill_missing_weights(g, vshapes)
    infos = []
    for orig, layer in zip(graph.layers, g.layers):
        outs = tuple(vshapes[v] for v in graph.output_values(orig))
        ins = [vshapes[v] for v in graph.input_values(orig)]
        params = _param_count(orig, ins)
        reason = not_quantizable_reason(layer)
        quant = reason is None
        if not quant and layer.type not in QUANTIZABLE_TYPES:
            reason = None       # the type is never quantized: nothing to explain
        infos.append(LayerInfo(orig.name, orig.type, tuple(orig.bottoms), tuple(orig.tops), outs, params,
                               quant, reason, (layer.type in CHANNEL_WISE_TYPES) if quant else None))
    fusions, unfused = _fusions(g)
    final = graph.dataflow().final
    return ModelInfo(graph.name, graph.source, weights,
                     {n: vshapes[n] for n in graph.inputs},
                     {n: vshapes[final[n]] for n in graph.outputs},
                     tuple(infos), fusions, unfused)


def _param_count(layer: Layer, in_shapes: list) -> int:
    if layer.blobs:
        return int(sum(b.size for b in layer.blobs))
    ldef = get_layer_def(layer.type)
    if ldef is None or layer.type in INPUT_TYPES:
        return 0
    try:
        return int(sum(int(np.prod(s)) for s in ldef.param_shapes(layer, in_shapes)))
    except Exception:  # noqa: BLE001 - a count is informative only
        return 0


def _fill_missing_weights(g: Graph, vshapes: dict) -> None:
    """Give weightless layers zero blobs (read-only broadcasts: no memory) so the
    quantizability and fusion rules, which look at blobs, can run without weights."""
    for layer in g.layers:
        if layer.blobs or layer.type in INPUT_TYPES:
            continue
        ldef = get_layer_def(layer.type)
        if ldef is None:
            continue
        ins = [vshapes[v] for v in g.input_values(layer)]
        try:
            shapes = ldef.param_shapes(layer, ins)
        except Exception:  # noqa: BLE001
            continue
        layer.blobs = [np.broadcast_to(np.float32(1.0 if i == 2 and layer.type == "BatchNorm" else 0.0),
                                       tuple(s)) for i, s in enumerate(shapes)]


def _fusions(g: Graph) -> tuple[tuple[FusionInfo, ...], tuple[tuple[str, str, str], ...]]:
    from amct.passes.base import PassContext
    from amct.passes.fold_bn_scale_into_next_conv import FoldBnScaleIntoNextConv
    from amct.passes.fuse_conv_bn_scale import FuseConvBnScale

    ctx = PassContext()
    FuseConvBnScale().run(g, ctx)
    FoldBnScaleIntoNextConv().run(g, ctx)
    fusions = tuple(FusionInfo(f.kind, f.target, tuple(f.merged)) for f in ctx.fusions)
    unfused = tuple((x.name, x.type, explain_unfused(g, x)) for x in g.layers if x.type in AFFINE_TYPES)
    return fusions, unfused


def explain_unfused(g: Graph, layer: Layer) -> str:
    """Why a BatchNorm/Scale left in ``g`` after the fusion passes was not folded."""
    from amct.passes.affine import layer_affine
    from amct.passes.quantizable import WEIGHTED_TYPES

    if layer_affine(layer) is None:
        if layer.type == "Scale":
            return ("this Scale is not a per-channel affine of one input (second bottom, axis != 1 "
                    "or num_axes != 1), so it cannot fold")
        return "this BatchNorm has no foldable statistics (needs 3 blobs, one bottom, one top)"
    back = _why_not_backward(g, layer, WEIGHTED_TYPES)
    fwd = _why_not_forward(g, layer)
    return f"{back}; {fwd}"


def _why_not_backward(g: Graph, layer: Layer, weighted) -> str:
    """Why it does not fold into the layer before it."""
    src = g.producer(layer, 0)
    if src is None:
        return "it reads a net input"
    prev, j = src
    readers = g.consumers(prev, j)
    if prev.type in weighted:
        if len(readers) > 1:
            others = [r.name for r, _ in readers if r is not layer]
            return (f"not into {prev.type} '{prev.name}': its output is also read by "
                    f"{', '.join(others)}")
        return f"not into {prev.type} '{prev.name}': channel counts differ"
    if prev.type in AFFINE_TYPES:
        return f"follows {prev.type} '{prev.name}', which is itself unfused"
    return f"not into the previous layer: {prev.type} '{prev.name}' is not a Convolution/Deconvolution/InnerProduct"


def _why_not_forward(g: Graph, layer: Layer) -> str:
    """Why it does not fold into the convolution after it."""
    readers = g.consumers(layer, 0)
    if not readers:
        return "nothing reads its output"
    if len(readers) > 1:
        return f"not into the next layer: its output is read by {len(readers)} layers"
    nxt = readers[0][0]
    if nxt.type in AFFINE_TYPES:
        return f"feeds {nxt.type} '{nxt.name}'"
    if nxt.type != "Convolution":
        return f"not into the next layer: {nxt.type} '{nxt.name}' is not a Convolution"
    cp = nxt.params.convolution_param
    if any(p != 0 for p in cp.pad) or cp.pad_h or cp.pad_w:
        return (f"not into Convolution '{nxt.name}': it pads its input, so the fold would not be "
                "exact at the borders")
    return f"not into Convolution '{nxt.name}': its input channels do not match"
