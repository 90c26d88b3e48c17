"""Select the layers to quantize: ``ctx.quant_layers`` -> ``layer.meta["quant_config"]``.

Every later quantization pass works on the marked layers only, so the choice
(from the config, or from the record keys in convert_model) is made and
checked once.  The per-layer config stored has ``asymmetric`` resolved against
the global ``activation_offset``.
"""
from __future__ import annotations

import attrs

from amct.errors import ConfigError, RecordError
from amct.ir import Graph
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.quantizable import not_quantizable_reason
from amct.passes.registry import register_pass


@register_pass
class MarkQuantLayers(Pass):
    """Attach each selected layer's ``LayerQuantConfig``; reject unknown or unquantizable ones."""

    name = "mark_quant_layers"
    runs_after = ("fuse_conv_bn_scale", "fold_bn_scale_into_next_conv")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        # Imported here: amct.config uses amct.passes.quantizable (import cycle).
        from amct.config import default_layer_config

        err = ConfigError if ctx.config is not None else RecordError
        source = "the config" if ctx.config is not None else "the record"
        where = f"{ctx.record_path}: " if ctx.config is None and ctx.record_path else ""
        wanted = list(dict.fromkeys(ctx.quant_layers))
        for name in wanted:
            layer = graph.find(name)
            if layer is None:
                raise err(f"{where}layer '{name}' from {source} is not in the (fused) model")
            reason = not_quantizable_reason(layer)
            if reason is not None:
                raise err(f"{where}layer '{name}' from {source} cannot be quantized: {reason}")
        chosen = set(wanted)
        for layer in graph.layers:
            if layer.name not in chosen:
                continue
            if ctx.config is not None and layer.name in ctx.config.layers:
                c = attrs.evolve(ctx.config.layers[layer.name], asymmetric=ctx.config.with_offset(layer.name))
            else:
                c = attrs.evolve(default_layer_config(layer.type), asymmetric=True)
            layer.meta["quant_config"] = c
        return PassResult(bool(wanted), {"layers": len(wanted)})
