"""Head layers and the head rule of the default config (docs/api.md, "Head layers")."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_or_skip

import amct
from amct.api import build_default_config
from amct.config import apply_head_rule, parse_config_text, read_simple_config, LayerQuantConfig
from amct.errors import ConfigError
from amct.frontends.caffe import load_caffe
from amct.ir.random import random_weights
from amct.passes.heads import head_layers
from amct.passes.quantizable import is_quantizable
from amct.quant.hfmg import HfmgCollector
from amct.quant.ifmr import ifmr_factors


def _quantizable(graph) -> list[str]:
    return [x.name for x in graph.layers if is_quantizable(x)]


def _model(*parts):
    d = shared_or_skip("models", *parts[:-2])
    return load_caffe(str(d / parts[-2]), str(d / parts[-1]))


# ------------------------------------------------------------ detection
def test_lenet_head_is_ip2() -> None:
    g = _model("lenet_mnist", "mnist_deploy.prototxt", "lenet_iter_10000.caffemodel")
    assert head_layers(g, _quantizable(g)) == ["ip2"]
    # Without ip2 quantized, ip1's error reaches the output unquantized.
    assert head_layers(g, ["conv1", "conv2", "ip1"]) == ["ip1"]


def test_mtcnn_det1_heads() -> None:
    g = _model("mtcnn", "det1.prototxt", "det1.caffemodel")
    assert head_layers(g, _quantizable(g)) == ["conv4-1", "conv4-2"]


def test_ultraface_heads_are_the_eight_branch_convs() -> None:
    g = _model("ultraface_slim320", "slim-320.prototxt", "slim-320.caffemodel")
    heads = head_layers(g, _quantizable(g))
    assert heads == ["232", "246", "278", "292", "318", "332", "350", "362"]
    # Each is a 1x1/3x3 conv whose output is only reshaped on the way out.
    assert all(g.layer(h).type == "Convolution" for h in heads)


RESNET = """
name: "res"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2a" type: "Convolution" bottom: "conv1" top: "conv2a"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2a" type: "ReLU" bottom: "conv2a" top: "conv2a" }
layer { name: "conv2b" type: "Convolution" bottom: "conv2a" top: "conv2b"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2b" top: "sum" }
layer { name: "relu_sum" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def resnet(tmp_path):
    proto = tmp_path / "res.prototxt"
    proto.write_text(RESNET)
    g = random_weights(load_caffe(str(proto)), seed=3)
    return g


def test_resnet_block_heads(resnet) -> None:
    q = _quantizable(resnet)
    assert q == ["conv1", "conv2a", "conv2b", "fc"]        # global pooling is not quantizable
    assert head_layers(resnet, q) == ["fc"]
    # fc in float: both branches of the residual sum reach the output through
    # unquantized layers (conv1 via the identity path and its in-place ReLU);
    # conv2a always feeds the quantized conv2b.
    assert head_layers(resnet, ["conv1", "conv2a", "conv2b"]) == ["conv1", "conv2b"]


# ------------------------------------------------------------ the config
def test_default_config_carries_head_rule(tmp_path) -> None:
    d = shared_or_skip("models", "lenet_mnist")
    model, weights = str(d / "mnist_deploy.prototxt"), str(d / "lenet_iter_10000.caffemodel")
    path = tmp_path / "config.json"
    amct.create_quant_config(str(path), model, weights)
    raw = json.loads(path.read_text())
    assert raw["ip2"]["activation_quant_params"] == {
        "max_percentile": 1.0, "min_percentile": 1.0, "search_range": [1.0, 1.3],
        "search_step": 0.01}
    for name in ("conv1", "conv2", "ip1"):
        assert raw[name]["activation_quant_params"]["search_range"] == [0.7, 1.3]
        assert raw[name]["activation_quant_params"]["max_percentile"] == 0.999999
        assert "clip_floor" not in raw[name]["activation_quant_params"]
    # Skipping the head makes ip1 the head.
    amct.create_quant_config(str(path), model, weights, skip_layers=["ip2"])
    raw = json.loads(path.read_text())
    assert raw["ip1"]["activation_quant_params"]["search_range"] == [1.0, 1.3]
    assert raw["conv2"]["activation_quant_params"]["search_range"] == [0.7, 1.3]
    # HFMG: clip_floor on the head only, written and read back.
    g = load_caffe(model, weights)
    cfg = build_default_config(g, act_algo="hfmg")
    assert cfg.layers["ip2"].clip_floor == 1.0
    assert all(cfg.layers[n].clip_floor is None for n in ("conv1", "conv2", "ip1"))
    from amct.config import config_json
    text = config_json(cfg)
    assert json.loads(text)["ip2"]["activation_quant_params"] == {
        "act_algo": "hfmg", "num_of_bins": 4096, "clip_floor": 1.0}
    assert parse_config_text(text).layers["ip2"].clip_floor == 1.0


def test_simple_config_applies_head_rule(tmp_path) -> None:
    d = shared_or_skip("models", "lenet_mnist")
    g = load_caffe(str(d / "mnist_deploy.prototxt"), str(d / "lenet_iter_10000.caffemodel"))
    ifmr = ("ifmr_quantize { search_range_start: 0.7 search_range_end: 1.3 search_step: 0.01 "
            "max_percentile: 0.999999 min_percentile: 0.999999 }")
    cfg_path = tmp_path / "a.cfg"
    cfg_path.write_text(f"batch_num: 1\ncommon_config {{ {ifmr} }}\n")
    cfg = read_simple_config(str(cfg_path), g)
    assert cfg.layers["ip2"].search_range == (1.0, 1.3)
    assert cfg.layers["ip2"].max_percentile == cfg.layers["ip2"].min_percentile == 1.0
    assert cfg.layers["ip1"].search_range == (0.7, 1.3)
    assert cfg.layers["ip1"].max_percentile == 0.999999
    cfg_path.write_text("common_config { hfmg_quantize { num_of_bins: 2048 } }\n")
    cfg = read_simple_config(str(cfg_path), g)
    assert cfg.layers["ip2"].clip_floor == 1.0 and cfg.layers["ip1"].clip_floor is None
    # An explicit per-layer activation setting is taken literally.
    cfg_path.write_text(f"common_config {{ {ifmr} }}\noverride_layer_configs {{ layer_name: "
                        f"\"ip2\" calibration_config {{ {ifmr} }} }}\n")
    assert read_simple_config(str(cfg_path), g).layers["ip2"].search_range == (0.7, 1.3)
    # An override that sets only the weights keeps the head rule.
    cfg_path.write_text("override_layer_configs { layer_name: \"ip2\" calibration_config { "
                        "arq_quantize { channel_wise: false } } }\n")
    assert read_simple_config(str(cfg_path), g).layers["ip2"].search_range == (1.0, 1.3)


def test_apply_head_rule_keeps_explicit_clipping() -> None:
    c = LayerQuantConfig(search_range=(0.5, 1.0), max_percentile=0.999)
    apply_head_rule(c)
    assert c.search_range == (0.5, 1.0)        # the user asked to clip: left alone
    assert c.max_percentile == 0.999
    c = LayerQuantConfig(search_range=(0.8, 1.5), search_step=0.05, max_percentile=0.999)
    apply_head_rule(c)
    assert c.search_range == (1.0, 1.5)
    assert c.max_percentile == c.min_percentile == 1.0
    # The minmax preset's range [1.0, 1.01) reaches one step above 1.0: kept as it is.
    c = LayerQuantConfig(search_range=(1.0, 1.01), max_percentile=1.0, min_percentile=1.0)
    apply_head_rule(c)
    assert c.search_range == (1.0, 1.01)


@pytest.mark.parametrize("act, msg", [
    ({"clip_floor": 1.0}, "is an HFMG parameter"),
    ({"act_algo": "hfmg", "clip_floor": 0}, "must be in (0, 1]"),
    ({"act_algo": "hfmg", "clip_floor": 1.5}, "must be in (0, 1]"),
    ({"act_algo": "hfmg", "clip_floor": "1"}, "expected a number"),
])
def test_clip_floor_validation(act, msg) -> None:
    text = json.dumps({"version": 1, "conv1": {"activation_quant_params": act}})
    with pytest.raises(ConfigError, match=r"conv1.*clip_floor") as e:
        parse_config_text(text, "c.json")
    assert msg in str(e.value)


# ------------------------------------------------------------ the numerics
def _heavy_tail(seed: int = 0) -> np.ndarray:
    """Post-ReLU-like data: mostly small values, a few large responses."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(0.0, 0.3, 200_000), 0.0)
    x[rng.choice(x.size, 40, replace=False)] = rng.uniform(1.5, 3.0, 40)
    return x.astype(np.float32)


def _top(scale: float, offset: int) -> float:
    return (127 - offset) * scale                 # the largest representable value


def test_head_factors_do_not_clip_the_calibration_max() -> None:
    x = _heavy_tail()
    xmax = float(x.max())
    scale, offset = ifmr_factors(x)                               # AMCT's default range
    assert _top(scale, offset) < 0.99 * xmax                     # the default clips the tail
    scale, offset = ifmr_factors(x, max_percentile=1.0, min_percentile=1.0,
                                 search_range=(1.0, 1.3))        # the head rule
    assert offset == -128 and _top(scale, offset) >= xmax * (1 - 1e-6)
    plain = HfmgCollector(2, num_of_bins=1024)
    head = HfmgCollector(2, num_of_bins=1024, clip_floor=1.0)
    for c in (plain, head):
        c.update(x[:100_000])
        c.update(x[100_000:])
    assert _top(*plain.compute()) < 0.99 * xmax
    scale, offset = head.compute()
    assert _top(scale, offset) >= xmax * (1 - 1e-6)
    # Symmetric and signed data: the floor holds for the larger magnitude.
    y = np.concatenate([-x[:1000], x])
    sym = HfmgCollector(1, with_offset=False, clip_floor=1.0)
    sym.update(y)
    scale, offset = sym.compute()
    assert offset == 0 and 127 * scale >= xmax * (1 - 1e-6)


def test_hfmg_head_flow_writes_clip_floor(tmp_path, resnet) -> None:
    """quantize(algo='hfmg'): the head's HFMG layer carries clip_floor and its range
    covers every calibration value."""
    from amct.frontends.caffe import save_caffe
    from amct.runtime import compile as compile_graph

    model, weights = tmp_path / "res.prototxt", tmp_path / "res.caffemodel"
    save_caffe(resnet, str(model), str(weights))
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1, (2, 4, 8, 8)).astype(np.float32) for _ in range(2)]
    res = amct.quantize(str(model), str(weights), batches, str(tmp_path / "out"), algo="hfmg",
                        save_type="Fakequant")
    modified = load_caffe(res.modified_model_file)
    cal = {x.params.hfmg_param.object_layer[0]: x.params.hfmg_param for x in modified.layers
           if x.type == "HFMG"}
    assert cal["fc"].HasField("clip_floor") and cal["fc"].clip_floor == 1.0
    assert not cal["conv1"].HasField("clip_floor")
    seen = []
    prog = compile_graph(resnet, {"data": batches[0].shape})
    for b in batches:
        prog.run({"data": b}, observers=[lambda layer, j, blob, vid, a: seen.append(a.max())
                                         if layer.name == "pool" else None])
    f = res.layers["fc"]
    assert _top(f.scale_d, f.offset_d) >= max(seen) * (1 - 1e-6)
