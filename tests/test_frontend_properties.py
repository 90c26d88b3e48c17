"""Hypothesis properties: the wire codec is protobuf-exact and invertible, and write o load is
the identity on generated nets."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amct.frontends.caffe import load_caffe, save_caffe, wire
from amct.ir import Graph, Layer
from amct.ir.blobs import array_to_blobproto
from amct.proto import caffe_pb2

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DTYPES = [np.float32, np.float64, np.int8, np.int32, np.uint64]


def arrays_of(dtype):
    shape = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
    if np.dtype(dtype).kind == "f":
        # Any bit pattern (NaN payloads, -0.0, subnormals) must survive.
        bits = np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint64
        return hnp.arrays(bits, shape).map(lambda a: a.view(dtype))
    return hnp.arrays(dtype, shape)


any_array = st.sampled_from(DTYPES).flatmap(arrays_of)


def _bytes(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


@SETTINGS
@given(any_array)
def test_blob_encoding_is_protobufs(a):
    """blob_chunks == protobuf's deterministic serialization of the same BlobProto."""
    assert _bytes(wire.blob_chunks(a)) == array_to_blobproto(a).SerializeToString(deterministic=True)


@SETTINGS
@given(any_array)
def test_blob_decode_inverts_encode(a):
    data = _bytes(wire.blob_chunks(a))
    rb = wire.decode_blob(data, 0, len(data), "t")
    # An empty repeated field is not written at all, so an empty int32/uint64/float64
    # blob reads back as an empty float32 one (its shape is kept).
    lost = a.size == 0 and a.dtype not in (np.int8, np.float32)
    assert rb.array.dtype == (np.float32 if lost else a.dtype) and rb.array.shape == a.shape
    assert rb.array.tobytes() == a.tobytes() and not rb.legacy_shape


@SETTINGS
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40))
def test_packed_int32_varints(values):
    a = np.array(values, dtype=np.int32)
    enc = wire.encode_packed_varints(a)
    ref = caffe_pb2.BlobProto(int32_data=values).SerializeToString()
    assert ref == (b"\x5a" + wire.encode_varint(len(enc)) + enc if values else b"")  # field 11, packed
    dec = wire.decode_packed_varints(np.frombuffer(enc, np.uint8), np.int32)
    assert dec.tolist() == values


@SETTINGS
@given(st.lists(st.integers(0, 2**64 - 1), max_size=40))
def test_packed_uint64_varints(values):
    enc = wire.encode_packed_varints(np.array(values, dtype=np.uint64))
    msg = caffe_pb2.BlobProto()
    msg.ParseFromString(b"\x62" + wire.encode_varint(len(enc)) + enc)   # field 12, packed
    assert list(msg.uint64_data) == values
    assert wire.decode_packed_varints(np.frombuffer(enc, np.uint8), np.uint64).tolist() == values


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_single_varint(v):
    enc = wire.encode_varint(v)
    assert wire.read_varint(enc, 0, len(enc)) == (v, len(enc))


def test_lengths_beyond_2gb_are_plain_varints():
    """The codec has no 2 GB message limit: a length-delimited field of 3 GiB (header only) is
    read as such and reported as truncated at its start, not as an overflow."""
    n = 3 << 30
    head = b"\x0a" + wire.encode_varint(n)          # field 1, 3 GiB payload
    fields = wire.iter_fields(head + b"\0" * 16, 0, len(head) + 16)
    try:
        next(fields)
    except wire._Truncated as t:                   # noqa: SLF001 - the codec's own signal
        assert t.args[0] == 0
    else:
        raise AssertionError("a 3 GiB field in a 22-byte buffer must be truncated")
    # and a layer length > 2**31 decodes to the exact value
    assert wire.read_varint(wire.encode_varint(n), 0, 5)[0] == n
    assert wire.read_varint(wire.encode_varint(2**40 + 5), 0, 6)[0] == 2**40 + 5


# ------------------------------------------------------- generated nets
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789/", min_size=1, max_size=8)


