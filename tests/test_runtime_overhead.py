"""The runtime's per-pass fast path, its thread choice, and determinism
across thread counts (docs/runtime.md "Performance")."""
from __future__ import annotations

import numpy as np
import pytest

from amct.frontends.caffe import load_caffe
from amct.ir.random import random_weights
from amct.layers import _im2col as ic
from amct.runtime import compile
from amct.runtime.executor import capture_inputs
from tests.conftest import shared_or_skip


def _lenet():
    d = shared_or_skip("models", "lenet_mnist")
    return load_caffe(str(d / "mnist_deploy.prototxt"), str(d / "lenet_iter_10000.caffemodel"))


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture
def lenet():
    g = _lenet()
    return g, compile(g), g.inputs[0]


def test_fast_path_matches_general_path(lenet):
    g, prog, name = lenet
    x = _x(prog.input_shapes[name])
    outs = list(g.outputs)
    fast = prog.run({name: x})
    # An observer that watches nothing forces the general path and changes
    # nothing else (no layer is watched, so the same layers fold).
    general = prog.run({name: x}, observers=[(lambda *a: None, None, [])])
    via_forward = prog.forward({name: x}, outputs=outs)
    for k in outs:
        assert np.array_equal(fast[k], general[k])
        assert np.array_equal(fast[k], via_forward[k])
    kept = prog.run({name: x}, keep=True)
    assert set(kept) >= set(g.dataflow().final)
    assert np.array_equal(kept[outs[0]], fast[outs[0]])


def test_results_stay_valid_across_passes(lenet):
    g, prog, name = lenet
    x1, x2 = _x(prog.input_shapes[name], 1), _x(prog.input_shapes[name], 2)
    out = g.outputs[0]
    y1 = prog.run({name: x1}, keep=["conv1", "ip1"])
    snap = {k: v.copy() for k, v in y1.items()}
    for _ in range(3):
        prog.run({name: x2}, keep=["conv1", "ip1"])
    for k, v in snap.items():
        assert np.array_equal(y1[k], v), k
    assert not np.array_equal(prog.run({name: x2})[out], snap[out])


def test_fast_path_handles_dtype_shape_and_taps(lenet):
    g, prog, name = lenet
    shape = prog.input_shapes[name]
    x = _x(shape)
    out = g.outputs[0]
    y = prog.run({name: x})[out]
    # float64 input: cast, same result
    assert np.array_equal(prog.run({name: x.astype(np.float64)})[out], y)
    # another batch size: re-planned, same per-image result
    xb = np.concatenate([x, x, x])
    yb = prog.run({name: xb})[out]
    assert yb.shape[0] == 3 * shape[0]
    np.testing.assert_allclose(yb[:shape[0]], y, rtol=1e-5, atol=1e-6)
    with capture_inputs() as seen:
        prog.run({name: x})
    assert len(seen) == 1 and np.array_equal(seen[0][name], x)


def test_graph_edit_is_seen_by_fast_path(lenet):
    g, prog, name = lenet
    x = _x(prog.input_shapes[name])
    out = g.outputs[0]
    before = prog.run({name: x})[out]
    relu = next(layer for layer in g.layers if layer.type == "ReLU")
    g.bypass(relu)
    after = prog.run({name: x})[out]
    ref = compile(g).run({name: x})[out]
    assert np.array_equal(after, ref)
    assert not np.array_equal(after, before)


def test_small_net_work_stays_on_the_calling_thread(lenet, monkeypatch):
    g, prog, name = lenet
    monkeypatch.setenv("AMCT_NUM_THREADS", "2")
    prog = compile(g)               # kernels plan their splits at build time
    handed = []
    real = ic.parallel_map

    def spy(fn, items):
        items = list(items)
        if len(items) > 1 and ic.active_threads() > 1:
            handed.append(len(items))
        return real(fn, items)

    monkeypatch.setattr(ic, "parallel_map", spy)
    prog.run({name: _x(prog.input_shapes[name])})
    assert handed == []


def test_thread_choice_from_cpu_time(monkeypatch):
    monkeypatch.delenv("AMCT_NUM_THREADS", raising=False)
    monkeypatch.setattr(ic, "_CPUS", 2)
    samples = []
    monkeypatch.setattr(ic, "_cpu_sample", lambda: samples.pop(0))
    # The instantaneous count would see our own pool thread; it is only the
    # fallback before the first CPU-time window.
    monkeypatch.setattr(ic, "_runnable_others", lambda: 0)
    monkeypatch.setattr(ic, "_load", {"t": -1.0, "sample": None, "threads": None})
    monkeypatch.setattr(ic, "_LOAD_TTL", 0.0)
    samples.append((100.0, 50.0, 10.0))
    assert ic.adapt_threads() == 2                      # first call: fallback
    # 1 s later: 1.3 CPU-s busy system-wide, 0.9 of it ours -> others 0.4 core
    samples.append((101.0, 51.3, 10.9))
    assert ic.adapt_threads() == 2
    # next second: 1.8 busy, 0.9 ours -> others 0.9 core: leave it to them
    samples.append((102.0, 53.1, 11.8))
    assert ic.adapt_threads() == 1
    monkeypatch.setenv("AMCT_NUM_THREADS", "3")
    assert ic.adapt_threads() == 3                      # explicit: no load check


def test_outputs_do_not_depend_on_thread_count(monkeypatch):
    proto = shared_or_skip("models", "prototxt", "resnet50.prototxt")
    g = load_caffe(str(proto))
    # A global average pool so a small input fits (pool5 is a fixed 7x7
    # window); 128x128 at batch 2 still splits the larger GEMMs.
    pool5 = g.layer("pool5").params.pooling_param
    pool5.ClearField("kernel_size")
    pool5.global_pooling = True
    shapes = {g.inputs[0]: (2, 3, 128, 128)}
    random_weights(g, 11, input_shapes=shapes)
    x = _x(shapes[g.inputs[0]], 3)
    last = g.layers[-1].bottoms[0]
    ys = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("AMCT_NUM_THREADS", n)
        prog = compile(g, shapes)
        ys[n] = prog.run({g.inputs[0]: x}, outputs=[last, "res3a"])
    for n in ("2", "3"):
        for k in ys["1"]:
            assert np.array_equal(ys[n][k], ys["1"][k]), (n, k)
