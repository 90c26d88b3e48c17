"""Winograd F(2x2,3x3) / F(4x4,3x3) convolution vs the im2col path.

The Winograd path (amct/layers/_winograd.py) is selected by
``convolution._conv_kernel`` for float32 3x3/stride-1/dilation-1/group-1
convolutions with enough channels; ``AMCT_WINOGRAD=0`` forces im2col.  Here
both are built from the same layer and compared within the golden
'accumulate' tolerance (rtol 1e-4, atol 1e-5 * max|out|)."""
from __future__ import annotations

import numpy as np
import pytest

from amct.ir.layer import Layer
from amct.ir.registry import require_layer_def
from amct.layers import _winograd as wino
from amct.proto import caffe_pb2


def conv_layer(cin, cout, pad, bias=True, seed=0, kernel=3, stride=1, dilation=1, group=1,
               int8=False) -> Layer:
    p = caffe_pb2.LayerParameter()
    cp = p.convolution_param
    cp.num_output = cout
    cp.kernel_size.append(kernel)
    cp.pad.append(pad)
    cp.stride.append(stride)
    cp.dilation.append(dilation)
    cp.group = group
    cp.bias_term = bias
    rng = np.random.default_rng(seed)
    if int8:
        w = rng.integers(-128, 128, (cout, cin // group, kernel, kernel)).astype(np.int8)
        blobs = [w] + ([rng.integers(-5000, 5000, cout).astype(np.int32)] if bias else [])
    else:
        w = (rng.standard_normal((cout, cin // group, kernel, kernel))
             / np.sqrt(cin * kernel * kernel)).astype(np.float32)
        blobs = [w] + ([rng.standard_normal(cout).astype(np.float32)] if bias else [])
    return Layer("conv", "Convolution", ["x"], ["y"], blobs, p)


@pytest.fixture
def spy(monkeypatch):
    """Counts Winograd kernels built; every channel count qualifies."""
    calls = []
    real = wino.conv3x3

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(wino, "conv3x3", counting)
    monkeypatch.setattr(wino, "MIN_WIDTH", 0)
    return calls


def run_both(monkeypatch, layer, x, mode="", epilogue=None, bias=None):
    """(im2col output, Winograd output) of ``layer`` on ``x``."""
    d = require_layer_def(layer)
    outs = []
    for env in ("0", mode):
        monkeypatch.setenv(wino.ENV, env)
        if epilogue is None and bias is None:
            k = d.build(layer, [x.shape])
        else:
            k = d.build_with(layer, [x.shape], layer.blobs[0], bias, epilogue)
        outs.append(k([x.copy()])[0])
    return outs


def assert_close(ref, got):
    assert ref.shape == got.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))


SHAPES = [  # (n, cin, h, w, cout, pad)
    (1, 3, 5, 7, 5, 1),
    (3, 17, 9, 8, 19, 0),
    (1, 16, 6, 6, 16, 1),
    (3, 33, 13, 11, 7, 1),
    (2, 5, 3, 3, 4, 0),        # a single output pixel
    (1, 8, 4, 9, 11, 2),       # pad wider than the kernel's reach
    (1, 64, 31, 29, 70, 1),    # several chunks of tile rows
]


@pytest.mark.parametrize("mode", ["", "4"])
@pytest.mark.parametrize("n,cin,h,w,cout,pad", SHAPES)
def test_matches_im2col(monkeypatch, spy, mode, n, cin, h, w, cout, pad):
    layer = conv_layer(cin, cout, pad, seed=n * 100 + cin)
    x = np.random.default_rng(cin).standard_normal((n, cin, h, w)).astype(np.float32)
    ref, got = run_both(monkeypatch, layer, x, mode)
    assert len(spy) == 1                       # only the second build used Winograd
    assert_close(ref, got)


def test_no_bias_and_small_work_buffer(monkeypatch, spy):
    """Many chunks (image and tile-row bands) give the same result."""
    layer = conv_layer(20, 24, 1, bias=False)
    x = np.random.default_rng(1).standard_normal((3, 20, 23, 17)).astype(np.float32)
    monkeypatch.setattr(wino, "WORK_LIMIT", 1)
    monkeypatch.setattr(wino, "MIN_TILES", 3)
    ref, got = run_both(monkeypatch, layer, x)
    assert spy and got.shape == (3, 24, 23, 17)
    assert_close(ref, got)


def test_folded_bias_and_fused_activation(monkeypatch, spy):
    """The runtime optimizer's build_with hook: bias given although
    bias_term is false, and an in-place epilogue (ReLU) on every band."""
    layer = conv_layer(24, 40, 1, bias=False, seed=3)
    x = np.random.default_rng(2).standard_normal((2, 24, 15, 14)).astype(np.float32)
    bias = np.linspace(-1, 1, 40).astype(np.float32)

    def relu(block):
        np.maximum(block, 0, out=block)

    ref, got = run_both(monkeypatch, layer, x, epilogue=relu, bias=bias)
    assert len(spy) == 1
    assert (got >= 0).all() and (got == 0).any()
    assert_close(ref, got)


def test_default_selection(monkeypatch):
    """3x3/s1/d1/g1 with enough channels only; disabled by AMCT_WINOGRAD=0."""
    from amct.layers import _im2col as ic

    monkeypatch.delenv(wino.ENV, raising=False)
    f32 = np.float32
    for cin, cout in [(32, 32), (64, 64), (64, 128), (96, 128), (128, 128), (16, 4096)]:
        want = cin * cout >= wino.MIN_WIDTH * (cin + cout)
        assert wino.applies(ic.Window(3, 3, 1, 1), 1, cin, cout, f32) == want
    assert not wino.applies(ic.Window(3, 3, 1, 1), 1, 32, 32, f32)
    big = 512
    assert wino.applies(ic.Window(3, 3, 0, 0), 1, big, big, f32)
    assert not wino.applies(ic.Window(3, 3, 1, 1, 2, 2), 1, big, big, f32)
    assert not wino.applies(ic.Window(3, 3, 2, 2, 1, 1, 2, 2), 1, big, big, f32)
    assert not wino.applies(ic.Window(3, 3, 1, 1), 2, big, big, f32)
    assert not wino.applies(ic.Window(5, 5, 2, 2), 1, big, big, f32)
    assert not wino.applies(ic.Window(3, 3, 1, 1), 1, big, big, np.float64)
    monkeypatch.setenv(wino.ENV, "0")
    assert not wino.applies(ic.Window(3, 3, 1, 1), 1, big, big, f32)


@pytest.mark.parametrize("kw", [dict(stride=2), dict(dilation=2, pad=2), dict(group=2),
                                dict(kernel=5, pad=2)])
def test_other_convs_keep_im2col(monkeypatch, spy, kw):
    kw = {"pad": 1, **kw}
    layer = conv_layer(8, 8, **kw)
    x = np.random.default_rng(0).standard_normal((1, 8, 9, 9)).astype(np.float32)
    monkeypatch.delenv(wino.ENV, raising=False)
    require_layer_def(layer).build(layer, [x.shape])([x])
    assert spy == []


def test_integer_path_never_uses_winograd(monkeypatch, spy):
    """Deploy (int8 weights) convs stay on the exact float64 im2col path."""
    from test_layers_compute import conv_reference

    monkeypatch.delenv(wino.ENV, raising=False)
    layer = conv_layer(32, 32, 1, int8=True)
    x = np.random.default_rng(0).integers(-128, 128, (2, 32, 10, 10)).astype(np.int16)
    out = require_layer_def(layer).build(layer, [x.shape])([x])[0]
    assert spy == []
    ref = conv_reference(x.astype(np.int64), layer.blobs[0].astype(np.int64),
                         layer.blobs[1].astype(np.int64), (1, 1), (1, 1), (1, 1), 1)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref)


def test_filter_transform_is_exact_on_a_delta():
    """G g G^T of a centre delta: the middle column/row of G, outer product."""
    g = np.zeros((1, 1, 3, 3), np.float32)
    g[0, 0, 1, 1] = 1
    u = wino.filter_transform(g, 2).reshape(4, 4)
    col = np.array([0, 0.5, -0.5, 0])
    np.testing.assert_array_equal(u, np.outer(col, col).astype(np.float32))


@pytest.mark.parametrize("shape,min_tiles", [((3, 24, 40, 36), 64), ((1, 128, 16, 16), None)])
def test_threads_do_not_change_results(monkeypatch, spy, shape, min_tiles):
    """Chunks spread over the pool (21 chunks of 3 tile rows) or one chunk's
    16 GEMMs split over it give bit-identical results with 1 and 2 threads."""
    from amct.layers import _im2col as ic

    monkeypatch.setattr(ic, "_ACTIVE", None)
    monkeypatch.delenv(wino.ENV, raising=False)
    if min_tiles:
        monkeypatch.setattr(wino, "WORK_LIMIT", 1)
        monkeypatch.setattr(wino, "MIN_TILES", min_tiles)
    layer = conv_layer(shape[1], shape[1], 1, seed=5)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    outs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("AMCT_NUM_THREADS", threads)
        outs.append(require_layer_def(layer).build(layer, [x.shape])([x])[0])
    monkeypatch.setenv(wino.ENV, "0")
    ref = require_layer_def(layer).build(layer, [x.shape])([x])[0]
    assert len(spy) == 2
    np.testing.assert_array_equal(outs[0], outs[1])
    assert_close(ref, outs[0])
