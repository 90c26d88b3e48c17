"""Shape inference against what BVLC Caffe built (golden meta.json), and on
every model definition in shared/models.

* every golden case: ``infer_shapes()`` equals ``blob_shapes`` for every blob
  that is not made by an implicit Split, and every layer's ``param_shapes``
  equals ``param_shapes`` (the learned blob shapes, in Caffe order);
* every prototxt under shared/models infers without error;
* ``batch_size=4`` scales the first axis of every batch-dependent blob.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from amct.frontends.caffe import load_caffe
from amct.ir.registry import require_layer_def
from conftest import GOLDEN, MODELS

GOLDEN_CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "meta.json").is_file()) \
    if GOLDEN.is_dir() else []
MODEL_FILES = sorted(str(p.relative_to(MODELS)) for p in MODELS.rglob("*.prototxt")) \
    if MODELS.is_dir() else []

# Inputs declared without a shape (OpenCV's test nets feed them at run time).
INPUT_SHAPES = {
    "prototxt/opencv_layers/reshape_and_slice_routines.prototxt": {"input": (1, 3, 4, 5)},
}

# Layer types whose outputs do not depend on the batch size.
BATCH_FREE_TYPES = {"PriorBox", "DetectionOutput"}


def _load_golden(case: str):
    d = GOLDEN / case
    weights = d / "weights.caffemodel"
    g = load_caffe(str(d / "net.prototxt"), str(weights) if weights.exists() else None)
    return g, json.loads((d / "meta.json").read_text())


@pytest.mark.skipif(not GOLDEN_CASES, reason="golden data not present")
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_blob_and_param_shapes_match_caffe(case):
    g, meta = _load_golden(case)
    implicit_blobs = {t for x in meta["layers"] if x.get("implicit") and x["type"] == "Split"
                      for t in x["tops"]}
    want = {b: tuple(s) for b, s in meta["blob_shapes"].items() if b not in implicit_blobs}
    got = g.infer_shapes()
    if meta["producer"].startswith("BVLC"):
        assert got == want
    else:
        # OpenCV-made case (UltraFace): only the net outputs are recorded.
        assert want and {b: got[b] for b in want} == want
    if "param_shapes" not in meta:
        return
    vshapes = g.infer_value_shapes()
    want_params = {name: [tuple(s) for s in shapes] for name, shapes in meta["param_shapes"].items()}
    for layer in g.layers:
        ins = [vshapes[v] for v in g.input_values(layer)]
        got_p = [tuple(s) for s in require_layer_def(layer).param_shapes(layer, ins)]
        assert got_p == want_params.get(layer.name, []), layer.name
        # and the loaded weights really have those shapes
        assert [b.shape for b in layer.blobs] == got_p, layer.name


def _infer(rel: str, **kw):
    g = load_caffe(str(MODELS / rel))
    return g, g.infer_shapes(INPUT_SHAPES.get(rel), **kw)


@pytest.mark.skipif(not MODEL_FILES, reason="shared models not present")
@pytest.mark.parametrize("rel", MODEL_FILES)
def test_every_model_prototxt_infers(rel):
    g, shapes = _infer(rel)
    produced = {t for layer in g.layers for t in layer.tops}
    assert set(shapes) == produced
    assert all(all(d > 0 for d in s) for s in shapes.values()), shapes


BATCH_MODELS = [m for m in MODEL_FILES if "opencv_layers" not in m]


@pytest.mark.skipif(not BATCH_MODELS, reason="shared models not present")
@pytest.mark.parametrize("rel", BATCH_MODELS)
def test_batch_size_scales_first_axis(rel):
    g, base = _infer(rel)
    _, four = _infer(rel, batch_size=4)
    batch = {base[b][0] for b in g.inputs}
    assert len(batch) == 1
    b0 = batch.pop()
    vbase, vfour = g.infer_value_shapes(), g.infer_value_shapes(batch_size=4)
    fixed: set[str] = set()          # values that legitimately keep their shape
    # Values after a Reshape that pins axis 0 to a constant (UltraFace's
    # {1, -1, 2}): the batch moves into the inferred axis, as in Caffe.
    pinned: set[str] = set()
    for layer in g.layers:
        ins = g.input_values(layer)
        pins = any(v in pinned for v in ins) or (
            layer.type == "Reshape" and layer.param("reshape_param").axis == 0
            and layer.param("reshape_param").shape.dim[0] > 0)
        for vid in g.output_values(layer):
            s1, s4 = vbase[vid], vfour[vid]
            if layer.type in BATCH_FREE_TYPES or (ins and all(v in fixed for v in ins)):
                assert s1 == s4, (layer.name, s1, s4)
                fixed.add(vid)
            elif pins:
                assert np.prod(s4) * b0 == 4 * np.prod(s1), (layer.name, s1, s4)
                pinned.add(vid)
            else:
                assert s4[1:] == s1[1:] and s4[0] * b0 == 4 * s1[0], (layer.name, s1, s4)
    assert all(four[b][0] == 4 for b in g.inputs)


def test_ssd_priorbox_and_detection_shapes():
    """MobileNet-SSD: PriorBox sizes follow min/max sizes and flipped ratios,
    and the concatenated priors match the loc/conf heads."""
    rel = "prototxt/mobilenet_ssd_voc.prototxt"
    if rel not in MODEL_FILES:
        pytest.skip("shared models not present")
    g, shapes = _infer(rel)
    loc = [s for b, s in shapes.items() if b == "mbox_loc"][0]
    conf = [s for b, s in shapes.items() if b == "mbox_conf_flatten"][0]
    prior = shapes["mbox_priorbox"]
    num_p = prior[2] // 4
    assert prior[:2] == (1, 2)
    assert loc[1] == num_p * 4 and conf[1] == num_p * 21
    assert shapes["detection_out"] == (1, 1, 1, 7)
    assert np.prod(prior) > 0
