"""Fake-quant and deploy emitters, quant.json and save_outputs on a hand-built quantized graph."""
from __future__ import annotations

import json

import attrs

import numpy as np
import pytest

from quant_helpers import QUANTIZED, tiny_qgraph

from amct.backends.ascend import (build_deploy, build_fake_quant, output_paths, parse_save_type,
                                  quant_info, save_outputs)
from amct.errors import ConfigError, QuantizationError
from amct.frontends.caffe import load_caffe, prototxt_text
from amct.passes.base import Fusion
from amct.quant import arq_weights, channel_scale_view, unpack_deq_scale
from amct.runtime import Net, run


@pytest.fixture(scope="module", params=[True, False], ids=["asym", "sym"])
def tiny(request):
    return tiny_qgraph(seed=0, with_offset=request.param)


def _snapshot(g):
    return prototxt_text(g), [[b.tobytes() for b in x.blobs] for x in g.layers]


def test_fake_quant_blobs(tiny) -> None:
    _, qg, _ = tiny
    before = _snapshot(qg)
    fk = build_fake_quant(qg)
    assert _snapshot(qg) == before                       # the qgraph is untouched
    for name in ("conv1", "deconv1", "fc1"):
        q = qg.layer(name).meta["quant"]
        layer = fk.layer(name)
        group = layer.params.convolution_param.group if name != "fc1" else 1
        w = layer.blobs[0]
        assert w.dtype == np.float32
        # every weight lies on its channel's int8 grid
        view = channel_scale_view(q.scale_w, w.shape, layer.type, group)
        np.testing.assert_array_equal(w, (q.w_q * view).astype(np.float32))
        np.testing.assert_allclose(layer.blobs[1], q.bias_q * q.deq_scale, rtol=1e-7)
        dq = fk.layer(f"{name}_dequant_layer")
        assert [b.dtype for b in dq.blobs] == [np.float32] * 3
        np.testing.assert_array_equal(dq.blobs[0], q.deq_scale)
        assert not dq.blobs[1].any() and not dq.blobs[2].any()
    # Deconvolution with group 2: channels 0-1 scale rows 0-2 of axis 1...
    q = qg.layer("deconv1").meta["quant"]
    scale, _ = arq_weights(qg.layer("deconv1").blobs[0], True, "Deconvolution", 2)
    np.testing.assert_array_equal(q.scale_w, scale)


def test_deploy_blobs(tiny) -> None:
    _, qg, _ = tiny
    dp = build_deploy(qg)
    for name in ("conv1", "deconv1", "fc1"):
        q = qg.layer(name).meta["quant"]
        layer = dp.layer(name)
        assert layer.blobs[0].dtype == np.int8 and layer.blobs[1].dtype == np.int32
        np.testing.assert_array_equal(layer.blobs[0], q.w_q)
        np.testing.assert_array_equal(layer.blobs[1], q.bias_q)
    for name in QUANTIZED:
        q = qg.layer(name).meta["quant"]
        (packed,) = dp.layer(f"{name}_dequant_layer").blobs
        assert packed.dtype == np.uint64 and packed.shape == (q.deq_scale.size,)
        deq, shift, off = unpack_deq_scale(packed)
        assert deq.tobytes() == q.deq_scale.tobytes() and not shift.any() and not off.any()
    pool = qg.layer("pool1").meta["quant"]
    assert pool.deq_scale.size == 1 and pool.deq_scale[0] == np.float32(pool.scale_d)


def test_deploy_simulation_matches_fake_quant(tiny) -> None:
    """Integer deploy simulation == fake-quant within one output LSB + float rounding."""
    fg, qg, _ = tiny
    fk, dp = build_fake_quant(qg), build_deploy(qg)
    x = np.random.default_rng(1).standard_normal((2, 4, 7, 7)).astype(np.float32)
    a = run(fk, {"data": x}, keep=True)
    b = run(dp, {"data": x}, keep=True)
    for name in QUANTIZED:
        q = qg.layer(name).meta["quant"]
        lsb = q.deq_scale.reshape((1, -1) + (1,) * (a[name].ndim - 2)) \
            if q.deq_scale.size > 1 else q.deq_scale[0]
        assert b[name].dtype == np.float32
        assert (np.abs(a[name] - b[name]) <= lsb + 1e-5 * np.abs(a[name])).all(), name
    # and both stay close to the float model
    ref = run(fg, {"data": x})["fc1"]
    assert np.abs(a["fc1"] - ref).max() < 0.1 * np.abs(ref).max()


def test_deploy_quant_emits_integers(tiny) -> None:
    _, qg, _ = tiny
    dp = build_deploy(qg)
    x = np.random.default_rng(2).standard_normal((2, 4, 7, 7)).astype(np.float32)
    seen = {}

    def grab(layer, j, blob, vid, arr):
        seen[layer.name] = arr.dtype
    run(dp, {"data": x}, observers=[grab])
    assert seen["conv1_quant_layer"] == np.int16 and seen["conv1"] == np.int32
    assert seen["conv1_dequant_layer"] == np.float32


