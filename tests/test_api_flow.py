"""The AMCT-compatible flow end to end on real models (SPEC §1-2)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import amct
from amct.errors import ConfigError, QuantizationError, RecordError
from amct.quant.record import read_record
from conftest import shared_or_skip

OUT_SUFFIXES = ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel",
                "_deploy_model.prototxt", "_deploy_weights.caffemodel", "_quant.json")


def golden(case):
    d = shared_or_skip("golden", case)
    io = np.load(d / "io.npz")
    return str(d / "net.prototxt"), str(d / "weights.caffemodel"), io


def flow(tmp, model, weights, batches, batch_num=None, **kw):
    """create_quant_config -> init -> quantize_model -> Net forwards -> save_model."""
    batch_num = batch_num or len(batches)
    cfg, rec = str(tmp / "cfg" / "config.json"), str(tmp / "cfg" / "record.txt")
    os.makedirs(tmp / "cfg", exist_ok=True)
    amct.create_quant_config(cfg, model, weights, batch_num=batch_num, **kw)
    g = amct.init(cfg, model, weights, rec)
    amct.quantize_model(g, str(tmp / "tmp" / "modified.prototxt"),
                        str(tmp / "tmp" / "modified.caffemodel"))
    net = amct.runtime.Net(str(tmp / "tmp" / "modified.prototxt"),
                           str(tmp / "tmp" / "modified.caffemodel"))
    for b in batches:
        net.forward(**b)
    amct.save_model(g, "Both", str(tmp / "out" / "net"))
    return g, rec, str(tmp / "out" / "net")


def outputs(prefix, feeds):
    fake = amct.runtime.Net(prefix + OUT_SUFFIXES[0], prefix + OUT_SUFFIXES[1]).forward(**feeds)
    dep = amct.runtime.Net(prefix + OUT_SUFFIXES[2], prefix + OUT_SUFFIXES[3]).forward(**feeds)
    return fake, dep


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    model, weights, io = golden("real_lenet")
    x = io["in:data"]
    tmp = tmp_path_factory.mktemp("lenet")
    g, rec, prefix = flow(tmp, model, weights, [{"data": x[:8]}, {"data": x[8:]}])
    return model, weights, x, g, rec, prefix, tmp


def test_lenet_five_files_and_accuracy(lenet):
    model, weights, x, g, rec, prefix, _ = lenet
    for s in OUT_SUFFIXES:
        assert os.path.getsize(prefix + s) > 0
    record = read_record(rec)
    assert sorted(record) == ["conv1", "conv2", "ip1", "ip2"]
    assert all(r.has_activation and r.has_weights for r in record.values())
    assert record["conv1"].scale_w.size == 20 and record["ip1"].scale_w.size == 1
    assert (record["conv1"].channels, record["conv1"].height, record["conv1"].width) == (1, 28, 28)
    ref = amct.runtime.Net(model, weights).forward(data=x)["loss"]
    fake, dep = outputs(prefix, {"data": x})
    assert (fake["loss"].argmax(1) == ref.argmax(1)).all()
    assert np.abs(fake["loss"] - dep["loss"]).max() < 1e-3
    info = json.load(open(prefix + "_quant.json"))
    assert list(info["layers"]) == ["conv1", "conv2", "ip1", "ip2"]
    assert info["layers"]["conv1"]["quant_layer"] == "conv1_quant_layer"
    text = open(prefix + "_deploy_model.prototxt").read()
    assert text.count('type: "Quant"') == 4 and text.count('type: "DeQuant"') == 4


def test_lenet_is_deterministic_and_convert_model_matches(lenet, tmp_path):
    model, weights, x, _, rec, prefix, tmp = lenet
    _, rec2, prefix2 = flow(tmp_path, model, weights, [{"data": x[:8]}, {"data": x[8:]}])
    assert open(rec, "rb").read() == open(rec2, "rb").read()
    for s in OUT_SUFFIXES:
        assert open(prefix + s, "rb").read() == open(prefix2 + s, "rb").read(), s
    # The modified models differ only by the absolute record path they carry.
    m1 = open(tmp / "tmp" / "modified.prototxt").read().replace(str(tmp), "T")
    assert m1 == open(tmp_path / "tmp" / "modified.prototxt").read().replace(str(tmp_path), "T")
    assert f'record_file_path: "{rec}"' in open(tmp / "tmp" / "modified.prototxt").read()
    # convert_model from the calibrated record rebuilds the very same models.
    conv = str(tmp_path / "conv" / "net")
    amct.convert_model(model, weights, rec, conv)
    for s in OUT_SUFFIXES[:4]:
        assert open(prefix + s, "rb").read() == open(conv + s, "rb").read(), s
    with pytest.raises(QuantizationError, match="already quantized"):
        amct.convert_model(prefix + OUT_SUFFIXES[0], prefix + OUT_SUFFIXES[1], rec, conv)


def test_save_model_refuses_incomplete_calibration(lenet, tmp_path):
    model, weights, x, *_ = lenet
    cfg, rec = str(tmp_path / "c.json"), str(tmp_path / "r.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=2, skip_layers=["ip2"])
    assert json.load(open(cfg))["ip2"]["quant_enable"] is False
    g = amct.init(cfg, model, weights, rec)
    amct.quantize_model(g, str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))
    amct.runtime.Net(str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel")).forward(data=x)
    with pytest.raises(RecordError, match="conv1, conv2, ip1"):
        amct.save_model(g, "Both", str(tmp_path / "out" / "net"))
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    with pytest.raises(QuantizationError, match="already ran"):
        amct.quantize_model(g, str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))
    with pytest.raises(ConfigError, match="save_type"):
        amct.save_model(g, "int8", str(tmp_path / "out" / "net"))


@pytest.mark.parametrize("kw, match", [
    ({"skip_layers": ["conv1", "conv1"]}, "duplicate layer name.*conv1"),
    ({"skip_layers": ["ghost"]}, "no layer named 'ghost'"),
    ({"skip_layers": ["relu1"]}, "layer 'relu1' is of type 'ReLU'"),
    ({"skip_layers": ["conv1", "conv2", "ip1", "ip2"]}, "every quantizable layer is skipped"),
    ({"batch_num": 0}, "batch_num must be a positive integer"),
])
def test_create_quant_config_errors(lenet, tmp_path, kw, match):
    model, weights, *_ = lenet
    with pytest.raises(ValueError, match=match):
        amct.create_quant_config(str(tmp_path / "c.json"), model, weights, **kw)


def test_mtcnn_det1(tmp_path):
    model, weights, io = golden("real_mtcnn_det1")
    x = io["in:data"]
    _, rec, prefix = flow(tmp_path, model, weights, [{"data": x}])
    assert sorted(read_record(rec)) == ["conv1", "conv2", "conv3", "conv4-1", "conv4-2"]
    fake, dep = outputs(prefix, {"data": x})
    for k in ("prob1", "conv4-2"):
        assert cosine(fake[k], io[f"blob:{k}"]) > 0.99
        assert np.abs(fake[k] - dep[k]).max() < 1e-2 * np.abs(fake[k]).max()


def test_resblock_fuses_in_place_bn_scale(tmp_path):
    model, weights, io = golden("chain_resblock")
    x = io["in:data"]
    _, rec, prefix = flow(tmp_path, model, weights, [{"data": x}])
    info = json.load(open(prefix + "_quant.json"))
    assert [f["merged"] for f in info["fusions"]] == [["bn1", "scale1"], ["bn2", "scale2"]]
    assert info["layers"]["conv1"]["original_layers"] == ["conv1", "bn1", "scale1"]
    text = open(prefix + "_fake_quant_model.prototxt").read()
    assert "BatchNorm" not in text and '"Scale"' not in text
    fake, dep = outputs(prefix, {"data": x})
    assert cosine(fake["res"], io["blob:res"]) > 0.99


def test_ultraface_depthwise_hfmg(tmp_path):
    d = shared_or_skip("models", "ultraface_slim320")
    model, weights = str(d / "slim-320.prototxt"), str(d / "slim-320.caffemodel")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 120, 160)).astype(np.float32)
    res = amct.quantize(model, weights, [x], str(tmp_path / "out" / "uf"), algo="hfmg",
                        save_type="Fakequant")
    g = amct.load_caffe(model, weights)
    dw = [x_ for x_ in g.layers if x_.type == "Convolution"
          and x_.params.convolution_param.group > 1]
    assert dw, "UltraFace has depthwise convolutions"
    for layer in dw:
        assert res.layers[layer.name].scale_w.size == layer.params.convolution_param.num_output
    assert set(res.outputs) == {"fake_model", "fake_weights", "quant_json"}
    info = json.load(open(res.outputs["quant_json"]))
    assert {v["act_algo"] for v in info["layers"].values()} == {"hfmg"}
    ref = amct.runtime.Net(model, weights).forward(input=x)
    fake = amct.runtime.Net(res.outputs["fake_model"], res.outputs["fake_weights"]).forward(input=x)
    assert cosine(fake["scores"], ref["scores"]) > 0.98


def test_layer_table_matches_record_and_measures_cosine(lenet):
    model, weights, x, g, rec, prefix, tmp = lenet
    table = amct.api.layer_table(model, weights, prefix, [x[:8], x[8:]])
    record = read_record(rec)
    assert [r["layer"] for r in table] == ["conv1", "conv2", "ip1", "ip2"]
    for row in table:
        r = record[row["layer"]]
        assert row["scale_d"] == pytest.approx(r.scale_d, rel=1e-6)
        assert row["offset_d"] == r.offset_d
        assert row["scale_w_min"] == pytest.approx(float(np.min(r.scale_w)), rel=1e-6)
        assert row["scale_w_max"] == pytest.approx(float(np.max(r.scale_w)), rel=1e-6)
        assert 0.0 <= row["clip_ratio"] < 0.01
        # LeNet quantizes well: every layer's fake-quant output is close to float,
        # and the deploy simulation agrees with fake-quant.
        assert 0.999 < row["fake_quant"]["cosine"] <= 1.0 + 1e-9
        assert 0.999 < row["deploy"]["cosine"] <= 1.0 + 1e-9
