"""Small hand-built graphs shared by the pass tests (no tests of its own)."""
from __future__ import annotations

import numpy as np

from amct.ir import Graph, Layer
from amct.proto import caffe_pb2


def f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def inp(name: str, shape) -> Layer:
    layer = Layer(name, "Input", [], [name])
    layer.params.input_param.shape.add().dim.extend(shape)
    return layer


def conv(name, bottom, top, w, b=None, *, kind="Convolution", pad=0, stride=1, group=1) -> Layer:
    w = f32(w)
    blobs = [w] if b is None else [w, f32(b)]
    layer = Layer(name, kind, [bottom], [top], blobs)
    cp = layer.params.convolution_param
    cp.num_output = w.shape[1] * group if kind == "Deconvolution" else w.shape[0]
    cp.kernel_size.append(w.shape[2])
    cp.bias_term = b is not None
    if pad:
        cp.pad.append(pad)
    if stride != 1:
        cp.stride.append(stride)
    if group != 1:
        cp.group = group
    return layer


def ip(name, bottom, top, w, b=None) -> Layer:
    w = f32(w)
    layer = Layer(name, "InnerProduct", [bottom], [top], [w] if b is None else [w, f32(b)])
    layer.params.inner_product_param.num_output = w.shape[0]
    layer.params.inner_product_param.bias_term = b is not None
    return layer


def bn(name, bottom, top, mean_f, var_f, f, eps=None) -> Layer:
    layer = Layer(name, "BatchNorm", [bottom], [top], [f32(mean_f), f32(var_f), f32([f])])
    if eps is not None:
        layer.params.batch_norm_param.eps = eps
    return layer


def scale(name, bottom, top, gamma, beta=None) -> Layer:
    layer = Layer(name, "Scale", [bottom], [top],
                  [f32(gamma)] if beta is None else [f32(gamma), f32(beta)])
    layer.params.scale_param.bias_term = beta is not None
    return layer


def relu(name, bottom, top) -> Layer:
    return Layer(name, "ReLU", [bottom], [top])


def ave_pool(name, bottom, top, k=2, s=2) -> Layer:
    layer = Layer(name, "Pooling", [bottom], [top])
    pp = layer.params.pooling_param
    pp.pool = caffe_pb2.PoolingParameter.AVE
    pp.kernel_size, pp.stride = k, s
    return layer


def graph(*layers: Layer) -> Graph:
    g = Graph("test", list(layers))
    g.declared_outputs = g.outputs
    return g


def run(g: Graph, **inputs) -> dict:
    from amct.runtime import run as rt_run
    return rt_run(g, {k: f32(v) for k, v in inputs.items()})


# The 2-channel example of the BN fold, computed by hand in the tests:
# conv w = [[1,2],[3,4]] (1x1), b = [0.5,-1]; BN stored [mean·f, var·f, f] = [[2,4],[6,16],2]
# so mean = [1,2], var = [3,8]; eps = 1 -> sqrt(var+eps) = [2,3]; Scale γ = [4,3], β = [1,-2]
# -> a = γ/sqrt(var+eps) = [2,1]; w' = [[2,4],[3,4]]; b' = (b-mean)·a+β = [0,-5].
W2 = [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]
B2 = [0.5, -1.0]
BN2 = ([2.0, 4.0], [6.0, 16.0], 2.0)
GAMMA2, BETA2 = [4.0, 3.0], [1.0, -2.0]
W2_FUSED = [[[[2.0]], [[4.0]]], [[[3.0]], [[4.0]]]]
B2_FUSED = [0.0, -5.0]


def conv_bn_scale(in_place: bool) -> Graph:
    if in_place:
        return graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2),
                     bn("bn", "c", "c", *BN2, eps=1.0), scale("sc", "c", "c", GAMMA2, BETA2),
                     relu("relu", "c", "c"))
    return graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2),
                 bn("bn", "c", "b", *BN2, eps=1.0), scale("sc", "b", "s", GAMMA2, BETA2),
                 relu("relu", "s", "r"))
