"""mark_quant_layers, quantize_weights, insert_calibration, build_layer_quant, quantize_bias,
insert_quant and insert_dequant on a hand-built graph with hand-computed values."""
from __future__ import annotations

import os

import numpy as np
import pytest

from amct.config import LayerQuantConfig, QuantConfig
from amct.errors import ConfigError, QuantizationError, RecordError
from amct.passes import PassContext, PassManager
from amct.quant.record import LayerRecord
from test_passes_graphs import ave_pool, conv, f32, graph, inp, ip

# Weights chosen so every scale is a power of two and the .5 cases show the
# half-away-from-zero rounding: row 0 amax 127/64 -> scale 1/64, 32.5 -> 33;
# row 1 amax 127/32 -> scale 1/32, -0.5 -> -1.
WA = f32([[[[127 / 64]], [[32.5 / 64]]], [[[-127 / 32]], [[-0.5 / 32]]]])
BA = f32([65 / 128, -0.5 / 64])


def net():
    return graph(inp("data", [1, 2, 4, 4]), conv("conv_a", "data", "a", WA, BA),
                 conv("conv_b", "data", "b", WA, BA), ave_pool("pool", "data", "p"),
                 ip("fc", "p", "f", f32(np.ones((3, 8))), f32([0, 0, 0])))


def config(**pool):
    cfg = QuantConfig(batch_num=3)
    for n in ("conv_a", "conv_b"):
        cfg.layers[n] = LayerQuantConfig()
    cfg.layers["pool"] = LayerQuantConfig(channel_wise=False, **pool)
    cfg.layers["fc"] = LayerQuantConfig(channel_wise=False, quant_enable=False)
    return cfg


def calibrate(g, cfg, record_path="rec.txt"):
    ctx = PassContext(config=cfg, record_path=record_path, quant_layers=cfg.enabled_layers())
    PassManager(["mark_quant_layers", "quantize_weights", "insert_calibration"]).run(g, ctx)
    return ctx


def test_weights_and_calibration_layers():
    g = net()
    ctx = calibrate(g, config(act_algo="hfmg", num_of_bins=2048))
    qa = g.layer("conv_a").meta
    np.testing.assert_array_equal(qa["scale_w"], f32([1 / 64, 1 / 32]))
    np.testing.assert_array_equal(qa["w_q"][:, :, 0, 0], [[127, 33], [-127, -1]])
    assert qa["w_q"].dtype == np.int8
    np.testing.assert_array_equal(g.layer("conv_a").blobs[0], WA)           # float kept
    assert set(ctx.record) == {"conv_a", "conv_b"}                          # Pooling: no scale_w
    np.testing.assert_array_equal(ctx.record["conv_b"].offset_w, [0, 0])
    cal = [x for x in g.layers if x.type in ("IFMR", "HFMG")]
    assert [x.name for x in cal] == ["conv_a_ifmr_layer", "pool_hfmg_layer"]
    p = cal[0].params.ifmr_param
    assert list(p.object_layer) == ["conv_a", "conv_b"] and p.batch_num == 3 and p.with_offset
    assert p.record_file_path == os.path.abspath("rec.txt")
    assert cal[0].bottoms == ["data"] and cal[0].tops == []
    assert g.layers.index(cal[0]) == g.layers.index(g.layer("conv_a")) - 1
    h = cal[1].params.hfmg_param
    assert list(h.object_layer) == ["pool"] and h.num_of_bins == 2048
    assert "fc" not in {x for c in cal for x in c.params.ifmr_param.object_layer}


def test_per_tensor_innerproduct_weights():
    g = net()
    cfg = config()
    cfg.layers["fc"].quant_enable = True
    calibrate(g, cfg)
    np.testing.assert_array_equal(g.layer("fc").meta["scale_w"], f32([1 / 127]))


