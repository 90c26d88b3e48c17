"""Round trips: load -> save -> load is the identity, and the writer is protobuf-exact.

Covers the real models copied into tests/data (always) and, when ../shared is present, every
prototxt of shared/models and every golden case with its weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amct.frontends.caffe import load_caffe, prototxt_text, read_caffemodel, save_caffe
from amct.frontends.caffe.writer import net_header
from amct.proto import caffe_pb2
from conftest import DATA, GOLDEN, MODELS, shared_or_skip


def _local_cases() -> list[tuple[str, str | None]]:
    return [
        (str(DATA / "lenet/mnist_deploy.prototxt"), str(DATA / "lenet/lenet_iter_10000.caffemodel")),
        (str(DATA / "mtcnn/det1.prototxt"), str(DATA / "mtcnn/det1.caffemodel")),
        (str(DATA / "mtcnn/det3.prototxt"), str(DATA / "mtcnn/det3.caffemodel")),
        (str(DATA / "cifar10_quick/cifar10_quick.prototxt"),
         str(DATA / "cifar10_quick/cifar10_quick_iter_5000.caffemodel")),
        (str(DATA / "ultraface_slim320/slim-320.prototxt"),
         str(DATA / "ultraface_slim320/slim-320.caffemodel")),
    ]


def _shared_cases() -> list[tuple[str, str | None]]:
    cases: list[tuple[str, str | None]] = []
    if GOLDEN.is_dir():
        for d in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
            w = d / "weights.caffemodel"
            cases.append((str(d / "net.prototxt"), str(w) if w.exists() else None))
    if MODELS.is_dir():
        for p in sorted(MODELS.rglob("*.prototxt")):
            w = sorted(p.parent.glob(p.stem + "*.caffemodel"))
            cases.append((str(p), str(w[0]) if w else None))
        lenet = MODELS / "lenet_mnist"
        if lenet.is_dir():
            cases.append((str(lenet / "mnist_deploy.prototxt"), str(lenet / "lenet_iter_10000.caffemodel")))
    return cases


def _case_id(case) -> str:
    p = Path(case[0])
    return f"{p.parent.name}/{p.name}" + ("+w" if case[1] else "")


LOCAL = _local_cases()
SHARED_CASES = _shared_cases()


def structure(g) -> list[tuple]:
    """Everything that defines a net except blobs: compared through serialized LayerParameters."""
    return [(x.name, x.type, tuple(x.bottoms), tuple(x.tops),
             x.params.SerializeToString(deterministic=True)) for x in g.layers]


def assert_blobs_identical(a, b) -> None:
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert len(x.blobs) == len(y.blobs), x.name
        for p, q in zip(x.blobs, y.blobs):
            assert p.dtype == q.dtype and p.shape == q.shape, x.name
            assert p.tobytes() == q.tobytes(), f"layer {x.name}: blob bytes differ"


def roundtrip(model: str, weights: str | None, tmp_path: Path):
    g = load_caffe(model, weights)
    out_p, out_w = tmp_path / "rt.prototxt", tmp_path / "rt.caffemodel"
    save_caffe(g, str(out_p), str(out_w) if weights else None)
    g2 = load_caffe(str(out_p), str(out_w) if weights else None)
    return g, g2, out_p, out_w


def _check_roundtrip(case, tmp_path: Path) -> None:
    model, weights = case
    g, g2, out_p, out_w = roundtrip(model, weights, tmp_path)
    assert structure(g) == structure(g2)
    assert g.name == g2.name and g.inputs == g2.inputs and g.outputs == g2.outputs
    assert g.net_params.SerializeToString(deterministic=True) == \
        g2.net_params.SerializeToString(deterministic=True)
    if weights:
        assert_blobs_identical(g, g2)
        # The streaming writer claims protobuf's own deterministic bytes.
        net = net_header(g, False)
        for x in g.layers:
            net.layer.add().CopyFrom(x.to_proto(with_blobs=True))
        assert out_w.read_bytes() == net.SerializeToString(deterministic=True)
    # Writing is a fixed point: saving the reloaded graph reproduces the files.
    save_caffe(g2, str(tmp_path / "rt2.prototxt"), str(tmp_path / "rt2.caffemodel") if weights else None)
    assert (tmp_path / "rt2.prototxt").read_text() == out_p.read_text()
    if weights:
        assert (tmp_path / "rt2.caffemodel").read_bytes() == out_w.read_bytes()


@pytest.mark.parametrize("case", LOCAL, ids=_case_id)
def test_roundtrip_local_models(case, tmp_path):
    _check_roundtrip(case, tmp_path)
    assert sum(b.size for x in load_caffe(*case).layers for b in x.blobs) > 1000


@pytest.mark.parametrize("case", SHARED_CASES or [("<absent>", None)], ids=_case_id)
def test_roundtrip_shared(case, tmp_path):
    if case[0] == "<absent>":
        pytest.skip("../shared not present")
    _check_roundtrip(case, tmp_path)


def test_local_copies_are_the_shared_files():
    """tests/data holds byte-identical copies (NOTE.md says so)."""
    if not MODELS.is_dir():
        pytest.skip("../shared not present")
    pairs = [("lenet/lenet_iter_10000.caffemodel", "lenet_mnist/lenet_iter_10000.caffemodel"),
             ("mtcnn/det3.caffemodel", "mtcnn/det3.caffemodel"),
             ("ultraface_slim320/slim-320.prototxt", "ultraface_slim320/slim-320.prototxt")]
    for local, shared in pairs:
        assert (DATA / local).read_bytes() == (MODELS / shared).read_bytes(), local


def test_blobs_match_protobuf_decoding():
    """The streaming decoder yields the same numbers protobuf's parser does."""
    path = DATA / "mtcnn/det3.caffemodel"
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    _, layers = read_caffemodel(str(path))
    ref = [(lp.name, [np.asarray(b.data, np.float32) for b in lp.blobs]) for lp in net.layer]
    got = [(lp.name, [rb.array.reshape(-1) for rb in blobs]) for lp, blobs in layers]
    assert [r[0] for r in ref] == [g[0] for g in got]
    for (name, rb), (_, gb) in zip(ref, got):
        assert len(rb) == len(gb), name
        for a, b in zip(rb, gb):
            assert a.tobytes() == b.tobytes(), name


