"""Kernels of the non-convolution layer types against BVLC Caffe golden data,
plus hand-checked examples for the fork layers that have no golden data
(Permute, PriorBox, Normalize, DetectionOutput, ReLU6, Upsample,
ShuffleChannel) and the UltraFace net end to end.

Layers are driven directly through the registry (``build`` then call), so
these tests do not depend on the executor.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from amct.errors import ShapeError
from amct.frontends.caffe import load_caffe
from amct.ir import Layer
from amct.ir.registry import require_layer_def
from amct.proto import caffe_pb2
from conftest import GOLDEN

# Types implemented in amct/layers/{input,activation,normalization,eltwise,
# shape_ops,reduction,ssd}.py.
MISC_TYPES = {
    "Input", "ReLU", "PReLU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL", "ELU",
    "Threshold", "Clip", "Swish", "BatchNorm", "Scale", "Bias", "Eltwise", "Concat", "Slice",
    "Split", "Flatten", "Reshape", "Softmax", "LRN", "MVN", "Dropout", "Crop", "Reduction",
    "ArgMax", "Tile", "Silence", "Permute", "PriorBox", "Normalize", "DetectionOutput", "ReLU6",
    "Upsample", "ShuffleChannel",
}


def _cases() -> list[str]:
    if not GOLDEN.is_dir():
        return []
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "meta.json").is_file())


def _meta(case: str) -> dict:
    return json.loads((GOLDEN / case / "meta.json").read_text())


def _explicit_types(case: str) -> set[str]:
    return {x["type"] for x in _meta(case)["layers"] if "implicit" not in x}


ALL_CASES = _cases()
MISC_CASES = [c for c in ALL_CASES if _explicit_types(c) <= MISC_TYPES]


def _load(case: str):
    d = GOLDEN / case
    weights = d / "weights.caffemodel"
    g = load_caffe(str(d / "net.prototxt"), str(weights) if weights.exists() else None)
    io = np.load(d / "io.npz")
    return g, io, _meta(case)["tolerance"]


def _run_layer(g, shapes, layer, inputs):
    kernel = require_layer_def(layer).build(layer, [shapes[v] for v in g.input_values(layer)])
    return kernel(inputs)


def _check(actual: np.ndarray, expected: np.ndarray, tol: dict, what: str) -> None:
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"], err_msg=what)


@pytest.mark.skipif(not MISC_CASES, reason="golden data not present")
@pytest.mark.parametrize("case", MISC_CASES)
def test_golden_case_chained(case):
    """Run the whole case with our kernels only, each layer reading what the
    previous ones produced; every layer output and final blob must match."""
    g, io, tol = _load(case)
    shapes = g.infer_value_shapes()
    values: dict[str, np.ndarray] = {}
    checked = 0
    for layer in g.layers:
        if layer.type == "Input":
            outs = [io[f"in:{t}"] for t in layer.tops]
        else:
            outs = _run_layer(g, shapes, layer, [values[v] for v in g.input_values(layer)])
        assert len(outs) == len(layer.tops)
        for j, (vid, out) in enumerate(zip(g.output_values(layer), outs)):
            assert tuple(np.shape(out)) == shapes[vid], f"{layer.name}: inferred shape differs"
            values[vid] = out
            key = f"layer:{layer.name}:top{j}"
            if key in io.files:
                _check(out, io[key], tol, key)
                checked += 1
    for blob, vid in g.dataflow().final.items():
        key = f"blob:{blob}"
        if key in io.files:
            _check(values[vid], io[key], tol, key)
            checked += 1
    assert checked >= 2


def _isolated_cases() -> list[tuple[str, str]]:
    """(case, layer) for every layer of our types in every golden case that
    stores per-layer outputs (the real/chain nets with convolutions too)."""
    out = []
    for c in ALL_CASES:
        m = _meta(c)
        keys = set(m.get("npz_keys", []))
        for x in m["layers"]:
            if ("implicit" not in x and x["type"] in MISC_TYPES - {"Input"}
                    and f"layer:{x['name']}:top0" in keys):
                out.append((c, x["name"]))
    return out


ISOLATED = [p for p in _isolated_cases() if p[0] not in MISC_CASES]


@pytest.mark.skipif(not ISOLATED, reason="golden data not present")
@pytest.mark.parametrize("case", sorted({c for c, _ in ISOLATED}))
def test_golden_layers_isolated(case):
    """Each of our layers inside the conv nets, fed Caffe's own stored inputs
    (the output of the most recent writer of each bottom)."""
    g, io, tol = _load(case)
    shapes = g.infer_value_shapes()
    names = {n for c, n in ISOLATED if c == case}
    flow = g.dataflow()
    for layer in g.layers:
        if layer.name not in names:
            continue
        ins = []
        for vid in g.input_values(layer):
            src, j = flow.producer[vid]
            key = f"layer:{src.name}:top{j}"
            ins.append(io[key] if key in io.files else io[f"in:{src.tops[j]}"])
        outs = _run_layer(g, shapes, layer, ins)
        for j, out in enumerate(outs):
            _check(out, io[f"layer:{layer.name}:top{j}"], tol, f"{case}:{layer.name}:top{j}")


@pytest.mark.skipif(not (GOLDEN / "real_ultraface_slim320").is_dir(), reason="golden data not present")
def test_ultraface_end_to_end():
    """UltraFace slim-320 (Permute/Reshape/Softmax/Concat with the other
    engineer's Convolution) against OpenCV's outputs."""
    g, io, tol = _load("real_ultraface_slim320")
    shapes = g.infer_value_shapes()
    values: dict[str, np.ndarray] = {}
    for layer in g.layers:
        if layer.type == "Input":
            outs = [io[f"in:{t}"] for t in layer.tops]
        else:
            outs = _run_layer(g, shapes, layer, [values[v] for v in g.input_values(layer)])
        values.update(zip(g.output_values(layer), outs))
    final = g.dataflow().final
    for name in ("boxes", "scores"):
        _check(values[final[name]], io[f"blob:{name}"], tol, name)


# --------------------------------------------------------------------------- hand-made layers
def _layer(ltype: str, bottoms: list[str], tops: list[str], blobs=(), **params) -> Layer:
    lp = caffe_pb2.LayerParameter()
    for field, value in params.items():
        getattr(lp, field).CopyFrom(value)
    return Layer("L", ltype, bottoms, tops, [np.asarray(b, np.float32) for b in blobs], lp)


def _run(layer: Layer, *inputs: np.ndarray) -> list[np.ndarray]:
    ldef = require_layer_def(layer)
    in_shapes = [x.shape for x in inputs]
    out_shapes = ldef.infer_shapes(layer, in_shapes)
    outs = ldef.build(layer, in_shapes)(list(inputs))
    if layer.type != "DetectionOutput":
        assert [o.shape for o in outs] == [tuple(s) for s in out_shapes]
    for x, y in zip(inputs, [np.asarray(i) for i in inputs]):
        assert x is y
    return outs


RNG = np.random.default_rng(7)


def test_relu6_clamps_both_sides():
    x = np.array([-3, -0.5, 0, 0.5, 5.9, 6, 7, 100], np.float32)
    (y,) = _run(_layer("ReLU6", ["x"], ["y"]), x)
    np.testing.assert_array_equal(y, np.array([0, 0, 0, 0.5, 5.9, 6, 6, 6], np.float32))
    assert y.dtype == np.float32


def test_permute_matches_transpose_and_fills_unlisted_axes():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    lay = _layer("Permute", ["x"], ["y"], permute_param=caffe_pb2.PermuteParameter(order=[0, 2, 3, 1]))
    (y,) = _run(lay, x)
    assert y.shape == (2, 4, 5, 3)
    # y[n, h, w, c] == x[n, c, h, w]
    assert y[1, 2, 3, 0] == x[1, 0, 2, 3] and y[0, 3, 4, 2] == x[0, 2, 3, 4]
    assert y.flags.c_contiguous
    # Only the first axes listed: the rest follow in their original order.
    lay2 = _layer("Permute", ["x"], ["y"], permute_param=caffe_pb2.PermuteParameter(order=[1]))
    (y2,) = _run(lay2, x)
    np.testing.assert_array_equal(y2, x.transpose(1, 0, 2, 3))
    bad = _layer("Permute", ["x"], ["y"], permute_param=caffe_pb2.PermuteParameter(order=[1, 1]))
    with pytest.raises(ShapeError, match="twice"):
        require_layer_def(bad).infer_shapes(bad, [x.shape])


def test_shuffle_channel_moves_channels_like_shufflenet():
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1) * np.ones((1, 1, 2, 2), np.float32)
    lay = _layer("ShuffleChannel", ["x"], ["y"],
                 shuffle_channel_param=caffe_pb2.ShuffleChannelParameter(group=2))
    (y,) = _run(lay, x)
    # groups [0 1 2][3 4 5] interleaved -> 0 3 1 4 2 5
    np.testing.assert_array_equal(y[0, :, 0, 0], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(y[0, :, 1, 1], [0, 3, 1, 4, 2, 5])
    lay3 = _layer("ShuffleChannel", ["x"], ["y"],
                  shuffle_channel_param=caffe_pb2.ShuffleChannelParameter(group=3))
    (y3,) = _run(lay3, x)
    np.testing.assert_array_equal(y3[0, :, 0, 0], [0, 2, 4, 1, 3, 5])
    bad = _layer("ShuffleChannel", ["x"], ["y"],
                 shuffle_channel_param=caffe_pb2.ShuffleChannelParameter(group=4))
    with pytest.raises(ShapeError):
        require_layer_def(bad).infer_shapes(bad, [x.shape])


def test_upsample_nearest_and_unpool():
    x = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2)
    lay = _layer("Upsample", ["x"], ["y"], upsample_param=caffe_pb2.UpsampleParameter(scale=2))
    (y,) = _run(lay, x)
    np.testing.assert_array_equal(y[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    lay3 = _layer("Upsample", ["x"], ["y"],
                  upsample_param=caffe_pb2.UpsampleParameter(scale_h=1, scale_w=3))
    (y3,) = _run(lay3, x)
    np.testing.assert_array_equal(y3[0, 0], [[1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4]])
    # SegNet unpooling: mask holds flat positions in the 4x4 output plane.
    mask = np.array([[0, 3], [13, 10]], np.float32).reshape(1, 1, 2, 2)
    (u,) = _run(_layer("Upsample", ["x", "m"], ["y"],
                       upsample_param=caffe_pb2.UpsampleParameter(scale=2)), x, mask)
    want = np.zeros(16, np.float32)
    want[[0, 3, 13, 10]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(u.reshape(-1), want)


def _ref_normalize(x, scale, across, eps):
    out = np.empty_like(x, dtype=np.float64)
    for n in range(x.shape[0]):
        xn = x[n].astype(np.float64)
        if across:
            out[n] = xn / np.sqrt((xn ** 2).sum() + eps)
        else:
            out[n] = xn / np.sqrt((xn ** 2).sum(axis=0, keepdims=True) + eps)
    return out * np.asarray(scale, np.float64).reshape(-1, 1, 1) if np.ndim(scale) else out * scale


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_against_reference(across, shared):
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    scale = np.float32(20.0) if shared else np.array([1.0, 2.0, 3.0], np.float32)
    p = caffe_pb2.NormalizeParameter(across_spatial=across, channel_shared=shared, eps=1e-10)
    lay = _layer("Normalize", ["x"], ["y"], blobs=[scale], norm_param=p)
    assert require_layer_def(lay).param_shapes(lay, [x.shape]) == ([()] if shared else [(3,)])
    (y,) = _run(lay, x)
    np.testing.assert_allclose(y, _ref_normalize(x, scale, across, 1e-10), rtol=1e-5, atol=1e-6)
    if not across:   # per pixel, channels have unit L2 norm before scaling
        unit = y / np.reshape(scale, (-1, 1, 1))
        np.testing.assert_allclose((unit.astype(np.float64) ** 2).sum(axis=1), 1, rtol=1e-5)


def _prior_layer(**kw) -> Layer:
    return _layer("PriorBox", ["f", "img"], ["p"], prior_box_param=caffe_pb2.PriorBoxParameter(**kw))


def test_priorbox_hand_computed():
    # 2x2 feature map over a 100x100 image: step 50, centres 25 and 75.
    lay = _prior_layer(min_size=[30], max_size=[60], aspect_ratio=[2], flip=True,
                       variance=[0.1, 0.1, 0.2, 0.2])
    f, img = np.zeros((1, 8, 2, 2), np.float32), np.zeros((1, 3, 100, 100), np.float32)
    (p,) = _run(lay, f, img)
    # priors per cell: min, sqrt(min*max), ar 2, ar 1/2 -> 4
    assert p.shape == (1, 2, 2 * 2 * 4 * 4)
    boxes = p[0, 0].reshape(2, 2, 4, 4)
    s = np.sqrt(30 * 60)
    w2, h2 = 30 * np.sqrt(2), 30 / np.sqrt(2)
    cx, cy = 75, 25          # cell (h=0, w=1)
    want = np.array([[cx - 15, cy - 15, cx + 15, cy + 15],
                     [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2],
                     [cx - w2 / 2, cy - h2 / 2, cx + w2 / 2, cy + h2 / 2],
                     [cx - h2 / 2, cy - w2 / 2, cx + h2 / 2, cy + w2 / 2]]) / 100
    np.testing.assert_allclose(boxes[0, 1], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p[0, 1].reshape(-1, 4), np.tile([0.1, 0.1, 0.2, 0.2], (16, 1)))


def test_priorbox_clip_step_offset_img_size():
    lay = _prior_layer(min_size=[40], clip=True, variance=[0.1], step=16, offset=0,
                       img_size=64, aspect_ratio=[3, 3.0000001], flip=False)
    f, img = np.zeros((1, 1, 3, 2), np.float32), np.zeros((1, 3, 999, 999), np.float32)
    (p,) = _run(lay, f, img)
    # duplicate ratio dropped, no flip: ratios {1, 3}: 2 priors per cell
    assert p.shape == (1, 2, 3 * 2 * 2 * 4)
    boxes = p[0, 0].reshape(3, 2, 2, 4)
    # cell (0, 0): centre (0, 0), 40x40 box -> [-20, -20, 20, 20]/64 clipped to [0, 0, .3125, .3125]
    np.testing.assert_allclose(boxes[0, 0, 0], [0, 0, 20 / 64, 20 / 64], rtol=1e-6)
    # cell (2, 1): centre (16, 32); ratio 3 box w = 40*sqrt3, h = 40/sqrt3
    w, h = 40 * np.sqrt(3), 40 / np.sqrt(3)
    np.testing.assert_allclose(boxes[2, 1, 1], np.clip([(16 - w / 2) / 64, (32 - h / 2) / 64,
                                                        (16 + w / 2) / 64, (32 + h / 2) / 64], 0, 1),
                               rtol=1e-6)
    assert np.all(p[0, 1] == np.float32(0.1))


def _det_layer(**kw) -> Layer:
    nms = kw.pop("nms", {})
    p = caffe_pb2.DetectionOutputParameter(
        nms_param=caffe_pb2.NonMaximumSuppressionParameter(**nms), **kw)
    return _layer("DetectionOutput", ["loc", "conf", "prior"], ["det"], detection_output_param=p)


def _priors(boxes, var=(0.1, 0.1, 0.2, 0.2)):
    b = np.asarray(boxes, np.float32)
    v = np.tile(np.asarray(var, np.float32), (len(b), 1))
    return np.stack([b.reshape(-1), v.reshape(-1)])[None]


def test_detection_output_decode_nms_and_order():
    priors = _priors([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.9, 0.8]])
    # Prior 0 shifted right by one tenth of its width (var 0.1 * 1.0 * 0.2 = 0.02),
    # prior 1 unchanged, prior 2 scaled by exp(0.2 * 0.5).
    loc = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0.5, 0.5]], np.float32).reshape(1, -1)
    # classes: background, cat, dog
    conf = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.1, 0.6]], np.float32).reshape(1, -1)
    lay = _det_layer(num_classes=3, code_type=caffe_pb2.PriorBoxParameter.CENTER_SIZE,
                     confidence_threshold=0.05, keep_top_k=10, nms={"nms_threshold": 0.45})
    (det,) = _run(lay, loc, conf, priors)
    box0 = [0.12, 0.1, 0.32, 0.3]                    # prior 0 decoded: same as prior 1
    e = np.exp(0.1)
    box2 = [0.75 - 0.15 * e, 0.7 - 0.1 * e, 0.75 + 0.15 * e, 0.7 + 0.1 * e]
    want = np.array([
        # cat: box 0 (0.8) suppresses box 1 (identical, IoU 1); box 2 (0.1) survives
        [0, 1, 0.8, *box0], [0, 1, 0.1, *box2],
        # dog: box 2 (0.6) first, then 0 and 1 (IoU(0,1)=1 -> 1 suppressed)
        [0, 2, 0.6, *box2], [0, 2, 0.1, *box0],
    ], np.float32)
    assert det.shape == (1, 1, 4, 7)
    np.testing.assert_allclose(det[0, 0], want, rtol=1e-5, atol=1e-6)


def test_detection_output_keep_top_k_threshold_and_empty():
    priors = _priors([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.3, 0.0, 0.4, 0.1]])
    loc = np.zeros((2, 12), np.float32)
    conf = np.array([[[0.0, 0.9, 0.1], [0.0, 0.2, 0.8], [0.0, 0.5, 0.5]],
                     [[0.0, 0.01, 0.0], [0.0, 0.0, 0.01], [0.0, 0.0, 0.0]]], np.float32).reshape(2, -1)
    lay = _det_layer(num_classes=3, code_type=caffe_pb2.PriorBoxParameter.CORNER,
                     confidence_threshold=0.3, keep_top_k=2, nms={"nms_threshold": 0.5})
    (det,) = _run(lay, loc, conf, priors)
    # image 0 candidates: cat 0.9 (p0), 0.5 (p2); dog 0.8 (p1), 0.5 (p2);
    # keep_top_k 2 keeps 0.9 cat and 0.8 dog; image 1 has nothing above 0.3.
    np.testing.assert_allclose(det[0, 0], [[0, 1, 0.9, 0, 0, 0.2, 0.2],
                                           [0, 2, 0.8, 0.5, 0.5, 0.7, 0.7]], rtol=1e-6)
    # Nothing detected at all: one row of -1s per image, image id kept.
    lay_hi = _det_layer(num_classes=3, confidence_threshold=0.95, nms={"nms_threshold": 0.5})
    (none,) = _run(lay_hi, loc, conf, priors)
    np.testing.assert_array_equal(none, [[[[0, -1, -1, -1, -1, -1, -1],
                                           [1, -1, -1, -1, -1, -1, -1]]]])
    # Unshared locations: a location set per class.
    loc2 = np.zeros((1, 3 * 3 * 4), np.float32)
    loc2[0, 1 * 12 + 2 * 4] = 0.5          # prior 1, class 2: xmin += 0.1 * 0.5 (CORNER)
    lay2 = _det_layer(num_classes=3, share_location=False, confidence_threshold=0.7,
                      code_type=caffe_pb2.PriorBoxParameter.CORNER, nms={"nms_threshold": 0.5})
    (d2,) = _run(lay2, loc2, conf[:1], priors)
    np.testing.assert_allclose(d2[0, 0], [[0, 1, 0.9, 0, 0, 0.2, 0.2],
                                          [0, 2, 0.8, 0.55, 0.5, 0.7, 0.7]], rtol=1e-6)


DET_NET = """
name: "det"
layer { name: "loc" type: "Input" top: "loc" input_param { shape { dim: 1 dim: 12 } } }
layer { name: "conf" type: "Input" top: "conf" input_param { shape { dim: 1 dim: 9 } } }
layer { name: "prior" type: "Input" top: "prior" input_param { shape { dim: 1 dim: 2 dim: 12 } } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
  detection_output_param { num_classes: 3 code_type: CORNER confidence_threshold: 0.3
                           keep_top_k: 10 nms_param { nms_threshold: 0.5 } } }
"""


def test_detection_output_rows_follow_the_data_through_the_executor(tmp_path):
    """The number of rows depends on the scores; one compiled program runs
    inputs with 3, 1 and no detections (BVLC Caffe reshapes the top on every
    forward; shape inference gives its setup shape (1, 1, 1, 7))."""
    from amct.runtime import compile as compile_graph

    proto = tmp_path / "det.prototxt"
    proto.write_text(DET_NET)
    g = load_caffe(str(proto))
    assert g.infer_shapes()["det"] == (1, 1, 1, 7)
    prog = compile_graph(g)
    priors = _priors([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.3, 0.0, 0.4, 0.1]])
    loc = np.zeros((1, 12), np.float32)
    rows = {}
    for label, conf in {
        "three": [[0.0, 0.9, 0.1], [0.0, 0.2, 0.8], [0.0, 0.5, 0.1]],
        "one": [[0.0, 0.9, 0.1], [0.0, 0.1, 0.1], [0.0, 0.1, 0.1]],
        "none": [[0.0, 0.1, 0.1], [0.0, 0.1, 0.1], [0.0, 0.1, 0.1]],
    }.items():
        c = np.array(conf, np.float32).reshape(1, 9)
        rows[label] = prog.run({"loc": loc, "conf": c, "prior": priors})["det"]
    np.testing.assert_allclose(rows["three"][0, 0], [[0, 1, 0.9, 0, 0, 0.2, 0.2],
                                                      [0, 1, 0.5, 0.3, 0.0, 0.4, 0.1],
                                                      [0, 2, 0.8, 0.5, 0.5, 0.7, 0.7]], rtol=1e-6)
    np.testing.assert_allclose(rows["one"], [[[[0, 1, 0.9, 0, 0, 0.2, 0.2]]]], rtol=1e-6)
    np.testing.assert_array_equal(rows["none"], [[[[0, -1, -1, -1, -1, -1, -1]]]])


def _iou(a, b) -> float:
    """Scalar SSD JaccardOverlap, written out as the reference."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_nms_matches_plain_loop_with_and_without_adaptive_eta():
    from amct.layers.ssd import nms_fast
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 0.8, (60, 2))
    wh = rng.uniform(0.05, 0.3, (60, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 60).astype(np.float32)
    scores[5] = scores[9]                      # a tie: index order decides
    for eta, top_k in ((1.0, 40), (0.9, 40), (1.0, -1)):
        got = nms_fast(boxes, scores, 0.2, 0.6, eta, top_k)
        order = sorted((i for i in range(60) if scores[i] > 0.2), key=lambda i: (-scores[i], i))
        if top_k > -1:
            order = order[:top_k]
        kept, thr = [], 0.6
        for i in order:           # SSD's ApplyNMSFast written out
            if all(_iou(boxes[i], boxes[k]) <= thr for k in kept):
                kept.append(i)
                if eta < 1 and thr > 0.5:
                    thr *= eta
        assert got.tolist() == kept
        assert 3 < len(kept) < len(order)


def test_argmax_ties_pick_larger_index_first():
    x = np.array([[1, 3, 3, 0, 3]], np.float32).reshape(1, 5, 1, 1)
    lay = _layer("ArgMax", ["x"], ["y"], argmax_param=caffe_pb2.ArgMaxParameter(top_k=3, axis=1))
    (y,) = _run(lay, x)
    np.testing.assert_array_equal(y.reshape(-1), [4, 2, 1])
    lay1 = _layer("ArgMax", ["x"], ["y"], argmax_param=caffe_pb2.ArgMaxParameter())
    (y1,) = _run(lay1, x)
    assert y1.shape == (1, 1, 1, 1) and y1.reshape(-1)[0] == 4


def test_kernels_keep_float32_and_do_not_touch_inputs():
    x = RNG.standard_normal((2, 4, 3, 5)).astype(np.float32)
    keep = x.copy()
    cases = [
        _layer("ELU", ["x"], ["y"], elu_param=caffe_pb2.ELUParameter(alpha=0.5)),
        _layer("Swish", ["x"], ["y"]), _layer("BNLL", ["x"], ["y"]), _layer("Sigmoid", ["x"], ["y"]),
        _layer("Power", ["x"], ["y"], power_param=caffe_pb2.PowerParameter(power=3, scale=2, shift=1)),
        _layer("ReLU", ["x"], ["y"], relu_param=caffe_pb2.ReLUParameter(negative_slope=-2)),
        _layer("Softmax", ["x"], ["y"]), _layer("MVN", ["x"], ["y"]),
        _layer("LRN", ["x"], ["y"], lrn_param=caffe_pb2.LRNParameter(local_size=3, beta=0.6)),
        _layer("BatchNorm", ["x"], ["y"],
               batch_norm_param=caffe_pb2.BatchNormParameter(use_global_stats=False)),
    ]
    for lay in cases:
        (y,) = _run(lay, x)
        assert y.dtype == np.float32, lay.type
        np.testing.assert_array_equal(x, keep, err_msg=lay.type)
    # leaky ReLU with a slope outside [0, 1] uses the general formula
    np.testing.assert_allclose(_run(cases[5], x)[0], np.where(x > 0, x, -2 * x), rtol=1e-6)
    # Power with an odd exponent: (1 + 2x)^3
    np.testing.assert_allclose(_run(cases[4], x)[0], (1 + 2 * x.astype(np.float64)) ** 3,
                               rtol=1e-5, atol=1e-5)
    # BatchNorm on batch statistics: zero mean, unit variance per channel
    y = _run(cases[-1], x)[0]
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)


