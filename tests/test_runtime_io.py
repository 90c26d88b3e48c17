"""``amct.runtime.io``: pycaffe's image loading and Transformer semantics."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import amct.runtime as caffe
from amct.errors import DataError


@pytest.fixture
def rgb_png(tmp_path):
    px = np.zeros((4, 6, 3), np.uint8)
    px[..., 0] = 255                       # red image
    px[1, 2] = (0, 51, 255)
    path = tmp_path / "rgb.png"
    Image.fromarray(px).save(path)
    return str(path), px


def test_load_image_color_and_grey(rgb_png, tmp_path):
    path, px = rgb_png
    img = caffe.io.load_image(path)
    assert img.shape == (4, 6, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, px / 255.0, rtol=1e-6)            # HxWxC, RGB, [0, 1]
    grey = caffe.io.load_image(path, color=False)
    assert grey.shape == (4, 6, 1)
    np.testing.assert_allclose(grey[0, 0, 0], 0.2125, rtol=1e-5)      # skimage rgb2gray weights
    # A grey file loaded in colour is tiled to three channels; RGBA drops alpha.
    Image.fromarray(np.full((2, 2), 51, np.uint8)).save(tmp_path / "g.png")
    np.testing.assert_allclose(caffe.io.load_image(str(tmp_path / "g.png")), np.full((2, 2, 3), 0.2))
    Image.fromarray(np.full((2, 2, 4), 102, np.uint8), "RGBA").save(tmp_path / "a.png")
    assert caffe.io.load_image(str(tmp_path / "a.png")).shape == (2, 2, 3)
    with pytest.raises(DataError, match="nope.png"):
        caffe.io.load_image(str(tmp_path / "nope.png"))


def test_transformer_preprocess_order_and_deprocess():
    t = caffe.io.Transformer({"data": (1, 3, 2, 3)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10, 20, 30], np.float32))
    t.set_input_scale("data", 0.5)
    img = np.random.default_rng(1).random((2, 3, 3)).astype(np.float32)
    keep = img.copy()
    x = t.preprocess("data", img)
    expect = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_allclose(x, expect, rtol=1e-5)
    np.testing.assert_array_equal(img, keep)                 # the caller's image is untouched
    np.testing.assert_allclose(t.deprocess("data", x), img, rtol=1e-5, atol=1e-6)


def test_transformer_resizes_and_checks():
    t = caffe.io.Transformer({"data": (1, 1, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    x = t.preprocess("data", np.ones((2, 2, 1), np.float32))
    assert x.shape == (1, 4, 4) and np.allclose(x, 1)
    with pytest.raises(DataError, match="not one of the net inputs"):
        t.preprocess("img", np.ones((4, 4, 1)))
    with pytest.raises(DataError, match="Transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(DataError, match="Channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(DataError, match="Mean channels"):
        t.set_mean("data", np.zeros(3))
    with pytest.raises(DataError, match="Mean shape incompatible"):
        t.set_mean("data", np.zeros((3, 3)))
    t.set_mean("data", np.zeros((4, 4)))                      # (H, W) means one channel


def test_resize_image_bilinear():
    im = np.array([[0, 1], [2, 3]], np.float32)[:, :, None]
    up = caffe.io.resize_image(im, (4, 4))
    # Pixel-centre sampling: the first output row sits at input row -0.25 -> clamped to 0.
    np.testing.assert_allclose(up[:, 0, 0], [0, 0.5, 1.5, 2])
    np.testing.assert_allclose(up[0, :, 0], [0, 0.25, 0.75, 1])
    down = caffe.io.resize_image(up, (2, 2))
    assert down.shape == (2, 2, 1)
    np.testing.assert_array_equal(caffe.io.resize_image(im, (2, 2), 0), im)


def test_blobproto_roundtrip():
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    blob = caffe.io.array_to_blobproto(a)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), a)
    p = caffe.proto.caffe_pb2.BlobProto()
    p.ParseFromString(blob.SerializeToString())
    assert caffe.io.blobproto_to_array(p).shape == (1, 2, 3)
