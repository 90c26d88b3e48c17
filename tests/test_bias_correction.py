"""Bias correction (amct/bias_correction.py): hand-computed shifts, the shrinkage
rule, the sequential sweep, the API and the effect on real models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import amct
from amct.bias_correction import (float_output_means, measure_shifts, shrunk_shift,
                                   sweep_bytes_per_input)
from amct.errors import ConfigError, DataError, QuantizationError
from amct.ir import Graph, Layer
from amct.quant.rounding import round_half_away
from conftest import bench_accuracy, fake_quant_cosines, shared_or_skip


# ---------------------------------------------------------------- shrinkage
@pytest.mark.parametrize("diff, counts, want", [
    ([[0.3]], [5], 0.3),                 # one batch: no spread to measure, kept whole
    ([[1.0], [1.0]], [1, 1], 1.0),       # batches agree: kept whole
    ([[1.0], [-1.0]], [1, 1], 0.0),      # mean 0
    # d = 1, spread var 1, b_eff 2 -> se² = 1 / (2 - 1) = 1 = d²: dropped
    ([[2.0], [0.0]], [1, 1], 0.0),
    # d = 2, var 1, se² 1: keep 1 - 1/4 = 0.75 -> 1.5
    ([[3.0], [1.0]], [1, 1], 1.5),
    # weights .75/.25: d = 2, var = .75·1 + .25·9 = 3, b_eff = 1/.625 = 1.6,
    # se² = 3 / .6 = 5 > d² = 4: dropped
    ([[1.0], [5.0]], [3, 1], 0.0),
])
def test_shrunk_shift_by_hand(diff, counts, want) -> None:
    got = shrunk_shift(np.array(diff, np.float64), np.array(counts, np.float64))
    assert got.shape == (1,)
    assert got[0] == pytest.approx(want, abs=1e-12)


def test_shrunk_shift_is_per_channel() -> None:
    diff = np.array([[3.0, 1.0], [1.0, -1.0]])
    np.testing.assert_allclose(shrunk_shift(diff, np.array([1.0, 1.0])), [1.5, 0.0])


# ------------------------------------------------------- hand-built network
def _ip(name: str, bottom: str, w: float, b: float) -> Layer:
    layer = Layer(name, "InnerProduct", [bottom], [name],
                  [np.array([[w]], np.float32), np.array([b], np.float32)])
    layer.params.inner_product_param.num_output = 1
    return layer


def _quant(name: str, bottom: str, obj: str, step: float) -> Layer:
    q = Layer(name, "Quant", [bottom], [name])
    p = q.params.quant_param
    p.scale, p.offset, p.with_offset, p.object_layer = 1.0 / step, bytes([0]), True, obj
    return q


def _dequant(name: str, top: str, obj: str) -> Layer:
    one = np.ones(1, np.float32)
    d = Layer(name, "DeQuant", [top], [top], [one, 0 * one, 0 * one])
    p = d.params.dequant_param
    p.channel_wise, p.object_layer, p.layer_type = False, obj, "InnerProduct"
    return d


def _input() -> Layer:
    data = Layer("data", "Input", [], ["data"])
    data.params.input_param.shape.add().dim.extend([4, 1])
    return data


def _nets() -> tuple[Graph, Graph]:
    """float: data -> ip1 (2x + 1) -> ip2 (y); fake: a Quant of step 0.5 before each."""
    flt = Graph("float", [_input(), _ip("ip1", "data", 2.0, 1.0), _ip("ip2", "ip1", 1.0, 0.0)])
    fake = Graph("fake", [_input(), _quant("q1", "data", "ip1", 0.5), _ip("ip1", "q1", 2.0, 1.0),
                          _dequant("dq1", "ip1", "ip1"), _quant("q2", "ip1", "ip2", 0.5),
                          _ip("ip2", "q2", 1.0, 0.0), _dequant("dq2", "ip2", "ip2")])
    return flt, fake


def test_sequential_shifts_by_hand() -> None:
    # x = .2, .2, .7, .7.  Quant (step .5, half away from zero): 0, 0, .5, .5.
    # ip1 float 1.4, 1.4, 2.4, 2.4 (mean 1.9); fake 1, 1, 2, 2 (mean 1.5):
    #   shift -0.4, bias 1 -> 1.4, and ip1's fake output is then the float one.
    # ip2 reads the corrected 1.4, 1.4, 2.4, 2.4; its Quant gives 1.5, 1.5,
    #   2.5, 2.5 (mean 2.0) against float 1.9: shift +0.1, bias 0 -> -0.1.
    #   (Measured on the uncorrected ip1, 1, 1, 2, 2, it would be -0.4.)
    flt, fake = _nets()
    feeds = [{"data": np.array([[0.2], [0.2], [0.7], [0.7]], np.float32)}]
    shifts = measure_shifts(fake, float_output_means(flt, ["ip1", "ip2"], feeds), feeds)
    assert shifts["ip1"] == pytest.approx([-0.4], abs=1e-6)
    assert shifts["ip2"] == pytest.approx([0.1], abs=1e-6)
    assert fake.layer("ip1").blobs[1] == pytest.approx([1.4], abs=1e-6)
    assert fake.layer("ip2").blobs[1] == pytest.approx([-0.1], abs=1e-6)


def test_batches_of_different_sizes() -> None:
    # Each batch size gets a program of its own; the result is the one-batch result
    # because both batches see the same values (no spread, nothing shrunk).
    flt, fake = _nets()
    x = np.array([[0.2], [0.7]], np.float32)
    feeds = [{"data": x}, {"data": np.concatenate([x, x])}]
    shifts = measure_shifts(fake, float_output_means(flt, ["ip1", "ip2"], feeds), feeds)
    assert shifts["ip1"] == pytest.approx([-0.4], abs=1e-6)
    assert shifts["ip2"] == pytest.approx([0.1], abs=1e-6)


def test_sweep_memory_per_input_by_hand() -> None:
    # After ip1's DeQuant (layer 3) later layers read only ip1's output, (4, 1)
    # float32 = 16 bytes for a batch of 4; after ip2's (layer 6), nothing.
    _, fake = _nets()
    assert sweep_bytes_per_input(fake, [3], {"data": (4, 1)}) == 4
    assert sweep_bytes_per_input(fake, [6], {"data": (4, 1)}) == 0
    assert sweep_bytes_per_input(fake, [3, 6], {"data": (8, 1)}) == 4


# ------------------------------------------------------------ through the API
def _calibrated(tmp, x):
    """LeNet through create_quant_config .. the calibration forwards, on one batch."""
    d = shared_or_skip("golden", "real_lenet")
    model, weights = str(d / "net.prototxt"), str(d / "weights.caffemodel")
    cfg, rec = str(tmp / "config.json"), str(tmp / "record.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=1)
    g = amct.init(cfg, model, weights, rec)
    amct.quantize_model(g, str(tmp / "m.prototxt"), str(tmp / "m.caffemodel"))
    amct.runtime.Net(str(tmp / "m.prototxt"), str(tmp / "m.caffemodel")).forward(data=x)
    return g, model, weights


def _means(model: str, weights: str, names, x) -> dict[str, np.ndarray]:
    g = amct.load_caffe(model, weights)
    return {k: v.overall for k, v in float_output_means(g, names, [{"data": x}]).items()}


def _deq_scale(entry: dict) -> np.ndarray:
    """deq_scale = scale_d · scale_w in float32 (SPEC §4.5), per channel."""
    return (np.float32(entry["scale_d"]) * np.asarray(entry["scale_w"], np.float32)).astype(
        np.float64)


@pytest.fixture(scope="module")
def lenet_x():
    d = shared_or_skip("golden", "real_lenet")
    return np.load(d / "io.npz")["in:data"]


def test_lenet_corrected_layers_match_float_means(lenet_x, tmp_path) -> None:
    # One batch: nothing is shrunk, so every corrected layer of the saved
    # fake-quant model has the float model's channel means on that batch, up
    # to the int32 rounding of its own bias and of the biases before it.
    g, model, weights = _calibrated(tmp_path, lenet_x)
    plain = amct.save_model(g, "Fakequant", str(tmp_path / "plain" / "lenet"))
    shifts = amct.correct_bias(g, [lenet_x])
    assert [s.layer for s in shifts] == ["conv1", "conv2", "ip1"]     # ip2 is the head
    fixed = amct.save_model(g, "Both", str(tmp_path / "fixed" / "lenet"))
    names = [s.layer for s in shifts]
    ref = _means(model, weights, names, lenet_x)
    before = _means(plain["fake_model"], plain["fake_weights"], names, lenet_x)
    after = _means(fixed["fake_model"], fixed["fake_weights"], names, lenet_x)
    info = json.loads(Path(fixed["quant_json"]).read_text())["layers"]
    for s in shifts:
        lsb = _deq_scale(info[s.layer])
        err_before = np.abs(before[s.layer] - ref[s.layer])
        err_after = np.abs(after[s.layer] - ref[s.layer])
        # The first layer: its own int32 rounding only (measured 0.8 LSB, from
        # 130 before).  Later layers also see the rounding of the biases before
        # them, through their own Quant: the largest channel error shrinks
        # 166-fold on conv2 and 14-fold on ip1 (measured).
        if s is shifts[0]:
            assert err_after.max() <= lsb.max(), (s.layer, (err_after / lsb).max())
        assert err_before.max() > 10 * err_after.max(), s.layer
        assert err_before.mean() > 10 * err_after.mean(), s.layer
    # The first layer's shift is the error it had (later ones are measured
    # after the corrections before them, so theirs differ).
    first = shifts[0].layer
    np.testing.assert_allclose(shifts[0].shift, before[first] - ref[first], rtol=1e-4,
                               atol=1e-3 * _deq_scale(info[first]).max())
    # The deploy model carries the corrected bias as int32: bias_q = round(b / deq_scale).
    dep = amct.load_caffe(fixed["deploy_model"], fixed["deploy_weights"])
    fused = {x.name: x for x in g.layers}
    for s in shifts:
        b = np.asarray(fused[s.layer].blobs[1], np.float64)
        deq = _deq_scale(info[s.layer])
        bias_q = dep.layer(s.layer).blobs[1]
        assert bias_q.dtype == np.int32
        np.testing.assert_array_equal(bias_q, round_half_away(b / deq).astype(np.int32))


def test_memory_budget_keeps_the_first_batches(lenet_x, tmp_path, caplog) -> None:
    # A budget below one batch: the correction measures on the first batch
    # alone, exactly as if it had been given only that one.
    import logging

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    g, _, _ = _calibrated(tmp_path / "a", lenet_x)
    read = []

    def batches():                      # read lazily: the second batch is read, not used
        for b in (lenet_x[:8], lenet_x[8:], None):
            read.append(b is not None)
            yield b

    with caplog.at_level(logging.INFO, logger="amct.bias_correction"):
        capped = amct.correct_bias(g, batches(), memory_budget=1)
    assert "measuring on the first 1 batches" in caplog.text
    assert read == [True, True]         # stopped before asking for a third
    g2, _, _ = _calibrated(tmp_path / "b", lenet_x)
    alone = amct.correct_bias(g2, [lenet_x[:8]])
    assert [s.layer for s in capped] == [s.layer for s in alone]
    for a, b in zip(capped, alone):
        np.testing.assert_array_equal(a.shift, b.shift)


def test_correct_bias_errors(lenet_x, tmp_path) -> None:
    d = shared_or_skip("golden", "real_lenet")
    model, weights = str(d / "net.prototxt"), str(d / "weights.caffemodel")
    cfg, rec = str(tmp_path / "c.json"), str(tmp_path / "r.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=1)
    g = amct.init(cfg, model, weights, rec)
    with pytest.raises(QuantizationError, match="quantize_model"):
        amct.correct_bias(g, [lenet_x])
    (tmp_path / "ok").mkdir()
    g, _, _ = _calibrated(tmp_path / "ok", lenet_x)
    with pytest.raises(DataError, match="at least one batch"):
        amct.correct_bias(g, [])
    with pytest.raises(ConfigError, match="'pool1'"):
        amct.correct_bias(g, [lenet_x], layers=["conv1", "pool1"])
    bad = lenet_x.copy()
    bad[0, 0, 5, 5] = np.nan
    before = {n: np.array(g.layer(n).blobs[1]) for n in ("conv1", "conv2", "ip1")}
    with pytest.raises(DataError, match="layer 'conv1'.*not finite"):
        amct.correct_bias(g, [bad])
    for n, b in before.items():                   # nothing applied on the way
        np.testing.assert_array_equal(g.layer(n).blobs[1], b)
    with pytest.raises(DataError, match="batch 0: input 'data' has shape"):
        amct.correct_bias(g, [np.repeat(lenet_x, 3, axis=1)])


BIASLESS = """
name: "nobias"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 bias_term: false } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 } }
"""


def test_a_layer_without_bias_gets_one(tmp_path) -> None:
    # conv1 has bias_term: false; its correction needs a bias, which both emitted
    # models then carry (float in fake-quant, int32 in deploy, bias_term true).
    from amct.frontends.caffe import load_caffe, save_caffe
    from amct.ir.random import random_weights

    model, weights = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    model.write_text(BIASLESS)
    save_caffe(random_weights(load_caffe(str(model)), seed=3), str(model), str(weights))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 12, 12)).astype(np.float32)
    res = amct.quantize(str(model), str(weights), [x[:2], x[2:]], str(tmp_path / "o" / "n"))
    assert sorted(res.bias_shifts) == ["conv1"]                 # conv2 is the head
    fake = amct.load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"])
    dep = amct.load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])
    for g, dtype in ((fake, np.float32), (dep, np.int32)):
        conv1 = g.layer("conv1")
        assert conv1.params.convolution_param.bias_term
        assert len(conv1.blobs) == 2 and conv1.blobs[1].dtype == dtype and conv1.blobs[1].shape == (6,)
    assert np.abs(fake.layer("conv1").blobs[1]).max() > 0
    # The bias is -shift, on the int32 grid of deq_scale.
    deq = _deq_scale(json.loads(Path(res.outputs["quant_json"]).read_text())["layers"]["conv1"])
    err = np.abs(fake.layer("conv1").blobs[1] + res.bias_shifts["conv1"])
    assert (err <= deq / 2 * (1 + 1e-5)).all(), err / deq
    np.testing.assert_array_equal(dep.layer("conv1").blobs[1],
                                  round_half_away(-res.bias_shifts["conv1"] / deq).astype(np.int32))


def test_quantize_without_bias_correction_is_amct_flow(lenet_x, tmp_path) -> None:
    d = shared_or_skip("golden", "real_lenet")
    model, weights = str(d / "net.prototxt"), str(d / "weights.caffemodel")
    batches = [lenet_x[:8], lenet_x[8:]]
    # Nearest weight rounding in both, so that only the biases can differ.
    off = amct.quantize(model, weights, batches, str(tmp_path / "off" / "l"),
                        bias_correction=False, weight_rounding="nearest")
    on = amct.quantize(model, weights, batches, str(tmp_path / "on" / "l"),
                       weight_rounding="nearest")
    assert off.bias_shifts == {} and sorted(on.bias_shifts) == ["conv1", "conv2", "ip1"]
    # Off: exactly what convert_model makes from the same record (AMCT's biases).
    conv = amct.convert_model(model, weights, off.record_file, str(tmp_path / "conv" / "l"))
    for k in ("deploy_model", "deploy_weights", "fake_model", "fake_weights"):
        assert Path(off.outputs[k]).read_bytes() == Path(conv[k]).read_bytes(), k
    # On: same record and int8 weights; only the corrected layers' int32 biases move.
    assert Path(off.record_file).read_bytes() == Path(on.record_file).read_bytes()
    a = amct.load_caffe(off.outputs["deploy_model"], off.outputs["deploy_weights"])
    b = amct.load_caffe(on.outputs["deploy_model"], on.outputs["deploy_weights"])
    for name in ("conv1", "conv2", "ip1", "ip2"):
        la, lb = a.layer(name), b.layer(name)
        np.testing.assert_array_equal(la.blobs[0], lb.blobs[0])
        moved = not np.array_equal(la.blobs[1], lb.blobs[1])
        assert moved == (name in on.bias_shifts), name


def test_bias_correction_on_real_images_ultraface(tmp_path) -> None:
    # UltraFace slim, calibrated on 2 photos (20 views), evaluated on 2 others:
    # measured 0.99369 -> 0.99713 on boxes, 0.999951 -> 0.999971 on scores.
    case = bench_accuracy().model_case("ultraface")
    cos = {bc: fake_quant_cosines(case, case["calib"][:2], case["eval"][:2],
                                  str(tmp_path / str(bc) / "uf"), bias_correction=bc,
                                  weight_rounding="nearest")
           for bc in (False, True)}
    assert cos[True]["boxes"] > cos[False]["boxes"] + 0.002, cos
    assert cos[True]["scores"] >= cos[False]["scores"], cos
