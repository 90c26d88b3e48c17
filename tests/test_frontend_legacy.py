"""Legacy nets (V1 ``layers {}`` with enum types, V0 nested layers with padding layers), in text
and binary form, upgraded on load and written back in V2 form; legacy 4-field blob shapes."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from amct.frontends.caffe import load_binary_net, load_caffe, prototxt_text, read_caffemodel, save_caffe
from amct.ir import get_layer_def
from amct.proto import caffe_pb2

V1_NET = """
name: "v1net"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 8 input_dim: 8
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
         inner_product_param { num_output: 3 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss"
         include { phase: TRAIN } }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" }
"""

V0_NET = """
name: "v0net"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "ip1" type: "innerproduct" num_output: 3 } bottom: "pool1" top: "ip1" }
layers { layer { name: "prob" type: "softmax" } bottom: "ip1" top: "prob" }
"""

RNG = np.random.default_rng(7)
CONV_W = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
CONV_B = RNG.standard_normal(4).astype(np.float32)


def needs_layers(*types: str) -> None:
    missing = [t for t in types if get_layer_def(t) is None]
    if missing:
        pytest.skip(f"layer definitions not registered yet: {missing}")


def legacy_blob(msg, arr: np.ndarray, dims4: tuple[int, int, int, int]) -> None:
    """Append ``arr`` as a BlobProto with only the legacy num/channels/height/width shape."""
    b = msg.blobs.add()
    b.num, b.channels, b.height, b.width = dims4
    b.data.extend(arr.reshape(-1).tolist())


def ip_weights(pool_out: int):
    w = RNG.standard_normal((3, pool_out)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    return w, b


def ip_inputs(with_v0: bool) -> int:
    """ip1's input size: 4 channels x pooled 4x4 (V0 net, padded conv) or 3x3 (V1 net)."""
    return 4 * 4 * 4 if with_v0 else 4 * 3 * 3


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def expected_v2_layers():
    return [("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"),
            ("ip1", "InnerProduct"), ("prob", "Softmax")]


@pytest.mark.parametrize("text", [V1_NET, V0_NET], ids=["v1", "v0"])
def test_legacy_text_upgraded(text, tmp_path):
    g = load_caffe(write(tmp_path / "net.prototxt", text))
    assert [(x.name, x.type) for x in g.layers] == expected_v2_layers()
    conv = g.layer("conv1")
    assert conv.bottoms == ["data"]          # V0: the padding layer merged into the conv
    cp = conv.params.convolution_param
    assert cp.num_output == 4 and list(cp.kernel_size) == [3]
    if text is V0_NET:
        assert list(cp.pad) == [1]
    # blobs_lr / weight_decay -> param specs
    assert [(p.lr_mult, p.decay_mult) for p in conv.params.param] == [(1, 1), (2, 0)]
    assert g.layer("pool1").params.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert g.input_shapes() == {"data": (2, 1, 8, 8)}
    # Written back in V2 form (legacy input fields become input + input_shape).
    out = prototxt_text(g)
    assert "layers {" not in out and "layer {" in out and 'type: "Convolution"' in out
    assert "input_dim" not in out and "input_shape" in out
    save_caffe(g, str(tmp_path / "v2.prototxt"))
    g2 = load_caffe(str(tmp_path / "v2.prototxt"))
    assert [(x.name, x.type, x.bottoms, x.tops) for x in g2.layers] == \
        [(x.name, x.type, x.bottoms, x.tops) for x in g.layers]


def _binary_v1(with_v0: bool) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    text_format.Parse(V0_NET if with_v0 else V1_NET, net)
    ipw, ipb = ip_weights(ip_inputs(with_v0))
    for x in net.layers:
        holder = x.layer if with_v0 else x
        name = holder.name
        if name == "conv1":
            legacy_blob(holder, CONV_W, (4, 1, 3, 3))
            legacy_blob(holder, CONV_B, (1, 1, 1, 4))
        elif name == "ip1":
            legacy_blob(holder, ipw, (1, 1, 3, ipw.shape[1]))
            legacy_blob(holder, ipb, (1, 1, 1, 3))
    return net


