"""What the loader accepts: input forms, weights matching, TEST-phase rules, in-place layers,
unknown layer types."""
from __future__ import annotations

import numpy as np
import pytest

from amct.errors import ModelFormatError, UnsupportedLayerError, WeightsError
from amct.frontends.caffe import load_caffe, prototxt_text, read_caffemodel, save_caffe
from amct.ir import get_layer_def
from amct.proto import caffe_pb2
from conftest import DATA


def needs_layers(*types: str) -> None:
    missing = [t for t in types if get_layer_def(t) is None]
    if missing:
        pytest.skip(f"layer definitions not registered yet: {missing}")


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


BODY = 'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }\n'


# ------------------------------------------------------------------ inputs
@pytest.mark.parametrize("head, shapes, style", [
    ('input: "a" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 5', {"a": (1, 3, 4, 5)}, "fields"),
    ('input: "a" input_shape { dim: 2 dim: 7 }', {"a": (2, 7)}, "fields"),
    ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 2 dim: 3 } } }',
     {"a": (1, 2, 3)}, "layer"),
    ('input: "a" input: "b" input_shape { dim: 1 dim: 2 } input_shape { dim: 3 }',
     {"a": (1, 2), "b": (3,)}, "fields"),
    ('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 '
     'input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8', {"a": (1, 2, 3, 4), "b": (5, 6, 7, 8)}, "fields"),
    ('layer { name: "in" type: "Input" top: "a" top: "b" '
     'input_param { shape { dim: 1 dim: 2 } shape { dim: 4 } } }', {"a": (1, 2), "b": (4,)}, "layer"),
])
def test_input_forms(head, shapes, style, tmp_path):
    g = load_caffe(write(tmp_path / "n.prototxt", head + "\n" + BODY))
    assert g.input_shapes() == shapes
    assert g.inputs == list(shapes)
    assert g.input_style == style
    first = g.layers[0]
    assert first.type == "Input" and first.tops == list(shapes)
    if style == "fields":
        assert first.name == "input"          # Caffe's name for the upgraded input layer
    text = prototxt_text(g)
    # Written form: legacy fields stay fields (as input + input_shape), Input layers stay layers.
    assert ("input_shape {" in text and "Input" not in text) if style == "fields" \
        else ('type: "Input"' in text and "input_shape" not in text)
    save_caffe(g, str(tmp_path / "o.prototxt"))
    g2 = load_caffe(str(tmp_path / "o.prototxt"))
    assert g2.input_shapes() == shapes and g2.input_style == style


def test_input_without_shape_loads_but_shapes_need_one(tmp_path):
    from amct.errors import ShapeError
    needs_layers("ReLU")
    g = load_caffe(write(tmp_path / "n.prototxt", 'input: "a"\n' + BODY))
    assert g.inputs == ["a"]
    with pytest.raises(ShapeError, match="input 'a' has no declared shape"):
        g.infer_shapes()
    assert g.infer_shapes({"a": (1, 2)})["r"] == (1, 2)


def test_infer_shapes_batch_size():
    needs_layers("Convolution", "Pooling", "InnerProduct")
    g = load_caffe(str(DATA / "lenet/mnist_deploy.prototxt"))
    s1, s8 = g.infer_shapes(), g.infer_shapes(batch_size=8)
    assert s1["data"][0] == 1 and s8["data"] == (8,) + s1["data"][1:]
    assert all(s8[b] == (8,) + s1[b][1:] for b in s1)


# ----------------------------------------------------------------- weights
def test_mtcnn_extra_training_layers_ignored():
    """det1's caffemodel holds layers that are not in the deploy net; matched by name."""
    g = load_caffe(str(DATA / "mtcnn/det1.prototxt"), str(DATA / "mtcnn/det1.caffemodel"))
    _, src = read_caffemodel(str(DATA / "mtcnn/det1.caffemodel"))
    src_names = [lp.name for lp, _ in src]
    names = {x.name for x in g.layers}
    assert set(src_names) - names, "the caffemodel should hold extra layers"
    by_name = {lp.name: blobs for lp, blobs in src}
    for layer in g.layers:
        if layer.name in by_name and by_name[layer.name]:
            assert [b.tobytes() for b in layer.blobs] == [rb.array.tobytes() for rb in by_name[layer.name]]
    assert g.layer("conv1").blobs[0].shape == (10, 3, 3, 3)
    assert g.layer("PReLU1").blobs[0].shape == (10,)