@st.composite
def layer_specs(draw, bottom: str, idx: int):
    kind = draw(st.sampled_from(["Convolution", "InnerProduct", "ReLU", "Pooling", "Mystery", "Scale"]))
    name = f"{draw(NAMES)}_{idx}"
    in_place = kind in ("ReLU", "Scale") and draw(st.booleans())
    top = bottom if in_place else f"t{idx}_{draw(NAMES)}"
    layer = Layer(name, kind, [bottom], [top])
    p = layer.params
    blobs: list[np.ndarray] = []
    f32 = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
                     elements=st.floats(-1e6, 1e6, width=32))
    if kind == "Convolution":
        cp = p.convolution_param
        cp.num_output = draw(st.integers(1, 64))
        cp.kernel_size.extend(draw(st.lists(st.integers(1, 7), min_size=1, max_size=2)))
        if draw(st.booleans()):
            cp.pad.append(draw(st.integers(0, 3)))
        cp.bias_term = draw(st.booleans())
        cp.group = draw(st.integers(1, 4))
        if draw(st.booleans()):
            cp.weight_filler.type = draw(st.sampled_from(["xavier", "msra", "gaussian"]))
            cp.weight_filler.std = draw(st.floats(0, 1, width=32))
        blobs = draw(st.lists(f32, max_size=2))
    elif kind == "InnerProduct":
        ip = p.inner_product_param
        ip.num_output = draw(st.integers(1, 1000))
        ip.axis = draw(st.integers(-2, 3))
        ip.transpose = draw(st.booleans())
        blobs = draw(st.lists(f32, max_size=2))
    elif kind == "ReLU":
        if draw(st.booleans()):
            p.relu_param.negative_slope = draw(st.floats(-2, 2, width=32))
    elif kind == "Pooling":
        pp = p.pooling_param
        pp.pool = draw(st.sampled_from([0, 1, 2]))
        pp.kernel_size = draw(st.integers(1, 5))
        pp.stride = draw(st.integers(1, 3))
        pp.global_pooling = draw(st.booleans())
    elif kind == "Scale":
        p.scale_param.bias_term = draw(st.booleans())
        blobs = draw(st.lists(f32, max_size=2))
    else:  # unknown type with fields the toolkit never interprets
        p.python_param.param_str = draw(st.text(max_size=20))
        p.loss_weight.append(draw(st.floats(0, 2, width=32)))
        blobs = draw(st.lists(st.sampled_from(DTYPES).flatmap(arrays_of), max_size=2))
    if draw(st.booleans()):
        spec = p.param.add()
        spec.lr_mult = draw(st.floats(0, 10, width=32))
    if draw(st.booleans()):
        p.include.add().phase = caffe_pb2.TEST
    layer.blobs = blobs
    return layer


@st.composite
def nets(draw):
    g = Graph(draw(NAMES))
    legacy = draw(st.booleans())
    inp = Layer("input" if legacy else "data_in", "Input", [], ["data"])
    inp.params.input_param.shape.add().dim.extend(draw(st.lists(st.integers(1, 64), min_size=1, max_size=4)))
    g.add_layer(inp)
    g.input_style = "fields" if legacy else "layer"
    bottom = "data"
    for i in range(draw(st.integers(1, 6))):
        layer = draw(layer_specs(bottom, i))
        g.add_layer(layer)
        bottom = layer.tops[0]
    if draw(st.booleans()):
        g.net_params.force_backward = True
    return g


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(nets())
def test_write_load_is_identity(tmp_path, g):
    p, w = tmp_path / "g.prototxt", tmp_path / "g.caffemodel"
    save_caffe(g, str(p), str(w))
    h = load_caffe(str(p), str(w), check=False)
    assert h.name == g.name and h.input_style == g.input_style
    assert h.net_params.SerializeToString(deterministic=True) == g.net_params.SerializeToString(deterministic=True)
    assert [(x.name, x.type, x.bottoms, x.tops, x.params.SerializeToString(deterministic=True))
            for x in h.layers] == \
        [(x.name, x.type, x.bottoms, x.tops, x.params.SerializeToString(deterministic=True))
         for x in g.layers]
    for x, y in zip(g.layers, h.layers):
        assert [(b.dtype if b.size or b.dtype == np.int8 else np.float32, b.shape, b.tobytes())
                for b in x.blobs] == [(b.dtype, b.shape, b.tobytes()) for b in y.blobs], x.name
