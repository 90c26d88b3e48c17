"""Quant / DeQuant / AntiQuant kernels and the IFMR / HFMG / SearchN calibration layers."""
from __future__ import annotations

import numpy as np
import pytest

from quant_helpers import float_graph

from amct.errors import CalibrationError, QuantizationError
from amct.ir import Graph, Layer
from amct.quant import pack_deq_scale, read_record
from amct.quant.hfmg import HfmgCollector
from amct.quant.ifmr import ifmr_factors
from amct.runtime import compile as compile_graph
from amct.runtime import run


def _input(shape) -> Layer:
    x = Layer("data", "Input", [], ["data"])
    x.params.input_param.shape.add().dim.extend(shape)
    return x


def _quant(name="q", scale=4.0, offset=-3, with_offset=True, obj="") -> Layer:
    q = Layer(name, "Quant", ["data"], [name])
    p = q.params.quant_param
    p.with_offset, p.scale, p.object_layer = with_offset, scale, obj
    p.offset = bytes([offset & 0xFF])
    return q


def test_fake_quant_by_hand() -> None:
    # scale 4 (scale_d 0.25), offset -3:  q = clamp(round(4x) - 3, -128, 127)
    #   x = 0.125 -> 4x = 0.5 -> 1 -> q -2 -> (q+3)/4 = 0.25   (half away from zero)
    #   x = -0.125 -> -1 -> -4 -> -0.25
    #   x = 40 -> 160 - 3 = 157 -> 127 -> 130/4 = 32.5         (upper clamp)
    #   x = -40 -> -163 -> -128 -> -125/4 = -31.25             (lower clamp)
    x = np.array([[0.125, -0.125, 40.0, -40.0, 0.3]], np.float32)
    g = Graph("q", [_input([1, 5]), _quant()])
    y = run(g, {"data": x})["q"]
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0.25, -0.25, 32.5, -31.25, 0.25]])
    # with_offset false ignores the offset byte: clamp at +-127/4 symmetric
    g = Graph("q", [_input([1, 5]), _quant(with_offset=False)])
    np.testing.assert_array_equal(run(g, {"data": x})["q"], [[0.25, -0.25, 31.75, -32.0, 0.25]])


def test_deploy_quant_and_dequant_by_hand() -> None:
    # A Quant whose object layer carries int8 weights emits int16 (q - offset).
    fc = Layer("fc", "InnerProduct", ["q"], ["fc"],
               [np.array([[1, -2]], np.int8), np.array([5], np.int32)])
    fc.params.inner_product_param.num_output = 1
    dq = Layer("dq", "DeQuant", ["fc"], ["fc"], [pack_deq_scale(np.array([0.5], np.float32))])
    dq.params.dequant_param.object_layer = "fc"
    g = Graph("d", [_input([1, 2]), _quant(obj="fc"), fc, dq])
    x = np.array([[0.125, 40.0]], np.float32)           # codes (q - offset): 1, 130
    out = {}
    prog = compile_graph(g)
    prog.run({"data": x},
             observers=[lambda layer, j, b, v, a: out.setdefault(layer.name, a.copy())])
    assert out["q"].dtype == np.int16
    np.testing.assert_array_equal(out["q"], [[1, 130]])
    assert out["fc"].dtype == np.int32 and out["fc"][0, 0] == 1 - 260 + 5
    np.testing.assert_array_equal(out["dq"], [[-127.0]])          # -254 * 0.5


def test_dequant_per_channel_and_fake_identity() -> None:
    deq = np.array([0.5, 2.0, 0.25], np.float32)
    dq = Layer("dq", "DeQuant", ["data"], ["dq"], [pack_deq_scale(deq)])
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    y = run(Graph("d", [_input([1, 3, 2, 2]), dq]), {"data": x})["dq"]
    np.testing.assert_array_equal(y, x * deq.reshape(1, 3, 1, 1))
    fake = Layer("dq", "DeQuant", ["data"], ["dq"], [deq, np.zeros(3, np.float32),
                                                     np.zeros(3, np.float32)])
    y = run(Graph("f", [_input([1, 3, 2, 2]), fake]), {"data": x})["dq"]
    np.testing.assert_array_equal(y, x)
    bad = Layer("dq", "DeQuant", ["data"], ["dq"], [pack_deq_scale(deq, offset_w=1)])
    with pytest.raises(QuantizationError, match="'dq'.*offset_w"):
        run(Graph("b", [_input([1, 3, 2, 2]), bad]), {"data": x})


