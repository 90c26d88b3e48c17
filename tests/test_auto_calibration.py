"""Accuracy-based automatic calibration on a real model that needs fallback.

The hard model: LeNet (trained weights) with one hidden unit of ip1 made
1000x larger and the matching ip2 input column 1000x smaller.  ReLU is
positively homogeneous, so the float network computes the same function (up to
float rounding), but ip1's per-tensor weight scale and ip2's input activation
scale are now dominated by that one unit: both layers lose almost all
resolution in INT8 and top-1 accuracy collapses.  conv1/conv2 are untouched and
quantize fine, so the minimal fallback set is exactly {ip1, ip2}.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

import amct
from amct import api
from amct.auto_calibration import (AutoCalibrationEvaluatorBase, BinarySearch, CosineSimilarity,
                                   accuracy_based_auto_calibration)
from amct.data.tensors import load_idx
from amct.errors import CalibrationError
from amct.frontends.caffe import load_caffe, save_caffe
from amct.quant import record as rec
from tests.conftest import REPO

EX = REPO / "examples" / "lenet_mnist"
HARD_UNIT, FACTOR = 7, 1000.0


def _mnist(kind: str, n: int):
    x = load_idx(str(EX / f"{kind}-images-idx3-ubyte.gz"))[:n].astype(np.float32) / 256.0
    y = load_idx(str(EX / f"{kind}-labels-idx1-ubyte.gz"))[:n].astype(np.int64)
    return x.reshape(-1, 1, 28, 28), y


@pytest.fixture(scope="module")
def hard_lenet(tmp_path_factory):
    d = tmp_path_factory.mktemp("hard_lenet")
    g = load_caffe(str(EX / "mnist_deploy.prototxt"), str(EX / "lenet_iter_10000.caffemodel"))
    ip1, ip2 = g.layer("ip1"), g.layer("ip2")
    w1, b1 = ip1.blobs[0].copy(), ip1.blobs[1].copy()
    w1[HARD_UNIT] *= FACTOR
    b1[HARD_UNIT] *= FACTOR
    w2 = ip2.blobs[0].copy()
    w2[:, HARD_UNIT] /= FACTOR
    ip1.blobs = [w1, b1]
    ip2.blobs = [w2, ip2.blobs[1]]
    model, weights = str(d / "lenet_hard.prototxt"), str(d / "lenet_hard.caffemodel")
    save_caffe(g, model, weights)
    return model, weights


class Top1Evaluator(AutoCalibrationEvaluatorBase):
    """A user-style evaluator: top-1 on MNIST test images, 0.5-point tolerance."""

    def __init__(self, n_eval=1000, batch_num=2, tolerance=0.005):
        self.x, self.y = _mnist("test", n_eval)
        self.calib, _ = _mnist("calib", 64 * batch_num)
        self.batch_num, self.tolerance = batch_num, tolerance
        self.evaluations = 0

    def calibration(self, model_file, weights_file):
        net = amct.runtime.Net(model_file, weights_file, amct.runtime.TEST)
        for i in range(self.batch_num):
            net.forward(data=self.calib[i * 64:(i + 1) * 64])

    def evaluate(self, model_file, weights_file):
        self.evaluations += 1
        prog = amct.runtime.compile(load_caffe(model_file, weights_file))
        out = prog.run({"data": self.x})
        return float((out["loss"].argmax(1) == self.y).mean())

    def metric_eval(self, original_metric, new_metric):
        loss = original_metric - new_metric
        return loss <= self.tolerance, loss


def test_hard_model_is_the_same_function_in_float(hard_lenet):
    x, _ = _mnist("test", 200)
    a = amct.runtime.run(load_caffe(str(EX / "mnist_deploy.prototxt"),
                                    str(EX / "lenet_iter_10000.caffemodel")), {"data": x})["loss"]
    b = amct.runtime.run(load_caffe(*hard_lenet), {"data": x})["loss"]
    assert np.abs(a - b).max() < 1e-4


def test_finds_minimal_fallback_set(hard_lenet, tmp_path):
    model, weights = hard_lenet
    ev = Top1Evaluator()
    cfg, record = str(tmp_path / "config.json"), str(tmp_path / "record.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=ev.batch_num)
    res = accuracy_based_auto_calibration(model, weights, ev, cfg, record, str(tmp_path / "out"))

    # Plain INT8 of everything fails the tolerance (the premise of the test).
    hist = json.load(open(res.history_file))
    steps = {s["step"]: s for s in hist["steps"]}
    assert steps["all_quantized"]["ok"] is False
    assert res.original_metric - steps["all_quantized"]["metric"] > 0.05

    # The two damaged layers are ranked most sensitive, and exactly they fall back.
    assert {k for k, _ in res.ranking[:2]} == {"ip1", "ip2"}
    assert sorted(res.fallback_layers) == ["ip1", "ip2"]
    assert res.original_metric - res.final_metric <= ev.tolerance
    # float + all-quantized + bisection over k in 1..3 (two trials)
    assert res.evaluations == ev.evaluations == 4
    trials = [s for s in hist["steps"] if s["step"] == "trial"]
    assert [t["fallback_count"] for t in trials] == [2, 1]
    assert [t["ok"] for t in trials] == [True, False]

    # Minimality: no set of fewer layers meets the tolerance (brute force over
    # every smaller subset, reusing the calibration record).
    full = rec.read_record(record)
    for size in range(len(res.fallback_layers)):
        for drop in itertools.combinations(sorted(full), size):
            sub = str(tmp_path / "sub_record.txt")
            rec.write_record(sub, {k: v for k, v in full.items() if k not in drop})
            api.convert_model(model, weights, sub, str(tmp_path / "sub"))
            m = ev.evaluate(str(tmp_path / "sub_fake_quant_model.prototxt"),
                            str(tmp_path / "sub_fake_quant_weights.caffemodel"))
            assert not ev.metric_eval(res.original_metric, m)[0], f"fallback {drop} passes too"

    # Outputs: five files, final config and record without the fallback layers.
    prefix = res.save_prefix
    for suffix in ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel",
                   "_deploy_model.prototxt", "_deploy_weights.caffemodel", "_quant.json",
                   "_quant_config.json", "_record.txt", "_sensitivity.json",
                   "_fallback_history.json"):
        assert os.path.isfile(prefix + suffix), suffix
    final_cfg = json.load(open(prefix + "_quant_config.json"))
    assert final_cfg["ip1"]["quant_enable"] is False and final_cfg["ip2"]["quant_enable"] is False
    assert final_cfg["conv1"]["quant_enable"] is True
    assert sorted(rec.read_record(prefix + "_record.txt")) == ["conv1", "conv2"]
    deploy = load_caffe(prefix + "_deploy_model.prototxt", prefix + "_deploy_weights.caffemodel")
    quant_objects = {x.params.quant_param.object_layer for x in deploy.layers if x.type == "Quant"}
    dequant_objects = {x.params.dequant_param.object_layer for x in deploy.layers if x.type == "DeQuant"}
    assert quant_objects == dequant_objects == {"conv1", "conv2"}


def test_no_fallback_when_int8_already_meets_the_metric(tmp_path):
    model, weights = str(EX / "mnist_deploy.prototxt"), str(EX / "lenet_iter_10000.caffemodel")
    ev = Top1Evaluator(n_eval=500)
    cfg, record = str(tmp_path / "config.json"), str(tmp_path / "record.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=ev.batch_num)
    res = accuracy_based_auto_calibration(model, weights, ev, cfg, record, str(tmp_path / "out"),
                                          strategy=BinarySearch(), sensitivity=CosineSimilarity())
    assert res.fallback_layers == []
    assert res.evaluations == 2
    assert len(res.ranking) == 4 and all(0.5 <= s <= 1.0 for _, s in res.ranking)


def test_impossible_tolerance_is_a_clear_error(hard_lenet, tmp_path):
    model, weights = hard_lenet
    ev = Top1Evaluator(n_eval=300)
    ev.metric_eval = lambda orig, new: (False, orig - new)   # nothing is ever good enough
    cfg, record = str(tmp_path / "config.json"), str(tmp_path / "record.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=ev.batch_num)
    with pytest.raises(CalibrationError, match="no fallback set meets the metric"):
        accuracy_based_auto_calibration(model, weights, ev, cfg, record, str(tmp_path / "out"))
    hist = json.load(open(str(tmp_path / "out" / "lenet_hard_fallback_history.json")))
    assert hist["final_metric"] is None and hist["evaluations"] >= 3


def test_unknown_strategy_or_sensitivity_named(tmp_path, hard_lenet):
    model, weights = hard_lenet
    with pytest.raises(CalibrationError, match="unknown strategy 'Greedy'"):
        accuracy_based_auto_calibration(model, weights, Top1Evaluator(100), "c.json", "r.txt",
                                        str(tmp_path), strategy="Greedy")
    with pytest.raises(CalibrationError, match="unknown sensitivity"):
        accuracy_based_auto_calibration(model, weights, Top1Evaluator(100), "c.json", "r.txt",
                                        str(tmp_path), sensitivity="KL")


def test_capture_inputs_sees_each_forward():
    g = load_caffe(str(EX / "mnist_deploy.prototxt"), str(EX / "lenet_iter_10000.caffemodel"))
    x, _ = _mnist("test", 4)
    with amct.runtime.capture_inputs() as seen:
        amct.runtime.run(g, {"data": x})
        amct.runtime.run(g, {"data": x[:2]})
    amct.runtime.run(g, {"data": x})          # outside the block: not captured
    assert [s["data"].shape for s in seen] == [(4, 1, 28, 28), (2, 1, 28, 28)]
    np.testing.assert_array_equal(seen[1]["data"], x[:2])


def test_cli_auto_calibrate_on_the_hard_model(hard_lenet, tmp_path, capsys):
    from amct.cli import main

    model, weights = hard_lenet
    rc = main(["--quiet", "auto-calibrate", "--model", model, "--weights", weights,
               "--data", str(EX / "test-images-idx3-ubyte.gz"),
               "--calib-data", str(EX / "calib-images-idx3-ubyte.gz"), "--scale", "1/256",
               "--batch-size", "100", "--batch-num", "2", "--tolerance", "0.005",
               "--save-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "layers kept in float: ip2, ip1" in out
    hist = json.load(open(tmp_path / "out" / "lenet_hard_fallback_history.json"))
    assert sorted(hist["fallback_layers"]) == ["ip1", "ip2"]
    assert hist["original_metric"] - hist["final_metric"] <= 0.005
