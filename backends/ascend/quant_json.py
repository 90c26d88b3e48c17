"""quant.json: the quantization information file (SPEC §6.5, schema in docs/formats.md).

Schema version 1::

    {"version": 1,
     "layers": {<deploy layer name>: {"type", "original_layers", "quant_layer",
                "dequant_layer", "scale_d", "offset_d", "scale_w", "channel_wise",
                "act_algo", "weight_algo"}, ...},      # execution order
     "fusions": [{"kind", "target", "merged"}, ...]}    # order performed

Floats are written in their shortest float32 form, so a reader casting back to
float32 gets the exact values the models use.  Key order is fixed.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from amct.ir import Graph
from amct.backends.ascend._qgraph import WEIGHTED_TYPES, quantized_layers

SCHEMA_VERSION = 1


def _f32(v: float) -> float:
    return float(str(np.float32(v)))


def _fusion_dict(f: Any) -> dict[str, Any]:
    get = f.get if isinstance(f, dict) else (lambda k: getattr(f, k))
    return {"kind": str(get("kind")), "target": str(get("target")),
            "merged": [str(x) for x in get("merged")]}


def quant_info(qgraph: Graph, fusions: Iterable[Any] = ()) -> dict[str, Any]:
    """The quant.json content for ``qgraph`` and the fusions performed."""
    layers: dict[str, Any] = {}
    for layer, q in quantized_layers(qgraph):
        weighted = layer.type in WEIGHTED_TYPES
        layers[layer.name] = {
            "type": layer.type,
            "original_layers": list(q.fused_from) or [layer.name],
            "quant_layer": q.quant_layer,
            "dequant_layer": q.dequant_layer,
            "scale_d": _f32(q.scale_d),
            "offset_d": int(q.offset_d),
            "scale_w": [_f32(v) for v in np.asarray(q.scale_w).reshape(-1)] if weighted else None,
            "channel_wise": bool(q.channel_wise),
            "act_algo": q.act_algo,
            "weight_algo": "arq" if weighted else None,
        }
    return {"version": SCHEMA_VERSION, "layers": layers,
            "fusions": [_fusion_dict(f) for f in fusions]}


def quant_json_text(qgraph: Graph, fusions: Iterable[Any] = ()) -> str:
    return json.dumps(quant_info(qgraph, fusions), indent=4, ensure_ascii=False) + "\n"
