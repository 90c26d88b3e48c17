"""Depthwise-fed layers and the depthwise rule of the default config (docs/api.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_or_skip

import amct
from amct.api import build_default_config
from amct.config import LayerQuantConfig, apply_depthwise_rule, read_simple_config
from amct.frontends.caffe import load_caffe
from amct.ir.random import random_weights
from amct.passes.depthwise_inputs import depthwise_fed_layers, is_depthwise
from amct.passes.heads import head_layers
from amct.passes.quantizable import is_quantizable
from amct.quant.ifmr import ifmr_factors

NET = """
name: "dw"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv0" type: "Convolution" bottom: "data" top: "c0"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "dw1" type: "Convolution" bottom: "c0" top: "dw1"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "dw1" top: "dw1" }
layer { name: "sc1" type: "Scale" bottom: "dw1" top: "dw1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "dw1" top: "dw1" }
layer { name: "pw1" type: "Convolution" bottom: "dw1" top: "pw1"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "grp" type: "Convolution" bottom: "pw1" top: "grp"
        convolution_param { num_output: 8 group: 2 kernel_size: 3 pad: 1 } }
layer { name: "pw2" type: "Convolution" bottom: "grp" top: "pw2"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "mult" type: "Convolution" bottom: "pw2" top: "mult"
        convolution_param { num_output: 16 group: 8 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "mult" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "pw3" type: "Convolution" bottom: "pool" top: "pw3"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "relu_m" type: "ReLU" bottom: "mult" top: "mult_r" }
layer { name: "pw4" type: "Convolution" bottom: "mult_r" top: "pw4"
        convolution_param { num_output: 8 kernel_size: 1 } }
"""


@pytest.fixture
def net(tmp_path):
    proto = tmp_path / "dw.prototxt"
    proto.write_text(NET)
    return random_weights(load_caffe(str(proto)), seed=5)


def _quantizable(graph) -> list[str]:
    return [x.name for x in graph.layers if is_quantizable(x)]


def test_is_depthwise(net) -> None:
    kinds = {x.name: is_depthwise(x) for x in net.layers if x.type == "Convolution"}
    # mult: group == input channels with two filters per channel (multiplier 2).
    assert kinds == {"conv0": False, "dw1": True, "pw1": False, "grp": False, "pw2": False,
                     "mult": True, "pw3": False, "pw4": False}


def test_depthwise_fed_layers(net) -> None:
    # pw1: through BatchNorm, Scale and an in-place ReLU; pw3: through a max
    # pool (it stays within a channel); pw4: through a ReLU with its own top;
    # pw2 reads a grouped but not depthwise conv; a depthwise conv reading a
    # pointwise one is not fed; (Concat or Eltwise would stop the walk: they join producers).
    assert depthwise_fed_layers(net, _quantizable(net)) == ["pw1", "pw3", "pw4"]
    assert depthwise_fed_layers(net, ["conv0", "dw1", "pw2"]) == []


def test_default_config_applies_depthwise_rule_except_to_heads(net) -> None:
    cfg = build_default_config(net)
    heads = head_layers(net, cfg.enabled_layers())
    assert heads == ["pw3", "pw4"]
    # pw1 is depthwise-fed and not a head: search from the percentile maximum,
    # percentiles unchanged.
    assert cfg.layers["pw1"].search_range == (1.0, 1.3)
    assert cfg.layers["pw1"].max_percentile == 0.999999
    assert cfg.layers["pw3"].search_range == (1.0, 1.3)
    # pw4 is both: the head rule (the stronger one) wins.
    assert cfg.layers["pw4"].search_range == (1.0, 1.3)
    assert cfg.layers["pw4"].max_percentile == 1.0
    for name in ("conv0", "dw1", "grp", "pw2", "mult"):
        assert cfg.layers[name].search_range == (0.7, 1.3), name
    hf = build_default_config(net, act_algo="hfmg")
    assert hf.layers["pw1"].clip_floor == 1.0 and hf.layers["pw2"].clip_floor is None


def test_apply_depthwise_rule_keeps_explicit_clipping() -> None:
    c = LayerQuantConfig(search_range=(0.5, 1.0))
    apply_depthwise_rule(c)
    assert c.search_range == (0.5, 1.0)
    c = LayerQuantConfig(search_range=(0.8, 1.2), max_percentile=0.9999)
    apply_depthwise_rule(c)
    assert c.search_range == (1.0, 1.2) and c.max_percentile == 0.9999


def test_simple_config_depthwise_rule_and_explicit_override(net, tmp_path) -> None:
    ifmr = ("ifmr_quantize { search_range_start: 0.7 search_range_end: 1.3 search_step: 0.01 "
            "max_percentile: 0.999999 min_percentile: 0.999999 }")
    p = tmp_path / "a.cfg"
    p.write_text(f"common_config {{ {ifmr} }}\n")
    assert read_simple_config(str(p), net).layers["pw1"].search_range == (1.0, 1.3)
    p.write_text(f"common_config {{ {ifmr} }}\noverride_layer_configs {{ layer_name: \"pw1\" "
                 f"calibration_config {{ {ifmr} }} }}\n")
    assert read_simple_config(str(p), net).layers["pw1"].search_range == (0.7, 1.3)


def _ultraface_images(models) -> np.ndarray:
    """Five real images, whole, at UltraFace's 240x320 and its (x - 127) / 128."""
    from PIL import Image
    paths = ["images/cat.jpg", "images/000001.jpg", "images/000456.jpg", "mtcnn/test1.jpg",
             "ultraface_slim320/face.jpg"]
    xs = [np.asarray(Image.open(models / p).convert("RGB").resize((320, 240), Image.BILINEAR),
                     dtype=np.float32) for p in paths]
    return ((np.stack(xs) - 127.0) / 128.0).transpose(0, 3, 1, 2).astype(np.float32)


def test_default_ifmr_clips_one_channel_of_a_depthwise_output() -> None:
    """The situation the rule is for, on real data: the input of UltraFace's
    conv "191" is depthwise conv "188" after a ReLU.  AMCT's default IFMR clip
    saturates values of a single channel of 16, and only that one; the rule's
    search from 1.0 keeps the range up to the percentile maximum."""
    models = shared_or_skip("models")
    d = models / "ultraface_slim320"
    g = load_caffe(str(d / "slim-320.prototxt"), str(d / "slim-320.caffemodel"))
    assert "191" in depthwise_fed_layers(g, ["191"])
    a = amct.runtime.run(g, {"input": _ultraface_images(models)}, keep=["190"])["190"]
    vmax = float(a.max())
    scale, offset = ifmr_factors(a)
    top = (127 - offset) * scale
    assert top < 0.9 * vmax
    clipped = (a > top).sum(axis=(0, 2, 3))
    assert np.count_nonzero(clipped) == 1 and clipped.max() >= 20
    scale, offset = ifmr_factors(a, search_range=(1.0, 1.3))
    n = a.size
    pct_max = float(np.sort(a.ravel())[n - (n - int(0.999999 * n))])
    assert (127 - offset) * scale >= pct_max * (1 - 1e-6)


def test_ultraface_depthwise_fed_layers() -> None:
    d = shared_or_skip("models", "ultraface_slim320")
    g = load_caffe(str(d / "slim-320.prototxt"), str(d / "slim-320.caffemodel"))
    q = _quantizable(g)
    fed = depthwise_fed_layers(g, q)
    # Every pointwise conv of a depthwise-separable block, and the heads that
    # read a depthwise conv (232, 246, ...); never a depthwise conv itself.
    assert "191" in fed and "197" in fed and "232" in fed
    assert not any(is_depthwise(g.layer(n)) for n in fed)
    for n in fed:
        assert g.layer(n).params.convolution_param.group == 1
    raw = json.loads(amct.config.config_json(build_default_config(g)))
    assert raw["191"]["activation_quant_params"]["search_range"] == [1.0, 1.3]
    assert raw["188"]["activation_quant_params"]["search_range"] == [0.7, 1.3]
    assert raw["232"]["activation_quant_params"]["max_percentile"] == 1.0
