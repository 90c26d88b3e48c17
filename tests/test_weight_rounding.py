"""GPTQ weight rounding (amct/quant/gptq.py, amct/weight_rounding.py): hand-computed
codes, the input statistics against the runtime's convolution, the API and the
effect on a real model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import amct
from amct.errors import ConfigError, DataError, QuantizationError
from amct.quant.gptq import (conv_gram, dense_gram, gptq_codes, output_error, position_step,
                              quantize_input)
from conftest import bench_accuracy, fake_quant_cosines, shared_or_skip

ONE = np.array([[1.0]])


# ------------------------------------------------------------ GPTQ by hand
def test_correlated_inputs_let_errors_cancel() -> None:
    # Two inputs that are always equal: the output is (w1 + w2)·x = 1.2x.
    # Nearest codes (1, 1) give 2x, an error of 0.8² = 0.64 per unit x².
    # GPTQ rounds w1 to 1 (error -0.4) and moves w2 to 0.6 - 0.4 = 0.2,
    # which rounds to 0: output 1x, error 0.2² = 0.04.
    w, h = np.array([[[0.6, 0.6]]]), np.array([[[1.0, 1.0], [1.0, 1.0]]])
    codes = gptq_codes(w, h, ONE, damp=1e-9)
    np.testing.assert_array_equal(codes, [[[1.0, 0.0]]])
    assert output_error(w, codes, h, ONE)[0] == pytest.approx(0.04)
    assert output_error(w, np.ones_like(w), h, ONE)[0] == pytest.approx(0.64)


def test_columns_with_more_input_energy_go_first() -> None:
    # x2 = 2·x1, so H = [[1, 2], [2, 4]] and the output is (w1 + 2 w2)·x1 = 1.8 x1.
    # Column 2 (diagonal 4) is rounded first: 0.6 -> 1, and w1 moves to the
    # best value given that, 1.8 - 2 = -0.2, which rounds to 0: output 2 x1,
    # error 0.04.  Column 1 first would give codes (1, 0): error 0.8² = 0.64.
    w, h = np.array([[[0.6, 0.6]]]), np.array([[[1.0, 2.0], [2.0, 4.0]]])
    codes = gptq_codes(w, h, ONE, damp=1e-9)
    np.testing.assert_array_equal(codes, [[[0.0, 1.0]]])
    assert output_error(w, codes, h, ONE)[0] == pytest.approx(0.04)


def test_uncorrelated_inputs_give_nearest_rounding() -> None:
    # A diagonal H couples no columns: every code is ARQ's, ties away from zero.
    w = np.array([[[0.25, -0.25, 0.74, -1.3]], [[5.0, 0.05, -0.1, 0.2]]])
    scale = np.array([[0.5], [0.1]])
    h = np.stack([np.diag([1.0, 2.0, 3.0, 4.0]), np.diag([4.0, 1.0, 1.0, 9.0])])
    np.testing.assert_array_equal(gptq_codes(w, h, scale),
                                  [[[1, -1, 1, -3]], [[50, 1, -1, 2]]])


def test_a_column_that_never_saw_input_keeps_its_nearest_code() -> None:
    # Column 0's input was always 0 (zero row and column in H); columns 1 and
    # 2 are equal inputs and share their error as in the first test.
    w = np.array([[[0.7, 0.6, 0.6]]])
    h = np.array([[[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])
    np.testing.assert_array_equal(gptq_codes(w, h, ONE, damp=1e-9), [[[1.0, 1.0, 0.0]]])


def test_compensation_is_clamped_to_the_int8_range() -> None:
    # -0.5 rounds away to -1 (error +0.5), which moves the equal-input column
    # from 127 to 127.5: it would round to 128, and is clamped to 127.
    w, h = np.array([[[-0.5, 127.0]]]), np.ones((1, 2, 2))
    np.testing.assert_array_equal(gptq_codes(w, h, ONE, damp=1e-9), [[[-1.0, 127.0]]])
    np.testing.assert_array_equal(gptq_codes(w, h, ONE, damp=1e-9, qmax=100), [[[-1.0, 100.0]]])


def test_blocks_do_not_change_the_codes() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 40)) @ rng.normal(size=(40, 40))    # correlated inputs
    h = (x.T @ x)[None]
    w = rng.normal(size=(1, 6, 40))
    scale = np.abs(w).max(axis=2) / 127
    whole = gptq_codes(w, h, scale, block=128)
    np.testing.assert_array_equal(gptq_codes(w, h, scale, block=7), whole)
    np.testing.assert_array_equal(gptq_codes(w, h, scale, block=1), whole)
    nearest = np.clip(np.round(w / scale[:, :, None]), -128, 127)
    assert output_error(w, whole, h, scale)[0] < 0.5 * output_error(w, nearest, h, scale)[0]


def test_gptq_rejects_bad_input() -> None:
    w, h = np.zeros((1, 2, 3)), np.zeros((1, 3, 3))
    with pytest.raises(QuantizationError, match="one scale per row"):
        gptq_codes(w, h, np.ones((1, 3)))
    with pytest.raises(QuantizationError, match=r"\(G, R, K\)"):
        gptq_codes(w, np.zeros((1, 2, 2)), np.ones((1, 2)))
    with pytest.raises(QuantizationError, match="positive"):
        gptq_codes(w, h, np.zeros((1, 2)))
    with pytest.raises(QuantizationError, match="NaN"):
        gptq_codes(np.full((1, 2, 3), np.nan), h, np.ones((1, 2)))


# ------------------------------------------------------ input statistics
def test_dense_gram_by_hand() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(dense_gram(x), [[[10.0, 14.0], [14.0, 20.0]]])
    # axis 2: rows are (N·C), columns the rest
    np.testing.assert_array_equal(dense_gram(x.reshape(1, 2, 2), axis=2), [[[10, 14], [14, 20]]])


def test_quantize_input_is_the_quant_layers_arithmetic() -> None:
    # scale_d 0.5, offset 3: codes round(x·2) clamped to [-131, 124], times 0.5.
    got = quantize_input(np.array([0.26, -100.0, 100.0, 0.25], np.float32), 0.5, 3)
    np.testing.assert_array_equal(got, [0.5, -65.5, 62.0, 0.5])      # 0.5 ties away: 1


@pytest.mark.parametrize("oh, ow, cap, step", [
    (10, 10, None, 1), (10, 10, 100, 1),
    (75, 75, 2304, 2),       # 5625 windows: every 2nd row and column leaves 38 x 38 = 1444
    (7, 7, 10, 3),           # sqrt(49 / 10) -> 3: 3 x 3 = 9 windows
    (7, 7, 8, 4),            # 3 x 3 = 9 > 8, so 4: 2 x 2
])
def test_position_step_by_hand(oh, ow, cap, step) -> None:
    assert position_step(oh, ow, cap) == step


def test_sampled_windows_are_the_strided_convolutions_windows() -> None:
    # Every 3rd window of a stride-1 convolution are exactly the windows of
    # the same convolution at stride 3.
    x = np.random.default_rng(2).normal(size=(3, 2, 20, 17)).astype(np.float32)
    geo = dict(group=1, kernel=(3, 3), pad=(1, 1), dilation=(1, 1))
    sampled = conv_gram(x, stride=(1, 1), max_positions=50, **geo)          # 20 x 17 -> step 3
    np.testing.assert_array_equal(sampled, conv_gram(x, stride=(3, 3), **geo))
    assert not np.array_equal(sampled, conv_gram(x, stride=(1, 1), **geo))


def _conv_net(tmp_path, c, o, group, k, s, p, d, hw):
    from amct.frontends.caffe import load_caffe

    text = f"""
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: {c} dim: {hw[0]} dim: {hw[1]} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: {o} group: {group} kernel_h: {k[0]} kernel_w: {k[1]}
    stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} dilation: {d} bias_term: false }} }}