def _weights_file(tmp_path, layers: list[tuple[str, str, list[np.ndarray]]]) -> str:
    net = caffe_pb2.NetParameter(name="w")
    for name, typ, blobs in layers:
        lp = net.layer.add(name=name, type=typ)
        for a in blobs:
            b = lp.blobs.add()
            b.shape.dim.extend(a.shape)
            b.data.extend(a.reshape(-1).tolist())
    p = tmp_path / "w.caffemodel"
    p.write_bytes(net.SerializeToString())
    return str(p)


TWO_IP = """name: "n"
layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "b" top: "c" inner_product_param { num_output: 2 } }
"""


def test_duplicate_names_matched_in_order(tmp_path):
    """The i-th layer of a name gets the i-th source layer of that name (extra source layers,
    extra types and unmatched names are ignored)."""
    w1 = np.full((2, 4), 1, np.float32)
    w2 = np.full((2, 2), 2, np.float32)
    bias = np.zeros(2, np.float32)
    wf = _weights_file(tmp_path, [("unused", "Convolution", [np.ones((1, 1, 1, 1), np.float32)]),
                                  ("fc", "InnerProduct", [w1, bias]), ("fc", "InnerProduct", [w2, bias])])
    g = load_caffe(write(tmp_path / "n.prototxt", TWO_IP), wf, check=False)
    a, b = [x for x in g.layers if x.name == "fc"]
    assert a.blobs[0].shape == (2, 4) and float(a.blobs[0][0, 0]) == 1.0
    assert b.blobs[0].shape == (2, 2) and float(b.blobs[0][0, 0]) == 2.0


def test_missing_weights_is_an_error(tmp_path):
    needs_layers("InnerProduct")
    wf = _weights_file(tmp_path, [("other", "InnerProduct", [np.ones((2, 4), np.float32)])])
    with pytest.raises(WeightsError, match=r"layer 'fc' \(InnerProduct\) needs learned weights"):
        load_caffe(write(tmp_path / "n.prototxt", TWO_IP), wf)


def test_wrong_blob_count_is_an_error(tmp_path):
    needs_layers("InnerProduct")
    w = np.ones((2, 4), np.float32)
    wf = _weights_file(tmp_path, [("fc", "InnerProduct", [w, np.zeros(2, np.float32), w])])
    with pytest.raises(WeightsError, match=r"layer 'fc' \(InnerProduct\) has 3 blobs, expected 2"):
        load_caffe(write(tmp_path / "n.prototxt", TWO_IP), wf)


def test_nan_weights_are_an_error(tmp_path):
    needs_layers("InnerProduct")
    w = np.ones((2, 4), np.float32)
    w[1, 1] = np.nan
    wf = _weights_file(tmp_path, [("fc", "InnerProduct", [w, np.zeros(2, np.float32)])] * 2)
    with pytest.raises(WeightsError, match=r"layer 'fc' blob 0 contains NaN or Inf"):
        load_caffe(write(tmp_path / "n.prototxt", TWO_IP), wf)


def test_prototxt_without_weights_file_has_no_blobs():
    g = load_caffe(str(DATA / "lenet/mnist_deploy.prototxt"))
    assert all(not x.blobs for x in g.layers)


