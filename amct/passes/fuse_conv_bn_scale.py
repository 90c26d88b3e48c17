"""Fold BatchNorm and/or Scale that follow a Convolution/Deconvolution/InnerProduct.

SPEC §5.2: with a = γ/√(var+eps), w' = w·a per output channel and
b' = (b − mean)·a + β.  The chain is fused only when each intermediate blob
has exactly one reader (otherwise some other layer needs the unfolded value);
works for in-place (ResNet-style) and separate-blob chains.  The fused layer
keeps its name and takes the chain's last blob name, so the rest of the net is
untouched.  A layer without bias gains one.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Graph, Layer
from amct.passes.affine import compose, layer_affine
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.quantizable import WEIGHTED_TYPES, output_channels, scale_output_channels
from amct.passes.registry import register_pass


def _chain(graph: Graph, layer: Layer, skip: set[str]) -> list[Layer]:
    """The BatchNorm?, Scale? layers that can fold into ``layer``, in order."""
    chain: list[Layer] = []
    cur, channels = layer, output_channels(layer)
    for want in ("BatchNorm", "Scale"):
        readers = graph.consumers(cur, 0)
        if len(readers) != 1 or readers[0][0].type != want:
            continue
        nxt = readers[0][0]
        aff = layer_affine(nxt)
        if nxt.name in skip or aff is None or aff[0].size != channels:
            break
        chain.append(nxt)
        cur = nxt
    return chain


def set_bias_term(layer: Layer) -> None:
    """Mark ``layer`` as having a bias (its param message differs by type)."""
    if layer.type == "InnerProduct":
        layer.params.inner_product_param.bias_term = True
    else:
        layer.params.convolution_param.bias_term = True


def has_bias(layer: Layer) -> bool:
    return len(layer.blobs) > 1


@register_pass
class FuseConvBnScale(Pass):
    """Conv/Deconv/InnerProduct + BatchNorm? + Scale? -> one layer with folded weights."""

    name = "fuse_conv_bn_scale"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not ctx.do_fusion:
            return PassResult(False, {"fused": 0})
        skip = set(ctx.skip_fusion_layers)
        fused = 0
        for layer in graph.layers:
            if layer.type not in WEIGHTED_TYPES or not layer.blobs or len(layer.tops) != 1 \
                    or layer.name in skip:
                continue
            chain = _chain(graph, layer, skip)
            if not chain:
                continue
            mul, add = layer_affine(chain[0])
            for x in chain[1:]:
                mul, add = compose((mul, add), layer_affine(x))
            w = layer.blobs[0]
            b = (np.asarray(layer.blobs[1], np.float64).reshape(-1) if has_bias(layer)
                 else np.zeros(mul.size))
            layer.blobs = [scale_output_channels(w, mul, layer), (b * mul + add).astype(np.float32)]
            set_bias_term(layer)
            for x in chain:
                graph.bypass(x)
            ctx.record_fusion("conv_bn_scale", layer, chain)
            fused += 1
        return PassResult(fused > 0, {"fused": fused})
