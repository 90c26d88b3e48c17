"""A tiny quantized graph built by hand, following the passes/emitters contract.

Used by the emitter and layer tests so they do not depend on the pass pipeline:
Input -> Convolution (group 2) -> ReLU -> Deconvolution (group 2) -> ReLU
-> AVE Pooling -> InnerProduct, with conv1, deconv1, pool1 and fc1 quantized.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Graph, Layer
from amct.ir.random import random_weights
from amct.quant import LayerQuant, arq_weights, quantize_bias
from amct.quant.ifmr import ifmr_factors
from amct.runtime import compile as compile_graph

QUANTIZED = ("conv1", "deconv1", "pool1", "fc1")


def float_graph(seed: int = 0) -> Graph:
    data = Layer("data", "Input", [], ["data"])
    data.params.input_param.shape.add().dim.extend([2, 4, 7, 7])
    conv = Layer("conv1", "Convolution", ["data"], ["conv1"])
    cp = conv.params.convolution_param
    cp.num_output, cp.group = 6, 2
    cp.kernel_size.append(3)
    cp.pad.append(1)
    relu1 = Layer("relu1", "ReLU", ["conv1"], ["conv1"])
    deconv = Layer("deconv1", "Deconvolution", ["conv1"], ["deconv1"])
    dp = deconv.params.convolution_param
    dp.num_output, dp.group = 4, 2
    dp.kernel_size.append(2)
    dp.stride.append(2)
    relu2 = Layer("relu2", "ReLU", ["deconv1"], ["deconv1"])
    pool = Layer("pool1", "Pooling", ["deconv1"], ["pool1"])
    pp = pool.params.pooling_param
    pp.pool = pp.AVE
    pp.kernel_size, pp.stride = 3, 2
    fc = Layer("fc1", "InnerProduct", ["pool1"], ["fc1"])
    fc.params.inner_product_param.num_output = 5
    g = Graph("tiny", [data, conv, relu1, deconv, relu2, pool, fc])
    random_weights(g, seed)
    # Larger biases make the int32 bias path visible.
    for layer in (g.layer("conv1"), g.layer("fc1")):
        layer.blobs[1] = (layer.blobs[1] * 10).astype(np.float32)
    g.declared_outputs = ["fc1"]
    return g


def calibration_inputs(g: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """The float input of every quantized layer for input ``x``."""
    seen: dict[str, np.ndarray] = {}
    names = set(QUANTIZED)

    def grab(layer, j, blob, vid, arr):
        for c, _ in g.consumers(layer, j):
            if c.name in names and c.name not in seen:
                seen[c.name] = np.array(arr)
    prog = compile_graph(g, {"data": x.shape})
    prog.run({"data": x}, observers=[grab])
    return seen


def quantize_by_hand(g: Graph, x: np.ndarray, with_offset: bool = True) -> Graph:
    """Mark, quantize and insert Quant/DeQuant exactly as the contract says."""
    inputs = calibration_inputs(g, x)
    for name in QUANTIZED:
        layer = g.layer(name)
        scale_d, offset_d = ifmr_factors(inputs[name], with_offset)
        if layer.type == "Pooling":
            scale_w, w_q, bias_q, cw = np.ones(1, np.float32), None, None, False
        else:
            cw = layer.type != "InnerProduct"
            group = layer.params.convolution_param.group if cw else 1
            scale_w, w_q = arq_weights(layer.blobs[0], cw, layer.type, group)
        deq = (np.float32(scale_d) * scale_w).astype(np.float32)
        if w_q is not None:
            bias_q = quantize_bias(layer.blobs[1], deq, name)
        q = LayerQuant(scale_d=scale_d, offset_d=offset_d, scale_w=scale_w, w_q=w_q,
                       bias_q=bias_q, deq_scale=deq, channel_wise=cw, act_algo="ifmr",
                       fused_from=[name], quant_layer=f"{name}_quant_layer",
                       dequant_layer=f"{name}_dequant_layer")
        layer.meta["quant"] = q
        ql = Layer(q.quant_layer, "Quant", [layer.bottoms[0]], [q.quant_layer])
        qp = ql.params.quant_param
        qp.with_offset = with_offset
        qp.scale = 1.0 / scale_d
        qp.offset = bytes([offset_d & 0xFF])
        qp.object_layer = name
        g.add_layer(ql, before=layer)
        layer.bottoms[0] = q.quant_layer
        top = layer.tops[0]
        dq = Layer(q.dequant_layer, "DeQuant", [top], [top],
                   [deq, np.zeros(deq.size, np.float32), np.zeros(deq.size, np.float32)])
        dp = dq.params.dequant_param
        dp.channel_wise, dp.object_layer, dp.layer_type = cw, name, layer.type
        g.add_layer(dq, after=layer)
    return g


def tiny_qgraph(seed: int = 0, with_offset: bool = True) -> tuple[Graph, Graph, np.ndarray]:
    """(float graph, quantized graph, calibration input)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    fg = float_graph(seed)
    qg = quantize_by_hand(float_graph(seed), x, with_offset)
    return fg, qg, x