"""
    path = tmp_path / "c.prototxt"
    path.write_text(text)
    return load_caffe(str(path))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_conv_gram_matches_the_runtimes_convolution(tmp_path_factory, data) -> None:
    # For any weights w: Σ y² over the convolution's output = Σ_g w_g H_g w_gᵀ.
    from amct.runtime import run

    group = data.draw(st.sampled_from([1, 2]))
    c, o = group * data.draw(st.integers(1, 3)), group * data.draw(st.integers(1, 3))
    k = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    s = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    p = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
    d = data.draw(st.integers(1, 2))
    hw = (data.draw(st.integers(5, 9)), data.draw(st.integers(5, 9)))
    g = _conv_net(tmp_path_factory.mktemp("g"), c, o, group, k, s, p, d, hw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    w = rng.normal(size=(o, c // group, *k)).astype(np.float32)
    g.layer("conv").blobs = [w]
    x = rng.normal(size=(2, c, *hw)).astype(np.float32)
    y = run(g, {"data": x})["conv"].astype(np.float64)
    h = conv_gram(x, group, k, p, s, (d, d))
    kk = c // group * k[0] * k[1]
    assert h.shape == (group, kk, kk)
    rows = w.astype(np.float64).reshape(group, o // group, -1)
    want = np.einsum("grk,gkl,grl->", rows, h, rows)
    assert want == pytest.approx(float((y ** 2).sum()), rel=1e-5)


# --------------------------------------------------------------- the API
def _lenet():
    d = shared_or_skip("golden", "real_lenet")
    return str(d / "net.prototxt"), str(d / "weights.caffemodel"), np.load(d / "io.npz")["in:data"]


def _calibrated(tmp_path, model, weights, x):
    cfg, rec = str(tmp_path / "c.json"), str(tmp_path / "r.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=1)
    g = amct.init(cfg, model, weights, rec)
    m, wt = str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel")
    amct.quantize_model(g, m, wt)
    amct.runtime.Net(m, wt).forward(data=x)
    return g


def test_round_weights_on_lenet(tmp_path) -> None:
    model, weights, x = _lenet()
    g = _calibrated(tmp_path, model, weights, x)
    nearest = {n: np.array(g.layer(n).meta["w_q"]) for n in ("conv1", "conv2", "ip1", "ip2")}
    rounded = amct.round_weights(g, [x[:8], x[8:]])
    assert [r.layer for r in rounded] == ["conv1", "conv2", "ip1", "ip2"]
    for r in rounded:
        new = g.layer(r.layer).meta["w_q"]
        assert new.dtype == np.int8 and new.shape == nearest[r.layer].shape
        assert r.changed == pytest.approx(np.mean(new != nearest[r.layer]))
        # GPTQ lowers every layer's output error on these inputs (measured:
        # to 0.40-0.81 of nearest rounding's).
        assert r.error < 0.9 * r.error_nearest, r
        # Codes move by at most a few steps from nearest rounding.
        assert np.abs(new.astype(int) - nearest[r.layer]).max() <= 3, r.layer
    # save_model writes them: the deploy model's int8 weights are the new codes.
    out = amct.save_model(g, "Both", str(tmp_path / "o" / "l"))
    dep = amct.load_caffe(out["deploy_model"], out["deploy_weights"])
    for name in nearest:
        np.testing.assert_array_equal(dep.layer(name).blobs[0], g.layer(name).meta["w_q"])


def test_round_weights_sweeps_and_lazy_batches_agree(tmp_path) -> None:
    # A budget that fits one H at a time (several passes over a list) and one
    # that fits all (one pass over a generator) give the same codes.
    model, weights, x = _lenet()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ga, gb = _calibrated(tmp_path / "a", model, weights, x), _calibrated(tmp_path / "b", model, weights, x)
    amct.round_weights(ga, [x[:5], x[5:]], memory_budget=1)
    amct.round_weights(gb, (b for b in (x[:5], x[5:])))
    for name in ("conv1", "conv2", "ip1", "ip2"):
        np.testing.assert_array_equal(ga.layer(name).meta["w_q"], gb.layer(name).meta["w_q"])


def test_round_weights_errors(tmp_path) -> None:
    model, weights, x = _lenet()
    cfg, rec = str(tmp_path / "c.json"), str(tmp_path / "r.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=1)
    g = amct.init(cfg, model, weights, rec)
    with pytest.raises(QuantizationError, match="quantize_model"):
        amct.round_weights(g, [x])
    (tmp_path / "ok").mkdir()
    g = _calibrated(tmp_path / "ok", model, weights, x)
    before = np.array(g.layer("conv1").meta["w_q"])
    with pytest.raises(DataError, match="at least one batch"):
        amct.round_weights(g, [])
    with pytest.raises(ConfigError, match="'pool1'"):
        amct.round_weights(g, [x], layers=["conv1", "pool1"])
    with pytest.raises(DataError, match="batch 0: input 'data' has shape"):
        amct.round_weights(g, [np.repeat(x, 3, axis=1)])
    bad = x[8:].copy()
    bad[0, 0, 5, 5] = np.nan
    with pytest.raises(DataError, match="layer 'conv1'.*not finite"):
        amct.round_weights(g, [x[:8], bad])
    np.testing.assert_array_equal(g.layer("conv1").meta["w_q"], before)   # nothing applied
    only = amct.round_weights(g, [x], layers=["conv2"])
    assert [r.layer for r in only] == ["conv2"]
    np.testing.assert_array_equal(g.layer("conv1").meta["w_q"], before)


def test_a_failing_layer_leaves_the_earlier_ones_unchanged(tmp_path, monkeypatch) -> None:
    # conv1 and conv2 are rounded before ip1 fails: none of them may change.
    from amct import weight_rounding

    model, weights, x = _lenet()
    g = _calibrated(tmp_path, model, weights, x)
    codes = {n: np.array(g.layer(n).meta["w_q"]) for n in ("conv1", "conv2", "ip1", "ip2")}
    real, done = weight_rounding._round_layer, []

    def failing(layer, *a, **k):
        if layer.name == "ip1":
            raise DataError("ip1 fails")
        done.append(layer.name)
        return real(layer, *a, **k)

    monkeypatch.setattr(weight_rounding, "_round_layer", failing)
    with pytest.raises(DataError, match="ip1 fails"):
        amct.round_weights(g, [x])
    assert done == ["conv1", "conv2"]
    for n, c in codes.items():
        np.testing.assert_array_equal(g.layer(n).meta["w_q"], c)


def test_quantize_weight_rounding_switch(tmp_path) -> None:
    model, weights, x = _lenet()
    batches = [x[:8], x[8:]]
    with pytest.raises(ConfigError, match="weight_rounding"):
        amct.quantize(model, weights, batches, str(tmp_path / "bad" / "l"), weight_rounding="adaround")
    gp = amct.quantize(model, weights, batches, str(tmp_path / "g" / "l"), bias_correction=False)
    ne = amct.quantize(model, weights, batches, str(tmp_path / "n" / "l"), bias_correction=False,
                       weight_rounding="nearest")
    assert ne.rounding == {} and sorted(gp.rounding) == ["conv1", "conv2", "ip1", "ip2"]
    # Nearest and no bias correction: AMCT's flow, the files convert_model makes.
    conv = amct.convert_model(model, weights, ne.record_file, str(tmp_path / "cv" / "l"))
    for k in ("deploy_model", "deploy_weights", "fake_model", "fake_weights", "quant_json"):
        assert Path(ne.outputs[k]).read_bytes() == Path(conv[k]).read_bytes(), k
    # GPTQ: the same record, scales and biases; only int8 weights differ.
    assert Path(gp.record_file).read_bytes() == Path(ne.record_file).read_bytes()
    assert Path(gp.outputs["quant_json"]).read_bytes() == Path(ne.outputs["quant_json"]).read_bytes()
    a = amct.load_caffe(gp.outputs["deploy_model"], gp.outputs["deploy_weights"])
    b = amct.load_caffe(ne.outputs["deploy_model"], ne.outputs["deploy_weights"])
    for name in ("conv1", "conv2", "ip1", "ip2"):
        np.testing.assert_array_equal(a.layer(name).blobs[1], b.layer(name).blobs[1])
        assert not np.array_equal(a.layer(name).blobs[0], b.layer(name).blobs[0]), name
    # Same input, same bytes.
    again = amct.quantize(model, weights, batches, str(tmp_path / "g2" / "l"), bias_correction=False)
    for k in ("deploy_weights", "fake_weights"):
        assert Path(gp.outputs[k]).read_bytes() == Path(again.outputs[k]).read_bytes(), k


def test_weight_rounding_on_real_crops_det3(tmp_path) -> None:
    # MTCNN det3 calibrated on 40 crops of 4 photos and evaluated on 30 crops
    # of 3 others (bench/accuracy.py's bench division), without bias
    # correction so that only the rounding differs.  Measured: conv6-2
    # 0.998904 -> 0.999471, prob1 0.999931 -> 0.999987.
    case = bench_accuracy().model_case("det3")
    cos = {how: fake_quant_cosines(case, case["calib"], case["eval"], str(tmp_path / how / "d3"),
                                   bias_correction=False, weight_rounding=how)
           for how in ("nearest", "gptq")}
    assert 1 - cos["gptq"]["conv6-2"] < 0.6 * (1 - cos["nearest"]["conv6-2"]), cos
    assert 1 - cos["gptq"]["prob1"] < 0.5 * (1 - cos["nearest"]["prob1"]), cos
    assert cos["gptq"]["conv6-3"] >= cos["nearest"]["conv6-3"], cos


def test_codes_do_not_depend_on_blas_threads(tmp_path) -> None:
    # The factorisations and GEMMs run on numpy's OpenBLAS with however many
    # threads it has; the codes (and so the saved files) must not change.
    from amct.layers._im2col import _openblas

    blas = _openblas()
    if blas is None:
        pytest.skip("no OpenBLAS thread control found")
    model, weights, x = _lenet()
    prev = blas[0]()
    codes = {}
    try:
        for n in (1, 2):
            blas[1](n)
            (tmp_path / str(n)).mkdir()
            g = _calibrated(tmp_path / str(n), model, weights, x)
            amct.round_weights(g, [x[:8], x[8:]])
            codes[n] = {k: g.layer(k).meta["w_q"] for k in ("conv1", "conv2", "ip1", "ip2")}
    finally:
        blas[1](prev)
    for n in (2,):
        for k, c in codes[1].items():
            np.testing.assert_array_equal(codes[n][k], c, err_msg=f"{n} threads, {k}")


IP_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 64 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }
"""


