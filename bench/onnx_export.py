"""Export an fp32 ``amct.ir.Graph`` to ONNX, for side-by-side runs in ONNX Runtime.

Bench-only (needs ``onnx``; ``onnxruntime`` to verify)::

    python bench/onnx_export.py MODEL.prototxt WEIGHTS.caffemodel OUT.onnx
                                [--shape data=1,3,49,61] [--check]

The exported model reproduces the project's runtime (Caffe semantics) to
float rounding; ``--check`` runs both on random input and prints the largest
difference.  Shapes are static except the batch axis (symbolic ``N``)
because Caffe's ceil-mode pooling needs explicit per-size padding.

Layer types: Input, Convolution, Deconvolution, InnerProduct, Pooling
(MAX/AVE/global, ceil and floor rounding), ReLU (leaky), PReLU, Sigmoid,
TanH, Softmax, Concat, Slice, Split, Permute, Reshape, Flatten, Eltwise,
BatchNorm, Scale, Bias, Dropout.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from amct.errors import AmctError
from amct.ir.graph import Graph, blob_of
from amct.layers.convolution import conv_spec
from amct.layers.pooling import pool_geometry
# The layer modules' own Caffe-rule helpers, so the export reads every
# parameter exactly as the runtime does.
from amct.layers.shape_ops import _concat_axis, _crop_geometry, _permute_order, _slice_bounds
from amct.layers.normalization import _affine_geometry
from amct.layers._common import canonical_axis
from amct.proto import caffe_pb2

OPSET = 17
BATCH = "N"


class ExportError(AmctError):
    """A layer type or parameter the ONNX export does not cover."""


class _Emitter:
    """Collects the nodes and initializers of the model being built."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple]):
        self.graph = graph
        self.shapes = shapes                    # value id -> static shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}#{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, ins: list[str], outs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, ins, outs, name=self.fresh(name), **attrs))


# A converter: (emitter, layer, input names, output names, input shapes, output shapes).
Converter = Callable[[_Emitter, object, list, list, list, list], None]
CONVERTERS: dict[str, Converter] = {}


def converts(*types: str):
    def deco(fn: Converter) -> Converter:
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return deco


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# ------------------------------------------------------------------ conv / IP
@converts("Convolution", "Deconvolution")
def _conv(em, layer, ins, outs, in_shapes, out_shapes):
    spec = conv_spec(layer, in_shapes[0])
    if spec.axis != 1:
        raise ExportError(f"layer '{layer.name}': channel axis {spec.axis} (ONNX needs 1)")
    # Caffe and ONNX share the weight layouts: Conv (M, C/g, k...), ConvTranspose (C, M/g, k...).
    w = em.const(f"{layer.name}/w", _f32(layer.blobs[0]))
    args = [ins[0], w]
    if spec.bias_term:
        args.append(em.const(f"{layer.name}/b", _f32(layer.blobs[1]).ravel()))
    op = "Conv" if layer.type == "Convolution" else "ConvTranspose"
    em.node(op, args, outs, layer.name, kernel_shape=list(spec.kernel), strides=list(spec.stride),
            pads=list(spec.pad) * 2, dilations=list(spec.dilation), group=spec.group)


@converts("InnerProduct")
def _inner_product(em, layer, ins, outs, in_shapes, out_shapes):
    p = layer.param("inner_product_param")
    axis = canonical_axis(layer, p.axis, len(in_shapes[0]))
    flat = em.fresh(f"{layer.name}/flat")
    em.node("Flatten", [ins[0]], [flat], layer.name, axis=axis)
    args = [flat, em.const(f"{layer.name}/w", _f32(layer.blobs[0]))]
    if p.bias_term:
        args.append(em.const(f"{layer.name}/b", _f32(layer.blobs[1]).ravel()))
    if axis == 1:
        em.node("Gemm", args, outs, layer.name, transB=0 if p.transpose else 1)
        return
    # Caffe keeps the axes before `axis`; the leading one stays dynamic (-1).
    gemm = em.fresh(f"{layer.name}/gemm")
    em.node("Gemm", args, [gemm], layer.name, transB=0 if p.transpose else 1)
    target = [-1] + list(out_shapes[0][1:])
    em.node("Reshape", [gemm, em.const(f"{layer.name}/shape", np.array(target, np.int64))], outs,
            layer.name)


