"""The runtime's plan optimizer (amct/runtime/optimize.py): folding of
BatchNorm/Scale/Bias and activations into Convolution/InnerProduct, and
in-place execution.

Tolerance: a folded chain computes ``conv(x, W*a) + (b*a + c)`` instead of
``(conv(x, W) + b) * a + c``; in float32 that differs by rounding only, so
optimized and plain plans must agree within rtol 1e-4 and an absolute
1e-4 of the output's magnitude (random-weight nets reach |y| ~ 1e5).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from amct.frontends.caffe import load_caffe
from amct.ir.random import random_weights
from amct.runtime import Net, compile

from conftest import shared_or_skip

RTOL = 1e-4


def _close(a: np.ndarray, b: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=RTOL * scale)


def _fused(prog) -> list:
    """Fused steps of the schedules the program has run."""
    return [s for sch in prog._plan.schedules.values() for s in sch.steps if s.fused]


def _golden(case: str):
    d = shared_or_skip("golden", case)
    g = load_caffe(str(d / "net.prototxt"), str(d / "weights.caffemodel"))
    io = np.load(d / "io.npz")
    meta = json.loads((d / "meta.json").read_text())
    feeds = {k[3:]: io[k] for k in io.files if k.startswith("in:")}
    return g, feeds, io, meta


def _snapshot(g):
    return [(x.name, x.type, tuple(x.bottoms), tuple(x.tops), x.params.SerializeToString(),
             [b.copy() for b in x.blobs], [id(b) for b in x.blobs]) for x in g.layers]


def _assert_same(g, snap):
    assert len(g.layers) == len(snap)
    for x, (name, typ, bots, tops, par, blobs, ids) in zip(g.layers, snap):
        assert (x.name, x.type, tuple(x.bottoms), tuple(x.tops)) == (name, typ, bots, tops)
        assert x.params.SerializeToString() == par
        assert [id(b) for b in x.blobs] == ids
        for b, c in zip(x.blobs, blobs):
            np.testing.assert_array_equal(b, c)


REAL = ["real_lenet", "real_mtcnn_det1", "real_mtcnn_det2", "real_mtcnn_det3", "real_mtcnn_det4",
        "real_cifar10_quick", "real_ultraface_slim320", "chain_resblock",
        "chain_conv_bn_scale_fc", "chain_inception"]


@pytest.mark.parametrize("case", REAL)
def test_optimized_matches_plain_and_caffe(case):
    g, feeds, io, meta = _golden(case)
    snap = _snapshot(g)
    fast, plain = compile(g), compile(g, optimize=False)
    outs = list(g.outputs)
    yf = fast.run(feeds, outputs=outs)
    yp = plain.run(feeds, outputs=outs)
    tol = meta["tolerance"]
    for k in outs:
        _close(yp[k], yf[k])
        if f"blob:{k}" in io.files:      # and still Caffe's numbers
            np.testing.assert_allclose(yf[k], io[f"blob:{k}"], rtol=tol["rtol"], atol=tol["atol"])
    assert not _fused(plain)
    _assert_same(g, snap)
    for k, v in feeds.items():           # the caller's inputs are never written
        np.testing.assert_array_equal(v, io[f"in:{k}"])


def test_resblock_is_folded_and_runs_in_place():
    g, feeds, _, _ = _golden("chain_resblock")
    prog = compile(g)
    prog.run(feeds)
    fused = _fused(prog)
    assert [[x.type for x in s.fused] for s in fused] == [
        ["Convolution", "BatchNorm", "Scale", "ReLU"], ["Convolution", "BatchNorm", "Scale"]]
    sched = next(iter(prog._plan.schedules.values()))
    # Eltwise writes into the dead conv2 chain output, the last ReLU into Eltwise's.
    reused = [s.layer.type for s, r in zip(sched.steps, sched.reuse) if r is not None]
    assert reused == ["Eltwise", "ReLU"]


def test_resnet50_random_weights():
    proto = shared_or_skip("models", "prototxt", "resnet50.prototxt")
    g = load_caffe(str(proto))
    shapes = {g.inputs[0]: (1, 3, 224, 224)}     # pool5 is a fixed 7x7 window
    random_weights(g, 7, input_shapes=shapes)
    snap = _snapshot(g)
    x = np.random.default_rng(1).standard_normal(shapes[g.inputs[0]]).astype(np.float32)
    last = g.layers[-1].bottoms[0]                       # pre-softmax logits
    fast = compile(g, shapes)
    yf = fast.run({g.inputs[0]: x}, outputs=[last])[last]
    yp = compile(g, shapes, optimize=False).run({g.inputs[0]: x}, outputs=[last])[last]
    _close(yp, yf)
    assert len(_fused(fast)) == 53                       # every conv + BN + Scale (+ ReLU)
    _assert_same(g, snap)


def test_observers_see_folded_layers_they_ask_for():
    g, feeds, io, meta = _golden("chain_resblock")
    layers = {x.name: x for x in g.layers}
    bn1 = next(x for x in g.layers if x.type == "BatchNorm")
    plain_seen, fast_seen = {}, {}

    def grab(store):
        def fn(layer, j, blob, vid, a):
            store[vid] = a.copy()
        return fn

    ref = compile(g, optimize=False)
    ref.run(feeds, observers=[grab(plain_seen)])         # every value
    prog = compile(g)
    out = prog.run(feeds, observers=[(grab(fast_seen), None, [bn1.name])])
    (vid,) = fast_seen
    assert layers[bn1.name] is bn1 and vid == g.output_values(bn1)[0]
    # The watched layer is not folded (nor what follows it in its chain), so
    # it sees exactly the plain plan's value; the other chain still folds.
    np.testing.assert_array_equal(plain_seen[vid], fast_seen[vid])
    chains = [[x.type for x in s.fused] for s in _fused(prog)]
    assert chains == [["Convolution", "BatchNorm", "Scale"]]
    for k in g.outputs:
        np.testing.assert_allclose(out[k], io[f"blob:{k}"], rtol=meta["tolerance"]["rtol"],
                                   atol=meta["tolerance"]["atol"])
    # An observer of everything (the golden suite) runs the plain plan.
    seen = {}
    prog.run(feeds, observers=[grab(seen)])
    assert set(seen) == set(plain_seen)
    for k in seen:
        np.testing.assert_array_equal(seen[k], plain_seen[k])


def test_kept_values_and_partial_runs_disable_folding():
    g, feeds, _, _ = _golden("chain_resblock")
    plain = compile(g, optimize=False)
    prog = compile(g)
    conv = next(x for x in g.layers if x.type == "Convolution")
    bn = next(x for x in g.layers if x.type == "BatchNorm")
    # "conv1" names the blob's final value (the ReLU's); the BN's output is
    # asked for by value id: that chain then runs unfused.
    want = [g.output_values(conv)[0], g.output_values(bn)[0]]
    a = prog.forward(feeds, keep=want)
    b = plain.forward(feeds, keep=want)
    for k in want:
        np.testing.assert_array_equal(a[k], b[k])
    # keep=True returns every value, each as the plain plan computes it.
    ka = prog.forward(feeds, keep=True)
    kb = plain.forward(feeds, keep=True)
    assert set(ka) == set(kb)
    for k in kb:
        np.testing.assert_array_equal(ka[k], kb[k])
    # A range ending inside a chain runs it unfused.
    pa = prog.forward(feeds, end=bn.name)
    pb = plain.forward(feeds, end=bn.name)
    for k in pb:
        np.testing.assert_array_equal(pa[k], pb[k])


INPLACE_NET = """
name: "inplace_hazards"
input: "data"
input_shape { dim: 2 dim: 3 dim: 5 dim: 5 }
layer { name: "relu0" type: "ReLU" bottom: "data" top: "r0" }
layer { name: "conv" type: "Convolution" bottom: "r0" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "flat" type: "Flatten" bottom: "c" top: "cf" }
layer { name: "relu1" type: "ReLU" bottom: "c" top: "r1" }
layer { name: "sig" type: "Sigmoid" bottom: "c" top: "s" }
layer { name: "bn" type: "BatchNorm" bottom: "r1" top: "b" }
layer { name: "sum" type: "Eltwise" bottom: "b" bottom: "b" top: "bb" }
layer { name: "sum3" type: "Eltwise" bottom: "bb" bottom: "s" bottom: "bb" top: "e3" }
layer { name: "relu2" type: "ReLU" bottom: "e3" top: "e3" }
layer { name: "relu3" type: "ReLU" bottom: "e3" top: "r3" }
layer { name: "flat2" type: "Flatten" bottom: "e3" top: "ef" }
layer { name: "cat" type: "Concat" bottom: "cf" bottom: "ef" top: "out" }
layer { name: "cat2" type: "Concat" bottom: "r3" bottom: "r3" top: "out2" }
"""


def test_in_place_never_corrupts_values_read_later(tmp_path):
    """Values read by several layers, views (Flatten) of a value an in-place
    layer reads last, an input fed by the caller, the same value twice in one
    Eltwise: every output equals the plain plan's."""
    p = tmp_path / "net.prototxt"
    p.write_text(INPLACE_NET)
    g = load_caffe(str(p))
    random_weights(g, 3)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    x0 = x.copy()
    fast, plain = compile(g), compile(g, optimize=False)
    for _ in range(2):                                    # cached schedule, second pass
        yf = fast.run({"data": x}, outputs=["out", "out2", "cf"])
        yp = plain.run({"data": x}, outputs=["out", "out2", "cf"])
        for k in yp:
            np.testing.assert_array_equal(yf[k], yp[k])
    np.testing.assert_array_equal(x, x0)
    sched = next(iter(fast._plan.schedules.values()))
    reused = {s.layer.name for s, r in zip(sched.steps, sched.reuse) if r is not None}
    # relu0 reads the caller's array; relu1/sig read c while Flatten's view of
    # it is alive; relu3 reads e3 which flat2 still views: none may write.
    assert not reused & {"relu0", "relu1", "sig", "relu3"}
    # sum reads b twice, sum3 reads bb twice: in place only on a sole reference.
    assert "sum" not in reused and "sum3" not in reused
    assert {"bn", "relu2"} <= reused


