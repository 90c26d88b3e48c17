"""JSON config (SPEC §3.1) and simplified .cfg (§3.2): layout and one test per rule."""
from __future__ import annotations

import json

import numpy as np
import pytest

from amct.config import (LayerQuantConfig, QuantConfig, check_against_graph, config_json,
                         parse_config_text, read_config, read_simple_config)
from amct.errors import ConfigError
from test_passes_graphs import ave_pool, conv, f32, graph, inp, ip

ACT = {"max_percentile": 0.999999, "min_percentile": 0.999999, "search_range": [0.7, 1.3],
       "search_step": 0.01}


def net():
    return graph(inp("data", [1, 2, 4, 4]), conv("conv1", "data", "c", np.ones((2, 2, 1, 1))),
                 ave_pool("pool", "c", "p"), ip("fc", "p", "f", f32(np.ones((3, 8)))))


def doc(**layer_over):
    d = {"version": 1, "batch_num": 2, "activation_offset": True, "do_fusion": True,
         "skip_fusion_layers": [],
         "conv1": {"quant_enable": True, "activation_quant_params": dict(ACT),
                   "weight_quant_params": {"channel_wise": True}}}
    for k, v in layer_over.items():
        d["conv1"][k] = v
    return d


def parse(d):
    return parse_config_text(json.dumps(d), "cfg.json")


def test_writer_layout_is_exact():
    cfg = QuantConfig(batch_num=2, layers={"fc": LayerQuantConfig(channel_wise=False),
                                           "conv1": LayerQuantConfig()})
    text = config_json(cfg)
    assert text == json.dumps(doc() | {"conv1": doc()["conv1"], "fc": {
        "quant_enable": True, "activation_quant_params": dict(ACT),
        "weight_quant_params": {"channel_wise": False}}}, indent=4, separators=(",", ":"))
    assert text.index('"skip_fusion_layers"') < text.index('"conv1"') < text.index('"fc"')
    back = parse_config_text(text)
    assert back.layers["conv1"] == cfg.layers["conv1"] and back.batch_num == 2


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(bogus=1), "key 'bogus': unknown global key"),
    (lambda d: d["conv1"].update(extra=True), "layer 'conv1': unknown key 'extra'"),
    (lambda d: d["conv1"]["activation_quant_params"].update(foo=1), "unknown key 'foo'"),
    (lambda d: d["conv1"]["weight_quant_params"].update(bar=1), "unknown key 'bar'"),
    (lambda d: d.update(version=2), "version: must be 1"),
    (lambda d: d.update(version="1"), "version: expected an integer"),
    (lambda d: d.update(batch_num=0), "batch_num: must be a positive integer"),
    (lambda d: d.update(batch_num=True), "batch_num: expected an integer"),
    (lambda d: d.update(activation_offset=1), "activation_offset: expected true/false"),
    (lambda d: d.update(do_fusion="yes"), "do_fusion: expected true/false"),
    (lambda d: d.update(skip_fusion_layers="conv1"), "skip_fusion_layers: expected a list"),
    (lambda d: d["conv1"].update(quant_enable=1), "conv1'.quant_enable: expected true/false"),
    (lambda d: d["conv1"]["activation_quant_params"].update(search_range=[1.3, 0.7]),
     "search_range: must satisfy 0 < start < end"),
    (lambda d: d["conv1"]["activation_quant_params"].update(search_range=[0, 1.3]),
     "search_range: must satisfy 0 < start < end"),
    (lambda d: d["conv1"]["activation_quant_params"].update(search_range=[0.7]),
     "search_range: expected \\[start, end\\]"),
    (lambda d: d["conv1"]["activation_quant_params"].update(search_step=0.0),
     "search_step: must satisfy 0 < step"),
    (lambda d: d["conv1"]["activation_quant_params"].update(search_step=0.7),
     "search_step: must satisfy 0 < step <= end - start"),
    (lambda d: d["conv1"]["activation_quant_params"].update(max_percentile=0.5),
     "max_percentile: must be in \\(0.5, 1.0\\]"),
    (lambda d: d["conv1"]["activation_quant_params"].update(min_percentile=1.01),
     "min_percentile: must be in \\(0.5, 1.0\\]"),
    (lambda d: d["conv1"]["activation_quant_params"].update(max_percentile="0.9"),
     "max_percentile: expected a number"),
    (lambda d: d["conv1"]["activation_quant_params"].update(act_algo="kl"),
     "act_algo: must be one of ifmr, hfmg"),
    (lambda d: d["conv1"]["activation_quant_params"].update(num_of_bins=4096),
     "num_of_bins: is an HFMG parameter"),
    (lambda d: d["conv1"].update(activation_quant_params={"act_algo": "hfmg", "num_of_bins": 100}),
     "num_of_bins: must be one of 1024, 2048, 4096, 8192"),
    (lambda d: d["conv1"]["activation_quant_params"].update(act_algo="hfmg"),
     "max_percentile: is an IFMR parameter but act_algo is 'hfmg'"),
    (lambda d: d["conv1"]["activation_quant_params"].update(asymmetric="no"),
     "asymmetric: expected true/false"),
    (lambda d: d["conv1"]["weight_quant_params"].update(channel_wise=1),
     "channel_wise: expected true/false"),
    (lambda d: d["conv1"]["weight_quant_params"].update(wts_algo="nuq"),
     "wts_algo: only 'arq_quantize'"),
])
def test_each_rule_names_the_key(mutate, match):
    d = doc()
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        parse(d)


