"""bench/onnx_export.py: the ONNX export runs in onnxruntime like the project's runtime.

Bench-only: skipped when onnx / onnxruntime are not installed.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import REPO, shared_or_skip  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from onnx_export import ExportError, export_onnx, max_abs_diff  # noqa: E402

from amct.ir.random import random_weights  # noqa: E402
from frontends.caffe.loader import graph_from_netparam, parse_prototxt  # noqa: E402


def _graph(body: str, shape=(2, 3, 7, 9)):
    head = ('layer { name: "in" type: "Input" top: "x" input_param { shape { '
            + " ".join(f"dim: {d}" for d in shape) + " } } }\n")
    g = graph_from_netparam(parse_prototxt("<test>", head + body), "<test>")
    return random_weights(g, seed=3)


def _check(g, tol=1e-4, shape=None):
    shape = shape or g.input_shapes()["x"]
    x = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    diffs = max_abs_diff(g, export_onnx(g, {"x": shape}), x)
    assert diffs and max(diffs.values()) < tol, diffs


POOLS = [
    # (pool, kernel, stride, pad, extra): ceil overhang, Caffe's dropped last
    # window, AVE divisors over padding, floor rounding.
    ("MAX", 3, 2, 1, ""), ("AVE", 3, 2, 1, ""), ("MAX", 2, 2, 0, ""), ("AVE", 2, 2, 0, ""),
    ("MAX", 2, 2, 1, ""), ("AVE", 2, 2, 1, ""), ("AVE", 3, 3, 2, ""), ("MAX", 3, 1, 0, ""),
    ("AVE", 3, 2, 1, "round_mode: FLOOR"), ("MAX", 3, 2, 1, "round_mode: FLOOR"),
    ("AVE", 0, 1, 0, "global_pooling: true"), ("MAX", 0, 1, 0, "global_pooling: true"),
]


@pytest.mark.parametrize("pool,k,s,p,extra", POOLS)
@pytest.mark.parametrize("hw", [(7, 9), (5, 5), (6, 8)])
def test_pooling_matches_caffe_geometry(pool, k, s, p, extra, hw):
    ks = f"kernel_size: {k} stride: {s} pad: {p}" if k else ""
    g = _graph(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" '
               f'pooling_param {{ pool: {pool} {ks} {extra} }} }}', (2, 3) + hw)
    _check(g)


CASES = {
    "conv_group_dilation": 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                           'convolution_param { num_output: 6 kernel_size: 3 group: 3 '
                           'dilation: 2 pad: 2 stride: 2 } }',
    "conv_hw_no_bias": 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                       'convolution_param { num_output: 4 kernel_h: 1 kernel_w: 3 pad_h: 0 '
                       'pad_w: 1 stride_h: 2 stride_w: 1 bias_term: false } }',
    "depthwise": 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                 'convolution_param { num_output: 3 kernel_size: 3 group: 3 pad: 1 } }',
    "deconv": 'layer { name: "d" type: "Deconvolution" bottom: "x" top: "y" '
              'convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 3 } }',
    "ip_relu_leaky": 'layer { name: "f" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 5 } }\n'
                     'layer { name: "r" type: "ReLU" bottom: "y" top: "y" '
                     'relu_param { negative_slope: 0.1 } }',
    "ip_axis2_transpose": 'layer { name: "f" type: "InnerProduct" bottom: "x" top: "y" '
                          'inner_product_param { num_output: 5 axis: 2 transpose: true } }',
    "prelu_softmax": 'layer { name: "a" type: "PReLU" bottom: "x" top: "x" }\n'
                     'layer { name: "s" type: "Softmax" bottom: "x" top: "y" }',
    "prelu_shared_softmax_axis": 'layer { name: "a" type: "PReLU" bottom: "x" top: "z" '
                                 'prelu_param { channel_shared: true } }\n'
                                 'layer { name: "s" type: "Softmax" bottom: "z" top: "y" '
                                 'softmax_param { axis: 3 } }',
    "bn_scale": 'layer { name: "b" type: "BatchNorm" bottom: "x" top: "x" }\n'
                'layer { name: "s" type: "Scale" bottom: "x" top: "x" '
                'scale_param { bias_term: true } }\n'
                'layer { name: "t" type: "TanH" bottom: "x" top: "y" }',
    "eltwise": 'layer { name: "sp" type: "Split" bottom: "x" top: "a" top: "b" top: "c" }\n'
               'layer { name: "g" type: "Sigmoid" bottom: "b" top: "b" }\n'
               'layer { name: "e1" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "s" '
               'eltwise_param { operation: SUM coeff: 0.5 coeff: -1 coeff: 2 } }\n'
               'layer { name: "e2" type: "Eltwise" bottom: "s" bottom: "a" bottom: "b" top: "p" '
               'eltwise_param { operation: PROD } }\n'
               'layer { name: "e3" type: "Eltwise" bottom: "p" bottom: "c" top: "y" '
               'eltwise_param { operation: MAX } }',
    "slice_concat_dropout": 'layer { name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" '
                            'top: "c" slice_param { axis: 3 slice_point: 2 slice_point: 5 } }\n'
                            'layer { name: "d" type: "Dropout" bottom: "b" top: "b" }\n'
                            'layer { name: "cc" type: "Concat" bottom: "c" bottom: "a" top: "y" '
                            'concat_param { axis: 3 } }',
    "permute_reshape_flatten": 'layer { name: "pm" type: "Permute" bottom: "x" top: "a" '
                               'permute_param { order: 0 order: 2 order: 3 order: 1 } }\n'
                               'layer { name: "rs" type: "Reshape" bottom: "a" top: "b" '
                               'reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }\n'
                               'layer { name: "r2" type: "Reshape" bottom: "x" top: "c" '
                               'reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } } }\n'
                               'layer { name: "fl" type: "Flatten" bottom: "c" top: "y" '
                               'flatten_param { axis: 1 end_axis: 2 } }',
    "normalize_priorbox": 'layer { name: "n" type: "Normalize" bottom: "x" top: "n" '
                          'norm_param { across_spatial: false channel_shared: false } }\n'
                          'layer { name: "n2" type: "Normalize" bottom: "x" top: "m" '
                          'norm_param { across_spatial: true channel_shared: true } }\n'
                          'layer { name: "e" type: "Eltwise" bottom: "n" bottom: "m" top: "y" }\n'
                          'layer { name: "pb" type: "PriorBox" bottom: "x" bottom: "x" top: "pr" '
                          'prior_box_param { min_size: 3 max_size: 6 aspect_ratio: 2 flip: true '
                          'clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }',
    "lrn_crop": 'layer { name: "l" type: "LRN" bottom: "x" top: "a" '
                'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }\n'
                'layer { name: "p" type: "Pooling" bottom: "a" top: "r" '
                'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
                'layer { name: "c" type: "Crop" bottom: "a" bottom: "r" top: "y" '
                'crop_param { axis: 2 offset: 1 offset: 2 } }',
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_types(case):
    g = _graph(CASES[case])
    _check(g)
    # The batch axis stays symbolic: another batch size runs the same model.
    _check(g, shape=(3,) + g.input_shapes()["x"][1:])


def test_unknown_type_is_an_export_error():
    g = _graph('layer { name: "l" type: "MVN" bottom: "x" top: "y" }')
    with pytest.raises(ExportError, match="'l': type MVN"):
        export_onnx(g)
    g = _graph('layer { name: "w" type: "LRN" bottom: "x" top: "y" '
               'lrn_param { norm_region: WITHIN_CHANNEL } }')
    with pytest.raises(ExportError, match="'w': LRN WITHIN_CHANNEL"):
        export_onnx(g)


@pytest.mark.parametrize("name,shape", [("lenet_mnist/mnist_deploy", (4, 1, 28, 28)),
                                        ("mtcnn/det1", (2, 3, 49, 61)),
                                        ("mtcnn/det3", (2, 3, 48, 48))])
def test_real_models(name, shape):
    from amct.frontends.caffe import load_caffe

    folder = shared_or_skip("models", name.split("/")[0])
    stem = name.split("/")[1]
    weights = {"mnist_deploy": "lenet_iter_10000"}.get(stem, stem)
    g = load_caffe(str(folder / f"{stem}.prototxt"), str(folder / f"{weights}.caffemodel"))
    x = {g.inputs[0]: np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
    diffs = max_abs_diff(g, export_onnx(g, {g.inputs[0]: shape}), x)
    assert max(diffs.values()) < 1e-4, diffs