def _ip_rounding(tmp_path, x: np.ndarray):
    from amct.frontends.caffe import load_caffe, save_caffe
    from amct.ir.random import random_weights

    model, weights = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    model.write_text(IP_NET)
    save_caffe(random_weights(load_caffe(str(model)), seed=1), str(model), str(weights))
    half = len(x) // 2 or 1
    res = amct.quantize(str(model), str(weights), [x[:half], x[half:]] if len(x) > 1 else [x],
                        str(tmp_path / "o" / "n"), bias_correction=False)
    return res.rounding["ip"]


def test_few_rows_are_cross_validated_and_kept_when_gptq_only_fits_them(tmp_path) -> None:
    # 8 images of 64 independent inputs: 8 rows for 64 columns.  GPTQ fitted
    # on 4 images makes the other 4's output error worse (measured x1.65), so
    # ARQ's codes stay.
    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    r = _ip_rounding(tmp_path, x)
    assert r.rows == 8 and r.heldout_ratio is not None and r.heldout_ratio > 1.0
    assert r.changed == 0.0 and r.error == r.error_nearest


def test_few_rows_on_a_shared_structure_pass_validation(tmp_path) -> None:
    # The same 8 rows, but every image mixes the same 2 patterns: what GPTQ
    # learns from one half holds for the other, and the codes change.
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 2)) @ rng.normal(size=(2, 64))).astype(np.float32)
    r = _ip_rounding(tmp_path, x)
    assert r.heldout_ratio is not None and r.heldout_ratio < 0.5, r
    assert r.changed > 0 and r.error < 0.5 * r.error_nearest


