"""Real depthwise nets end to end: WeChat's QR-code detector and QR super-resolution net.

Both are trained models as OpenCV's wechat_qrcode module ships them (copied into
tests/data/wechat_qrcode, see tests/data/NOTE.md): the detector is an SSD with 22 depthwise
convolutions, BatchNorm/Scale and Eltwise; the super-resolution net has a depthwise
*Deconvolution* (group 32, stride 2), whose Caffe weight layout [Cin, Cout/g, kh, kw] the
per-channel weight quantization has to turn around.  Their inputs are the shared real photos
in grey with a QR-like code pasted in (``bench/external.py``'s ``with_code``), so the detector
has something to find.

Thresholds sit a little under what bench/external.py measures on 40 such images
(docs/benchmarks_ort.md).
"""
from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest

pytest.importorskip("PIL")

from conftest import DATA, REPO, shared_or_skip  # noqa: E402

import amct  # noqa: E402
from amct.frontends.caffe import load_caffe  # noqa: E402
from amct.quant import read_record  # noqa: E402
from amct.runtime import run  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from external import matched_detections, with_code  # noqa: E402
from test_emit_real_models import _cos, assert_layerwise_deploy_matches_fake  # noqa: E402

QR = DATA / "wechat_qrcode"


def _scenes(names: list[str], size: int, copies: int = 2) -> np.ndarray:
    """Grey photos (shared/models/images), each ``copies`` times with a different
    QR-like code pasted in, scaled by 1/255 as OpenCV feeds these nets;
    (N, 1, size, size)."""
    from PIL import Image

    images = shared_or_skip("models", "images")
    out = []
    for name in names:
        grey = Image.open(images / name).convert("L").resize((size, size), Image.BILINEAR)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        out += [with_code(np.asarray(grey, np.float32)[:, :, None], rng) for _ in range(copies)]
    return (np.stack(out).transpose(0, 3, 1, 2) / 255.0).astype(np.float32)


# The images of bench/accuracy.py: calibration and evaluation on different photos.
CALIB = ["cat.jpg", "000001.jpg", "000456.jpg"]
EVAL = ["fish-bike.jpg", "004545.jpg"]


def _depthwise(graph, kind: str) -> dict[str, int]:
    """name -> channels of every layer of type ``kind`` with group == channels > 1."""
    shapes = graph.infer_value_shapes()
    flow = graph.dataflow()
    found = {}
    for layer in graph.layers:
        if layer.type != kind:
            continue
        group = layer.params.convolution_param.group
        channels = shapes[flow.inputs[id(layer)][0]][1]
        if group > 1 and group == channels == layer.params.convolution_param.num_output:
            found[layer.name] = channels
    return found


def _quantize(tmp_path, stem: str, size: int):
    model, weights = str(QR / f"{stem}.prototxt"), str(QR / f"{stem}.caffemodel")
    calib = [_scenes([name], size) for name in CALIB]
    res = amct.quantize(model, weights, calib, str(tmp_path / stem))
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert written == sorted(f"{stem}_{suffix}" for suffix in (
        "fake_quant_model.prototxt", "fake_quant_weights.caffemodel",
        "deploy_model.prototxt", "deploy_weights.caffemodel", "quant.json"))
    graphs = {"fp32": load_caffe(model, weights),
              "fake": load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"]),
              "deploy": load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])}
    return res, graphs


def _per_channel_weights(res, graphs, kind: str, minimum: int) -> None:
    """Every depthwise layer of ``kind`` is quantized with one weight scale per channel."""
    dw = _depthwise(graphs["fp32"], kind)
    assert len(dw) >= minimum, dw
    record = read_record(res.record_file)
    for name, channels in dw.items():
        assert name in res.layers, name
        scale_w = np.asarray(record[name].scale_w)
        assert scale_w.shape == (channels,), (name, scale_w.shape)
        assert len(np.unique(scale_w)) > 1, name       # really per channel


def test_qr_detector_depthwise_ssd(tmp_path) -> None:
    res, graphs = _quantize(tmp_path, "detect", 384)
    _per_channel_weights(res, graphs, "Convolution", 22)
    x = {"data": _scenes(EVAL, 384)}
    blobs = ["mbox_loc", "mbox_conf_flatten", "detection_output"]
    outs = {k: run(g, x, keep=blobs) for k, g in graphs.items()}
    assert _cos(outs["fp32"]["mbox_loc"], outs["fake"]["mbox_loc"]) >= 0.995
    assert _cos(outs["fp32"]["mbox_conf_flatten"], outs["fake"]["mbox_conf_flatten"]) >= 0.99995
    n_ref, _, found = matched_detections([outs["fp32"]["detection_output"]],
                                         [outs["fake"]["detection_output"]])
    assert n_ref >= 2 * len(EVAL) and found == n_ref      # every pasted code, found again
    n_ref, _, found = matched_detections([outs["fp32"]["detection_output"]],
                                         [outs["deploy"]["detection_output"]])
    assert found == n_ref
    assert assert_layerwise_deploy_matches_fake(graphs["fake"], graphs["deploy"], x) \
        == len(res.layers)


def test_qr_super_resolution_depthwise_deconvolution(tmp_path) -> None:
    # Fully convolutional: 128 x 128 crops instead of the declared 224 keep the test short.
    res, graphs = _quantize(tmp_path, "sr", 128)
    _per_channel_weights(res, graphs, "Deconvolution", 1)
    x = {"data": _scenes(EVAL, 128)}
    outs = {k: run(g, x)["fc"] for k, g in graphs.items()}
    assert outs["fp32"].shape == (2 * len(EVAL), 1, 255, 255)   # Caffe: 2·(128−1) + 3 − 2·1
    assert _cos(outs["fp32"], outs["fake"]) >= 0.998
    assert _cos(outs["fake"], outs["deploy"]) >= 0.99999
    assert assert_layerwise_deploy_matches_fake(graphs["fake"], graphs["deploy"], x) \
        == len(res.layers)
