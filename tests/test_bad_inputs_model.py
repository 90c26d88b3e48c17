"""Issue 7, model half: a corpus of bad model inputs, each with the error it must produce.

Static files live in tests/bad_inputs/; the binary cases are made here from the real LeNet and
MTCNN files (truncations, bit flips, edited blobs) so the corpus stays small.  Every case must
raise a subclass of ``AmctError`` of the listed class whose message contains the listed fragment
(file, line:column, byte offset or layer), never an IndexError/KeyError/DecodeError/... .
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from amct.errors import (AmctError, CaffemodelError, DuplicateNameError, GraphCycleError,
                         MissingBottomError, ModelFormatError, PrototxtSyntaxError, ShapeError,
                         UnsupportedLayerError, WeightsError)
from amct.frontends.caffe import load_binary_net, load_caffe
from amct.frontends.caffe.wire import encode_varint
from amct.ir import get_layer_def
from amct.proto import caffe_pb2
from conftest import DATA

BAD = Path(__file__).parent / "bad_inputs"
LENET_P = DATA / "lenet/mnist_deploy.prototxt"
LENET_W = DATA / "lenet/lenet_iter_10000.caffemodel"
DET1_P = DATA / "mtcnn/det1.prototxt"

# ------------------------------------------------------------ text corpus
# file in tests/bad_inputs -> (error class, message fragment); "infer" also runs infer_shapes().
TEXT_CASES: dict[str, tuple[type, str]] = {
    "unclosed_brace.prototxt": (PrototxtSyntaxError, "unclosed_brace.prototxt:8:8: Expected \"}\""),
    "unknown_field.prototxt": (PrototxtSyntaxError, 'unknown_field.prototxt:5:3: Message type '
                               '"caffe.LayerParameter" has no field named "kernel_size"'),
    "bad_enum.prototxt": (PrototxtSyntaxError, "bad_enum.prototxt:5:25:"),
    "negative_uint.prototxt": (PrototxtSyntaxError, "negative_uint.prototxt:5:35:"),
    "unterminated_string.prototxt": (PrototxtSyntaxError, "unterminated_string.prototxt:1:7:"),
    "string_for_int.prototxt": (PrototxtSyntaxError, "string_for_int.prototxt:5:35:"),
    "repeated_singular.prototxt": (PrototxtSyntaxError, 'repeated_singular.prototxt:1:19:'),
    "latin1.prototxt": (PrototxtSyntaxError, "latin1.prototxt:1:9: not UTF-8 text (byte offset 8)"),
    "input_dim_three.prototxt": (ModelFormatError, "1 inputs need 4 input_dim values, found 3"),
    "input_dim_five.prototxt": (ModelFormatError, "1 inputs need 4 input_dim values, found 5"),
    "input_negative_dim.prototxt": (ModelFormatError, "input layer 'input' declares the negative shape"),
    "input_zero_dim.prototxt": (ShapeError, "input 'data' (layer 'input') has shape (1, 0, 8)"),
    "input_dim_and_shape.prototxt": (ModelFormatError, "give input_dim or input_shape, not both"),
    "input_shape_count.prototxt": (ModelFormatError, "2 inputs but 1 input_shape entries"),
    "missing_bottom.prototxt": (MissingBottomError, "layer 'r' (bottom 0) reads blob 'nothing'"),
    "cycle.prototxt": (GraphCycleError, "layer 'a' reads blob 'b' which is only produced later"),
    "duplicate_top.prototxt": (DuplicateNameError, "layer 'b' writes blob 't'"),
    "no_type.prototxt": (ModelFormatError, "layer 'a' has no type"),
    "unknown_type.prototxt": (UnsupportedLayerError, "layer 'm': unknown layer type 'MysteryOp'"),
    "kernel_too_big.prototxt": (ShapeError, "layer 'c' (Convolution)"),
    "v0_unknown_type.prototxt": (ModelFormatError, "V0 layer 'x' has unknown type 'warp'"),
    "include_and_exclude.prototxt": (ModelFormatError, "layer 'a' has both include and exclude rules"),
}


def _load_and_infer(model: str, weights: str | None = None) -> None:
    g = load_caffe(model, weights)
    g.infer_shapes()


def test_corpus_files_all_listed():
    assert sorted(p.name for p in BAD.glob("*.prototxt")) == sorted(TEXT_CASES)


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_bad_prototxt(name, tmp_path):
    cls, fragment = TEXT_CASES[name]
    if cls in (ShapeError, UnsupportedLayerError) and get_layer_def("Convolution") is None:
        pytest.skip("layer definitions not registered yet")
    # Copy so the message's path is predictable (relative names are kept as given).
    shutil.copy(BAD / name, tmp_path / name)
    with pytest.raises(cls) as ei:
        _load_and_infer(str(tmp_path / name))
    assert fragment in str(ei.value)
    assert str(tmp_path / name) in str(ei.value)     # every message names the file


# ----------------------------------------------------------- binary corpus
def lenet_bytes() -> bytes:
    return LENET_W.read_bytes()


def lenet_net() -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    net.ParseFromString(lenet_bytes())
    return net


def edit_blob(layer: str, i: int, fn: Callable[[caffe_pb2.BlobProto], None]) -> bytes:
    net = lenet_net()
    fn(next(x for x in net.layer if x.name == layer).blobs[i])
    return net.SerializeToString()


def drop_blob(layer: str) -> bytes:
    net = lenet_net()
    del next(x for x in net.layer if x.name == layer).blobs[1]
    return net.SerializeToString()


def set_value(layer: str, value: float) -> bytes:
    def fn(b):
        b.data[3] = value
    return edit_blob(layer, 0, fn)


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def raw_net(*fields: bytes) -> bytes:
    return b"".join(fields)


def ld(fn: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return encode_varint(fn << 3 | 2) + encode_varint(len(payload)) + payload


SIZE = LENET_W.stat().st_size
# LeNet layout: name at 0, layer 'mnist' at 7, 'conv1' at 90, its first blob at about 2277.
BINARY_CASES: list[tuple[str, Callable[[], bytes], type, str]] = [
    ("empty", lambda: b"", CaffemodelError, "file is empty"),
    ("one_byte", lambda: lenet_bytes()[:1], CaffemodelError, "truncated or corrupt at byte 1 of 1"),
    ("trunc_10", lambda: lenet_bytes()[:10], CaffemodelError, "truncated or corrupt at byte 7 of 10"),
    ("trunc_in_layer", lambda: lenet_bytes()[:1000], CaffemodelError, "truncated or corrupt at byte 90 of 1000"),
    ("trunc_in_blob", lambda: lenet_bytes()[:50000], CaffemodelError, "truncated or corrupt at byte 2321 of 50000"),
    ("trunc_half", lambda: lenet_bytes()[:SIZE // 2], CaffemodelError,
     f"truncated or corrupt at byte 102678 of {SIZE // 2}"),
    ("trunc_last_byte", lambda: lenet_bytes()[:-1], CaffemodelError,
     f"truncated or corrupt at byte 1724955 of {SIZE - 1}"),
    ("bad_wire_type", lambda: patch(lenet_bytes(), 0, bytes([0x0E])), CaffemodelError,
     "invalid wire type 6 (field 1) at byte 0"),
    ("field_zero", lambda: patch(lenet_bytes(), 0, b"\x02"), CaffemodelError, "field number 0 at byte 0"),
    ("huge_layer_length", lambda: lenet_bytes()[:7] + ld(100, b"")[:2] + b"\xff\xff\xff\xff\x0f",
     CaffemodelError, "truncated or corrupt at byte 7"),
    ("varint_too_long", lambda: b"\x08" + b"\xff" * 11 + b"\x01", CaffemodelError, "varint longer than 10 bytes"),
    ("no_layers", lambda: ld(1, b"just a name"), CaffemodelError, "holds no layers"),
    ("prototxt_as_caffemodel", lambda: LENET_P.read_bytes(), CaffemodelError, "corrupt protobuf data"),
    ("count_mismatch", lambda: edit_blob("conv1", 0, lambda b: b.data.pop()), CaffemodelError,
     "holds 499 values but its shape (20, 1, 5, 5) needs 500"),
    ("negative_dim", lambda: edit_blob("conv1", 1, lambda b: b.shape.dim.__setitem__(0, -20)),
     CaffemodelError, "negative dimension"),
    ("odd_float_bytes", lambda: raw_net(ld(100, ld(1, b"conv1") + ld(7, ld(5, b"\0" * 6)))),
     CaffemodelError, "packed float data of 6 bytes"),
    ("corrupt_layer_header", lambda: raw_net(ld(100, ld(1, b"conv1") + ld(106, b"\xff"))),
     CaffemodelError, "layer #0 at byte 0: corrupt layer fields"),
    ("v0_padding_misplaced", lambda: _v0_pad_into_relu(), CaffemodelError, "V0 padding feeds non-conv layer"),
    # Weights that decode but do not fit the net.
    ("missing_bias_blob", lambda: drop_blob("conv1"), WeightsError, "layer 'conv1' (Convolution) has 1 blobs, expected 2"),
    ("wrong_shape", lambda: edit_blob("ip2", 0, lambda b: (b.shape.dim.__setitem__(0, 5),
                                                            b.shape.dim.__setitem__(1, 1000))),
     WeightsError, "layer 'ip2' (InnerProduct) blob 0 has shape (5, 1000), expected (10, 500)"),
    ("nan_weights", lambda: set_value("conv2", float("nan")), WeightsError, "layer 'conv2' blob 0 contains NaN or Inf"),
    ("inf_weights", lambda: set_value("ip1", float("inf")), WeightsError, "layer 'ip1' blob 0 contains NaN or Inf"),
    ("neg_inf_weights", lambda: set_value("conv1", float("-inf")), WeightsError, "layer 'conv1' blob 0 contains NaN"),
    ("weights_of_other_net", lambda: (DATA / "mtcnn/det1.caffemodel").read_bytes(), WeightsError,
     "layer 'conv1' (Convolution) blob 0 has shape (10, 3, 3, 3), expected (20, 1, 5, 5)"),
    ("no_weights_for_layer", lambda: _rename_layer("ip2", "ip2_old"), WeightsError,
     "layer 'ip2' (InnerProduct) needs learned weights but the caffemodel has none"),
]


def _rename_layer(old: str, new: str) -> bytes:
    net = lenet_net()
    next(x for x in net.layer if x.name == old).name = new
    return net.SerializeToString()


def _v0_pad_into_relu() -> bytes:
    net = caffe_pb2.NetParameter()
    a = net.layers.add(bottom=["data"], top=["p"])
    a.layer.name, a.layer.type, a.layer.pad = "pad", "padding", 1
    b = net.layers.add(bottom=["p"], top=["r"])
    b.layer.name, b.layer.type = "relu", "relu"
    return net.SerializeToString()


@pytest.mark.parametrize("case", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_bad_caffemodel(case, tmp_path):
    name, make, cls, fragment = case
    if cls is WeightsError and get_layer_def("Convolution") is None:
        pytest.skip("layer definitions not registered yet")
    path = tmp_path / f"{name}.caffemodel"
    path.write_bytes(make())
    with pytest.raises(cls) as ei:
        _load_and_infer(str(LENET_P), str(path))
    assert fragment in str(ei.value)
    assert str(path) in str(ei.value)


# --------------------------------------------------------- path problems
def test_directory_as_prototxt(tmp_path):
    with pytest.raises(ModelFormatError, match="is a directory, expected a prototxt file"):
        load_caffe(str(tmp_path))


def test_directory_as_caffemodel(tmp_path):
    with pytest.raises(CaffemodelError, match="is a directory, expected a caffemodel file"):
        load_caffe(str(LENET_P), str(tmp_path))


def test_missing_files(tmp_path):
    with pytest.raises(ModelFormatError, match="nope.prototxt: no such file"):
        load_caffe(str(tmp_path / "nope.prototxt"))
    with pytest.raises(CaffemodelError, match="nope.caffemodel: no such file"):
        load_caffe(str(LENET_P), str(tmp_path / "nope.caffemodel"))
    with pytest.raises(CaffemodelError, match="no such file"):
        load_binary_net(str(tmp_path / "nope.caffemodel"))


def test_binary_file_as_prototxt():
    with pytest.raises(PrototxtSyntaxError, match=r"lenet_iter_10000.caffemodel:2:7: not UTF-8 text "
                       r"\(byte offset 7\); this looks like a binary file"):
        load_caffe(str(LENET_W))


def test_duplicate_layer_names_ambiguous_lookup(tmp_path):
    text = (BAD.parent / "data/lenet/mnist_deploy.prototxt").read_text().replace('name: "pool2"', 'name: "pool1"')
    (tmp_path / "d.prototxt").write_text(text)
    g = load_caffe(str(tmp_path / "d.prototxt"))       # Caffe accepts duplicate names
    with pytest.raises(DuplicateNameError, match="d.prototxt: 2 layers are named 'pool1'"):
        g.layer("pool1")


def test_corpus_size():
    n = len(TEXT_CASES) + len(BINARY_CASES) + 6      # + the path/lookup tests above
    assert n >= 40, n


def test_every_error_is_an_amct_error():
    for cls in (CaffemodelError, PrototxtSyntaxError, ModelFormatError, WeightsError, ShapeError,
                UnsupportedLayerError, GraphCycleError, MissingBottomError, DuplicateNameError):
        assert issubclass(cls, AmctError)
    assert np.isnan(float("nan"))
