"""The executor: plan, value ids for in-place layers, freeing, observers,
partial execution, input checks and re-compilation.

Uses throwaway layer types registered here (names start with "Test") so the
tests do not depend on the built-in kernels.
"""
from __future__ import annotations

import weakref

import numpy as np
import pytest

from amct.errors import DataError, GraphError, UnsupportedLayerError
from amct.ir import Graph, Layer, LayerDef, register_function_layer, register_layer, unregister_layer
from amct.runtime import ExecutionError, Program, compile, run

BUILDS: list[tuple[str, tuple]] = []   # (layer name, input shapes) per build call


@pytest.fixture(autouse=True)
def test_types():
    register_function_layer("TestRelu", lambda layer, s: [s[0]],
                            lambda layer, xs: [np.maximum(xs[0], 0)], replace=True)
    register_function_layer("TestAdd", lambda layer, s: [s[0]],
                            lambda layer, xs: [xs[0] + xs[1]], replace=True)
    register_function_layer("TestSink", lambda layer, s: [],
                            lambda layer, xs: SINK.append(xs[0].copy()) or [], replace=True)

    @register_layer(replace=True)
    class TestScaleDef(LayerDef):
        """out = x * w (w its one learned blob), build-time state: the weight copy."""
        type = "TestScale"
        min_blobs = 1

        def infer_shapes(self, layer, in_shapes):
            return [in_shapes[0]]

        def build(self, layer, in_shapes):
            BUILDS.append((layer.name, tuple(in_shapes)))
            w = np.array(layer.blobs[0], dtype=np.float32)    # copied: rebuild needed on change
            return lambda xs: [xs[0] * w]

    SINK.clear()
    BUILDS.clear()
    yield
    for t in ("TestRelu", "TestAdd", "TestSink", "TestScale"):
        unregister_layer(t)


SINK: list[np.ndarray] = []


def _input(name="input", tops=("data",), shape=(2, 3)) -> Layer:
    layer = Layer(name, "Input", [], list(tops))
    layer.params.input_param.shape.add().dim.extend(shape)
    return layer


def _inplace_graph() -> Graph:
    """data -> relu1 (a) -> add (a += data, in place) -> scale (in place) -> relu2 (b)."""
    return Graph("t", [
        _input(),
        Layer("relu1", "TestRelu", ["data"], ["a"]),
        Layer("add", "TestAdd", ["a", "data"], ["a"]),
        Layer("scale", "TestScale", ["a"], ["a"], blobs=[np.float32(2.0) * np.ones(3, np.float32)]),
        Layer("relu2", "TestRelu", ["a"], ["b"]),
    ])


X = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)


def _reference(x):
    a0 = np.maximum(x, 0)
    a1 = a0 + x
    a2 = a1 * 2
    return a0, a1, a2, np.maximum(a2, 0)


def test_plan_resolves_inplace_versions():
    prog = compile(_inplace_graph())
    ids = [(s.layer.name, s.in_vids, s.out_vids) for s in prog.steps]
    assert ids == [("input", [], ["data"]), ("relu1", ["data"], ["a"]),
                   ("add", ["a", "data"], ["a@1"]), ("scale", ["a@1"], ["a@2"]),
                   ("relu2", ["a@2"], ["b"])]
    assert prog.value_shapes["a@2"] == (2, 3)


def test_run_returns_outputs_and_final_blobs():
    a0, a1, a2, b = _reference(X)
    out = run(_inplace_graph(), {"data": X})
    assert list(out) == ["b"]
    np.testing.assert_array_equal(out["b"], b)
    allb = compile(_inplace_graph()).run({"data": X}, keep=True)
    assert set(allb) == {"data", "a", "b"}
    np.testing.assert_array_equal(allb["a"], a2)          # final value of the in-place blob
    np.testing.assert_array_equal(allb["data"], X)


def test_observer_sees_every_output_once_in_order():
    a0, a1, a2, b = _reference(X)
    seen = []
    prog = compile(_inplace_graph())
    prog.add_observer(lambda layer, j, blob, vid, arr: seen.append((layer.name, j, blob, vid,
                                                                   arr.copy(), arr.flags.writeable)))
    prog.run({"data": X})
    assert [(n, j, b_, v) for n, j, b_, v, _, _ in seen] == [
        ("input", 0, "data", "data"), ("relu1", 0, "a", "a"), ("add", 0, "a", "a@1"),
        ("scale", 0, "a", "a@2"), ("relu2", 0, "b", "b")]
    for got, want in zip([s[4] for s in seen], [X, a0, a1, a2, b]):
        np.testing.assert_array_equal(got, want)
    assert not any(s[5] for s in seen), "observers get read-only views"


def test_observer_filters_and_removal():
    calls = []
    prog = compile(_inplace_graph())
    fn = prog.add_observer(lambda layer, j, blob, vid, arr: calls.append(vid), blobs=["a"])
    prog.run({"data": X}, observers=[(lambda *a: calls.append("once:" + a[3]), None, ["relu2"])])
    assert calls == ["a", "a@1", "a@2", "once:b"]
    calls.clear()
    prog.remove_observer(fn)
    prog.run({"data": X})
    assert calls == []
    prog.run({"data": X}, observers=[(lambda *a: calls.append(a[3]), ["a@1"])])
    assert calls == ["a@1"]


