"""Depthwise-fed layers: quantized layers whose input a depthwise convolution produced.

Not a pass: a graph query used by the default config builder (the "depthwise
rule", docs/api.md).  A depthwise convolution computes every output channel
from one input channel, so nothing mixes the channels afterwards: each keeps
its own range, and the top of the tensor's distribution belongs to a few
whole channels rather than to scattered outliers.  Clipping such a tensor
below its maximum cuts those channels wherever they are strongly active: an
error of one sign, repeated at every such position of the feature map, that
the next layer passes on as a bias (rounding noise, by contrast, has zero
mean).  IFMR's mean-squared error over the flattened tensor sees only a
handful of values and clips anyway (UltraFace slim-320, conv "191": the clip
at 0.80 of the maximum saturates one channel of 16 and costs 0.0014 of the
boxes' cosine to fp32; docs/benchmarks_ort.md).
"""
from __future__ import annotations

from typing import Iterable

from amct.ir import Graph, Layer

#: Layers that act on each channel on its own, so a depthwise conv's channel
#: structure passes through them (BatchNorm/Scale/Bias are folded into the
#: conv before quantization anyway; Pooling, max or average, stays within a
#: channel).
CHANNELWISE_TYPES = frozenset({
    "ReLU", "ReLU6", "PReLU", "ELU", "Clip", "Sigmoid", "TanH", "AbsVal", "BNLL", "Swish",
    "BatchNorm", "Scale", "Bias", "Split", "Dropout", "Pooling",
})


def is_depthwise(layer: Layer) -> bool:
    """A Convolution whose every group reads exactly one input channel."""
    if layer.type != "Convolution":
        return False
    group = layer.param("convolution_param").group
    if group <= 1:
        return False
    if layer.blobs and layer.blobs[0].ndim == 4:
        return layer.blobs[0].shape[1] == 1          # Caffe filters: [Cout, Cin/group, kh, kw]
    return group == layer.param("convolution_param").num_output


def depthwise_fed_layers(graph: Graph, quantized: Iterable[str]) -> list[str]:
    """Names of the layers among ``quantized`` whose (first) input comes from a
    depthwise convolution through channel-wise layers only, in execution order."""
    flow = graph.dataflow()
    qset = set(quantized)
    found = []
    for layer in graph.layers:
        if layer.name not in qset or not flow.inputs.get(id(layer)):
            continue
        vid = flow.inputs[id(layer)][0]
        seen = 0
        while vid in flow.producer and seen < len(graph.layers):
            src = flow.producer[vid][0]
            if is_depthwise(src):
                found.append(layer.name)
                break
            if src.type not in CHANNELWISE_TYPES or not flow.inputs.get(id(src)):
                break
            vid = flow.inputs[id(src)][0]
            seen += 1
    return found