# ------------------------------------------------------------------ pooling
def _end_fit(em, layer, x: str, extent: list[int], need: list[int]) -> tuple[str, list[int]]:
    """Crop the spatial axes of ``x`` (sizes ``extent``) that reach past what
    the last window reads (``need``); return the cropped name and the end
    padding still missing on each axis."""
    crop = [min(e, n) for e, n in zip(extent, need)]
    if crop != extent:
        cut = em.fresh(f"{layer.name}/crop")
        em.node("Slice", [x, em.const("zeros", np.zeros(2, np.int64)),
                          em.const("ends", np.array(crop, np.int64)),
                          em.const("axes", np.array([2, 3], np.int64))], [cut], layer.name)
        x = cut
    return x, [max(n - e, 0) for e, n in zip(extent, need)]


@converts("Pooling")
def _pooling(em, layer, ins, outs, in_shapes, out_shapes):
    PP = caffe_pb2.PoolingParameter
    pool = layer.param("pooling_param").pool
    win, oh, ow = pool_geometry(layer, in_shapes[0])
    h, w = in_shapes[0][2:]
    if win.kh == h and win.kw == w and oh == ow == 1 and not (win.ph or win.pw):
        op = {PP.MAX: "GlobalMaxPool", PP.AVE: "GlobalAveragePool"}.get(pool)
        if op is None:
            raise ExportError(f"layer '{layer.name}': pooling method {pool} has no ONNX op")
        em.node(op, ins, outs, layer.name)
        return
    k, s, p = [win.kh, win.kw], [win.sh, win.sw], [win.ph, win.pw]
    # Caffe's output size (ceil rounding, last window inside the image or its
    # start padding) is fixed by explicit end padding or cropping, so ONNX
    # runs in floor mode and never re-derives the size.
    reach = [(o - 1) * st + kk for o, st, kk in zip((oh, ow), s, k)]
    if pool == PP.MAX:
        # MaxPool ignores padded cells, as Caffe's window clipped to the image.
        x, end = _end_fit(em, layer, ins[0], [h, w], [r - pp for r, pp in zip(reach, p)])
        em.node("MaxPool", [x], outs, layer.name, kernel_shape=k, strides=s, pads=p + end)
    elif pool == PP.AVE:
        # Caffe divides by the window clipped to [-pad, in + pad): zero-pad by
        # `pad` for real, then let AveragePool exclude only the ceil overhang.
        x = ins[0]
        if p[0] or p[1]:
            padded = em.fresh(f"{layer.name}/pad")
            em.node("Pad", [x, em.const("pads", np.array([0, 0] + p + [0, 0] + p, np.int64))],
                    [padded], layer.name)
            x = padded
        x, end = _end_fit(em, layer, x, [h + 2 * p[0], w + 2 * p[1]], reach)
        em.node("AveragePool", [x], outs, layer.name, kernel_shape=k, strides=s,
                pads=[0, 0] + end, count_include_pad=0)
    else:
        raise ExportError(f"layer '{layer.name}': pooling method {pool} has no ONNX op")


# ------------------------------------------------------------------ activations
@converts("ReLU")
def _relu(em, layer, ins, outs, in_shapes, out_shapes):
    slope = float(layer.param("relu_param").negative_slope)
    if slope:
        em.node("LeakyRelu", ins, outs, layer.name, alpha=slope)
    else:
        em.node("Relu", ins, outs, layer.name)


@converts("PReLU")
def _prelu(em, layer, ins, outs, in_shapes, out_shapes):
    a = _f32(layer.blobs[0])
    nd = len(in_shapes[0])
    # ONNX PRelu broadcasts numpy-style from the right: the slope needs (C, 1, ...).
    a = a.reshape((1,) if layer.param("prelu_param").channel_shared else (-1,) + (1,) * (nd - 2))
    em.node("PRelu", [ins[0], em.const(f"{layer.name}/slope", a)], outs, layer.name)


@converts("Sigmoid", "TanH")
def _unary(em, layer, ins, outs, in_shapes, out_shapes):
    em.node({"Sigmoid": "Sigmoid", "TanH": "Tanh"}[layer.type], ins, outs, layer.name)


@converts("Softmax")
def _softmax(em, layer, ins, outs, in_shapes, out_shapes):
    axis = canonical_axis(layer, layer.param("softmax_param").axis, len(in_shapes[0]))
    em.node("Softmax", ins, outs, layer.name, axis=axis)   # opset >= 13: one axis