def test_values_are_freed_after_last_use():
    """While relu2 runs, 'a' and 'a@1' (last read by add/scale) are gone;
    with forward(keep=True) they are alive; run(keep=True) keeps only the
    final version of each blob (like Caffe's blob memory)."""
    refs: dict[str, weakref.ref] = {}
    alive_at_relu2: list[set] = []

    def note(layer, j, blob, vid, arr):
        refs[vid] = weakref.ref(arr.base)        # the observer gets a view of the live array

    def probe(layer, j, blob, vid, arr):
        alive_at_relu2.append({v for v, r in refs.items() if r() is not None})

    cases = (("forward", False, {"a@2", "b"}), ("forward", True, {"a", "a@1", "a@2", "b"}),
             ("run", True, {"a@2", "b"}))
    for method, keep, expect in cases:
        refs.clear()
        alive_at_relu2.clear()
        prog = compile(_inplace_graph())
        prog.add_observer(note)
        prog.add_observer(probe, layers=["relu2"])
        x = X.copy()                 # the caller's input stays referenced by the caller
        getattr(prog, method)({"data": x}, keep=keep)
        assert alive_at_relu2[0] - {"data"} == expect, (method, keep)


def test_layers_without_tops_still_run():
    g = _inplace_graph()
    g.add_layer(Layer("sink", "TestSink", ["a"], []), after=g.layer("add"))
    compile(g).run({"data": X})
    np.testing.assert_array_equal(SINK[0], _reference(X)[1])


def test_partial_forward_by_value_id_and_blob_name():
    a0, a1, a2, b = _reference(X)
    prog = compile(_inplace_graph())
    out = prog.forward({"a": a0, "data": X}, start="add", end="scale")
    assert list(out) == ["a"]
    np.testing.assert_array_equal(out["a"], a2)
    out = prog.forward({"a@2": np.full((2, 3), -1, np.float32)}, start="relu2")
    np.testing.assert_array_equal(out["b"], np.zeros((2, 3)))
    out = prog.forward({"data": X}, end="add", keep=True)
    assert set(out) >= {"data", "a", "a@1"}
    np.testing.assert_array_equal(out["a@1"], a1)
    with pytest.raises(DataError, match="relu2.*'a'"):
        prog.forward({}, start="relu2")
    with pytest.raises(GraphError, match="before the start"):
        prog.forward({"data": X}, start="relu2", end="add")
    # A range after the Input layer runs on the plan of the last input shapes; a
    # value of another batch size is refused by name, not run into a kernel.
    with pytest.raises(DataError, match="'relu2' reads 'a' .*shape \\(4, 3\\).*expects \\(2, 3\\)"):
        prog.forward({"a@2": np.zeros((4, 3), np.float32)}, start="relu2")


def test_input_checks():
    prog = compile(_inplace_graph())
    with pytest.raises(DataError, match="missing \\['data'\\]"):
        prog.run({})
    with pytest.raises(DataError, match="not inputs: \\['x'\\]"):
        prog.run({"data": X, "x": X})
    with pytest.raises(DataError, match="'data'.*2 axes"):
        prog.run({"data": np.zeros((2, 3, 1), np.float32)})
    # The scale weight has 3 elements: 4 columns cannot broadcast.
    with pytest.raises(ExecutionError, match="layer 'scale' \\(TestScale\\)"):
        prog.run({"data": np.zeros((2, 4), np.float32)})


def test_inputs_cast_to_float32_and_any_batch_recompiles():
    prog = compile(_inplace_graph())
    n_builds = len(BUILDS)
    out = prog.run({"data": np.tile(X, (3, 1)).astype(np.float64)})
    assert out["b"].dtype == np.float32 and out["b"].shape == (6, 3)
    np.testing.assert_array_equal(out["b"], np.tile(_reference(X)[3], (3, 1)))
    assert BUILDS[n_builds:] == [("scale", ((6, 3),))]
    assert prog.input_shapes == {"data": (6, 3)}
    prog.run({"data": X})                          # back to the first shape: cached plan
    assert len(BUILDS) == n_builds + 1


def test_compile_with_batch_size_and_shapes():
    assert compile(_inplace_graph(), batch_size=5).input_shapes == {"data": (5, 3)}
    assert compile(_inplace_graph(), {"data": (7, 3)}).value_shapes["b"] == (7, 3)
    with pytest.raises(DataError, match="'nope' is not an input"):
        compile(_inplace_graph(), {"nope": (1,)})


def test_rebuild_after_weight_change_and_graph_edit():
    g = _inplace_graph()
    prog = compile(g)
    g.layer("scale").blobs[0][...] = 3.0
    np.testing.assert_array_equal(prog.run({"data": X})["b"], _reference(X)[3])   # stale kernel
    prog.rebuild(["scale"])
    np.testing.assert_array_equal(prog.run({"data": X})["b"], _reference(X)[3] * 1.5)
    # A structural edit is picked up without asking.
    g.add_layer(Layer("relu3", "TestRelu", ["b"], ["c"]))
    assert list(prog.run({"data": X})) == ["c"]


def test_unknown_type_and_kernel_contract():
    g = Graph("t", [_input(), Layer("x", "NoSuchType", ["data"], ["y"])])
    with pytest.raises(UnsupportedLayerError, match="'x'.*NoSuchType"):
        compile(g)
    register_function_layer("TestBad", lambda layer, s: [s[0]],
                            lambda layer, xs: [xs[0][:1]], replace=True)
    try:
        g = Graph("t", [_input(), Layer("bad", "TestBad", ["data"], ["y"])])
        with pytest.raises(ExecutionError, match="'bad'.*shape \\(1, 3\\).*\\(2, 3\\)"):
            run(g, {"data": X})
    finally:
        unregister_layer("TestBad")


def test_program_is_reusable_object():
    prog = Program(_inplace_graph())
    r1 = prog.run({"data": X})["b"]
    r2 = prog.run({"data": X})["b"]
    assert r1 is not r2                         # each run hands out new arrays
    np.testing.assert_array_equal(r1, r2)