def test_one_image_cannot_be_validated_and_keeps_nearest_codes(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    r = _ip_rounding(tmp_path, x)
    assert r.rows == 1 and r.heldout_ratio is None and r.changed == 0.0


def test_one_dimensional_convolution_statistics(tmp_path) -> None:
    # A 1-D convolution (input N, C, W) is the 2-D one with a unit height: the
    # same identity between its output energy and H holds.
    from amct.frontends.caffe import load_caffe
    from amct.runtime import run
    from amct.weight_rounding import _geometry

    path = tmp_path / "c1.prototxt"
    path.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 17 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1 bias_term: false } }
""")
    g = load_caffe(str(path))
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 2, 3)).astype(np.float32)
    g.layer("conv").blobs = [w]
    x = rng.normal(size=(2, 4, 17)).astype(np.float32)
    y = run(g, {"data": x})["conv"].astype(np.float64)
    geo = _geometry(g.layer("conv"), x.shape)
    assert geo.one_d and geo.group == 2
    h = geo.gram(x)
    assert h.shape == (2, 6, 6) and geo.rows(x.shape) == 2 * 9      # 9 outputs per image
    rows = w.astype(np.float64).reshape(2, 3, -1)
    assert np.einsum("grk,gkl,grl->", rows, h, rows) == pytest.approx(float((y ** 2).sum()),
                                                                      rel=1e-5)
