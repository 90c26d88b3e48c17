"""The "minmax" calibration preset: an AMCT-valid IFMR config that never clips."""
from __future__ import annotations

import json

import numpy as np
import pytest

import amct
from amct.api import build_default_config
from amct.config import apply_algo_preset, default_layer_config, read_config
from amct.errors import ConfigError
from amct.frontends.caffe import load_caffe
from amct.quant.ifmr import IfmrCollector
from amct.quant.record import read_record
from conftest import REPO

EX = REPO / "examples" / "lenet_mnist"
M, W = str(EX / "mnist_deploy.prototxt"), str(EX / "lenet_iter_10000.caffemodel")


def test_minmax_preset_is_an_ifmr_config_without_clipping():
    c = default_layer_config("Convolution")
    apply_algo_preset(c, "minmax")
    assert (c.act_algo, c.max_percentile, c.min_percentile) == ("ifmr", 1.0, 1.0)
    assert c.search_range == (1.0, 1.01) and c.search_step == 0.01
    with pytest.raises(ConfigError, match="algo must be one of ifmr, hfmg, minmax"):
        apply_algo_preset(c, "kl")


def test_minmax_preset_factors_cover_the_observed_range():
    # Percentiles 1.0 and the single candidate 1.0 x max: IFMR keeps exactly
    # [min, max]; asymmetric scale = (3 - -1) / 255, offset = -round(-1/scale) - 128
    # = round(63.75) - 128 = 64 - 128 = -64.
    x = np.array([-1.0, -0.25, 0.0, 0.5, 2.0, 3.0], np.float32)
    col = IfmrCollector(1, True, (1.0, 1.01), 0.01, 1.0, 1.0)
    col.update(x)
    scale, offset = col.compute()
    assert scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert offset == -64


def test_minmax_flow_writes_valid_config_and_no_clipping(tmp_path):
    g = load_caffe(M, W)
    cfg = build_default_config(g, act_algo="minmax")
    assert all(c.max_percentile == 1.0 and c.search_range[0] == 1.0 for c in cfg.layers.values())
    x = amct.data.tensors.load_idx(str(EX / "calib-images-idx3-ubyte.gz"))[:64, None] / 256.0
    res = amct.quantize(M, W, [x[:32], x[32:]], str(tmp_path / "lenet"), algo="minmax")
    written = json.loads(open(res.config_file).read())
    assert written["conv1"]["activation_quant_params"]["max_percentile"] == 1.0
    read_config(res.config_file, g)      # valid by every SPEC §3.1 rule
    # conv1 reads the image: its INT8 range must cover the data's full [0, max].
    r = read_record(res.record_file)["conv1"]
    top = float(x.max())
    assert (127 - r.offset_d) * r.scale_d >= top * (1 - 1e-6)
