"""Report statistics and files: values checked against direct numpy computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from amct.report.compare import Comparison, LayerResult, OutputResult, QuantLayerInfo
from amct.report.stats import Agreement, ClipStats, PairStats
from amct.report.write import build_report, markdown, summary_lines, uncovered_layers, write_report


def test_pair_stats_streaming_equals_whole():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5)).astype(np.float32)
    b = a + rng.normal(scale=0.05, size=a.shape).astype(np.float32)
    s = PairStats()
    s.update(a[:2], b[:2])
    s.update(a[2:], b[2:])
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64)
    sqnr = 10 * np.log10((a64 ** 2).sum() / ((a64 - b64) ** 2).sum())
    assert s.cosine == pytest.approx(cos, rel=1e-12)
    assert s.sqnr_db == pytest.approx(sqnr, rel=1e-12)
    assert s.max_err == pytest.approx(np.abs(a64 - b64).max())


def test_pair_stats_edge_cases():
    s = PairStats()
    assert s.cosine is None and s.sqnr_db is None
    s.update(np.ones(3), np.ones(3))
    assert s.cosine == pytest.approx(1.0) and s.sqnr_db == math.inf
    assert s.to_json()["sqnr_db"] == "inf"            # JSON has no infinity
    z = PairStats()
    z.update(np.zeros(2), np.zeros(2))
    assert z.cosine == 1.0


def test_clip_and_agreement():
    c = ClipStats(-1.0, 2.0)
    c.update(np.array([-1.5, -1.0, 0.0, 2.0, 2.5, 3.0]))
    assert c.ratio == pytest.approx(3 / 6)
    # Range width 3: 3.0 lies 4 from lo, -1.5 lies 3.5 from hi.
    assert c.reach == pytest.approx(4 / 3)
    inside = ClipStats(-1.0, 2.0)
    inside.update(np.array([0.0, 1.0]))
    assert inside.reach == pytest.approx(2 / 3) and inside.ratio == 0.0
    assert ClipStats(-1.0, 2.0).reach is None               # no data yet
    relu = ClipStats(0.0, 0.5)
    relu.update(np.array([], np.float32))                     # an empty batch changes nothing
    relu.update(np.array([0.0, 0.1, 1.75]))
    assert relu.reach == pytest.approx(3.5)
    a = Agreement()
    a.update(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6]]))
    assert a.ratio == pytest.approx(2 / 3)


def test_clip_range_of_asymmetric_layer():
    info = QuantLayerInfo("c", "Convolution", 0.5, -10, np.ones(2, np.float32), "q", "dq")
    assert info.clip_range == (-59.0, 68.5)


def _comparison() -> Comparison:
    info = QuantLayerInfo("conv1", "Convolution", 0.02, 3, np.array([0.1, 0.3], np.float32),
                          "conv1_quant_layer", "conv1_dequant_layer")
    pool = QuantLayerInfo("pool", "Pooling", 0.05, 0, np.array([1.0], np.float32), "pool_quant_layer",
                          "pool_dequant_layer")
    layers = []
    for i in (info, pool):
        r = LayerResult(i, ClipStats(*i.clip_range))
        r.clip.update(np.array([0.0, 100.0]))
        r.fake.update(np.array([1.0, 2.0]), np.array([1.0, 2.1]))
        layers.append(r)
    out = OutputResult("prob", True)
    out.fake.update(np.array([[0.2, 0.8]]), np.array([[0.25, 0.75]]))
    out.agree_fake.update(np.array([[0.2, 0.8]]), np.array([[0.25, 0.75]]))
    out.hits, out.labelled = {"float": 1, "fake_quant": 0}, 1
    return Comparison(layers, [out], samples=1, batches=1)


def test_report_files(tmp_path):
    rep = build_report(_comparison(), kind="compare", data="d.npy",
                       models={"float_model": "m.prototxt", "float_weights": "w", "fake_quant_model": "f"})
    conv = rep["layers"][0]
    assert conv["scale_w_min"] == pytest.approx(0.1) and conv["scale_w_max"] == pytest.approx(0.3)
    assert conv["clip_ratio"] == 0.5 and conv["channel_wise"]
    assert rep["layers"][1]["scale_w_min"] is None          # Pooling has no weights
    assert rep["outputs"][0]["accuracy"] == {"float": 1.0, "fake_quant": 0.0}
    md = markdown(rep)
    assert "| `conv1` | Convolution | 0.02 | 3 | 0.1 | 0.3 | 50.0000 % |" in md
    # conv1's values [0, 100] against its range [-2.62, 2.48]; pool's against [-6.4, 6.35].
    assert conv["clip_reach"] == pytest.approx(102.62 / 5.1)
    assert rep["layers"][1]["clip_reach"] == pytest.approx(106.4 / 12.75)
    assert [x["layer"] for x in uncovered_layers(rep)] == ["conv1", "pool"]
    assert "## Data beyond the calibrated ranges" in md and "- `conv1`: reach 20.12, 50.0000 %" in md
    assert any(line.startswith("warning: the data reach beyond 2x the calibrated range at 'conv1'")
               for line in summary_lines(rep))
    # On its own calibration data the same reach is calibration's choice, not missing coverage.
    cal = dict(rep, kind="calibrate")
    assert any(line.startswith("note: calibration clipped rare values beyond 2x the range at "
                               "'conv1'") for line in summary_lines(cal))
    assert not any(line.startswith("warning:") for line in summary_lines(cal))
    cal_md = markdown(cal)
    assert "on the calibration data themselves" in cal_md
    assert "- `conv1`: reach 20.12, 50.0000 %" in cal_md     # the layers are listed there too
    paths, note = write_report(rep, str(tmp_path / "r"), plot=True)
    assert json.loads((tmp_path / "r_report.json").read_text())["layers"][0]["layer"] == "conv1"
    if note is None:
        assert (tmp_path / "r_report.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "pip install 'amct[plot]'" in note
