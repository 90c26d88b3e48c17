"""ARQ weight quantization of the marked layers (SPEC §4.2) -> record scale_w/offset_w.

Per output channel for Convolution/Deconvolution (incl. grouped and
depthwise) when channel_wise, per tensor otherwise (always for InnerProduct).
The layer keeps its float weights; the integer weights and scales go to
``layer.meta["scale_w"]`` / ``layer.meta["w_q"]`` for the later passes.
With ``ctx.weights_from_record`` (convert_model) the record's scale_w is used
instead of searching one.  Pooling has no weights and gets no scale_w.
"""
from __future__ import annotations

import numpy as np

from amct.errors import RecordError
from amct.ir import Graph, Layer
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.quantizable import WEIGHTED_TYPES, group_count, output_channels
from amct.passes.registry import register_pass
from amct.quant.arq import arq_weights, channel_scale_view
from amct.quant.record import LayerRecord
from amct.quant.rounding import round_half_away


def _with_record_scale(layer: Layer, scale_w: np.ndarray, where: str = "") -> np.ndarray:
    """int8 weights of ``layer`` for a given scale (ARQ's rounding and clamp)."""
    w = layer.blobs[0]
    c = output_channels(layer)
    if scale_w.size not in (1, c):
        raise RecordError(f"{where}record '{layer.name}': scale_w has {scale_w.size} values, "
                          f"expected 1 or {c} (output channels)")
    view = channel_scale_view(scale_w, w.shape, layer.type, group_count(layer)).astype(np.float64)
    return np.clip(round_half_away(w.astype(np.float64) / view), -128, 127).astype(np.int8)


@register_pass
class QuantizeWeights(Pass):
    """scale_w, w_q for every marked Convolution/Deconvolution/InnerProduct."""

    name = "quantize_weights"
    requires = ("mark_quant_layers",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        done = 0
        for layer in graph.layers:
            cfg = layer.meta.get("quant_config")
            if cfg is None or layer.type not in WEIGHTED_TYPES:
                continue
            rec = ctx.record.get(layer.name) or LayerRecord()
            if ctx.weights_from_record and rec.has_weights:
                scale_w = rec.scale_w.astype(np.float32)
                w_q = _with_record_scale(layer, scale_w,
                                         f"{ctx.record_path}: " if ctx.record_path else "")
                layer.meta["quant_config"].channel_wise = scale_w.size > 1
            else:
                scale_w, w_q = arq_weights(layer.blobs[0], bool(cfg.channel_wise), layer.type,
                                           group_count(layer))
            layer.meta["scale_w"], layer.meta["w_q"] = scale_w, w_q
            rec.scale_w, rec.offset_w = scale_w, np.zeros(scale_w.size, np.int32)
            ctx.record[layer.name] = rec
            done += 1
        return PassResult(done > 0, {"layers": done})
