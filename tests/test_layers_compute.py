"""Convolution, Deconvolution, InnerProduct and Pooling: golden data from BVLC
Caffe, hand-computed examples, a naive reference, and deploy (integer) mode."""
from __future__ import annotations

import json

import numpy as np
import pytest

from amct.errors import ShapeError
from amct.frontends.caffe import load_caffe
from amct.ir.layer import Layer
from amct.ir.registry import require_layer_def
from amct.proto import caffe_pb2

from conftest import GOLDEN, shared_or_skip

COMPUTE = {"Convolution", "Deconvolution", "InnerProduct", "Pooling"}


# ------------------------------------------------------------------ helpers

def make_layer(ltype: str, blobs=(), **params) -> Layer:
    """A layer whose ``<field>=dict`` keyword arguments fill its *_param."""
    p = caffe_pb2.LayerParameter()
    for field, values in params.items():
        msg = getattr(p, field)
        for k, v in values.items():
            if isinstance(v, (list, tuple)):
                getattr(msg, k).extend(v)
            else:
                setattr(msg, k, v)
    return Layer("L", ltype, ["x"], ["y"], list(blobs), p)


def forward(layer: Layer, *xs: np.ndarray) -> list[np.ndarray]:
    d = require_layer_def(layer)
    shapes = [tuple(x.shape) for x in xs]
    outs = d.build(layer, shapes)(list(xs))
    assert [tuple(o.shape) for o in outs] == [tuple(s) for s in d.infer_shapes(layer, shapes)]
    return outs


def conv_reference(x, w, b, stride, pad, dil, group):
    """Direct 2-D convolution in float64 or int64 (zero padding, Caffe weight layout)."""
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad[0], wd + 2 * pad[1]), x.dtype if x.dtype.kind == "i" else float)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, cout, oh, ow), xp.dtype)
    og = cout // group
    for o in range(cout):
        gi = o // og
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, gi * cg:(gi + 1) * cg,
                           i * dil[0]:i * dil[0] + stride[0] * (oh - 1) + 1:stride[0],
                           j * dil[1]:j * dil[1] + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def deconv_reference(x, w, b, stride, pad, group):
    """Direct transposed convolution (scatter of every input pixel), any dtype."""
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    full = np.zeros((n, og * group, stride * (h - 1) + kh, stride * (wd - 1) + kw), x.dtype)
    cg = cin // group
    for gi in range(group):
        xs = x[:, gi * cg:(gi + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, w[gi * cg:(gi + 1) * cg, :, i, j])
                full[:, gi * og:(gi + 1) * og, i:i + stride * (h - 1) + 1:stride,
                     j:j + stride * (wd - 1) + 1:stride] += contrib
    out = full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad]
    return out + b[None, :, None, None] if b is not None else out


# ------------------------------------------------------------ golden cases

def _cases(prefixes):
    if not GOLDEN.exists():
        return []
    return sorted(p.name for p in GOLDEN.iterdir()
                  if p.is_dir() and p.name.startswith(prefixes))


def _golden_layers(case: str):
    """(layer, inputs, expected outputs, tolerance) of each compute layer of a case.

    A layer's input is the stored value of its bottom right before it ran:
    the ``layer:`` key of the most recent layer (in Caffe's order) writing it."""
    d = shared_or_skip("golden", case)
    meta = json.loads((d / "meta.json").read_text())
    io = np.load(d / "io.npz")
    g = load_caffe(str(d / "net.prototxt"), str(d / "weights.caffemodel"))
    by_name = {x.name: x for x in g.layers}
    order = meta["layers"]
    found = []
    for idx, entry in enumerate(order):
        if entry["type"] not in COMPUTE or "bottoms" not in entry:
            continue
        ins = []
        for b in entry["bottoms"]:
            writer = next(e for e in reversed(order[:idx]) if b in e["tops"])
            ins.append(io[f"layer:{writer['name']}:top{writer['tops'].index(b)}"])
        exp = [io[f"layer:{entry['name']}:top{j}"] for j in range(len(entry["tops"]))]
        found.append((by_name[entry["name"]], ins, exp, meta["tolerance"]))
    return found


