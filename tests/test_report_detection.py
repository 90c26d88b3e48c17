"""Reports on a net whose output is DetectionOutput (rows depend on the data)."""
from __future__ import annotations

import numpy as np

import amct
from amct.frontends.caffe import load_caffe
from amct.ir.random import random_weights
from amct.frontends.caffe import save_caffe
from amct.report.compare import compare_models, compared_outputs
from amct.report.write import build_report, markdown

SSD = """
name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "loc" type: "Convolution" bottom: "feat" top: "loc"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "feat" top: "conf"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_rs" type: "Reshape" bottom: "conf_perm" top: "conf_rs"
        reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "conf_sm" type: "Softmax" bottom: "conf_rs" top: "conf_sm" softmax_param { axis: 2 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_sm" top: "conf_flat" }
layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior"
        prior_box_param { min_size: 4 max_size: 8 clip: true variance: 0.1 variance: 0.1
                          variance: 0.2 variance: 0.2 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_flat" bottom: "prior"
        top: "det" detection_output_param { num_classes: 2 share_location: true
        background_label_id: 0 code_type: CENTER_SIZE confidence_threshold: 0.05 keep_top_k: 50
        nms_param { nms_threshold: 0.45 top_k: 100 } } }
"""


def test_detection_output_is_compared_at_its_inputs(tmp_path) -> None:
    proto = tmp_path / "ssd.prototxt"
    proto.write_text(SSD)
    g = random_weights(load_caffe(str(proto)), seed=2)
    assert g.outputs == ["det"]
    assert compared_outputs(g, ["det"]) == [("loc_flat", "det"), ("conf_flat", "det"),
                                            ("prior", "det")]
    model, weights = str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel")
    save_caffe(g, model, weights)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    res = amct.quantize(model, weights, batches, str(tmp_path / "out" / "ssd"))
    fake = load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"])
    dep = load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])
    cmp = compare_models(load_caffe(model, weights), fake, dep,
                         [({"data": b}, None) for b in batches])
    got = {o.name: o for o in cmp.outputs}
    assert list(got) == ["loc_flat", "conf_flat", "prior"]
    assert all(o.stands_for == "det" for o in got.values())
    assert got["prior"].fake.cosine == 1.0            # anchors do not depend on the data
    assert 0.99 < got["loc_flat"].fake.cosine < 1.0
    md = markdown(build_report(cmp, kind="compare", models={}, data="random"))
    assert "`loc_flat` (input of `det`)" in md
