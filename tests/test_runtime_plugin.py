"""Custom layer types: register semantics, load a prototxt using them, run it."""
from __future__ import annotations

import numpy as np
import pytest

import amct.runtime as caffe
from amct.errors import UnsupportedLayerError, WeightsError
from amct.ir import Graph, Layer
from amct.frontends.caffe import save_caffe

PROTOTXT = """
name: "plugin"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "pow" type: "MyPow" bottom: "data" top: "p"
        python_param { param_str: "3" } }
layer { name: "cscale" type: "MyChannelScale" bottom: "p" top: "p" }
layer { name: "pool" type: "MyChannelMax" bottom: "p" top: "m" }
"""


@pytest.fixture
def plugin_types():
    @caffe.register_layer(replace=True)
    class MyPowDef(caffe.LayerDef):
        """x ** k, with k read from python_param.param_str."""
        type = "MyPow"
        param_field = "python_param"

        def infer_shapes(self, layer, in_shapes):
            return [in_shapes[0]]

        def build(self, layer, in_shapes):
            k = float(layer.param("python_param").param_str)
            return lambda xs: [np.power(xs[0], k, dtype=np.float32)]

    caffe.register_function_layer(
        "MyChannelScale",
        infer_shapes=lambda layer, s: [s[0]],
        forward=lambda layer, xs: [xs[0] * layer.blobs[0].reshape(1, -1, 1, 1)],
        param_shapes=lambda layer, s: [(s[0][1],)],
        min_blobs=1, replace=True)
    caffe.register_function_layer(
        "MyChannelMax",
        infer_shapes=lambda layer, s: [s[0][:2]],
        forward=lambda layer, xs: [xs[0].max(axis=(2, 3))], replace=True)
    yield
    for t in ("MyPow", "MyChannelScale", "MyChannelMax"):
        caffe.unregister_layer(t)


def _files(tmp_path, scale):
    model = tmp_path / "plugin.prototxt"
    model.write_text(PROTOTXT)
    # Weights for the custom layer, written with the project's own writer.
    g = Graph("plugin", [Layer("cscale", "MyChannelScale", ["p"], ["p"], blobs=[scale])])
    weights = tmp_path / "plugin.caffemodel"
    save_caffe(g, str(tmp_path / "w.prototxt"), str(weights))
    return str(model), str(weights)


def test_custom_layers_run_through_net(plugin_types, tmp_path):
    scale = np.array([1, -2, 0.5], np.float32)
    net = caffe.Net(*_files(tmp_path, scale), caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    out = net.forward(data=x)
    expect = (x ** 3 * scale.reshape(1, 3, 1, 1)).max(axis=(2, 3))
    np.testing.assert_allclose(out["m"], expect, rtol=1e-6)
    assert net.blobs["m"].shape == (2, 3)
    assert list(net.params) == ["cscale"]


def test_custom_layer_weights_are_checked(plugin_types, tmp_path):
    with pytest.raises(WeightsError, match="cscale.*\\(3,\\)"):
        caffe.Net(*_files(tmp_path, np.ones(4, np.float32)), caffe.TEST)


def test_unregistered_custom_type_is_named(tmp_path):
    model = tmp_path / "p.prototxt"
    model.write_text(PROTOTXT)
    with pytest.raises(UnsupportedLayerError, match="'pow'.*MyPow"):
        caffe.Net(str(model), caffe.TEST)