@pytest.mark.parametrize("case", _cases(("layer_conv_", "layer_deconv_", "layer_ip_", "layer_pool_",
                                         "chain_", "real_lenet", "real_cifar", "real_mtcnn")))
def test_golden(case):
    layers = _golden_layers(case)
    assert layers or not case.startswith("layer_"), f"{case}: no compute layer found"
    for layer, ins, exp, tol in layers:
        outs = forward(layer, *ins)
        for o, e in zip(outs, exp):
            assert o.shape == e.shape, layer.name
            assert o.dtype == np.float32, layer.name
            np.testing.assert_allclose(o, e, rtol=tol["rtol"], atol=tol["atol"],
                                       err_msg=f"{case}: layer {layer.name}")


# ----------------------------------------------------- hand-computed values

X33 = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
K22 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2)


def test_conv_2x2_by_hand():
    layer = make_layer("Convolution", [K22, np.array([0.5], np.float32)],
                       convolution_param={"num_output": 1, "kernel_size": [2]})
    (y,) = forward(layer, X33)
    # [1 2; 4 5].[1 2; 3 4] = 1+4+12+20 = 37, and so on.
    np.testing.assert_array_equal(y[0, 0], [[37.5, 47.5], [67.5, 77.5]])


def test_conv_pad_stride_by_hand():
    layer = make_layer("Convolution", [K22], convolution_param={
        "num_output": 1, "kernel_size": [2], "pad": [1], "stride": [2], "bias_term": False})
    (y,) = forward(layer, X33)
    # Windows start at -1 and 1: only the taps inside the image count.
    np.testing.assert_array_equal(y[0, 0], [[1 * 4, 2 * 3 + 3 * 4], [4 * 2 + 7 * 4, 77]])