@pytest.mark.parametrize("with_v0", [False, True], ids=["v1", "v0"])
def test_legacy_binary_upgraded_and_reshaped(with_v0, tmp_path):
    net = _binary_v1(with_v0)
    wpath = tmp_path / "net.caffemodel"
    wpath.write_bytes(net.SerializeToString())
    # The caffemodel alone: upgraded to V2, V0 padding merged.
    gb = load_binary_net(str(wpath))
    assert [(x.name, x.type) for x in gb.layers if x.type != "SoftmaxWithLoss"] == expected_v2_layers()
    assert list(gb.layer("conv1").params.convolution_param.pad) == ([1] if with_v0 else [])
    # With a prototxt: legacy 4-field shapes reshaped to what each layer expects.
    needs_layers("Convolution", "InnerProduct", "Pooling")
    ppath = write(tmp_path / "net.prototxt", V0_NET if with_v0 else V1_NET)
    g = load_caffe(ppath, str(wpath))
    conv, ip = g.layer("conv1"), g.layer("ip1")
    assert [b.shape for b in conv.blobs] == [(4, 1, 3, 3), (4,)]
    k = ip_inputs(with_v0)
    assert [b.shape for b in ip.blobs] == [(3, k), (3,)]   # stored as 1x1x3xK and 1x1x1x3
    assert conv.blobs[0].tobytes() == CONV_W.tobytes() and conv.blobs[1].tobytes() == CONV_B.tobytes()
    # Written back in V2 form with BlobShape, bit-identical values.
    save_caffe(g, str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    out = caffe_pb2.NetParameter()
    out.ParseFromString((tmp_path / "o.caffemodel").read_bytes())
    assert len(out.layers) == 0 and len(out.layer) == len(g.layers)
    ipl = next(x for x in out.layer if x.name == "ip1")
    assert list(ipl.blobs[0].shape.dim) == [3, k] and not ipl.blobs[0].HasField("num")
    g2 = load_caffe(str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel"))
    for x, y in zip(g.layers, g2.layers):
        assert [b.tobytes() for b in x.blobs] == [b.tobytes() for b in y.blobs]


def test_legacy_shape_not_matching_is_an_error(tmp_path):
    """A legacy shape whose element count differs from the layer's expectation is refused."""
    needs_layers("Convolution", "InnerProduct")
    from amct.errors import WeightsError
    net = _binary_v1(False)
    ip = next(x for x in net.layers if x.name == "ip1")
    del ip.blobs[0].data[-3:]
    ip.blobs[0].width -= 1
    wpath = tmp_path / "net.caffemodel"
    wpath.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=r"layer 'ip1'.*blob 0 has shape \(1, 1, 3, 35\), expected \(3, 36\)"):
        load_caffe(write(tmp_path / "net.prototxt", V1_NET), str(wpath))


def test_new_style_shape_is_not_reshaped(tmp_path):
    """Only legacy 4-field shapes are reshaped; a BlobShape must match exactly."""
    needs_layers("InnerProduct")
    from amct.errors import WeightsError
    text = """name: "n" layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" inner_product_param { num_output: 2 } }"""
    net = caffe_pb2.NetParameter()
    lp = net.layer.add(name="ip", type="InnerProduct")
    for shape in ((1, 1, 2, 6), (2,)):
        b = lp.blobs.add()
        b.shape.dim.extend(shape)
        b.data.extend([0.5] * int(np.prod(shape)))
    (tmp_path / "w.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=r"'ip'.*blob 0 has shape \(1, 1, 2, 6\), expected \(2, 6\)"):
        load_caffe(write(tmp_path / "n.prototxt", text), str(tmp_path / "w.caffemodel"))


def test_v1_and_v2_mixed_is_an_error(tmp_path):
    from amct.errors import ModelFormatError
    text = V1_NET + '\nlayer { name: "x" type: "ReLU" bottom: "prob" top: "x" }\n'
    with pytest.raises(ModelFormatError, match="mixes V1 'layers' and V2 'layer'"):
        load_caffe(write(tmp_path / "m.prototxt", text))


def test_binary_v1_matched_by_name_to_v2_prototxt(tmp_path):
    """A legacy caffemodel serves a current-form prototxt of the same net."""
    needs_layers("Convolution", "InnerProduct", "Pooling")
    g_text = load_caffe(write(tmp_path / "net.prototxt", V1_NET))
    save_caffe(g_text, str(tmp_path / "v2.prototxt"))
    (tmp_path / "net.caffemodel").write_bytes(_binary_v1(False).SerializeToString())
    g = load_caffe(str(tmp_path / "v2.prototxt"), str(tmp_path / "net.caffemodel"))
    assert g.layer("conv1").blobs[0].tobytes() == CONV_W.tobytes()
    _, layers = read_caffemodel(str(tmp_path / "net.caffemodel"))
    assert [lp.type for lp, _ in layers][:2] == ["Convolution", "ReLU"]