def test_large_file_path_is_mapped_and_writable(tmp_path, monkeypatch):
    """Files above the mmap threshold decode to the same arrays; writing into one
    changes neither the file nor a fresh load (copy-on-write mapping)."""
    from amct.frontends.caffe import wire

    path = DATA / "lenet/lenet_iter_10000.caffemodel"
    _, small = read_caffemodel(str(path))
    monkeypatch.setattr(wire, "MMAP_THRESHOLD", 0)
    _, mapped = read_caffemodel(str(path))
    before = path.read_bytes()
    for (_, a), (_, b) in zip(small, mapped):
        for x, y in zip(a, b):
            assert x.array.tobytes() == y.array.tobytes()
    arr = next(rb.array for _, blobs in mapped for rb in blobs)
    assert arr.flags.writeable
    arr[...] = 7.0
    assert path.read_bytes() == before
    _, again = read_caffemodel(str(path))
    assert not np.all(next(rb.array for _, bl in again for rb in bl) == 7.0)


def test_prototxt_text_is_protobuf_text_format():
    g = load_caffe(str(DATA / "lenet/mnist_deploy.prototxt"))
    net = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(prototxt_text(g), net)
    assert [x.name for x in net.layer] == [x.name for x in g.layers]


def test_golden_shapes_equal_caffe():
    """infer_shapes() equals the blob shapes real Caffe reported, for every golden case."""
    if not GOLDEN.is_dir():
        pytest.skip("../shared not present")
    n = 0
    for d in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
        meta = json.loads((d / "meta.json").read_text())
        g = load_caffe(str(d / "net.prototxt"))
        got = g.infer_shapes()
        implicit = {t for x in meta["layers"] if x.get("implicit") and x["type"] == "Split"
                    for t in x["tops"]}
        for blob, shape in meta["blob_shapes"].items():
            if blob in implicit:        # Caffe's auto-inserted Split copies are not in the IR
                continue
            assert got[blob] == tuple(shape), f"{d.name}: {blob}"
            n += 1
        if meta["producer"].startswith("BVLC"):    # the OpenCV case lists its outputs only
            assert set(got) == set(meta["blob_shapes"]) - implicit, d.name
        npz = np.load(d / "io.npz")
        for key in npz.files:
            if key.startswith("blob:") and key[5:] in got:
                assert got[key[5:]] == npz[key].shape, f"{d.name}: {key}"
    assert n > 250