@pytest.mark.parametrize("cfg", [
    dict(c=4, cout=6, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), group=2, hw=(9, 11)),
    dict(c=6, cout=6, k=(3, 3), stride=(2, 2), pad=(1, 1), dil=(1, 1), group=6, hw=(10, 9)),
    dict(c=5, cout=10, k=(3, 3), stride=(1, 2), pad=(0, 1), dil=(1, 1), group=5, hw=(8, 8)),
    dict(c=3, cout=4, k=(2, 5), stride=(3, 1), pad=(2, 0), dil=(2, 1), group=1, hw=(12, 13)),
    dict(c=8, cout=4, k=(1, 1), stride=(2, 2), pad=(0, 0), dil=(1, 1), group=1, hw=(7, 7)),
    dict(c=8, cout=4, k=(1, 1), stride=(1, 1), pad=(0, 0), dil=(1, 1), group=2, hw=(5, 6)),
    dict(c=4, cout=4, k=(3, 3), stride=(1, 1), pad=(2, 2), dil=(2, 2), group=4, hw=(6, 7)),
])
def test_conv_matches_direct_reference(cfg):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, cfg["c"]) + cfg["hw"]).astype(np.float32)
    w = rng.standard_normal((cfg["cout"], cfg["c"] // cfg["group"]) + cfg["k"]).astype(np.float32)
    b = rng.standard_normal(cfg["cout"]).astype(np.float32)
    layer = make_layer("Convolution", [w, b], convolution_param={
        "num_output": cfg["cout"], "kernel_h": cfg["k"][0], "kernel_w": cfg["k"][1],
        "stride_h": cfg["stride"][0], "stride_w": cfg["stride"][1], "pad_h": cfg["pad"][0],
        "pad_w": cfg["pad"][1], "dilation": list(cfg["dil"]), "group": cfg["group"]})
    (y,) = forward(layer, x)
    ref = conv_reference(x, w, b, cfg["stride"], cfg["pad"], cfg["dil"], cfg["group"])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv_chunked_matches_unchunked(monkeypatch):
    """Row/image chunking of the column buffer does not change the result."""
    from amct.layers import _im2col
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 40, 37)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    layer = make_layer("Convolution", [w], convolution_param={
        "num_output": 5, "kernel_size": [3], "pad": [1], "bias_term": False})
    (full,) = forward(layer, x)
    monkeypatch.setattr(_im2col, "COL_LIMIT", 4 * 9 * 40 * 3)   # ~3 output rows per chunk
    (chunked,) = forward(layer, x)
    # Only the GEMM's blocking (summation order) may differ.
    np.testing.assert_allclose(full, chunked, rtol=1e-5, atol=1e-5)
    ref = conv_reference(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(chunked, ref, rtol=1e-5, atol=1e-5)


def test_conv_1d():
    """A 3-D input has one spatial axis: kernel and pad apply to it alone."""
    x = np.array([[[1, 2, 3, 4]]], np.float32)
    layer = make_layer("Convolution", [np.array([[[1, -1]]], np.float32)],
                       convolution_param={"num_output": 1, "kernel_size": [2], "pad": [1],
                                          "bias_term": False})
    (y,) = forward(layer, x)
    np.testing.assert_array_equal(y, [[[-1, -1, -1, -1, 4]]])


def test_deconv_by_hand():
    # Stride 1, kernel 1x2: every input spreads to two neighbouring outputs.
    x = np.array([[[[1, 2]]]], np.float32)
    layer = make_layer("Deconvolution", [np.array([[[[1, 10]]]], np.float32)],
                       convolution_param={"num_output": 1, "kernel_h": 1, "kernel_w": 2,
                                          "bias_term": False})
    (y,) = forward(layer, x)
    np.testing.assert_array_equal(y, [[[[1, 12, 20]]]])
    # Stride 2, kernel 2, pad 0: each input pixel paints its own 2x2 block.
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    layer = make_layer("Deconvolution", [K22, np.array([1], np.float32)],
                       convolution_param={"num_output": 1, "kernel_size": [2], "stride": [2]})
    (y,) = forward(layer, x)
    expect = np.kron(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 4]])) + 1
    np.testing.assert_array_equal(y[0, 0], expect)
    # pad 1 crops one row/column on each side of the full result.
    layer = make_layer("Deconvolution", [K22], convolution_param={
        "num_output": 1, "kernel_size": [2], "stride": [2], "pad": [1], "bias_term": False})
    (y,) = forward(layer, x)
    np.testing.assert_array_equal(y[0, 0], (expect - 1)[1:-1, 1:-1])


def test_deconv_is_conv_transpose():
    """<conv(x), y> == <x, deconv(y)> with the same weights (groups, stride, pad)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 2, 3, 4)).astype(np.float32)     # conv: 6 out, 4 in, group 2
    x = rng.standard_normal((2, 4, 11, 12)).astype(np.float32)
    p = {"num_output": 6, "kernel_h": 3, "kernel_w": 4, "stride": [2], "pad": [1],
         "group": 2, "bias_term": False}
    (cx,) = forward(make_layer("Convolution", [w], convolution_param=p), x)
    y = rng.standard_normal(cx.shape).astype(np.float32)
    p = dict(p, num_output=4)
    (dy,) = forward(make_layer("Deconvolution", [w], convolution_param=p), y)
    assert dy.shape[:2] == (2, 4) and dy.shape[2:] <= x.shape[2:]
    xs = x[:, :, :dy.shape[2], :dy.shape[3]]
    # Rows/columns the conv never read are cut by the deconv's output size.
    np.testing.assert_allclose(np.vdot(cx, y), np.vdot(xs, dy), rtol=1e-4)


@pytest.mark.parametrize("cin,og,group", [(32, 1, 32), (4, 2, 4), (1, 3, 1)])
def test_deconv_one_input_channel_per_group(cin, og, group):
    """Depthwise and single-input deconvolutions take the broadcast path; float
    result as the direct scatter reference (qr_sr's geometry: k3, s2, p1)."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((cin, og, 3, 3)).astype(np.float32)
    b = rng.standard_normal(og * group).astype(np.float32)
    x = rng.standard_normal((2, cin, 9, 7)).astype(np.float32)
    p = {"num_output": og * group, "kernel_size": [3], "stride": [2], "pad": [1], "group": group}
    (y,) = forward(make_layer("Deconvolution", [w, b], convolution_param=p), x)
    ref = deconv_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                           2, 1, group)
    assert y.shape == ref.shape == (2, og * group, 17, 13)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_inner_product_by_hand():
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    w = np.array([[1, 0, -1], [2, 2, 2]], np.float32)
    layer = make_layer("InnerProduct", [w, np.array([10, 20], np.float32)],
                       inner_product_param={"num_output": 2})
    (y,) = forward(layer, x)
    np.testing.assert_array_equal(y, [[8, 32], [8, 50]])
    layer = make_layer("InnerProduct", [np.ascontiguousarray(w.T)],
                       inner_product_param={"num_output": 2, "transpose": True,
                                            "bias_term": False})
    (y,) = forward(layer, x)
    np.testing.assert_array_equal(y, [[-2, 12], [-2, 30]])