@converts("LRN")
def _lrn(em, layer, ins, outs, in_shapes, out_shapes):
    p = layer.param("lrn_param")
    if p.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        raise ExportError(f"layer '{layer.name}': LRN WITHIN_CHANNEL has no ONNX operator")
    # ONNX LRN is Caffe's ACROSS_CHANNELS form: x / (bias + alpha/size * window sum)^beta.
    em.node("LRN", ins, outs, layer.name, size=int(p.local_size), alpha=float(p.alpha),
            beta=float(p.beta), bias=float(p.k))


@converts("Dropout", "Split")
def _identity(em, layer, ins, outs, in_shapes, out_shapes):
    for o in outs:
        em.node("Identity", [ins[0]], [o], layer.name)


# ------------------------------------------------------------------ shape ops
@converts("Concat")
def _concat(em, layer, ins, outs, in_shapes, out_shapes):
    em.node("Concat", ins, outs, layer.name, axis=_concat_axis(layer, len(in_shapes[0])))


@converts("Slice")
def _slice(em, layer, ins, outs, in_shapes, out_shapes):
    axis, bounds = _slice_bounds(layer, tuple(in_shapes[0]), len(layer.tops))
    if axis == 0:
        raise ExportError(f"layer '{layer.name}': slicing the batch axis")
    sizes = np.array([b - a for a, b in bounds], np.int64)
    em.node("Split", [ins[0], em.const(f"{layer.name}/split", sizes)], outs, layer.name, axis=axis)


@converts("Crop")
def _crop(em, layer, ins, outs, in_shapes, out_shapes):
    out, offsets = _crop_geometry(layer, in_shapes)
    axes = [i for i in range(len(out)) if out[i] != in_shapes[0][i] or offsets[i]]
    if 0 in axes:
        raise ExportError(f"layer '{layer.name}': cropping the batch axis")
    starts = np.array([offsets[i] for i in axes], np.int64)
    ends = np.array([offsets[i] + out[i] for i in axes], np.int64)
    em.node("Slice", [ins[0], em.const(f"{layer.name}/starts", starts),
                      em.const(f"{layer.name}/ends", ends),
                      em.const(f"{layer.name}/axes", np.array(axes, np.int64))], outs, layer.name)


@converts("Permute")
def _permute(em, layer, ins, outs, in_shapes, out_shapes):
    em.node("Transpose", ins, outs, layer.name, perm=_permute_order(layer, len(in_shapes[0])))


def _reshape_to(em, layer, ins, outs, target: list[int]) -> None:
    em.node("Reshape", [ins[0], em.const(f"{layer.name}/shape", np.array(target, np.int64))],
            outs, layer.name, allowzero=0)


@converts("Reshape")
def _reshape(em, layer, ins, outs, in_shapes, out_shapes):
    p = layer.param("reshape_param")
    s = tuple(in_shapes[0])
    start = p.axis if p.axis >= 0 else len(s) + p.axis + 1
    end = len(s) if p.num_axes == -1 else start + p.num_axes
    # With allowzero=0 ONNX's 0 copies the input dim at the same index, as
    # Caffe's does: axes before `start` are copied (0), Caffe's dims go in as
    # written, axes after the replaced span (never the batch) are static.
    # A literal batch dim (UltraFace writes 1, -1, 2) stays literal: with a
    # larger batch both runtimes then fold the images into axis 1 alike.
    target = [0] * start + [int(d) for d in p.shape.dim] + list(s[end:])
    _reshape_to(em, layer, ins, outs, target)


@converts("Flatten")
def _flatten(em, layer, ins, outs, in_shapes, out_shapes):
    p = layer.param("flatten_param")
    s = tuple(in_shapes[0])
    a = canonical_axis(layer, p.axis, len(s))
    e = canonical_axis(layer, p.end_axis, len(s), "end_axis")
    if a == 0:
        raise ExportError(f"layer '{layer.name}': flattening the batch axis")
    _reshape_to(em, layer, ins, outs, [0] * a + [-1] + list(s[e + 1:]))


# ------------------------------------------------------------------ arithmetic
@converts("Eltwise")
def _eltwise(em, layer, ins, outs, in_shapes, out_shapes):
    Op = caffe_pb2.EltwiseParameter
    p = layer.param("eltwise_param")
    if p.operation == Op.PROD:
        op, args = "Mul", list(ins)
    elif p.operation == Op.MAX:
        op, args = "Max", list(ins)
    else:
        op, args = "Sum", []
        coeff = list(p.coeff) or [1.0] * len(ins)
        for x, c in zip(ins, coeff):
            if c == 1:
                args.append(x)
                continue
            scaled = em.fresh(f"{layer.name}/coeff")
            em.node("Mul", [x, em.const(f"{layer.name}/c", np.float32(c))], [scaled], layer.name)
            args.append(scaled)
    if op in ("Mul",) and len(args) > 2:
        acc = args[0]
        for i, x in enumerate(args[1:], 1):
            nxt = outs[0] if i == len(args) - 1 else em.fresh(f"{layer.name}/prod")
            em.node("Mul", [acc, x], [nxt], layer.name)
            acc = nxt
        return
    em.node(op, args, outs, layer.name)