def test_unknown_or_unquantizable_layer_is_rejected():
    g = net()
    cfg = config()
    cfg.layers["nope"] = LayerQuantConfig()
    with pytest.raises(ConfigError, match="layer 'nope' from the config is not in"):
        calibrate(g, cfg)
    with pytest.raises(RecordError, match="layer 'data' from the record cannot be quantized"):
        PassManager(["mark_quant_layers"]).run(net(), PassContext(quant_layers=["data"]))


def quantize(g, ctx):
    PassManager(["remove_calibration", "build_layer_quant", "quantize_bias", "insert_quant",
                 "insert_dequant"]).run(g, ctx)


def test_quantized_graph_contract():
    g = net()
    ctx = calibrate(g, config())
    for n in ("conv_a", "conv_b"):
        ctx.record[n].scale_d, ctx.record[n].offset_d = 0.5, 3
    ctx.record["pool"] = LayerRecord(scale_d=0.25, offset_d=-5)
    quantize(g, ctx)
    assert [x.name for x in g.layers] == [
        "data", "conv_a_quant_layer", "conv_a", "conv_a_dequant_layer", "conv_b",
        "conv_b_dequant_layer", "pool_quant_layer", "pool", "pool_dequant_layer", "fc"]
    qa = g.layer("conv_a").meta["quant"]
    np.testing.assert_array_equal(qa.deq_scale, f32([1 / 128, 1 / 64]))
    np.testing.assert_array_equal(qa.bias_q, [65, -1])                      # -0.5 -> -1
    assert qa.bias_q.dtype == np.int32 and qa.channel_wise and qa.fused_from == ["conv_a"]
    # conv_b shares conv_a's Quant (same blob, same factors).
    assert g.layer("conv_b").bottoms == ["conv_a_quant_layer"]
    assert g.layer("conv_b").meta["quant"].quant_layer == "conv_a_quant_layer"
    q = g.layer("conv_a_quant_layer")
    assert q.type == "Quant" and q.bottoms == ["data"] and q.tops == ["conv_a_quant_layer"]
    qp = q.params.quant_param
    assert (qp.scale, qp.offset, qp.with_offset, qp.object_layer) == (2.0, bytes([3]), True, "conv_a")
    assert g.layer("pool_quant_layer").params.quant_param.offset == bytes([251])   # -5
    dq = g.layer("conv_a_dequant_layer")
    assert dq.bottoms == dq.tops == ["a"]
    np.testing.assert_array_equal(dq.blobs[0], f32([1 / 128, 1 / 64]))
    assert [b.tolist() for b in dq.blobs[1:]] == [[0, 0], [0, 0]]
    dp = dq.params.dequant_param
    assert (dp.channel_wise, dp.object_layer, dp.layer_type) == (True, "conv_a", "Convolution")
    pq = g.layer("pool").meta["quant"]
    assert pq.w_q is None and pq.bias_q is None and pq.deq_scale.tolist() == [0.25]
    assert g.layer("pool_dequant_layer").blobs[0].shape == (1,)
    assert not any(x.type == "IFMR" for x in g.layers)


def test_missing_factors_are_listed_before_anything_happens():
    g = net()
    ctx = calibrate(g, config())
    ctx.record["conv_a"].scale_d, ctx.record["conv_a"].offset_d = 0.5, 3
    with pytest.raises(RecordError, match="layer\\(s\\) conv_b, pool"):
        quantize(g, ctx)


def test_bias_overflow_names_the_layer():
    g = net()
    g.layer("conv_a").blobs[1] = f32([1e9, 0])
    ctx = calibrate(g, config())
    for n in ("conv_a", "conv_b"):
        ctx.record[n].scale_d, ctx.record[n].offset_d = 1e-6, 0
    ctx.record["pool"] = LayerRecord(scale_d=1.0, offset_d=0)
    with pytest.raises(QuantizationError, match="layer 'conv_a'.*overflows int32"):
        quantize(g, ctx)
