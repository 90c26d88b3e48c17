"""LeNet on the full MNIST test set: the trained model's known 99.04 % top-1."""
from __future__ import annotations

import gzip

import numpy as np

from conftest import shared_or_skip

from amct.runtime import Net


def _read_idx(path) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 <dtype 0x08> <ndim>, then
    big-endian int32 dims, then the unsigned bytes."""
    raw = gzip.open(path, "rb").read()
    assert raw[:2] == b"\0\0" and raw[2] == 0x08, f"{path}: not an unsigned-byte IDX file"
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", ndim, 4).astype(int)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    assert data.size == int(np.prod(dims)), f"{path}: truncated"
    return data.reshape(dims)


def test_lenet_mnist_top1_is_9904_of_10000() -> None:
    model = shared_or_skip("models", "lenet_mnist")
    mnist = shared_or_skip("models", "mnist")
    images = _read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)

    net = Net(str(model / "mnist_deploy.prototxt"), str(model / "lenet_iter_10000.caffemodel"))
    out_name = net.outputs[0]
    batch = 500
    correct = 0
    for i in range(0, len(images), batch):
        x = (images[i:i + batch].astype(np.float32) / 256.0)[:, None]
        prob = net.forward(data=x)[out_name]
        assert prob.shape == (len(x), 10)
        correct += int((prob.argmax(axis=1) == labels[i:i + batch]).sum())
    assert correct == 9904