def test_antiquant_by_hand() -> None:
    a = Layer("a", "AntiQuant", ["data"], ["a"])
    p = a.params.quant_param
    p.with_offset, p.scale, p.offset = True, 4.0, bytes([0xFD])      # offset -3
    y = run(Graph("a", [_input([1, 3]), a]), {"data": np.array([[-2, -3, 127]], np.float32)})["a"]
    np.testing.assert_array_equal(y, [[0.25, 0.0, 32.5]])


def test_quant_rejects_bad_scale() -> None:
    with pytest.raises(QuantizationError, match="'q'.*scale"):
        run(Graph("q", [_input([1, 2]), _quant(scale=0.0)]), {"data": np.zeros((1, 2), np.float32)})


def _calib_graph(kind: str, record: str, batch_num: int, **extra) -> Graph:
    g = float_graph(0)
    layer = Layer(f"conv1_{kind.lower()}_layer", kind, ["data"], [])
    p = getattr(layer.params, {"IFMR": "ifmr_param", "HFMG": "hfmg_param"}[kind])
    p.batch_num = batch_num
    p.object_layer.extend(["conv1", "other"])
    p.record_file_path = record
    for k, v in extra.items():
        setattr(p, k, v)
    g.add_layer(layer, after=g.layer("data"))
    return g


def test_ifmr_layer_writes_record_after_batch_num_forwards(tmp_path) -> None:
    record = str(tmp_path / "record.txt")
    g = _calib_graph("IFMR", record, 3, with_offset=True, search_range_start=0.7,
                     search_range_end=1.3, search_step=0.01, max_percentile=0.999,
                     min_percentile=0.999)
    prog = compile_graph(g)
    rng = np.random.default_rng(0)
    # the last batch has another batch size: the kernel is rebuilt, the state survives
    batches = [rng.standard_normal((n, 4, 7, 7)).astype(np.float32) for n in (2, 2, 1)]
    for i, b in enumerate(batches):
        prog.run({"data": b})
        assert (tmp_path / "record.txt").exists() == (i == 2)
    rec = read_record(record)
    want = ifmr_factors(np.concatenate([b.ravel() for b in batches]), True, (0.7, 1.3), 0.01,
                        float(np.float32(0.999)), float(np.float32(0.999)))
    for key in ("conv1", "other"):
        assert (rec[key].scale_d, rec[key].offset_d) == (pytest.approx(want[0], rel=1e-7), want[1])
        assert (rec[key].channels, rec[key].height, rec[key].width) == (4, 7, 7)
    # later forwards change nothing
    before = open(record).read()
    prog.run({"data": batches[0] * 100})
    assert open(record).read() == before


def test_hfmg_layer_and_defaults(tmp_path) -> None:
    record = str(tmp_path / "r.txt")
    g = _calib_graph("HFMG", record, 2, num_of_bins=1024)
    rng = np.random.default_rng(1)
    bs = [rng.standard_normal((2, 4, 7, 7)).astype(np.float32) for _ in range(2)]
    prog = compile_graph(g)
    for b in bs:
        prog.run({"data": b})
    c = HfmgCollector(2, True, 1024)
    for b in bs:
        c.update(b)
    want = c.compute()
    got = read_record(record)["conv1"]
    assert (got.scale_d, got.offset_d) == (pytest.approx(want[0], rel=1e-7), want[1])


def test_calibration_layer_without_record_path_fails() -> None:
    g = _calib_graph("IFMR", "", 1)
    with pytest.raises(CalibrationError, match="conv1_ifmr_layer.*record_file_path"):
        run(g, {"data": np.zeros((2, 4, 7, 7), np.float32)})


def test_search_n_writes_zero_shift(tmp_path) -> None:
    record = str(tmp_path / "r.txt")
    g = float_graph(0)
    s = Layer("conv1_search_n", "SearchN", ["conv1"], [])
    p = s.params.search_n_param
    p.batch_num, p.record_file_path = 1, record
    p.layer_name.append("conv1")
    g.add_layer(s, after=g.layer("conv1"))
    run(g, {"data": np.ones((2, 4, 7, 7), np.float32)})
    np.testing.assert_array_equal(read_record(record)["conv1"].shift_bit, np.zeros(6))