def test_net_param_edits_reach_folded_kernels():
    d = shared_or_skip("golden", "chain_resblock")
    net = Net(str(d / "net.prototxt"), str(d / "weights.caffemodel"))
    feeds = {k[3:]: v for k, v in np.load(d / "io.npz").items() if k.startswith("in:")}
    out = net.outputs[0]
    before = net.forward(**feeds)[out].copy()
    scale = next(x for x in net.program.graph.layers if x.type == "Scale")
    net.params[scale.name][0].data[...] *= 2
    after = net.forward(**feeds)[out]
    ref = compile(net.program.graph, optimize=False).run(feeds)[out]
    _close(ref, after)
    assert not np.allclose(before, after)


FOLD_NET = """
name: "fold_kinds"
input: "data"
input_shape { dim: 2 dim: 4 dim: 6 dim: 5 }
layer { name: "dec" type: "Deconvolution" bottom: "data" top: "d"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 group: 2 bias_term: false } }
layer { name: "dbn" type: "BatchNorm" bottom: "d" top: "d" }
layer { name: "dsc" type: "Scale" bottom: "d" top: "d" scale_param { bias_term: true } }
layer { name: "drelu" type: "ReLU" bottom: "d" top: "d" relu_param { negative_slope: 0.1 } }
layer { name: "conv" type: "Convolution" bottom: "d" top: "c"
        convolution_param { num_output: 5 kernel_size: 3 group: 1 } }
layer { name: "cbias" type: "Bias" bottom: "c" top: "cb" }
layer { name: "cprelu" type: "PReLU" bottom: "cb" top: "cp" }
layer { name: "ip" type: "InnerProduct" bottom: "cp" top: "i"
        inner_product_param { num_output: 7 transpose: true } }
layer { name: "ibn" type: "BatchNorm" bottom: "i" top: "ib" }
layer { name: "isc" type: "Scale" bottom: "ib" top: "is" scale_param { bias_term: false } }
layer { name: "isig" type: "Sigmoid" bottom: "is" top: "out" }
"""


def test_fold_deconvolution_groups_bias_prelu_and_transposed_ip(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_text(FOLD_NET)
    g = load_caffe(str(p))
    random_weights(g, 11)
    snap = _snapshot(g)
    x = np.random.default_rng(2).standard_normal((2, 4, 6, 5)).astype(np.float32)
    fast, plain = compile(g), compile(g, optimize=False)
    out = fast.run({"data": x})["out"]
    _close(plain.run({"data": x})["out"], out)
    assert [[x.type for x in s.fused] for s in _fused(fast)] == [
        ["Deconvolution", "BatchNorm", "Scale", "ReLU"], ["Convolution", "Bias", "PReLU"],
        ["InnerProduct", "BatchNorm", "Scale"]]           # "out" is returned: not folded
    _assert_same(g, snap)
    # The same at batch 1 (other chunking in the kernels).
    x1 = x[:1]
    _close(plain.run({"data": x1})["out"], fast.run({"data": x1})["out"])