def test_inner_product_negative_axis():
    x = np.ones((2, 3, 4), np.float32)
    layer = make_layer("InnerProduct", [np.ones((5, 4), np.float32)],
                       inner_product_param={"num_output": 5, "axis": -1, "bias_term": False})
    (y,) = forward(layer, x)
    assert y.shape == (2, 3, 5) and (y == 4).all()


def test_ave_pool_divisor_by_hand():
    # 3x3 input, k3 s2 p1: windows [-1, 2) and [1, 4), both counted as 3 wide.
    layer = make_layer("Pooling", pooling_param={"pool": 1, "kernel_size": 3, "stride": 2, "pad": 1})
    (y,) = forward(layer, X33)
    np.testing.assert_allclose(y[0, 0], np.array([[12, 16], [24, 28]]) / 9, rtol=1e-6)
    # 4 rows: windows [-1,2) [1,4) [3,6)->[3,5): divisors 3, 3, 2 (padding counts once).
    x = np.ones((1, 1, 4, 1), np.float32)
    layer = make_layer("Pooling", pooling_param={"pool": 1, "kernel_h": 3, "kernel_w": 1,
                                                 "stride": 2, "pad_h": 1, "pad_w": 0})
    (y,) = forward(layer, x)
    np.testing.assert_allclose(y[0, 0, :, 0], [2 / 3, 3 / 3, 1 / 2], rtol=1e-6)


def test_max_pool_ignores_padding():
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    layer = make_layer("Pooling", pooling_param={"pool": 0, "kernel_size": 2, "stride": 2, "pad": 1})
    (y,) = forward(layer, x)
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])


@pytest.mark.parametrize("h,k,s,p,mode,expect", [
    (14, 3, 2, 0, "CEIL", 7), (14, 3, 2, 0, "FLOOR", 6),
    (5, 2, 2, 1, "CEIL", 3),     # ceil gives 4, but the last window starts at 6 >= 5+1
    (6, 3, 2, 1, "CEIL", 4), (6, 3, 2, 1, "FLOOR", 3),
    (13, 2, 3, 0, "CEIL", 5),
])
def test_pool_output_size(h, k, s, p, mode, expect):
    layer = make_layer("Pooling", pooling_param={
        "kernel_size": k, "stride": s, "pad": p,
        "round_mode": caffe_pb2.PoolingParameter.RoundMode.Value(mode)})
    (y,) = forward(layer, np.zeros((1, 2, h, h), np.float32))
    assert y.shape == (1, 2, expect, expect)


