"""The pycaffe-compatible ``Net``: blobs, params, reshape, partial forward,
forward_all, save, and a pycaffe-style script with only the import changed."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import GOLDEN, shared_or_skip

import amct.runtime as caffe
from amct.errors import DataError, GraphError
from amct.frontends.caffe import load_caffe


@pytest.fixture(scope="module")
def lenet_files():
    d = shared_or_skip("models", "lenet_mnist")
    return str(d / "mnist_deploy.prototxt"), str(d / "lenet_iter_10000.caffemodel")


@pytest.fixture(scope="module")
def digits():
    """The first 16 MNIST test images (/256) and their labels, from the golden case."""
    io = np.load(shared_or_skip("golden", "real_lenet") / "io.npz")
    return io["in:data"], io["label"], io["blob:loss"]


@pytest.fixture
def net(lenet_files):
    return caffe.Net(*lenet_files, caffe.TEST)


def test_structure(net):
    assert net.inputs == ["data"] and net.outputs == ["loss"]
    assert list(net.blobs) == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "loss"]
    assert net._layer_names == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1",
                                "ip2", "loss"]
    assert [x.type for x in net.layers][:3] == ["Input", "Convolution", "Pooling"]
    assert list(net.params) == ["conv1", "conv2", "ip1", "ip2"]
    assert [p.data.shape for p in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    b = net.blobs["conv1"]
    assert (b.shape, b.count, b.num, b.channels, b.height, b.width) == \
        ((1, 20, 24, 24), 20 * 24 * 24, 1, 20, 24, 24)
    assert net.blobs["ip2"].height == 1 and net.blobs["ip2"].width == 1    # legacy axes count as 1
    assert net.blobs["data"].diff.shape == (1, 1, 28, 28) and not net.blobs["data"].diff.any()
    assert net.top_names["relu1"] == ["ip1"] and net.bottom_names["ip2"] == ["ip1"]


def test_forward_via_blob_data_and_kwargs(net, digits):
    x, labels, ref = digits
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    out = net.forward()
    assert list(out) == ["loss"]
    np.testing.assert_allclose(out["loss"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["loss"].argmax(1), labels)
    # Every blob holds its value after the pass; the ReLU is in place on ip1.
    assert net.blobs["ip1"].data.min() >= 0
    out2 = net.forward(data=x[:3])                 # another batch size: reshaped automatically
    np.testing.assert_allclose(out2["loss"], ref[:3], rtol=1e-4, atol=1e-5)
    assert net.blobs["conv1"].shape == (3, 20, 24, 24)
    assert out["loss"].shape == (16, 10), "earlier results are not overwritten"
    with pytest.raises(DataError, match="'nope' is not a net input"):
        net.forward(nope=x)
    with pytest.raises(DataError, match="'data' has shape \\(28, 28\\)"):
        net.forward(data=x[0, 0])


def test_param_writes_change_the_next_forward(net, digits):
    x = digits[0][:2]
    ref = net.forward(data=x)["loss"].copy()
    w = net.params["ip2"][0].data
    saved = w.copy()
    w[...] = 0
    net.params["ip2"][1].data[...] = np.arange(10, dtype=np.float32)
    out = net.forward(data=x)["loss"]
    expect = np.exp(np.arange(10)) / np.exp(np.arange(10)).sum()
    np.testing.assert_allclose(out, np.tile(expect, (2, 1)), rtol=1e-5)
    # Writing through a reference kept from before the last forward also counts.
    w[...] = saved
    net.params["ip2"][1].data[...] = net.graph.layer("ip2").blobs[1] * 0
    out = net.forward(data=x)["loss"]
    assert not np.allclose(out, expect)
    assert net.layers[net._layer_names.index("ip2")].blobs[0].data is net.params["ip2"][0].data


def test_reshape_propagates(net):
    net.blobs["data"].reshape(4, 1, 28, 28)
    net.reshape()
    assert net.blobs["conv1"].shape == (4, 20, 24, 24)
    assert net.blobs["loss"].data.shape == (4, 10)
    assert net.forward()["loss"].shape == (4, 10)


def test_forward_start_end(net, digits):
    x = digits[0][:2]
    full = net.forward(data=x)["loss"].copy()
    pool1 = net.blobs["pool1"].data.copy()
    part = net.forward(end="pool1")
    assert list(part) == ["pool1"]
    np.testing.assert_array_equal(part["pool1"], pool1)
    net.blobs["conv2"].data[...] = 0                       # overwritten by the partial run
    rest = net.forward(start="conv2", blobs=["ip1"])
    assert set(rest) == {"loss", "ip1"}
    np.testing.assert_allclose(rest["loss"], full, rtol=1e-6)
    # The second half reads pool1 as it is now: change it and the result changes.
    net.blobs["pool1"].data[...] = 0
    assert not np.allclose(net.forward(start="conv2")["loss"], full)
    with pytest.raises(GraphError):
        net.forward(start="nope")


def test_forward_all_batches_and_pads(net, digits):
    x, labels, ref = digits
    net.blobs["data"].reshape(5, 1, 28, 28)
    out = net.forward_all(data=x[:12], blobs=["ip1"])
    assert out["loss"].shape == (12, 10) and out["ip1"].shape == (12, 500)
    np.testing.assert_allclose(out["loss"], ref[:12], rtol=1e-4, atol=1e-5)


def test_inplace_blob_holds_final_value():
    d = shared_or_skip("golden", "chain_resblock")
    io = np.load(d / "io.npz")
    net = caffe.Net(str(d / "net.prototxt"), caffe.TEST, weights=str(d / "weights.caffemodel"))
    net.forward(data=io["in:data"])
    np.testing.assert_allclose(net.blobs["conv1"].data, io["blob:conv1"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["conv1"].data, io["layer:relu1:top0"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(io["layer:bn1:top0"], io["blob:conv1"], atol=1e-3)


def test_observer_through_net(net, digits):
    seen = {}
    net.add_observer(lambda layer, j, blob, vid, arr: seen.setdefault(vid, arr.copy()),
                     layers=["ip1", "relu1"])
    net.forward(data=digits[0][:2])
    assert sorted(seen) == ["ip1", "ip1@1"]
    np.testing.assert_array_equal(seen["ip1@1"], np.maximum(seen["ip1"], 0))


def test_save_and_reload(net, digits, tmp_path, lenet_files):
    x = digits[0][:2]
    net.params["conv1"][1].data[...] += 0.5
    ref = net.forward(data=x)["loss"].copy()
    path = tmp_path / "saved.caffemodel"
    net.save(str(path))
    again = caffe.Net(lenet_files[0], str(path), caffe.TEST)
    # Same weights bit for bit; BLAS may sum in another order for other buffer alignments.
    np.testing.assert_allclose(again.forward(data=x)["loss"], ref, rtol=1e-5, atol=1e-7)
    fresh = caffe.Net(*lenet_files, caffe.TEST)
    assert not np.allclose(fresh.forward(data=x)["loss"], ref, rtol=1e-5, atol=1e-7)
    fresh.copy_from(str(path))                     # replaces the weights the kernels use
    np.testing.assert_allclose(fresh.forward(data=x)["loss"], ref, rtol=1e-5, atol=1e-7)


def test_from_graph_shares_weights(lenet_files, digits):
    g = load_caffe(*lenet_files)
    net = caffe.Net.from_graph(g)
    net.params["ip2"][1].data[...] = 7
    assert (g.layer("ip2").blobs[1] == 7).all()


def test_phase_and_modes(lenet_files, caplog):
    with pytest.raises(caffe.UnsupportedPhaseError, match="TEST"):
        caffe.Net(lenet_files[0], lenet_files[1], caffe.TRAIN)
    with pytest.raises(DataError, match="once"):
        caffe.Net(lenet_files[0], lenet_files[1], weights=lenet_files[1])
    caffe.set_mode_cpu()
    caffe.set_device(0)
    with caplog.at_level(logging.WARNING, logger="amct.runtime"):
        caffe.set_mode_gpu()
    assert "CPU" in caplog.text


def test_weightless_net_with_phase_positional():
    d = shared_or_skip("golden", "layer_relu")
    io = np.load(d / "io.npz")
    net = caffe.Net(str(d / "net.prototxt"), caffe.TEST)
    out = net.forward(data=io["in:data"])
    np.testing.assert_array_equal(out["out"], io["blob:out"])


def test_pycaffe_style_script(lenet_files):
    """A classification script as written for pycaffe; only the import differs."""
    samples = shared_or_skip("models", "lenet_mnist", "samples")
    files = sorted(samples.glob("img_*.png"))
    assert files
    caffe.set_mode_cpu()
    net = caffe.Net(lenet_files[0], lenet_files[1], caffe.TEST)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    net.blobs["data"].reshape(len(files), 1, 28, 28)
    for i, f in enumerate(files):
        img = caffe.io.load_image(str(f), color=False)
        assert img.shape == (28, 28, 1) and img.max() <= 1.0
        net.blobs["data"].data[i] = transformer.preprocess("data", img)
    out = net.forward()
    predicted = out["loss"].argmax(1)
    labels = [int(f.stem.split("_")[1]) for f in files]
    assert predicted.tolist() == labels
