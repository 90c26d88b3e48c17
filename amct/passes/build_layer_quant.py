"""Combine the record's activation factors with the weight factors into ``LayerQuant``.

For each marked layer: scale_d/offset_d from the record (calibration or a
user-written record), scale_w/w_q from quantize_weights, and
``deq_scale = scale_d · scale_w`` (float32; Pooling: scale_w = [1], so
deq_scale = scale_d, SPEC §5.1).  Missing factors are reported for all layers
at once, before anything is written.  deq_scale stays a float here: packing it
into uint64 (SPEC §4.5) is a detail of the deploy file, done by the emitter.
"""
from __future__ import annotations

import numpy as np

from amct.errors import RecordError
from amct.ir import Graph
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.quantizable import WEIGHTED_TYPES
from amct.passes.registry import register_pass
from amct.quant.info import LayerQuant


def missing_factors(graph: Graph, record: dict) -> list[str]:
    """Marked layers whose record lacks scale_d/offset_d (or scale_w when weighted)."""
    out = []
    for layer in graph.layers:
        if "quant_config" not in layer.meta:
            continue
        rec = record.get(layer.name)
        if rec is None or not rec.has_activation or (layer.type in WEIGHTED_TYPES
                                                      and not rec.has_weights):
            out.append(layer.name)
    return out


@register_pass
class BuildLayerQuant(Pass):
    """``layer.meta["quant"] = LayerQuant(...)`` for every marked layer (bias_q: see quantize_bias)."""

    name = "build_layer_quant"
    requires = ("mark_quant_layers", "quantize_weights")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        missing = missing_factors(graph, ctx.record)
        if missing:
            where = ctx.record_path or "the record"
            raise RecordError(f"{where}: no complete scale_d/offset_d/scale_w for layer(s) "
                              f"{', '.join(missing)}: did calibration run batch_num forward passes?")
        n = 0
        for layer in graph.layers:
            cfg = layer.meta.get("quant_config")
            if cfg is None:
                continue
            rec = ctx.record[layer.name]
            scale_d = float(np.float32(rec.scale_d))
            if layer.type in WEIGHTED_TYPES:
                scale_w, w_q = layer.meta["scale_w"], layer.meta["w_q"]
                channel_wise = bool(cfg.channel_wise)
            else:
                scale_w, w_q, channel_wise = np.ones(1, np.float32), None, False
            layer.meta["quant"] = LayerQuant(
                scale_d=scale_d, offset_d=int(rec.offset_d), scale_w=scale_w, w_q=w_q,
                bias_q=None, deq_scale=(np.float32(scale_d) * scale_w).astype(np.float32),
                channel_wise=channel_wise, act_algo=cfg.act_algo,
                fused_from=list(layer.meta.get("fused_from", [layer.name])),
                quant_layer=f"{layer.name}_quant_layer", dequant_layer=f"{layer.name}_dequant_layer")
            n += 1
        return PassResult(n > 0, {"layers": n})