def test_duplicate_keys_and_bad_json():
    text = json.dumps(doc())
    with pytest.raises(ConfigError, match="cfg.json: duplicate key 'version'"):
        parse_config_text(text.replace('"version": 1', '"version": 1, "version": 1'), "cfg.json")
    with pytest.raises(ConfigError, match="cfg.json:1:"):
        parse_config_text("{", "cfg.json")


def test_graph_rules(tmp_path):
    g = net()
    ok = parse(doc())
    check_against_graph(ok, g)
    d = doc()
    d["fc"] = {"weight_quant_params": {"channel_wise": True}}
    with pytest.raises(ConfigError, match="layer 'fc'.weight_quant_params.channel_wise: must be false"):
        check_against_graph(parse(d), g)
    d = doc()
    d["pool"] = {}                                   # channel_wise defaults by type
    cfg = check_against_graph(parse(d), g)
    assert cfg.layers["pool"].channel_wise is False and cfg.layers["conv1"].channel_wise
    d["ghost"] = {}
    with pytest.raises(ConfigError, match="layer 'ghost': no such layer"):
        check_against_graph(parse(d), g)
    d = doc()
    d["data"] = {}
    with pytest.raises(ConfigError, match="layer 'data': cannot be quantized"):
        check_against_graph(parse(d), g)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc() | {"skip_fusion_layers": ["nope"]}))
    with pytest.raises(ConfigError, match="skip_fusion_layers: no layer named 'nope'"):
        read_config(str(p), g)


CFG = """batch_num: 3
activation_offset: false
skip_layers: "pool"
common_config {
  arq_quantize { channel_wise: true }
  ifmr_quantize { search_range_start: 0.8 search_range_end: 1.2 search_step: 0.02
                  max_percentile: 0.99 min_percentile: 0.98 }
}
override_layer_types { layer_type: "InnerProduct"
  calibration_config { hfmg_quantize { num_of_bins: 1024 } } }
override_layer_configs { layer_name: "fc"
  calibration_config { arq_quantize { channel_wise: false } } }
"""


def test_simplified_config_precedence(tmp_path):
    p = tmp_path / "q.cfg"
    p.write_text(CFG)
    cfg = read_simple_config(str(p), net())
    assert cfg.batch_num == 3 and cfg.activation_offset is False
    assert cfg.enabled_layers() == ["conv1", "fc"] and not cfg.layers["pool"].quant_enable
    c = cfg.layers["conv1"]
    assert (c.act_algo, c.search_range, c.search_step, c.max_percentile, c.channel_wise) == \
        ("ifmr", (0.8, 1.2), 0.02, 0.99, True)
    f = cfg.layers["fc"]                            # type override, then layer override
    assert (f.act_algo, f.num_of_bins, f.channel_wise) == ("hfmg", 1024, False)
    assert cfg.layers["pool"].channel_wise is False  # common channel_wise: conv types only


@pytest.mark.parametrize("text, match", [
    ("batch_num: 2\nbogus: 1\n", r"q.cfg:2:1: .*bogus"),
    ("common_config { arq_quantize { channel_wise: maybe } }", r"q.cfg:1:"),
    ("skip_layers: \"ghost\"", "skip_layers: no layer named 'ghost'"),
    ("skip_layer_types: \"ReLU\"", "skip_layer_types: 'ReLU' is not a quantizable type"),
    ("override_layer_configs { layer_name: \"fc\" calibration_config { arq_quantize "
     "{ channel_wise: true } } }", "layer 'fc': arq_quantize.channel_wise: must be false"),
    ("common_config { ifmr_quantize { max_percentile: 0.4 } }", "max_percentile: must be in"),
    ("common_config { hfmg_quantize { num_of_bins: 10 } }", "num_of_bins: must be one of"),
    ("batch_num: 0", "batch_num: must be a positive integer"),
    ("joint_quant: true", "joint_quant"),
])
def test_simplified_config_errors(tmp_path, text, match):
    p = tmp_path / "q.cfg"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_simple_config(str(p), net())