def test_stochastic_pool_test_phase():
    x = np.array([[[[1, 3], [0, 4]]]], np.float32)
    layer = make_layer("Pooling", pooling_param={"pool": 2, "kernel_size": 2, "stride": 2})
    (y,) = forward(layer, x)
    np.testing.assert_allclose(y[0, 0, 0, 0], (1 + 9 + 16) / 8, rtol=1e-6)


def test_shape_errors_name_the_layer():
    layer = make_layer("Convolution", convolution_param={"num_output": 4, "kernel_size": [3],
                                                         "group": 3})
    with pytest.raises(ShapeError, match="'L'"):
        require_layer_def(layer).infer_shapes(layer, [(1, 4, 8, 8)])
    layer = make_layer("Pooling", pooling_param={"kernel_size": 3, "pad": 3})
    with pytest.raises(ShapeError, match="'L'"):
        require_layer_def(layer).infer_shapes(layer, [(1, 4, 8, 8)])


def test_param_shapes():
    conv = make_layer("Convolution", convolution_param={"num_output": 6, "kernel_h": 3,
                                                        "kernel_w": 5, "group": 2})
    assert require_layer_def(conv).param_shapes(conv, [(1, 4, 9, 9)]) == [(6, 2, 3, 5), (6,)]
    deconv = make_layer("Deconvolution", convolution_param={"num_output": 6, "kernel_size": [4],
                                                            "group": 2, "bias_term": False})
    assert require_layer_def(deconv).param_shapes(deconv, [(1, 4, 9, 9)]) == [(4, 3, 4, 4)]
    ip = make_layer("InnerProduct", inner_product_param={"num_output": 7, "axis": 2,
                                                         "transpose": True})
    assert require_layer_def(ip).param_shapes(ip, [(2, 3, 4, 5)]) == [(20, 7), (7,)]


# ------------------------------------------------ OpenCV single-layer nets

@pytest.mark.parametrize("name,out_shape,params", [
    # 75x113, k 4x5, pad (0,1), stride (2,3): (75-4)//2+1 = 36, (113+2-5)//3+1 = 37
    ("layer_convolution", (2, 12, 36, 37), [(12, 2, 4, 5), (12,)]),
    # 36x37: 2*35+4-0 = 74, 3*36+5-2 = 111; weight (C_in, C_out/group, kh, kw)
    ("layer_deconvolution", (2, 15, 74, 111), [(12, 5, 4, 5), (15,)]),
    # axis 3 flattens W = 113 only
    ("layer_inner_product", (2, 6, 75, 2), [(2, 113), (2,)]),
    # k 3x5, pad (2,1), stride (2,1), ceil: ceil(76/2)+1 = 39, 110+1 = 111
    ("layer_pooling_ave", (2, 6, 39, 111), []),
    ("layer_pooling_max", (2, 6, 39, 111), []),
])
def test_opencv_layer_shapes(name, out_shape, params):
    path = shared_or_skip("models", "prototxt", "opencv_layers", f"{name}.prototxt")
    g = load_caffe(str(path))
    shapes = g.infer_shapes()
    layer = next(x for x in g.layers if x.type in COMPUTE)
    assert shapes[layer.tops[0]] == out_shape
    in_shape = shapes[layer.bottoms[0]]
    assert [tuple(s) for s in require_layer_def(layer).param_shapes(layer, [in_shape])] == params


# ------------------------------------------------------ deploy (integer)

def test_int_conv_exact_at_extremes():
    """int8 x int8 products summed over K = 4*3*3 with int32 bias, exactly."""
    x = np.full((1, 4, 5, 5), -128, np.int8)
    w = np.full((2, 4, 3, 3), -128, np.int8)
    b = np.array([2**30, -7], np.int32)
    layer = make_layer("Convolution", [w, b], convolution_param={"num_output": 2,
                                                                 "kernel_size": [3]})
    (y,) = forward(layer, x)
    assert y.dtype == np.int32
    acc = 128 * 128 * 36
    assert (y[0, 0] == acc + 2**30).all() and (y[0, 1] == acc - 7).all()


