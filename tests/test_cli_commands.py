"""The subcommands end to end on real models: inspect, evaluate, calibrate, compare, convert, demo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amct import cli
from conftest import REPO, shared_or_skip

EX = REPO / "examples" / "lenet_mnist"
LENET = ["--model", str(EX / "mnist_deploy.prototxt"), "--weights", str(EX / "lenet_iter_10000.caffemodel")]
CALIB = str(EX / "calib-images-idx3-ubyte.gz")
TEST = str(EX / "test-images-idx3-ubyte.gz")

FUSION_NET = """
name: "fz"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "bn2" type: "BatchNorm" bottom: "conv1" top: "bn2" }
layer { name: "conv2" type: "Convolution" bottom: "bn2" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "gpool" type: "Pooling" bottom: "pool" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gpool" top: "fc" inner_product_param { num_output: 3 } }
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run in a temporary cwd (amct_log/ lands there); conftest undoes the CLI's logger set-up."""
    monkeypatch.chdir(tmp_path)


def run_json(capsys, *argv) -> dict:
    assert cli.main(["--quiet", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_lenet(capsys):
    info = run_json(capsys, "inspect", *LENET)
    assert info["quantizable"] == ["conv1", "conv2", "ip1", "ip2"]
    assert info["params"] == 431080
    assert info["outputs"] == {"loss": [1, 10]}
    pool1 = next(x for x in info["layers"] if x["name"] == "pool1")
    assert pool1["quantizable"] is False and "AVE" in pool1["reason"]
    assert pool1["output_shapes"] == [[1, 20, 12, 12]]
    assert info["fusions"] == [] and info["unfused"] == []


def test_inspect_mtcnn_det1_with_input_shape(capsys):
    d = shared_or_skip("models", "mtcnn")
    info = run_json(capsys, "inspect", "--model", str(d / "det1.prototxt"), "--weights",
                    str(d / "det1.caffemodel"), "--input-shape", "data:1,3,49,61")
    assert info["quantizable"] == ["conv1", "conv2", "conv3", "conv4-1", "conv4-2"]
    shapes = {x["name"]: x["output_shapes"][0] for x in info["layers"]}
    assert shapes["pool1"] == [1, 10, 24, 30] and shapes["prob1"] == [1, 2, 20, 26]
    assert info["params"] == 6632


def test_inspect_fusions_and_why_not(tmp_path, capsys):
    (tmp_path / "fz.prototxt").write_text(FUSION_NET)
    info = run_json(capsys, "inspect", "--model", str(tmp_path / "fz.prototxt"))
    assert info["fusions"] == [{"kind": "conv_bn_scale", "target": "conv1", "merged": ["bn1", "sc1"]}]
    (un,) = info["unfused"]
    assert un["layer"] == "bn2"
    assert "ReLU 'relu1' is not a Convolution" in un["reason"] and "pads its input" in un["reason"]
    by = {x["name"]: x for x in info["layers"]}
    assert by["pool"]["quantizable"] and by["gpool"]["reason"] == "global Pooling"
    assert by["conv1"]["params"] == 4 * 3 * 9 + 4 and by["bn2"]["params"] == 4 + 4 + 1
    assert cli.main(["inspect", "--model", str(tmp_path / "fz.prototxt")]) == 0
    text = capsys.readouterr().out
    assert "conv1 + bn1 + sc1 -> conv1" in text and "bn2 (BatchNorm):" in text


def test_evaluate_matches_caffe_on_golden_lenet(tmp_path, capsys):
    case = shared_or_skip("golden", "real_lenet")
    io = np.load(case / "io.npz")
    np.save(tmp_path / "x.npy", io["in:data"])
    np.save(tmp_path / "y.npy", io["label"])
    expected = int((io["blob:loss"].argmax(axis=1) == io["label"]).sum())   # BVLC Caffe's own outputs
    res = run_json(capsys, "evaluate", *LENET, "--data", str(tmp_path / "x.npy"), "--labels",
                   str(tmp_path / "y.npy"), "--batch-size", "5")
    assert res["samples"] == 16 and res["top1_correct"] == expected


def test_evaluate_300_idx_images(capsys):
    from amct.data import load_idx
    from amct.frontends.caffe import load_caffe
    from amct.runtime import run

    imgs = load_idx(TEST)[:300].astype(np.float32)[:, None] / 256
    labels = load_idx(TEST.replace("images-idx3", "labels-idx1"))[:300]
    g = load_caffe(LENET[1], LENET[3])
    probs = run(g, {"data": imgs})["loss"]
    top1 = int((probs.argmax(1) == labels).sum())
    top5 = int((np.argsort(-probs, 1)[:, :5] == labels[:, None]).any(1).sum())
    res = run_json(capsys, "evaluate", *LENET, "--data", TEST, "--scale", "1/256", "--batch-size", "100",
                   "--batch-num", "3")
    assert (res["samples"], res["top1_correct"], res["top5_correct"]) == (300, top1, top5)
    assert top1 > 290


def test_evaluate_without_labels_is_a_data_error(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    assert cli.main(["evaluate", *LENET, "--data", str(tmp_path / "x.npy")]) == 2
    assert "x.npy: no labels" in capsys.readouterr().err


def _check_report(prefix: Path, n_samples: int, accuracy: bool):
    rep = json.loads(Path(f"{prefix}_report.json").read_text())
    assert [x["layer"] for x in rep["layers"]] == ["conv1", "conv2", "ip1", "ip2"]
    assert rep["data"]["samples"] == n_samples
    for x in rep["layers"]:
        assert x["fake_quant"]["cosine"] > 0.999 and x["fake_quant"]["sqnr_db"] > 30
        assert x["deploy"]["cosine"] > 0.999 and 0 <= x["clip_ratio"] < 0.01
        assert -128 <= x["offset_d"] <= 127 and x["scale_d"] > 0
    conv1 = rep["layers"][0]
    assert conv1["channel_wise"] and conv1["scale_w_min"] < conv1["scale_w_max"]
    (out,) = rep["outputs"]
    assert out["classifier"] and out["top1_agreement"]["fake_quant"] >= 0.98
    if accuracy:
        assert set(out["accuracy"]) == {"float", "fake_quant", "deploy"}
    md = Path(f"{prefix}_report.md").read_text()
    assert "| `ip1` | InnerProduct |" in md
    assert Path(f"{prefix}_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rep


def test_calibrate_writes_five_files_and_report(tmp_path, capsys):
    prefix = tmp_path / "out" / "lenet"
    assert cli.main(["--quiet", "calibrate", *LENET, "--data_dir", CALIB, "--scale", "0.00390625",
                     "--batch-size", "40", "--batch_num", "2", "--save_path", str(prefix)]) == 0
    for suffix in ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel", "_deploy_model.prototxt",
                   "_deploy_weights.caffemodel", "_quant.json"):
        assert Path(f"{prefix}{suffix}").is_file(), suffix
    rep = _check_report(prefix, 80, accuracy=True)
    cfg = json.loads((tmp_path / "out" / "lenet_work" / "config.json").read_text())
    assert cfg["batch_num"] == 2
    out = capsys.readouterr().out
    assert "lenet_quant.json" in out and "report:" in out

    # compare the same models on other (test) images; explicit report prefix
    assert cli.main(["--quiet", "compare", *LENET, "--data", TEST, "--scale", "1/256", "--batch-size", "100",
                     "--batch-num", "2", "--save-path", str(prefix), "--report", str(tmp_path / "cmp")]) == 0
    rep = _check_report(tmp_path / "cmp", 200, accuracy=True)
    acc = rep["outputs"][0]["accuracy"]
    assert acc["float"] > 0.97 and abs(acc["fake_quant"] - acc["float"]) <= 0.02
    assert all(x["clip_reach"] <= 2.0 for x in rep["layers"])
    assert "warning: the data reach" not in capsys.readouterr().out

    # Pixels 8 times brighter than calibration saw: compare says where the data left the ranges.
    assert cli.main(["--quiet", "compare", *LENET, "--data", TEST, "--scale", "1/32", "--batch-size", "100",
                     "--batch-num", "1", "--save-path", str(prefix), "--report", str(tmp_path / "hot")]) == 0
    hot = json.loads((tmp_path / "hot_report.json").read_text())
    conv1 = next(x for x in hot["layers"] if x["layer"] == "conv1")
    assert 7.0 < conv1["clip_reach"] < 8.1 and conv1["clip_ratio"] > 0.05
    (warning,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning:")]
    assert "the data reach beyond 2x the calibrated range at " in warning and "'conv1' (8.0" in warning
    assert "## Data beyond the calibrated ranges" in (tmp_path / "hot_report.md").read_text()

    # convert from the record calibration wrote gives the same factors
    rec = tmp_path / "out" / "lenet_work" / "record.txt"
    assert cli.main(["--quiet", "convert", *LENET, "--record", str(rec), "--save-path", str(tmp_path / "cv" / "x")]) == 0
    a = json.loads(Path(f"{prefix}_quant.json").read_text())
    b = json.loads((tmp_path / "cv" / "x_quant.json").read_text())
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_calibrate_hfmg_skip_layers_without_plot(tmp_path, capsys, monkeypatch):
    import amct.report.plot as plot

    monkeypatch.setattr(plot, "plot_available", lambda: False)
    prefix = tmp_path / "h"
    assert cli.main(["--quiet", "calibrate", *LENET, "--data", CALIB, "--scale", "1/256", "--batch-size", "50",
                     "--batch-num", "1", "--algo", "hfmg", "--skip-layers", "ip2", "--save-path", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "pip install 'amct[plot]'" in out
    assert not Path(f"{prefix}_report.png").exists() and Path(f"{prefix}_report.md").exists()
    rep = json.loads(Path(f"{prefix}_report.json").read_text())
    assert [x["layer"] for x in rep["layers"]] == ["conv1", "conv2", "ip1"]
    cfg = json.loads((tmp_path / "h_work" / "config.json").read_text())
    assert cfg["ip2"]["quant_enable"] is False and cfg["conv1"]["activation_quant_params"]["act_algo"] == "hfmg"


def test_calibrate_bias_correction_and_weight_rounding_switches(tmp_path, capsys):
    import amct

    base = ["--quiet", "calibrate", *LENET, "--data", CALIB, "--scale", "1/256", "--batch-size", "50",
            "--batch-num", "2", "--no-report"]
    runs = {"default": [], "nearest": ["--weight-rounding", "nearest"],
            "plain": ["--weight-rounding", "nearest", "--no-bias-correction"]}
    for name, extra in runs.items():
        assert cli.main([*base, *extra, "--save-path", str(tmp_path / name / "l")]) == 0
    rec = tmp_path / "plain" / "l_work" / "record.txt"
    for name in ("default", "nearest"):
        assert rec.read_bytes() == (tmp_path / name / "l_work" / "record.txt").read_bytes()
    # Both off: AMCT's flow, so convert from its record rebuilds the same deploy model.
    assert cli.main(["--quiet", "convert", *LENET, "--record", str(rec), "--save-path", str(tmp_path / "cv" / "l")]) == 0
    for suffix in ("_deploy_model.prototxt", "_deploy_weights.caffemodel"):
        assert Path(f"{tmp_path}/plain/l{suffix}").read_bytes() == Path(f"{tmp_path}/cv/l{suffix}").read_bytes()
    dep = {k: amct.load_caffe(f"{tmp_path}/{k}/l_deploy_model.prototxt", f"{tmp_path}/{k}/l_deploy_weights.caffemodel")
           for k in runs}
    layers = ("conv1", "conv2", "ip1", "ip2")

    def moved(a, b, blob):
        return [n for n in layers if not np.array_equal(dep[a].layer(n).blobs[blob], dep[b].layer(n).blobs[blob])]

    # Bias correction alone: the int32 biases of the layers before the head move, nothing else.
    assert moved("nearest", "plain", 1) == ["conv1", "conv2", "ip1"]
    assert moved("nearest", "plain", 0) == []
    # GPTQ rounding (the default) re-chooses the int8 weights of every layer.
    assert moved("default", "nearest", 0) == list(layers)


def test_calibrate_too_few_batches_names_the_data(capsys):
    assert cli.main(["--quiet", "calibrate", *LENET, "--data", CALIB, "--batch-size", "100", "--batch-num", "9",
                     "--save-path", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs 9 batches" in err and "calib-images-idx3-ubyte.gz (300 samples)" in err


def test_demo(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "fp32 (original model)" in out and "INT8 deploy-model simulation" in out
    rep = json.loads((tmp_path / "demo" / "lenet_report.json").read_text())
    acc = rep["outputs"][0]["accuracy"]
    assert rep["outputs"][0]["labelled_samples"] == 1000
    assert acc["float"] > 0.97 and acc["fake_quant"] > 0.97 and acc["deploy"] > 0.97
