"""Fold a BatchNorm/Scale chain that *precedes* a Convolution into that conv.

conv(mul·x + add) = conv'(x) with W'[o,i] = W[o,i]·mul[i] and
b'[o] = b[o] + Σ_{i,k} W[o,i,k]·add[i].  This is exact only when the conv has
no padding (padded zeros would otherwise become ``add`` before the conv and
stay 0 after folding), so padded convs are left alone; and only when the conv
is the chain output's single reader.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Graph, Layer
from amct.passes.affine import compose, layer_affine
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.fuse_conv_bn_scale import set_bias_term
from amct.passes.registry import register_pass


def _padded(conv: Layer) -> bool:
    cp = conv.params.convolution_param
    return any(p != 0 for p in cp.pad) or cp.pad_h != 0 or cp.pad_w != 0


def _chain_before(graph: Graph, conv: Layer, skip: set[str]) -> list[Layer]:
    """[BatchNorm?, Scale?] feeding ``conv`` through single-reader blobs."""
    chain: list[Layer] = []
    cur = conv
    for want in ("Scale", "BatchNorm"):
        src = graph.producer(cur, 0)
        if src is None or src[0].type != want:
            continue
        prev = src[0]
        if (len(graph.consumers(prev, 0)) != 1 or prev.name in skip
                or layer_affine(prev) is None):
            break
        chain.insert(0, prev)
        cur = prev
    return chain


def _input_is_stable(graph: Graph, chain: list[Layer], conv: Layer) -> bool:
    """After removing the chain, the conv must read the value the chain read."""
    layers = graph.layers
    src = chain[0].bottoms[0]
    lo, hi = graph.index(chain[0]), graph.index(conv)
    return not any(src in x.tops for x in layers[lo + 1:hi] if all(x is not c for c in chain))


@register_pass
class FoldBnScaleIntoNextConv(Pass):
    """BatchNorm? + Scale? -> Convolution (no padding) folded into the conv."""

    name = "fold_bn_scale_into_next_conv"
    runs_after = ("fuse_conv_bn_scale",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if not ctx.do_fusion:
            return PassResult(False, {"folded": 0})
        skip = set(ctx.skip_fusion_layers)
        folded = 0
        for conv in graph.layers:
            cp = conv.params.convolution_param
            if (conv.type != "Convolution" or not conv.blobs or conv.blobs[0].ndim != 4
                    or len(conv.bottoms) != 1 or cp.axis != 1 or _padded(conv) or conv.name in skip):
                continue
            chain = _chain_before(graph, conv, skip)
            if not chain or not _input_is_stable(graph, chain, conv):
                continue
            mul, add = layer_affine(chain[0])
            for x in chain[1:]:
                mul, add = compose((mul, add), layer_affine(x))
            w = conv.blobs[0]
            g = int(cp.group)
            cout, cin_g = w.shape[0], w.shape[1]
            if mul.size != cin_g * g:
                continue
            wv = w.astype(np.float64).reshape(g, cout // g, cin_g, -1)
            mul_v, add_v = mul.reshape(g, 1, cin_g, 1), add.reshape(g, 1, cin_g, 1)
            b = (np.asarray(conv.blobs[1], np.float64).reshape(-1) if len(conv.blobs) > 1
                 else np.zeros(cout))
            b = b + (wv * add_v).sum(axis=(2, 3)).reshape(cout)
            conv.blobs = [(wv * mul_v).reshape(w.shape).astype(np.float32), b.astype(np.float32)]
            set_bias_term(conv)
            conv.bottoms[0] = chain[0].bottoms[0]
            for x in chain:
                graph.remove_layer(x)
            ctx.record_fusion("bn_scale_conv", conv, chain)
            folded += 1
        return PassResult(folded > 0, {"folded": folded})
