"""Issue 7, flow half: bad configs, records, arguments, outputs, weights and data.

The model-loading corpus is tests/test_bad_inputs_model.py.  Here every case is
generated from the real LeNet files: ``CASES`` is the table, one row per bad
input, with the exception class and the message fragments it must produce.  A
``{tmp}`` in a fragment stands for the case's directory, so each message is
checked to name the offending file.  To add a case: write a function that
makes the bad input in ``w.tmp`` and calls the API, and add a row.

The last tests check the hard numeric corners that must *not* fail: an
all-zero weight channel, activations with zero range, a missing save directory.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import pytest

import amct
from amct.errors import (AmctError, ConfigError, DataError, OutputError, QuantizationError,
                         RecordError, WeightsError)
from amct.frontends.caffe import load_caffe, save_caffe
from amct.quant.record import read_record
from conftest import DATA

M = str(DATA / "lenet/mnist_deploy.prototxt")
W = str(DATA / "lenet/lenet_iter_10000.caffemodel")
QUANTIZABLE = ("conv1", "conv2", "ip1", "ip2")
OUT_SUFFIXES = ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel",
                "_deploy_model.prototxt", "_deploy_weights.caffemodel", "_quant.json")


def batches(n: int, seed: int = 0, value: float | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if value is not None:
        return [np.full((2, 1, 28, 28), value, np.float32) for _ in range(n)]
    return [rng.random((2, 1, 28, 28), dtype=np.float32) for _ in range(n)]


def calibrate(tmp: Path, model: str = M, weights: str = W, data=None, batch_num: int = 1,
              forwards: int | None = None, **cfg_kw):
    """create_quant_config -> init -> quantize_model -> forwards; returns (graph, record path)."""
    data = batches(batch_num) if data is None else data
    os.makedirs(tmp, exist_ok=True)
    cfg, rec = str(tmp / "config.json"), str(tmp / "record.txt")
    amct.create_quant_config(cfg, model, weights, batch_num=batch_num, **cfg_kw)
    g = amct.init(cfg, model, weights, rec)
    amct.quantize_model(g, str(tmp / "modified.prototxt"), str(tmp / "modified.caffemodel"))
    net = amct.runtime.Net(str(tmp / "modified.prototxt"), str(tmp / "modified.caffemodel"))
    for x in data[:forwards if forwards is not None else len(data)]:
        net.forward(data=x)
    return g, rec


@attrs.define
class World:
    """What the cases share: a valid config dict and one quantized LeNet."""

    root: Path
    config: dict[str, Any]
    quantized: str            # save_path prefix of a finished flow
    tmp: Path = None          # the current case's directory

    def write(self, name: str, content: str | bytes) -> str:
        p = self.tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def edited_lenet(self, edit: Callable) -> tuple[str, str]:
        g = load_caffe(M, W)
        edit(g)
        m, w = str(self.tmp / "edited.prototxt"), str(self.tmp / "edited.caffemodel")
        save_caffe(g, m, w)
        return m, w


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("flow_bad")
    amct.create_quant_config(str(root / "config.json"), M, W, batch_num=1)
    config = json.loads((root / "config.json").read_text())
    g, _ = calibrate(root / "ok")
    amct.save_model(g, "Both", str(root / "ok" / "out" / "lenet"))
    return World(root, config, str(root / "ok" / "out" / "lenet"))


# ------------------------------------------------------------ JSON config
def json_case(edit: Callable[[dict], None] | str) -> Callable[[World], None]:
    """init() with the valid config edited by ``edit`` (or with the raw text ``edit``)."""
    def run(w: World) -> None:
        if isinstance(edit, str):
            text = edit
        else:
            d = copy.deepcopy(w.config)
            edit(d)
            text = json.dumps(d, indent=4)
        path = w.write("config.json", text)
        amct.init(path, M, W, str(w.tmp / "record.txt"))
    return run


def put(*path_and_value) -> Callable[[dict], None]:
    *path, value = path_and_value

    def edit(d: dict) -> None:
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


ACT = ("conv1", "activation_quant_params")


def hfmg(**extra) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["conv1"]["activation_quant_params"] = {"act_algo": "hfmg", **extra}
    return edit


def json_latin1(w: World) -> None:
    path = w.write("config.json", b'{"version": 1,\n "conv1": {"quant_enable": true}, "\xff": 1}')
    amct.init(path, M, W, str(w.tmp / "record.txt"))


def disable_all(d: dict) -> None:
    for k in QUANTIZABLE:
        d[k]["quant_enable"] = False


# ------------------------------------------------------- simplified .cfg
def cfg_case(text: str | bytes) -> Callable[[World], None]:
    def run(w: World) -> None:
        path = w.write("simple.cfg", text)
        amct.create_quant_config(str(w.tmp / "config.json"), M, W, config_defination=path)
    return run


IFMR_OK = ("search_range_start: 0.7 search_range_end: 1.3 search_step: 0.01 "
           "max_percentile: 0.999999 min_percentile: 0.999999")


# ------------------------------------------------ create_quant_config args
def args_case(**kw) -> Callable[[World], None]:
    def run(w: World) -> None:
        amct.create_quant_config(str(w.tmp / "config.json"), M, W, **kw)
    return run


def args_case_weights_none(w: World) -> None:
    amct.create_quant_config(str(w.tmp / "config.json"), M, None)


def no_quantizable_layer(w: World) -> None:
    m = w.write("relu_only.prototxt", 'name: "r" layer { name: "data" type: "Input" top: "data" '
                'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
                'layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }\n')
    from amct.ir.random import random_weights

    weights = str(w.tmp / "relu_only.caffemodel")
    save_caffe(random_weights(load_caffe(m), seed=0), m, weights)
    amct.create_quant_config(str(w.tmp / "config.json"), m, weights)


# ----------------------------------------------------------------- record
def record_case(text: str | bytes) -> Callable[[World], None]:
    def run(w: World) -> None:
        path = w.write("record.txt", text)
        amct.convert_model(M, W, path, str(w.tmp / "out" / "lenet"))
        raise AssertionError("convert_model accepted the bad record")
    return run


def rec(key: str = "conv1", body: str = "scale_d: 0.01 offset_d: 0") -> str:
    return f'record {{ key: "{key}" value {{ {body} }} }}\n'


# ------------------------------------------------------------ flow / save
def save_under_regular_file(w: World) -> None:
    g, _ = calibrate(w.tmp / "cal")
    w.write("a_file", "I am a file, not a directory")
    amct.save_model(g, "Both", str(w.tmp / "a_file" / "sub" / "lenet"))


def save_in_proc(w: World) -> None:
    g, _ = calibrate(w.tmp / "cal")
    amct.save_model(g, "Both", "/proc/amct_no_such_dir/lenet")


def save_over_directory(w: World) -> None:
    g, _ = calibrate(w.tmp / "cal")
    os.makedirs(w.tmp / "out" / "lenet_quant.json")
    amct.save_model(g, "Both", str(w.tmp / "out" / "lenet"))


def record_under_regular_file(w: World) -> None:
    w.write("a_file", "x")
    amct.init(str(w.root / "config.json"), M, W, str(w.tmp / "a_file" / "record.txt"))


def config_under_regular_file(w: World) -> None:
    w.write("a_file", "x")
    amct.create_quant_config(str(w.tmp / "a_file" / "config.json"), M, W)


def modified_model_under_regular_file(w: World) -> None:
    w.write("a_file", "x")
    g = amct.init(str(w.root / "config.json"), M, W, str(w.tmp / "record.txt"))
    amct.quantize_model(g, str(w.tmp / "a_file" / "m.prototxt"), str(w.tmp / "m.caffemodel"))


def too_few_forwards(w: World) -> None:
    g, _ = calibrate(w.tmp / "cal", batch_num=3, forwards=2)
    try:
        amct.save_model(g, "Both", str(w.tmp / "out" / "lenet"))
    finally:
        assert not (w.tmp / "out").exists(), "save_model wrote something before failing"


def save_bad_type(w: World) -> None:
    g, _ = calibrate(w.tmp / "cal")
    amct.save_model(g, "int8", str(w.tmp / "out" / "lenet"))


def save_without_init(w: World) -> None:
    amct.save_model(load_caffe(M, W), "Both", str(w.tmp / "out" / "lenet"))


def save_before_quantize(w: World) -> None:
    g = amct.init(str(w.root / "config.json"), M, W, str(w.tmp / "record.txt"))
    amct.save_model(g, "Both", str(w.tmp / "out" / "lenet"))


def quantize_twice(w: World) -> None:
    g, _ = calibrate(w.tmp / "cal")
    amct.quantize_model(g, str(w.tmp / "m2.prototxt"), str(w.tmp / "m2.caffemodel"))


def convert_quantized(kind: str) -> Callable[[World], None]:
    def run(w: World) -> None:
        path = w.write("record.txt", rec())
        q = w.quantized
        model, weights = {"fake": (q + OUT_SUFFIXES[0], q + OUT_SUFFIXES[1]),
                          "deploy": (q + OUT_SUFFIXES[2], q + OUT_SUFFIXES[3]),
                          "int8_blobs": (M, q + OUT_SUFFIXES[3]),
                          "modified": (str(w.root / "ok" / "modified.prototxt"),
                                       str(w.root / "ok" / "modified.caffemodel"))}[kind]
        amct.convert_model(model, weights, path, str(w.tmp / "out" / "lenet"))
    return run


def init_on_deploy(w: World) -> None:
    q = w.quantized
    amct.init(str(w.root / "config.json"), q + OUT_SUFFIXES[2], q + OUT_SUFFIXES[3],
              str(w.tmp / "record.txt"))


def config_for_deploy(w: World) -> None:
    q = w.quantized
    amct.create_quant_config(str(w.tmp / "config.json"), q + OUT_SUFFIXES[2], q + OUT_SUFFIXES[3])


def nan_weight(w: World) -> None:
    def edit(g):
        g.layer("conv2").blobs[0][3, 1, 2, 2] = np.nan
    m, wt = w.edited_lenet(edit)
    amct.create_quant_config(str(w.tmp / "config.json"), m, wt)


def inf_bias(w: World) -> None:
    def edit(g):
        g.layer("ip1").blobs[1][7] = -np.inf
    m, wt = w.edited_lenet(edit)
    amct.convert_model(m, wt, w.write("record.txt", rec()), str(w.tmp / "out" / "lenet"))


def bias_overflow(w: World) -> None:
    def edit(g):
        g.layer("ip2").blobs[1][3] = 1e6      # / deq_scale ~5e-5 -> ~2e10 > int32
    m, wt = w.edited_lenet(edit)
    g, _ = calibrate(w.tmp / "cal", m, wt)
    try:
        amct.save_model(g, "Both", str(w.tmp / "out" / "lenet"))
    finally:
        assert not (w.tmp / "out").exists()


def bias_overflow_convert(w: World) -> None:
    def edit(g):
        g.layer("conv1").blobs[1][5] = 3e38
    m, wt = w.edited_lenet(edit)
    amct.convert_model(m, wt, w.write("record.txt", rec()), str(w.tmp / "out" / "lenet"))


def quantize_wrong_channels(w: World) -> None:
    amct.quantize(M, W, [np.zeros((2, 3, 28, 28), np.float32)], str(w.tmp / "out" / "lenet"))


def quantize_wrong_rank(w: World) -> None:
    amct.quantize(M, W, [np.zeros((2, 784), np.float32)], str(w.tmp / "out" / "lenet"))


def quantize_too_few_batches(w: World) -> None:
    amct.quantize(M, W, batches(1), str(w.tmp / "out" / "lenet"), batch_num=3)


def quantize_unknown_input(w: World) -> None:
    amct.quantize(M, W, [{"image": batches(1)[0]}], str(w.tmp / "out" / "lenet"))


# ------------------------------------------------------------------- data
def open_data(w: World, spec: str, shape=(1, 28, 28)):
    from amct.data import Preprocess, open_dataset

    ds = open_dataset([spec], {"data": shape}, preprocess=Preprocess())
    return [b for b in ds.batches(1)]


def undecodable_image(w: World) -> None:
    (w.tmp / "imgs").mkdir()
    w.write("imgs/a_good.png", _png_bytes())
    w.write("imgs/b_bad.png", b"\x89PNG\r\n\x1a\n this is not a png body")
    open_data(w, str(w.tmp / "imgs"))


def truncated_jpeg(w: World) -> None:
    full = _jpeg_bytes()
    path = w.write("trunc.jpg", full[: len(full) // 3])
    open_data(w, path)


def npy_wrong_shape(w: World) -> None:
    path = str(w.tmp / "x.npy")
    np.save(path, np.zeros((4, 3, 28, 28), np.float32))
    open_data(w, path)


def bin_wrong_size(w: World) -> None:
    path = w.write("x.bin", b"\0" * 1000)
    open_data(w, path)


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------ table
# (id, bad input, error class, fragments that must all appear in the message)
CASES: list[tuple[str, Callable[[World], None], type, tuple[str, ...]]] = [
    # JSON config, SPEC §3.1
    ("json-unknown-global-key", json_case(put("batch_size", 3)), ConfigError,
     ("{tmp}/config.json", "key 'batch_size'", "unknown global key")),
    ("json-unknown-layer-key", json_case(put("conv1", "quant", True)), ConfigError,
     ("layer 'conv1'", "unknown key 'quant'")),
    ("json-unknown-act-key", json_case(put(*ACT, "algo", "ifmr")), ConfigError,
     ("layer 'conv1'.activation_quant_params", "unknown key 'algo'")),
    ("json-unknown-weight-key", json_case(put("ip1", "weight_quant_params", "per_channel", 1)),
     ConfigError, ("layer 'ip1'.weight_quant_params", "unknown key 'per_channel'")),
    ("json-duplicate-global-key", json_case('{"version": 1, "batch_num": 1,\n "batch_num": 2,\n'
                                            ' "conv1": {}}'), ConfigError,
     ("{tmp}/config.json", "duplicate key 'batch_num'")),
    ("json-duplicate-layer", json_case('{"conv1": {"quant_enable": true},\n'
                                       ' "conv1": {"quant_enable": false}}'), ConfigError,
     ("duplicate key 'conv1'",)),
    ("json-syntax", json_case('{\n    "version": 1,\n    "batch_num": 2\n    "conv1": {}\n}'),
     ConfigError, ("{tmp}/config.json:4:5:", "invalid JSON", "Expecting ',' delimiter")),
    ("json-empty-file", json_case(""), ConfigError, ("{tmp}/config.json:1:1:", "invalid JSON")),
    ("json-not-object", json_case("[1, 2]"), ConfigError, ("top level", "expected an object")),
    ("json-not-utf8", json_latin1, ConfigError,
     ("{tmp}/config.json:2:36:", "not UTF-8", "byte offset 50")),
    ("json-version-2", json_case(put("version", 2)), ConfigError, ("version", "must be 1, got 2")),
    ("json-version-string", json_case(put("version", "1")), ConfigError,
     ("version", 'expected an integer, got "1"')),
    ("json-batch_num-zero", json_case(put("batch_num", 0)), ConfigError,
     ("batch_num", "must be a positive integer, got 0")),
    ("json-batch_num-negative", json_case(put("batch_num", -4)), ConfigError,
     ("batch_num", "got -4")),
    ("json-batch_num-float", json_case(put("batch_num", 2.5)), ConfigError,
     ("batch_num", "expected an integer, got 2.5")),
    ("json-batch_num-bool", json_case(put("batch_num", True)), ConfigError,
     ("batch_num", "expected an integer, got true")),
    ("json-activation_offset-string", json_case(put("activation_offset", "true")), ConfigError,
     ("activation_offset", 'expected true/false, got "true"')),
    ("json-quant_enable-int", json_case(put("ip2", "quant_enable", 1)), ConfigError,
     ("layer 'ip2'.quant_enable", "expected true/false, got 1")),
    ("json-skip_fusion_layers-unknown", json_case(put("skip_fusion_layers", ["bn9"])), ConfigError,
     ("skip_fusion_layers", "no layer named 'bn9'")),
    ("json-search_range-order", json_case(put(*ACT, "search_range", [1.3, 0.7])), ConfigError,
     ("layer 'conv1'.activation_quant_params.search_range", "0 < start < end",
      "got [1.3, 0.7]")),
    ("json-search_range-zero", json_case(put(*ACT, "search_range", [0, 1.3])), ConfigError,
     ("search_range", "got [0.0, 1.3]")),
    ("json-search_range-negative", json_case(put(*ACT, "search_range", [-0.5, 1.3])), ConfigError,
     ("search_range", "got [-0.5, 1.3]")),
    ("json-search_range-three", json_case(put(*ACT, "search_range", [0.7, 1.0, 1.3])), ConfigError,
     ("search_range", "expected [start, end]")),
    ("json-search_range-string", json_case(put(*ACT, "search_range", ["0.7", 1.3])), ConfigError,
     ("search_range[0]", 'expected a number, got "0.7"')),
    ("json-search_step-wider-than-range", json_case(put(*ACT, "search_step", 0.61)), ConfigError,
     ("search_step", "0 < step <= end - start (0.6)", "got 0.61")),
    ("json-search_step-zero", json_case(put(*ACT, "search_step", 0)), ConfigError,
     ("search_step", "got 0.0")),
    ("json-search_step-negative", json_case(put(*ACT, "search_step", -0.01)), ConfigError,
     ("search_step", "got -0.01")),
    ("json-search_step-nan", json_case(put(*ACT, "search_step", float("nan"))), ConfigError,
     ("search_step", "expected a number, got NaN")),
    ("json-max_percentile-0.5", json_case(put(*ACT, "max_percentile", 0.5)), ConfigError,
     ("max_percentile", "must be in (0.5, 1.0], got 0.5")),
    ("json-min_percentile-above-1", json_case(put(*ACT, "min_percentile", 1.0001)), ConfigError,
     ("min_percentile", "must be in (0.5, 1.0], got 1.0001")),
    ("json-channel_wise-innerproduct", json_case(put("ip1", "weight_quant_params", "channel_wise",
                                                     True)), ConfigError,
     ("layer 'ip1'.weight_quant_params.channel_wise", "must be false for InnerProduct")),
    ("json-channel_wise-string", json_case(put("conv2", "weight_quant_params", "channel_wise",
                                               "yes")), ConfigError,
     ("layer 'conv2'.weight_quant_params.channel_wise", 'expected true/false, got "yes"')),
    ("json-act_algo-unknown", json_case(put(*ACT, "act_algo", "kl_divergence")), ConfigError,
     ("act_algo", "must be one of ifmr, hfmg", '"kl_divergence"')),
    ("json-num_of_bins-invalid", json_case(hfmg(num_of_bins=1000)), ConfigError,
     ("layer 'conv1'.activation_quant_params.num_of_bins", "1024, 2048, 4096, 8192", "got 1000")),
    ("json-num_of_bins-string", json_case(hfmg(num_of_bins="4096")), ConfigError,
     ("num_of_bins", 'expected an integer, got "4096"')),
    ("json-num_of_bins-with-ifmr", json_case(put(*ACT, "num_of_bins", 2048)), ConfigError,
     ("num_of_bins", "is an HFMG parameter")),
    ("json-ifmr-key-with-hfmg", json_case(hfmg(num_of_bins=1024, search_step=0.1)), ConfigError,
     ("search_step", "is an IFMR parameter but act_algo is 'hfmg'")),
    ("json-asymmetric-string", json_case(put(*ACT, "asymmetric", "false")), ConfigError,
     ("layer 'conv1'.activation_quant_params.asymmetric", 'expected true/false, got "false"')),
    ("json-layer-not-in-model", json_case(put("fc9", {"quant_enable": True})), ConfigError,
     ("layer 'fc9'", "no such layer in the model")),
    ("json-layer-not-quantizable", json_case(put("relu1", {"quant_enable": True})), ConfigError,
     ("layer 'relu1'", "cannot be quantized", "'ReLU' is not quantizable")),
    ("json-max-pooling", json_case(put("pool1", {})), ConfigError,
     ("layer 'pool1'", "Pooling that is not AVE")),
    ("json-every-layer-disabled", json_case(disable_all), ConfigError,
     ("{tmp}/config.json", "no layer has quant_enable true")),
    ("json-missing-file", lambda w: amct.init(str(w.tmp / "nope.json"), M, W,
                                              str(w.tmp / "r.txt")), ConfigError,
     ("{tmp}/nope.json", "cannot read config")),
    # simplified .cfg, SPEC §3.2
    ("cfg-syntax", cfg_case("batch_num: 2\ncommon_config {\n  arq_quantize { channel_wise: tru }\n}\n"),
     ConfigError, ("{tmp}/simple.cfg:3:32:", 'Expected "true" or "false"')),
    ("cfg-unknown-field", cfg_case("batch_num: 2\nskip_layer: \"conv1\"\n"), ConfigError,
     ("{tmp}/simple.cfg:2:1:", 'no field named "skip_layer"')),
    ("cfg-ifmr-and-hfmg", cfg_case(f"common_config {{\n  ifmr_quantize {{ {IFMR_OK} }}\n"
                                   "  hfmg_quantize { num_of_bins: 4096 }\n}\n"), ConfigError,
     ("{tmp}/simple.cfg:3:3:", '"hfmg_quantize" is specified along with field "ifmr_quantize"')),
    ("cfg-batch_num-zero", cfg_case("batch_num: 0\n"), ConfigError,
     ("{tmp}/simple.cfg", "batch_num", "got 0")),
    ("cfg-skip-unknown-layer", cfg_case('batch_num: 1\nskip_layers: "conv9"\n'), ConfigError,
     ("skip_layers", "no layer named 'conv9'")),
    ("cfg-channel_wise-innerproduct", cfg_case(
        'override_layer_types { layer_type: "InnerProduct"\n'
        '  calibration_config { arq_quantize { channel_wise: true } } }\n'), ConfigError,
     ("layer 'ip1'", "must be false for InnerProduct")),
    ("cfg-num_of_bins", cfg_case("common_config { hfmg_quantize { num_of_bins: 100 } }\n"),
     ConfigError, ("num_of_bins", "got 100")),
    ("cfg-override-non-quantizable-type", cfg_case(
        'override_layer_types { layer_type: "ReLU" calibration_config { } }\n'), ConfigError,
     ("override_layer_types", "'ReLU' is not a quantizable type")),
    ("cfg-skip-everything", cfg_case('skip_layer_types: "Convolution"\n'
                                     'skip_layer_types: "InnerProduct"\n'), ConfigError,
     ("{tmp}/simple.cfg", "every quantizable layer is skipped")),
    ("cfg-not-utf8", cfg_case(b'batch_num: 1\nskip_layers: "\xff\xfe"\n'), ConfigError,
     ("{tmp}/simple.cfg:2:15:", "not UTF-8", "byte offset 27")),
    # create_quant_config arguments, SPEC §2
    ("args-duplicate-skip", args_case(skip_layers=["conv1", "ip1", "conv1"]), ConfigError,
     ("skip_layers", "duplicate", "conv1")),
    ("args-unknown-skip", args_case(skip_layers=["conv7"]), ConfigError,
     ("skip_layers", "no layer named 'conv7'")),
    ("args-non-quantizable-skip", args_case(skip_layers=["relu1"]), ConfigError,
     ("skip_layers", "layer 'relu1'", "'ReLU'", "never quantized")),
    ("args-max-pooling-skip", args_case(skip_layers=["pool1"]), ConfigError,
     ("skip_layers", "layer 'pool1'", "never quantized", "Pooling that is not AVE")),
    ("args-skip-all", args_case(skip_layers=list(QUANTIZABLE)), ConfigError,
     ("mnist_deploy.prototxt", "every quantizable layer is skipped")),
    ("args-no-quantizable-layer", no_quantizable_layer, ConfigError,
     ("{tmp}/relu_only.prototxt", "no quantizable layer")),
    ("args-weights-None", args_case_weights_none, WeightsError,
     ("mnist_deploy.prototxt", "no weights file given")),
    ("args-batch_num-zero", args_case(batch_num=0), ConfigError,
     ("batch_num must be a positive integer, got 0",)),
    ("args-batch_num-float", args_case(batch_num=2.0), ConfigError, ("batch_num", "got 2.0")),
    ("args-activation_offset-string", args_case(activation_offset="yes"), ConfigError,
     ("activation_offset", "'yes'")),
    # record values, SPEC §6.2 (through convert_model)
    ("record-offset_d-above", record_case(rec(body="scale_d: 0.01 offset_d: 128")), RecordError,
     ("{tmp}/record.txt", "record 'conv1'", "offset_d must be in [-128, 127], got 128")),
    ("record-offset_d-below", record_case(rec(body="scale_d: 0.01 offset_d: -129")), RecordError,
     ("offset_d", "got -129")),
    ("record-offset_d-int32-overflow", record_case(rec(body="scale_d: 1 offset_d: 9999999999")),
     RecordError, ("{tmp}/record.txt:1:52:", "Value out of range")),
    ("record-offset_w-nonzero", record_case(rec(body="scale_d: 1 offset_d: 0 scale_w: 0.1 "
                                                "offset_w: 3")), RecordError,
     ("record 'conv1'", "offset_w [0] must be 0", "got 3")),
    ("record-scale_d-zero", record_case(rec(body="scale_d: 0 offset_d: 0")), RecordError,
     ("scale_d must be a finite value > 0, got 0.0",)),
    ("record-scale_d-negative", record_case(rec(body="scale_d: -0.5 offset_d: 0")), RecordError,
     ("scale_d", "got -0.5")),
    ("record-scale_d-inf", record_case(rec(body="scale_d: inf offset_d: 0")), RecordError,
     ("scale_d", "got inf")),
    ("record-scale_d-nan", record_case(rec(body="scale_d: nan offset_d: 0")), RecordError,
     ("scale_d", "got nan")),
    ("record-scale_w-negative", record_case(rec("ip1", "scale_d: 1 offset_d: 0 scale_w: -0.1")),
     RecordError, ("record 'ip1'", "scale_w [0] must be a finite value > 0")),
    ("record-scale_w-nan", record_case(rec("ip2", "scale_d: 1 offset_d: 0 scale_w: nan")),
     RecordError, ("record 'ip2'", "scale_w [0]", "got nan")),
    ("record-scale_w-count", record_case(rec(body="scale_d: 1 offset_d: 0 scale_w: 0.1 "
                                             "scale_w: 0.2")), RecordError,
     ("{tmp}/record.txt", "record 'conv1'", "scale_w has 2 values, expected 1 or 20")),
    ("record-syntax", record_case('record { key: "conv1"\n  value { scale_d: 0.01 offset_d: }\n}\n'),
     RecordError, ("{tmp}/record.txt:2:35:", "Couldn't parse integer")),
    ("record-unknown-field", record_case(rec(body="scale_d: 1 offset_d: 0 zero_point: 3")),
     RecordError, ("{tmp}/record.txt:1:", 'no field named "zero_point"')),
    ("record-key-not-a-layer", record_case(rec("fc7")), RecordError,
     ("{tmp}/record.txt", "layer 'fc7' from the record is not in the (fused) model")),
    ("record-key-not-quantizable", record_case(rec("relu1")), RecordError,
     ("layer 'relu1' from the record cannot be quantized", "'ReLU'")),
    ("record-key-max-pooling", record_case(rec("pool2")), RecordError,
     ("layer 'pool2'", "Pooling that is not AVE")),
    ("record-duplicate-key", record_case(rec() + rec()), RecordError,
     ("record 'conv1' appears twice",)),
    ("record-missing-key", record_case("record { value { scale_d: 1 offset_d: 0 } }\n"), RecordError,
     ("record #1 has no key",)),
    ("record-missing-scale_d", record_case(rec("conv2", "offset_d: 3")), RecordError,
     ("{tmp}/record.txt", "conv2", "did calibration run batch_num forward passes")),
    ("record-empty", record_case(""), RecordError, ("{tmp}/record.txt", "the record is empty")),
    ("record-missing-file", lambda w: amct.convert_model(M, W, str(w.tmp / "none.txt"),
                                                         str(w.tmp / "out" / "x")),
     RecordError, ("{tmp}/none.txt", "does not exist")),
    ("record-not-utf8", record_case(b'record { key: "conv\xff1" value { scale_d: 1 } }\n'),
     RecordError, ("{tmp}/record.txt", "cannot read record file")),
    # outputs
    ("save-under-regular-file", save_under_regular_file, OutputError,
     ("{tmp}/a_file/sub/lenet_", "'{tmp}/a_file' exists and is not a directory")),
    ("save-in-proc", save_in_proc, OutputError, ("/proc/amct_no_such_dir/lenet_",)),
    ("save-target-is-directory", save_over_directory, OutputError,
     ("{tmp}/out/lenet_quant.json", "is a directory")),
    ("record-file-under-regular-file", record_under_regular_file, OutputError,
     ("{tmp}/a_file/record.txt", "not a directory")),
    ("config-under-regular-file", config_under_regular_file, OutputError,
     ("{tmp}/a_file/config.json", "not a directory")),
    ("modified-model-under-regular-file", modified_model_under_regular_file, OutputError,
     ("{tmp}/a_file/m.prototxt", "not a directory")),
    # the flow used wrongly
    ("save-after-too-few-forwards", too_few_forwards, RecordError,
     ("{tmp}/cal/record.txt", "conv1, conv2, ip1, ip2", "batch_num forward passes")),
    ("save-type-unknown", save_bad_type, ConfigError, ("save_type", "'int8'")),
    ("save-graph-not-from-init", save_without_init, QuantizationError, ("call init() first",)),
    ("save-before-quantize_model", save_before_quantize, QuantizationError,
     ("needs quantize_model",)),
    ("quantize_model-twice", quantize_twice, QuantizationError, ("already ran on this graph",)),
    ("convert-fake-quant-model", convert_quantized("fake"), QuantizationError,
     ("lenet_fake_quant_model.prototxt", "layer 'conv1_quant_layer'", "'Quant'",
      "already quantized")),
    ("convert-deploy-model", convert_quantized("deploy"), QuantizationError,
     ("lenet_deploy_model.prototxt", "already quantized")),
    ("convert-int8-blobs", convert_quantized("int8_blobs"), QuantizationError,
     ("mnist_deploy.prototxt", "layer 'conv1'", "int8", "already quantized")),
    ("convert-calibration-model", convert_quantized("modified"), QuantizationError,
     ("modified.prototxt", "'conv1_ifmr_layer'", "'IFMR'")),
    ("init-deploy-model", init_on_deploy, QuantizationError, ("already quantized",)),
    ("create_quant_config-deploy-model", config_for_deploy, QuantizationError,
     ("lenet_deploy_model.prototxt", "already quantized")),
    # weights
    ("weights-nan", nan_weight, WeightsError,
     ("{tmp}/edited.caffemodel", "layer 'conv2' blob 0", "NaN or Inf")),
    ("weights-inf-bias", inf_bias, WeightsError, ("{tmp}/edited.caffemodel", "layer 'ip1' blob 1")),
    ("bias-int32-overflow", bias_overflow, QuantizationError,
     ("layer 'ip2'", "channel 3", "overflows int32", "skip this layer")),
    ("bias-int32-overflow-convert", bias_overflow_convert, QuantizationError,
     ("layer 'conv1'", "channel 5", "overflows int32", "skip")),
    # data
    ("quantize-wrong-channels", quantize_wrong_channels, DataError,
     ("batch 0", "input 'data'", "(2, 3, 28, 28)", "(1, 1, 28, 28)")),
    ("quantize-wrong-rank", quantize_wrong_rank, DataError, ("input 'data'", "(2, 784)")),
    ("quantize-too-few-batches", quantize_too_few_batches, DataError,
     ("needs 3 batches, got 1",)),
    ("quantize-unknown-input", quantize_unknown_input, DataError,
     ("['image'] are not net inputs",)),
    ("image-undecodable", undecodable_image, DataError,
     ("{tmp}/imgs/b_bad.png", "not an image Pillow can decode")),
    ("image-truncated-jpeg", truncated_jpeg, DataError, ("{tmp}/trunc.jpg", "cannot decode image")),
    ("data-npy-wrong-shape", npy_wrong_shape, DataError,
     ("{tmp}/x.npy", "(4, 3, 28, 28) does not fit the network input (1, 28, 28)")),
    ("data-bin-wrong-size", bin_wrong_size, DataError,
     ("{tmp}/x.bin", "1000 bytes is not a whole number of samples")),
]

def test_corpus_is_large_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30
    assert all(c[3] for c in CASES), "every case names what it expects"


@pytest.mark.parametrize("cid, run, exc, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, cid, run, exc, fragments):
    world.tmp = tmp_path
    with pytest.raises(AmctError) as info:
        run(world)
    err = info.value
    assert isinstance(err, exc), f"{cid}: {type(err).__name__}: {err}"
    msg = str(err)
    for frag in fragments:
        assert frag.replace("{tmp}", str(tmp_path)) in msg, f"{cid}: {frag!r} not in {msg!r}"


# ------------------------------------------ hard corners that must succeed
def run_outputs(prefix: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fake = amct.runtime.Net(prefix + OUT_SUFFIXES[0], prefix + OUT_SUFFIXES[1]).forward(data=x)
    dep = amct.runtime.Net(prefix + OUT_SUFFIXES[2], prefix + OUT_SUFFIXES[3]).forward(data=x)
    return fake["loss"], dep["loss"]


def test_all_zero_weight_channel_gets_scale_one(tmp_path):
    g0 = load_caffe(M, W)
    g0.layer("conv1").blobs[0][3] = 0.0
    g0.layer("ip1").blobs[0][...] = 0.0           # a whole per-tensor weight at zero
    m, w = str(tmp_path / "z.prototxt"), str(tmp_path / "z.caffemodel")
    save_caffe(g0, m, w)
    g, rec = calibrate(tmp_path / "cal", m, w)
    record = read_record(rec)
    assert record["conv1"].scale_w[3] == 1.0
    assert np.all(record["conv1"].scale_w[np.arange(20) != 3] < 0.01)
    assert record["ip1"].scale_w.tolist() == [1.0]
    prefix = str(tmp_path / "out" / "z")
    amct.save_model(g, "Both", prefix)
    deploy = load_caffe(prefix + OUT_SUFFIXES[2], prefix + OUT_SUFFIXES[3])
    assert not deploy.layer("conv1").blobs[0][3].any()
    fake, dep = run_outputs(prefix, batches(1)[0])
    assert np.isfinite(fake).all() and np.isfinite(dep).all()
    assert np.abs(fake - dep).max() < 1e-3


@pytest.mark.parametrize("asymmetric", [True, False])
def test_zero_range_activations_give_scale_one(tmp_path, asymmetric):
    """All-zero calibration input: every quantized input sees max = min = 0 at conv1."""
    g, rec = calibrate(tmp_path / "cal", data=batches(2, value=0.0), batch_num=2,
                       activation_offset=asymmetric)
    r = read_record(rec)["conv1"]
    assert r.scale_d == 1.0                      # SPEC §4.3: scale < eps -> 1.0
    assert r.offset_d == (-128 if asymmetric else 0)
    for key, layer_rec in read_record(rec).items():
        assert np.isfinite(layer_rec.scale_d) and layer_rec.scale_d > 0, key
    prefix = str(tmp_path / "out" / "zero")
    amct.save_model(g, "Both", prefix)
    info = json.loads(Path(prefix + "_quant.json").read_text())
    assert info["layers"]["conv1"]["scale_d"] == 1.0
    fake, dep = run_outputs(prefix, np.zeros((2, 1, 28, 28), np.float32))
    assert np.isfinite(fake).all() and np.isfinite(dep).all()
    np.testing.assert_allclose(fake.sum(axis=1), 1.0, rtol=1e-5)


def test_missing_save_directory_is_created(tmp_path):
    g, _ = calibrate(tmp_path / "cal")
    prefix = tmp_path / "new" / "deeper" / "lenet"
    written = amct.save_model(g, "Deploy", str(prefix))
    assert sorted(os.listdir(prefix.parent)) == ["lenet_deploy_model.prototxt",
                                                 "lenet_deploy_weights.caffemodel",
                                                 "lenet_quant.json"]
    assert set(written) == {"deploy_model", "deploy_weights", "quant_json"}