def test_shape_errors_name_the_layer():
    lay = _layer("Concat", ["a", "b"], ["y"])
    with pytest.raises(ShapeError, match="layer 'L'"):
        require_layer_def(lay).infer_shapes(lay, [(2, 3, 4), (2, 3, 5)])
    lay = _layer("Reshape", ["a"], ["y"], reshape_param=caffe_pb2.ReshapeParameter(
        shape=caffe_pb2.BlobShape(dim=[0, -1, 7])))
    with pytest.raises(ShapeError, match="layer 'L'"):
        require_layer_def(lay).infer_shapes(lay, [(2, 3, 5)])
    lay = _layer("Slice", ["a"], ["y", "z"], slice_param=caffe_pb2.SliceParameter(axis=1))
    with pytest.raises(ShapeError, match="equally"):
        require_layer_def(lay).infer_shapes(lay, [(2, 3, 5)])
    lay = _layer("Eltwise", ["a", "b"], ["y"])
    with pytest.raises(ShapeError, match="broadcast"):
        require_layer_def(lay).infer_shapes(lay, [(2, 3), (2, 1)])


@pytest.mark.parametrize("slopes", [[0.0, 0.25, 1.0, 0.5], [-0.5, 0.3, 2.0, 1.0]])
def test_prelu_fast_and_general_paths(slopes):
    x = RNG.standard_normal((2, 4, 3, 5)).astype(np.float32)
    (y,) = _run(_layer("PReLU", ["x"], ["y"], blobs=[slopes]), x)
    a = np.asarray(slopes, np.float32).reshape(1, 4, 1, 1)
    np.testing.assert_array_equal(y, np.maximum(x, 0) + a * np.minimum(x, 0))