def test_quant_info_schema() -> None:
    _, qg, _ = tiny_qgraph(seed=0)
    info = quant_info(qg, [Fusion("conv_bn_scale", "conv1", ("bn1", "scale1"))])
    assert list(info) == ["version", "layers", "fusions"] and info["version"] == 1
    assert list(info["layers"]) == list(QUANTIZED)      # execution order
    conv = info["layers"]["conv1"]
    q = qg.layer("conv1").meta["quant"]
    assert list(conv) == ["type", "original_layers", "quant_layer", "dequant_layer", "scale_d",
                          "offset_d", "scale_w", "channel_wise", "act_algo", "weight_algo"]
    assert conv["quant_layer"] == "conv1_quant_layer"
    assert np.float32(conv["scale_d"]) == np.float32(q.scale_d)
    assert np.array_equal(np.float32(conv["scale_w"]), q.scale_w)
    assert conv["weight_algo"] == "arq" and conv["act_algo"] == "ifmr"
    assert info["layers"]["pool1"]["scale_w"] is None
    assert info["fusions"] == [{"kind": "conv_bn_scale", "target": "conv1",
                                "merged": ["bn1", "scale1"]}]


def test_save_type_parsing() -> None:
    assert parse_save_type("Both") == ("fake", "deploy")
    assert parse_save_type("FAKE_QUANT") == ("fake",) == parse_save_type("fakequant")
    assert parse_save_type("deploy") == ("deploy",)
    with pytest.raises(ConfigError, match="'Int8'"):
        parse_save_type("Int8")


def test_save_outputs_files_reload_and_run(tmp_path) -> None:
    fg, qg, _ = tiny_qgraph(seed=3)
    prefix = str(tmp_path / "out" / "tiny")
    written = save_outputs(qg, "Both", prefix)
    paths = output_paths(prefix)
    assert written == paths and all((tmp_path / "out").joinpath(p.split("/")[-1]).exists()
                                    for p in paths.values())
    assert paths["deploy_model"].endswith("tiny_deploy_model.prototxt")
    info = json.loads(open(paths["quant_json"]).read())
    assert set(info["layers"]) == set(QUANTIZED)
    # the written files load and run with the runtime, deploy == fake within 1 LSB
    x = np.random.default_rng(4).standard_normal((2, 4, 7, 7)).astype(np.float32)
    fake = Net(paths["fake_model"], paths["fake_weights"]).forward(data=x)["fc1"]
    dep_net = Net(paths["deploy_model"], paths["deploy_weights"])
    dep = dep_net.forward(data=x)["fc1"]
    lsb = qg.layer("fc1").meta["quant"].deq_scale[0]
    assert np.abs(fake - dep).max() <= lsb + 1e-5 * np.abs(fake).max()
    g = load_caffe(paths["deploy_model"], paths["deploy_weights"])
    assert g.layer("conv1").blobs[0].dtype == np.int8
    assert g.layer("conv1_dequant_layer").blobs[0].dtype == np.uint64
    text = open(paths["deploy_model"]).read()
    assert 'type: "Quant"' in text and "object_layer: \"conv1\"" in text
    assert "IFMR" not in text


def test_save_outputs_is_deterministic_and_selective(tmp_path) -> None:
    _, qg, _ = tiny_qgraph(seed=5)
    a, b = str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m")
    save_outputs(qg, "Both", a)
    save_outputs(qg, "both", b)
    for k in output_paths(a):
        assert open(output_paths(a)[k], "rb").read() == open(output_paths(b)[k], "rb").read(), k
    c = str(tmp_path / "c" / "m")
    written = save_outputs(qg, "Deploy", c)
    assert set(written) == {"deploy_model", "deploy_weights", "quant_json"}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "m_deploy_model.prototxt", "m_deploy_weights.caffemodel", "m_quant.json"]


def test_save_outputs_writes_nothing_on_error(tmp_path) -> None:
    _, qg, _ = tiny_qgraph(seed=6)
    prefix = str(tmp_path / "m")
    save_outputs(qg, "Both", prefix)
    before = {k: open(p, "rb").read() for k, p in output_paths(prefix).items()}
    bad = qg.copy()
    bad.layer("fc1").meta["quant"] = "not a LayerQuant"
    with pytest.raises(QuantizationError, match="'fc1'"):
        save_outputs(bad, "Both", prefix)
    # a DeQuant missing for a quantized layer
    bad = qg.copy()
    bad.remove_layer(bad.layer("conv1_dequant_layer"))
    with pytest.raises(QuantizationError, match="'conv1'.*DeQuant"):
        save_outputs(bad, "Both", prefix)
    assert {k: open(p, "rb").read() for k, p in output_paths(prefix).items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.split("/")[-1] for p in output_paths(prefix).values())


def test_bias_term_follows_bias_q() -> None:
    _, qg, _ = tiny_qgraph(seed=7)
    # conv1 loses its bias (bias_q None); fc1 "gained" one in a fusion (bias_term false)
    conv = qg.layer("conv1")
    conv.params.convolution_param.bias_term = False
    conv.blobs = conv.blobs[:1]
    q = conv.meta["quant"]
    conv.meta["quant"] = attrs.evolve(q, bias_q=None)
    qg.layer("fc1").params.inner_product_param.bias_term = False
    fk, dp = build_fake_quant(qg), build_deploy(qg)
    for g in (fk, dp):
        assert len(g.layer("conv1").blobs) == 1
        assert g.layer("conv1").params.convolution_param.bias_term is False
        assert len(g.layer("fc1").blobs) == 2
        assert g.layer("fc1").params.inner_product_param.bias_term is True
    x = np.random.default_rng(8).standard_normal((2, 4, 7, 7)).astype(np.float32)
    a, b = run(fk, {"data": x})["fc1"], run(dp, {"data": x})["fc1"]
    lsb = qg.layer("fc1").meta["quant"].deq_scale[0]
    assert np.abs(a - b).max() <= lsb + 1e-5 * np.abs(a).max()
