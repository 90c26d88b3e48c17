"""The full PTQ flow on a legacy (V1, `layers {}` with enum types) model.

LeNet is rewritten in the V1 format (text prototxt with `input_dim`, binary
caffemodel with V1 layers and 4-field legacy blob shapes) and quantized; the
result must equal the flow on the current-format LeNet byte for byte.
"""
from __future__ import annotations

import numpy as np

import amct
from amct.frontends.caffe import load_caffe
from amct.proto import caffe_pb2
from conftest import REPO

EX = REPO / "examples" / "lenet_mnist"
V1_TYPES = {"Convolution": "CONVOLUTION", "Pooling": "POOLING", "InnerProduct": "INNER_PRODUCT",
            "ReLU": "RELU", "Softmax": "SOFTMAX"}
SUFFIXES = ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel",
            "_deploy_model.prototxt", "_deploy_weights.caffemodel", "_quant.json")


def _v1_lenet(tmp_path):
    g = load_caffe(str(EX / "mnist_deploy.prototxt"), str(EX / "lenet_iter_10000.caffemodel"))
    text = caffe_pb2.NetParameter(name="LeNet")
    binary = caffe_pb2.NetParameter(name="LeNet")
    text.input.append("data")
    text.input_dim.extend([1, 1, 28, 28])
    for layer in g.layers[1:]:                      # the Input layer becomes input/input_dim
        for net in (text, binary):
            v1 = net.layers.add(name=layer.name, bottom=layer.bottoms, top=layer.tops)
            v1.type = caffe_pb2.V1LayerParameter.LayerType.Value(V1_TYPES[layer.type])
            for field, value in layer.params.ListFields():
                if field.name.endswith("_param"):
                    getattr(v1, field.name).CopyFrom(value)
        for b in layer.blobs:
            blob = binary.layers[-1].blobs.add()
            n, c, h, w = (1,) * (4 - b.ndim) + b.shape    # legacy num/channels/height/width
            blob.num, blob.channels, blob.height, blob.width = n, c, h, w
            blob.data.extend(b.astype(np.float32).ravel().tolist())
    model, weights = tmp_path / "lenet_v1.prototxt", tmp_path / "lenet_v1.caffemodel"
    from google.protobuf import text_format
    model.write_text(text_format.MessageToString(text))
    weights.write_bytes(binary.SerializeToString())
    assert "layers {" in model.read_text() and "type: CONVOLUTION" in model.read_text()
    return str(model), str(weights)


def test_v1_model_quantizes_like_the_current_format(tmp_path):
    model, weights = _v1_lenet(tmp_path)
    x = amct.data.tensors.load_idx(str(EX / "calib-images-idx3-ubyte.gz"))[:64, None] / 256.0
    batches = [x[:32], x[32:]]
    old = amct.quantize(model, weights, batches, str(tmp_path / "v1" / "lenet"))
    new = amct.quantize(str(EX / "mnist_deploy.prototxt"), str(EX / "lenet_iter_10000.caffemodel"),
                        batches, str(tmp_path / "v2" / "lenet"))
    assert open(old.record_file, "rb").read() == open(new.record_file, "rb").read()
    for s in SUFFIXES:
        a = (tmp_path / "v1" / f"lenet{s}").read_bytes()
        b = (tmp_path / "v2" / f"lenet{s}").read_bytes()
        if s.endswith(".prototxt"):
            # The V1 net keeps its legacy input fields, written back as input/input_shape.
            assert b"input: \"data\"" in a
            fa = amct.runtime.Net(str(tmp_path / "v1" / f"lenet{s}"),
                                  str(tmp_path / "v1" / f"lenet{s}".replace("model.prototxt", "weights.caffemodel")))
            fb = amct.runtime.Net(str(tmp_path / "v2" / f"lenet{s}"),
                                  str(tmp_path / "v2" / f"lenet{s}".replace("model.prototxt", "weights.caffemodel")))
            np.testing.assert_array_equal(fa.forward(data=x[:8])["loss"], fb.forward(data=x[:8])["loss"])
        elif s.endswith(".json"):
            assert a == b
        else:
            # Same blobs (the V2 file also carries the original's lr_mult/filler params).
            from amct.ir import blobs_equal
            ga = load_caffe(str(tmp_path / "v1" / f"lenet{s}".replace("weights.caffemodel", "model.prototxt")),
                            str(tmp_path / "v1" / f"lenet{s}"))
            gb = load_caffe(str(tmp_path / "v2" / f"lenet{s}".replace("weights.caffemodel", "model.prototxt")),
                            str(tmp_path / "v2" / f"lenet{s}"))
            assert blobs_equal(ga, gb)