@converts("BatchNorm")
def _batch_norm(em, layer, ins, outs, in_shapes, out_shapes):
    p = layer.param("batch_norm_param")
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise ExportError(f"layer '{layer.name}': batch statistics (use_global_stats false)")
    sf = float(_f32(layer.blobs[2]).ravel()[0])
    factor = 0.0 if sf == 0 else 1.0 / sf
    mean = _f32(layer.blobs[0]).ravel() * np.float32(factor)
    var = _f32(layer.blobs[1]).ravel() * np.float32(factor)
    c = mean.size
    # Exported as BatchNormalization (gamma 1, beta 0) so ORT's optimizer folds it.
    em.node("BatchNormalization",
            [ins[0], em.const("ones", np.ones(c, np.float32)),
             em.const("zeros", np.zeros(c, np.float32)), em.const(f"{layer.name}/mean", mean), em.const(f"{layer.name}/var", var)],
            outs, layer.name, epsilon=float(p.eps))


@converts("PriorBox")
def _prior_box(em, layer, ins, outs, in_shapes, out_shapes):
    # The anchors depend only on the feature-map and image sizes, never on the
    # values: exported as the constant our kernel computes for these shapes.
    from amct.ir.registry import require_layer_def

    kernel = require_layer_def(layer).build(layer, [tuple(s) for s in in_shapes])
    (priors,) = kernel([np.zeros(s, np.float32) for s in in_shapes])
    em.node("Identity", [em.const(f"{layer.name}/priors", _f32(priors))], outs, layer.name)


@converts("Normalize")
def _normalize(em, layer, ins, outs, in_shapes, out_shapes):
    # SSD: x / sqrt(sum x^2 + eps) over C (or C, H, W when across_spatial), then a scale.
    p = layer.param("norm_param")
    nd = len(in_shapes[0])
    axes = list(range(1, nd)) if p.across_spatial else [1]
    sq, ssum, root, normed = (em.fresh(f"{layer.name}/{k}") for k in ("sq", "sum", "sqrt", "div"))
    em.node("Mul", [ins[0], ins[0]], [sq], layer.name)
    em.node("ReduceSum", [sq, em.const(f"{layer.name}/axes", np.array(axes, np.int64))], [ssum],
            layer.name, keepdims=1)
    eps = em.const(f"{layer.name}/eps", np.array(p.eps, np.float32))
    em.node("Add", [ssum, eps], [ssum + "+eps"], layer.name)
    em.node("Sqrt", [ssum + "+eps"], [root], layer.name)
    em.node("Div", [ins[0], root], [normed], layer.name)
    scale = _f32(layer.blobs[0])
    if not p.channel_shared:
        scale = scale.reshape((1, -1) + (1,) * (nd - 2))
    em.node("Mul", [normed, em.const(f"{layer.name}/scale", scale)], outs, layer.name)


@converts("Scale", "Bias")
def _affine(em, layer, ins, outs, in_shapes, out_shapes):
    field = "scale_param" if layer.type == "Scale" else "bias_param"
    p = layer.param(field)
    nd = len(in_shapes[0])
    axis, s = _affine_geometry(layer, in_shapes, p)
    view = tuple(s) + (1,) * (nd - axis - len(s))
    has_bias = layer.type == "Bias" or p.bias_term
    bias_blob = 0 if layer.type == "Bias" or len(ins) == 2 else 1
    x = ins[0]
    if layer.type == "Scale":
        if len(ins) == 2:
            g = em.fresh(f"{layer.name}/gamma")
            _reshape_to(em, layer, [ins[1]], [g], list(view))
        else:
            g = em.const(f"{layer.name}/gamma", _f32(layer.blobs[0]).reshape(view))
        scaled = em.fresh(f"{layer.name}/mul") if has_bias else outs[0]
        em.node("Mul", [x, g], [scaled], layer.name)
        x = scaled
        if not has_bias:
            return
    if layer.type == "Bias" and len(ins) == 2:
        b = em.fresh(f"{layer.name}/beta")
        _reshape_to(em, layer, [ins[1]], [b], list(view))
    else:
        b = em.const(f"{layer.name}/beta", _f32(layer.blobs[bias_blob]).reshape(view))
    em.node("Add", [x, b], outs, layer.name)