@pytest.mark.parametrize("ltype,params,wshape,xshape", [
    ("Convolution", {"num_output": 6, "kernel_size": [3], "pad": [1], "stride": [2],
                     "group": 2}, (6, 2, 3, 3), (2, 4, 9, 8)),
    ("Convolution", {"num_output": 4, "kernel_size": [3], "pad": [1], "group": 4},
     (4, 1, 3, 3), (2, 4, 6, 7)),
    ("Convolution", {"num_output": 5, "kernel_size": [1]}, (5, 4, 1, 1), (2, 4, 3, 3)),
    ("Deconvolution", {"num_output": 6, "kernel_size": [3], "stride": [2], "pad": [1],
                       "group": 2}, (4, 3, 3, 3), (2, 4, 5, 6)),
    # depthwise (one input channel per group: the broadcast path), 2 outputs per group
    ("Deconvolution", {"num_output": 8, "kernel_size": [3], "stride": [2], "pad": [1],
                       "group": 4}, (4, 2, 3, 3), (2, 4, 5, 6)),
    ("InnerProduct", {"num_output": 7}, (7, 60), (3, 4, 3, 5)),
])
def test_int_mode_matches_exact_reference(ltype, params, wshape, xshape):
    """Deploy layers: int8 weights, int16 input, int32 bias -> exact int32,
    checked against int64 references."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, wshape).astype(np.int8)
    nout = params["num_output"]
    b = rng.integers(-2**28, 2**28, nout).astype(np.int32)
    x = rng.integers(-300, 300, xshape).astype(np.int16)
    field = "inner_product_param" if ltype == "InnerProduct" else "convolution_param"
    (y,) = forward(make_layer(ltype, [w, b], **{field: params}), x)
    assert y.dtype == np.int32
    x64, w64, b64 = x.astype(np.int64), w.astype(np.int64), b.astype(np.int64)
    stride, pad = params.get("stride", [1])[0], params.get("pad", [0])[0]
    if ltype == "InnerProduct":
        ref = x64.reshape(len(x64), -1) @ w64.T + b64
    elif ltype == "Deconvolution":
        ref = deconv_reference(x64, w64, b64, stride, pad, params.get("group", 1))
    else:
        ref = conv_reference(x64, w64, b64, (stride, stride), (pad, pad), (1, 1),
                             params.get("group", 1))
        assert np.array_equal(ref, np.rint(ref))
        ref = ref.astype(np.int64)
    np.testing.assert_array_equal(y, ref)
    assert np.abs(ref).max() > 2**24        # beyond float32's exact integers


def test_int_inner_product_by_hand():
    x = np.array([[127, -128, 1]], np.int8)
    w = np.array([[127, 127, 0], [-128, -128, -128]], np.int8)
    layer = make_layer("InnerProduct", [w, np.array([5, -5], np.int32)],
                       inner_product_param={"num_output": 2})
    (y,) = forward(layer, x)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [[127 * 127 - 128 * 127 + 5,
                                       -128 * 127 + 128 * 128 - 128 - 5]])


def test_int_pooling():
    x = np.array([[[[-5, 7, -128], [3, 0, 1], [2, -1, 4]]]], np.int8)
    (ymax,) = forward(make_layer("Pooling", pooling_param={"kernel_size": 2, "stride": 1}), x)
    assert ymax.dtype == np.int8
    np.testing.assert_array_equal(ymax[0, 0], [[7, 7], [3, 4]])
    (yave,) = forward(make_layer("Pooling", pooling_param={"pool": 1, "kernel_size": 2,
                                                           "stride": 1}), x)
    assert yave.dtype == np.float64
    np.testing.assert_array_equal(yave[0, 0], [[5 / 4, -120 / 4], [4 / 4, 4 / 4]])
    (ypad,) = forward(make_layer("Pooling", pooling_param={"kernel_size": 2, "stride": 2,
                                                           "pad": 1}), x)
    np.testing.assert_array_equal(ypad[0, 0], [[-5, 7], [3, 4]])