# ------------------------------------------------------------------ phases
TRAIN_VAL = """name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } transform_param { scale: 0.00390625 } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "test_lmdb" batch_size: 100 backend: LMDB } transform_param { scale: 0.00390625 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" exclude { phase: TEST } }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 10 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "acc_stage" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc5"
        include { phase: TEST stage: "extra" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_train_val_yields_test_net(tmp_path):
    g = load_caffe(write(tmp_path / "tv.prototxt", TRAIN_VAL))
    assert [x.name for x in g.layers] == ["mnist", "conv1", "ip", "accuracy", "loss"]
    assert g.layers[0].params.data_param.source == "test_lmdb"
    assert g.layer("conv1").params.convolution_param.weight_filler.type == "xavier"
    assert g.outputs == ["accuracy", "loss"]
    text = prototxt_text(g)          # phase rules kept in the written net
    assert "phase: TEST" in text and "train_lmdb" not in text


def test_phase_rules_with_levels_and_stages(tmp_path):
    text = TRAIN_VAL.replace('name: "LeNet"', 'name: "LeNet" state { stage: "extra" }')
    g = load_caffe(write(tmp_path / "tv.prototxt", text))
    assert "acc_stage" in [x.name for x in g.layers]
    lv = ('layer { name: "lv" type: "ReLU" bottom: "ip" top: "lv" include { min_level: 2 } }\n')
    g = load_caffe(write(tmp_path / "lv.prototxt", TRAIN_VAL + lv))
    assert "lv" not in [x.name for x in g.layers]
    g = load_caffe(write(tmp_path / "lv2.prototxt", TRAIN_VAL.replace('name: "LeNet"',
                         'name: "LeNet" state { level: 3 }') + lv))
    assert "lv" in [x.name for x in g.layers]


def test_include_and_exclude_together_is_an_error(tmp_path):
    text = ('input: "a" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1\n'
            'layer { name: "r" type: "ReLU" bottom: "a" top: "r" include { phase: TEST } exclude { phase: TRAIN } }')
    with pytest.raises(ModelFormatError, match="layer 'r' has both include and exclude rules"):
        load_caffe(write(tmp_path / "n.prototxt", text))


# ---------------------------------------------------------------- in-place
IN_PLACE = """name: "ip"
input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "x"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
layer { name: "pool" type: "Pooling" bottom: "x" top: "p" pooling_param { global_pooling: true } }
"""


def test_in_place_chain(tmp_path):
    g = load_caffe(write(tmp_path / "n.prototxt", IN_PLACE))
    bn, sc, relu, pool = (g.layer(n) for n in ("bn", "sc", "relu", "pool"))
    assert g.input_values(bn) == ["x"] and g.output_values(bn) == ["x@1"]
    assert g.input_values(relu) == ["x@2"] and g.output_values(relu) == ["x@3"]
    assert g.producer(pool, 0) == (relu, 0)
    assert g.consumers(g.layer("conv"), 0) == [(bn, 0)]
    assert bn.in_place and not pool.in_place
    assert g.outputs == ["p"]
    # Caffe names in the file, versions only inside.
    assert "x@" not in prototxt_text(g)
    needs_layers("Convolution", "BatchNorm", "Scale", "ReLU", "Pooling")
    vs = g.infer_value_shapes()
    assert vs["x"] == vs["x@3"] == (1, 2, 4, 4) and g.infer_shapes()["p"] == (1, 2, 1, 1)


# --------------------------------------------------------- unknown layers
UNKNOWN = """name: "u"
input: "data" input_shape { dim: 1 dim: 3 }
layer { name: "py" type: "Python" bottom: "data" top: "y"
        python_param { module: "my.mod" layer: "MyLayer" param_str: "{'k': 3}" } }
layer { name: "weird" type: "SomeForkLayer" bottom: "y" top: "z" propagate_down: false loss_weight: 0.5 }
layer { name: "r" type: "ReLU" bottom: "z" top: "z" }
"""


def test_unknown_layer_types_kept_and_written_back(tmp_path):
    g = load_caffe(write(tmp_path / "u.prototxt", UNKNOWN))
    py = g.layer("py")
    assert py.type == "Python" and py.params.python_param.param_str == "{'k': 3}"
    save_caffe(g, str(tmp_path / "o.prototxt"))
    a, b = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(UNKNOWN, a)
    text_format.Parse((tmp_path / "o.prototxt").read_text(), b)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    # Only needing their semantics fails, naming the layer.
    with pytest.raises(UnsupportedLayerError, match="layer 'py': unknown layer type 'Python'"):
        g.infer_shapes()


def test_unknown_layer_with_blobs_round_trips(tmp_path):
    """Blobs of a layer the toolkit does not know are kept as they are."""
    g = load_caffe(write(tmp_path / "u.prototxt", UNKNOWN))
    g.layer("weird").blobs = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    save_caffe(g, str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    g2 = load_caffe(str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    assert g2.layer("weird").blobs[0].tobytes() == g.layer("weird").blobs[0].tobytes()


def test_typed_blobs_written_to_their_fields(tmp_path):
    """int8 -> int8_data, int32 -> int32_data, uint64 -> uint64_data, float64 -> double_data."""
    g = load_caffe(write(tmp_path / "u.prototxt", UNKNOWN))
    arrays = [np.array([[-128, 0, 127]], np.int8), np.array([-(2**31), -1, 0, 2**31 - 1], np.int32),
              np.array([0, 1, 2**64 - 1], np.uint64), np.array([1.5, -2.25], np.float64),
              np.array([1.0, -0.0], np.float32)]
    g.layer("weird").blobs = arrays
    save_caffe(g, str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    net = caffe_pb2.NetParameter()
    net.ParseFromString((tmp_path / "o.caffemodel").read_bytes())
    bl = next(x for x in net.layer if x.name == "weird").blobs
    assert bl[0].int8_data == arrays[0].tobytes()
    assert list(bl[1].int32_data) == arrays[1].tolist()
    assert list(bl[2].uint64_data) == arrays[2].tolist()
    assert list(bl[3].double_data) == [1.5, -2.25]
    g2 = load_caffe(str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    for a, b in zip(arrays, g2.layer("weird").blobs):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