# ------------------------------------------------------------------ driver
def _tensor_names(graph: Graph) -> Callable[[str], str]:
    """ONNX tensor name of each value id: final versions keep the Caffe blob
    name (so outputs are called like the net's outputs), earlier versions of
    an in-place blob get their value id; an input blob keeps its name and its
    in-place rewrites their value ids."""
    flow = graph.dataflow()
    inputs = set(graph.inputs)

    def name(vid: str) -> str:
        b = blob_of(vid)
        if b in inputs:                 # the fed name must stay the blob's own
            return vid
        if vid == flow.final.get(b):
            return b
        return vid if vid != b else f"{b}@0"
    return name


def export_onnx(graph: Graph, input_shapes: dict[str, tuple] | None = None,
                dynamic_batch: bool = True) -> onnx.ModelProto:
    """The ONNX model computing ``graph`` (fp32) for ``input_shapes``
    (default: the declared ones); the batch axis is symbolic when
    ``dynamic_batch``."""
    shapes = graph.infer_value_shapes(input_shapes)
    flow = graph.dataflow()
    name = _tensor_names(graph)
    em = _Emitter(graph, shapes)
    inputs = []
    for layer in graph.layers:
        if layer.type == "Input":
            for vid in flow.outputs[id(layer)]:
                dims = list(shapes[vid])
                if dynamic_batch:
                    dims[0] = BATCH
                inputs.append(helper.make_tensor_value_info(name(vid), TensorProto.FLOAT, dims))
            continue
        conv = CONVERTERS.get(layer.type)
        if conv is None:
            raise ExportError(f"layer '{layer.name}': type {layer.type} has no ONNX export")
        ins = flow.inputs[id(layer)]
        outs = flow.outputs[id(layer)]
        conv(em, layer, [name(v) for v in ins], [name(v) for v in outs],
             [shapes[v] for v in ins], [shapes[v] for v in outs])
    outputs = []
    for b in graph.outputs:
        dims = list(shapes[flow.final[b]])
        if dynamic_batch:
            dims[0] = None          # usually N, but a Reshape may have fixed it
        outputs.append(helper.make_tensor_value_info(name(flow.final[b]), TensorProto.FLOAT,
                                                     dims))
    g = helper.make_graph(em.nodes, graph.name or "caffe", inputs, outputs, em.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="amct-bench")
    model.ir_version = min(model.ir_version, 9)   # what current onnxruntime releases read
    onnx.checker.check_model(model)
    return model


def max_abs_diff(graph: Graph, model: onnx.ModelProto, x: dict[str, np.ndarray]) -> dict:
    """Largest |ours - onnxruntime| of every output on inputs ``x``."""
    import onnxruntime as ort
    from amct.runtime import compile as compile_graph

    ours = compile_graph(graph, {k: v.shape for k, v in x.items()}).run(x)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # The ONNX outputs follow graph.outputs (an output blob rewritten in
    # place on an input keeps a value id as its ONNX name).
    theirs = dict(zip(graph.outputs, sess.run(None, x)))
    return {k: float(np.abs(np.asarray(ours[k], np.float64) - v).max()) for k, v in theirs.items()}


def _parse_shape(text: str) -> tuple[str, tuple]:
    blob, _, dims = text.partition("=")
    return blob, tuple(int(d) for d in dims.split(","))


def main(argv=None) -> int:
    from amct.frontends.caffe import load_caffe

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--shape", action="append", default=[], help="blob=N,C,H,W (input shape)")
    ap.add_argument("--check", action="store_true", help="compare with the project's runtime")
    args = ap.parse_args(argv)
    graph = load_caffe(args.model, args.weights)
    shapes = dict(_parse_shape(s) for s in args.shape) or None
    model = export_onnx(graph, shapes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from amct.fileio import atomic_write_bytes
    atomic_write_bytes(args.out, model.SerializeToString())
    print(f"wrote {args.out} ({len(model.graph.node)} nodes)")
    if args.check:
        full = graph.infer_value_shapes(shapes)
        rng = np.random.default_rng(0)
        x = {b: rng.standard_normal(full[b]).astype(np.float32) for b in graph.inputs}
        for k, d in max_abs_diff(graph, model, x).items():
            print(f"  {k}: max |ours - onnxruntime| = {d:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