# ------------------------------------------------- OpenCV FP16 caffemodels
def _fp16_blob(values: np.ndarray, raw_type: int = 2) -> bytes:
    """A BlobProto as OpenCV's shrink_caffe_model writes it: shape (7), then
    raw_data_type (10, a varint) and raw_data (12, little-endian halves)."""
    from amct.frontends.caffe import wire

    dims = b"".join(wire.encode_varint(d) for d in values.shape)
    shape = b"\x0a" + wire.encode_varint(len(dims)) + dims            # BlobShape.dim, packed
    raw = values.astype("<f2").tobytes()
    return (b"\x3a" + wire.encode_varint(len(shape)) + shape
            + b"\x50" + wire.encode_varint(raw_type)
            + b"\x62" + wire.encode_varint(len(raw)) + raw)


def test_opencv_fp16_blob_is_widened_to_float32():
    from amct.frontends.caffe import wire

    # Halves chosen to be exact: 1.5, -0.25, 2048, 2**-24 (the smallest subnormal).
    vals = np.array([[1.5, -0.25], [2048.0, 2.0 ** -24]], np.float32)
    buf = _fp16_blob(vals)
    blob = wire.decode_blob(memoryview(buf), 0, len(buf), "b")
    assert blob.array.dtype == np.float32
    np.testing.assert_array_equal(blob.array, vals)
    with pytest.raises(ValueError, match="raw_data_type 3 is not supported"):
        wire.decode_blob(memoryview(_fp16_blob(vals, 3)), 0, len(_fp16_blob(vals, 3)), "b")


def test_opencv_fp16_caffemodel_loads(tmp_path):
    """A whole FP16 caffemodel (LeNet's weights written as halves) loads with
    every weight equal to the float32 weight rounded to half precision."""
    from amct.frontends.caffe import wire

    d = shared_or_skip("models", "lenet_mnist")
    model, weights = str(d / "mnist_deploy.prototxt"), str(d / "lenet_iter_10000.caffemodel")
    g = load_caffe(model, weights)
    net = caffe_pb2.NetParameter(name=g.name)
    layers = []
    for layer in g.layers:
        p = layer.to_proto(with_blobs=False)
        blobs = b"".join(b"\x3a" + wire.encode_varint(len(x)) + x
                         for x in (_fp16_blob(w) for w in layer.blobs))
        body = p.SerializeToString() + blobs
        layers.append(b"\xa2\x06" + wire.encode_varint(len(body)) + body)   # field 100
    path = tmp_path / "lenet_fp16.caffemodel"
    path.write_bytes(net.SerializeToString() + b"".join(layers))
    g16 = load_caffe(model, str(path))
    for a, b in zip(g.layers, g16.layers):
        for wa, wb in zip(a.blobs, b.blobs):
            assert wb.dtype == np.float32
            np.testing.assert_array_equal(wb, wa.astype(np.float16).astype(np.float32))
