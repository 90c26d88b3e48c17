"""The IR's data flow (value ids for in-place layers), checks and named operations."""
from __future__ import annotations

import numpy as np
import pytest

from amct.errors import DuplicateNameError, GraphCycleError, GraphError, MissingBottomError
from amct.frontends.caffe import load_caffe, prototxt_text
from amct.ir import Graph, Layer, get_layer_def
from amct.proto import caffe_pb2


def L(name: str, typ: str, bottoms=(), tops=()) -> Layer:  # noqa: N802 - reads like a table
    return Layer(name, typ, list(bottoms), list(tops))


def inp(name="data", top="data", shape=(1, 2, 4, 4)) -> Layer:
    x = L(name, "Input", (), [top])
    x.params.input_param.shape.add().dim.extend(shape)
    return x


def wiring(g: Graph) -> list[tuple]:
    return [(x.name, tuple(x.bottoms), tuple(x.tops)) for x in g.layers]


def chain() -> Graph:
    """data -> conv(x) -> relu(x, in place) -> drop(x -> y) -> ip(y -> z)."""
    return Graph("c", [inp(), L("conv", "Convolution", ["data"], ["x"]), L("relu", "ReLU", ["x"], ["x"]),
                       L("drop", "Dropout", ["x"], ["y"]), L("ip", "InnerProduct", ["y"], ["z"])])


# ---------------------------------------------------------------- data flow
def test_value_ids_and_queries():
    g = chain()
    conv, relu, drop, ip = g.layers[1:]
    assert g.output_values(relu) == ["x@1"] and g.input_values(relu) == ["x"]
    assert g.producer(drop, 0) == (relu, 0)
    assert g.consumers(conv, 0) == [(relu, 0)]
    assert g.successors(conv) == [relu] and g.predecessors(drop) == [relu]
    assert g.inputs == ["data"] and g.outputs == ["z"]
    edges = {(a.name, b.name, d["blob"]) for a, b, k, d in g.nx_graph.edges(keys=True, data=True)}
    assert ("relu", "drop", "x") in edges and ("conv", "relu", "x") in edges


def test_duplicate_layer_names_are_representable_but_ambiguous():
    g = Graph("d", [inp(), L("a", "ReLU", ["data"], ["b"]), L("a", "ReLU", ["b"], ["c"])])
    g.check()                                   # Caffe allows it
    assert g.find("a") is None
    with pytest.raises(DuplicateNameError, match="2 layers are named 'a'"):
        g.layer("a")
    with pytest.raises(GraphError, match="no layer named 'zz'"):
        g.layer("zz")


# ------------------------------------------------------------------- check
def test_check_missing_bottom():
    g = Graph("m", [inp(), L("r", "ReLU", ["nope"], ["r"])], source="m.prototxt")
    with pytest.raises(MissingBottomError, match=r"m.prototxt: layer 'r' \(bottom 0\) reads blob 'nope'"):
        g.check()


def test_check_cycle():
    g = Graph("c", [inp(), L("a", "ReLU", ["b"], ["a"]), L("b", "ReLU", ["a"], ["b"])])
    with pytest.raises(GraphCycleError, match="layer 'a' reads blob 'b' which is only produced later"):
        g.check()


def test_check_duplicate_tops():
    g = Graph("d", [inp(), L("a", "ReLU", ["data"], ["t"]), L("b", "Sigmoid", ["data"], ["t"])])
    with pytest.raises(DuplicateNameError, match="layer 'b' writes blob 't' which an earlier layer"):
        g.check()
    g = Graph("d", [inp(), L("s", "Slice", ["data"], ["t", "t"])])
    with pytest.raises(DuplicateNameError, match="layer 's' lists a top twice"):
        g.check()
    # in place only counts for top i == bottom i
    g = Graph("d", [inp(), L("e", "Eltwise", ["data", "data"], ["data"])])
    g.check()
    g = Graph("d", [inp(), inp("in2", "u"), L("e", "Concat", ["u", "data"], ["data"])])
    with pytest.raises(DuplicateNameError, match="layer 'e' writes blob 'data'"):
        g.check()


# -------------------------------------------------------- named operations
def test_add_remove_replace():
    g = chain()
    conv = g.layer("conv")
    sig = g.add_layer(L("sig", "Sigmoid", ["x"], ["x"]), after=conv)
    assert [x.name for x in g.layers][:3] == ["data", "conv", "sig"]
    assert g.producer(g.layer("relu"), 0) == (sig, 0)
    with pytest.raises(GraphError, match="already in the graph"):
        g.add_layer(sig)
    first = g.add_layer(L("pre", "Power", ["data"], ["p"]), before=conv)
    assert g.index(first) == 1
    tanh = L("tanh", "TanH", ["x"], ["x"])
    g.replace_layer(sig, tanh)
    assert g.index(tanh) == 3 and "sig" not in g
    g.remove_layer(first)
    assert "pre" not in g
    with pytest.raises(GraphError, match="not in the graph"):
        g.remove_layer(first)


def test_rewire_only_some_readers():
    g = Graph("r", [inp(), L("a", "ReLU", ["data"], ["a"]), L("b", "TanH", ["a"], ["b"]),
                    L("c", "Sigmoid", ["a"], ["c"]), L("n", "AbsVal", ["data"], ["n"])])
    a, b, c = g.layer("a"), g.layer("b"), g.layer("c")
    changed = g.rewire(a, 0, "n", only=[c])
    assert changed == [c] and c.bottoms == ["n"] and b.bottoms == ["a"]
    # the reader resolves the name at its own position: 'n' is written after 'c'
    with pytest.raises(GraphCycleError):
        g.check()
    g.toposort()
    g.check()
    assert g.index(g.layer("n")) < g.index(c)


def test_insert_after_output_new_blob_and_in_place():
    g = chain()
    conv, relu = g.layer("conv"), g.layer("relu")
    q = g.insert_after_output(conv, 0, L("conv_quant", "Quant", ["x"], ["xq"]))
    assert g.index(q) == g.index(conv) + 1 and relu.bottoms == ["xq"] and relu.tops == ["x"]
    # an in-place layer inserted after an output needs no rewiring: readers see its version
    g = chain()
    conv, relu = g.layer("conv"), g.layer("relu")
    dq = g.insert_after_output(conv, 0, L("conv_dequant", "DeQuant", ["x"], ["x"]))
    assert g.producer(relu, 0) == (dq, 0) and relu.bottoms == ["x"]
    # only some readers
    g = Graph("r", [inp(), L("a", "ReLU", ["data"], ["a"]), L("b", "TanH", ["a"], ["b"]),
                    L("c", "Sigmoid", ["a"], ["c"])])
    q = g.insert_after_output(g.layer("a"), 0, L("q", "Quant", ["a"], ["aq"]), only=[g.layer("c")])
    assert g.layer("b").bottoms == ["a"] and g.layer("c").bottoms == ["aq"]
    g.check()


def test_bypass_renames_producer_top():
    g = chain()
    g.bypass(g.layer("drop"))
    assert wiring(g) == [("data", (), ("data",)), ("conv", ("data",), ("x",)),
                         ("relu", ("x",), ("y",)), ("ip", ("y",), ("z",))]
    g.check()


def test_bypass_in_place_layer():
    g = chain()
    g.bypass(g.layer("relu"))
    assert g.producer(g.layer("drop"), 0) == (g.layer("conv"), 0)
    assert wiring(g)[2] == ("drop", ("x",), ("y",))


def test_bypass_keeps_net_output_name():
    g = chain()
    out = L("drop2", "Dropout", ["z"], ["out"])
    g.add_layer(out)
    g.bypass(out)
    assert g.outputs == ["out"] and g.layers[-1].name == "ip"


def test_bypass_rewires_readers_when_producer_is_shared():
    g = Graph("s", [inp(), L("a", "ReLU", ["data"], ["a"]), L("d", "Dropout", ["a"], ["d"]),
                    L("b", "TanH", ["d"], ["b"]), L("c", "Sigmoid", ["a"], ["c"])])
    g.bypass(g.layer("d"))
    assert g.layer("b").bottoms == ["a"] and g.layer("a").tops == ["a"]
    assert g.outputs == ["b", "c"]


def test_bypass_never_renames_a_net_input():
    g = Graph("i", [inp(), L("d", "Dropout", ["data"], ["d"]), L("r", "ReLU", ["d"], ["r"])])
    g.bypass(g.layer("d"))
    assert g.inputs == ["data"] and g.layer("r").bottoms == ["data"]


def test_bypass_refusals_leave_graph_unchanged():
    # output 'd' would disappear: 'a' is read elsewhere too
    g = Graph("o", [inp(), L("a", "ReLU", ["data"], ["a"]), L("c", "Sigmoid", ["a"], ["c"]),
                    L("d", "Dropout", ["a"], ["d"])])
    before = wiring(g)
    with pytest.raises(GraphError, match="its top 'd' is a net output"):
        g.bypass(g.layer("d"))
    assert wiring(g) == before
    # 'x' rewritten in place between the bypassed layer and its reader
    g = Graph("w", [inp(), L("a", "ReLU", ["data"], ["x"]), L("d", "Dropout", ["x"], ["y"]),
                    L("t", "TanH", ["x"], ["x"]), L("r", "Sigmoid", ["y"], ["r"])])
    before = wiring(g)
    with pytest.raises(GraphError, match="rewritten in place before a reader"):
        g.bypass(g.layer("d"))
    assert wiring(g) == before
    with pytest.raises(GraphError, match="only one-in/one-out"):
        g.bypass(g.layer("data"))


def test_toposort_respects_in_place_anti_dependencies():
    """A reader of x must run before the next in-place write of x."""
    conv = L("conv", "Convolution", ["data"], ["x"])
    side = L("side", "Sigmoid", ["x"], ["s"])          # reads version 0 of x
    relu = L("relu", "ReLU", ["x"], ["x"])             # writes version 1
    tail = L("tail", "Eltwise", ["x", "s"], ["t"])
    g = Graph("t", [inp(), conv, side, relu, tail])
    g.toposort()
    assert [x.name for x in g.layers] == ["data", "conv", "side", "relu", "tail"]
    # Moving an unrelated layer to the end and sorting puts it back where it is needed.
    g = Graph("t", [inp(), conv, relu, L("late", "TanH", ["data"], ["q"]),
                    L("use", "Eltwise", ["x", "q"], ["u"])])
    order = [g.layer(n) for n in ("data", "conv", "relu", "use", "late")]
    g._layers = order                                  # a pass left it out of order
    g.toposort()
    assert [x.name for x in g.layers].index("late") < [x.name for x in g.layers].index("use")


def test_cleanup_keeps_sinks_and_outputs():
    g = chain()
    g.add_layer(L("dead", "TanH", ["x"], ["dead"]), after=g.layer("relu"))
    g.add_layer(L("calib", "IFMR", ["data"], []))       # top-less sink: kept
    g.declared_outputs = ["z"]
    removed = g.cleanup()
    assert [x.name for x in removed] == ["dead"]
    assert [x.name for x in g.layers] == ["data", "conv", "relu", "drop", "ip", "calib"]
    assert [x.name for x in g.cleanup(keep=["y"])] == ["ip"]


def test_copy_is_independent_but_shares_arrays():
    g = chain()
    g.layer("conv").blobs = [np.ones((2, 2, 1, 1), np.float32)]
    h = g.copy()
    h.layer("conv").tops[0] = "other"
    h.layer("conv").params.convolution_param.num_output = 9
    assert g.layer("conv").tops == ["x"] and g.layer("conv").params.convolution_param.num_output == 0
    assert h.layer("conv").blobs[0] is g.layer("conv").blobs[0]


# ------------------------------------------------------------------- shapes
def test_infer_shapes_by_blob_name_and_batch(tmp_path):
    for t in ("Convolution", "ReLU", "Pooling", "InnerProduct"):
        if get_layer_def(t) is None:
            pytest.skip(f"{t} not registered yet")
    text = """name: "s" input: "data" input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "x" convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
layer { name: "pool" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "p" top: "ip" inner_product_param { num_output: 5 } }
"""
    (tmp_path / "s.prototxt").write_text(text)
    g = load_caffe(str(tmp_path / "s.prototxt"))
    assert g.infer_shapes() == {"data": (1, 3, 9, 9), "x": (1, 4, 4, 4), "p": (1, 4, 2, 2), "ip": (1, 5)}
    assert g.infer_shapes(batch_size=6)["ip"] == (6, 5)
    assert g.infer_shapes({"data": (2, 3, 5, 5)})["p"] == (2, 4, 1, 1)
    g.set_input_shape("data", (3, 3, 9, 9))
    assert g.infer_shapes()["ip"] == (3, 5)
    assert "input_shape {\n  dim: 3\n  dim: 3\n  dim: 9" in prototxt_text(g)
    with pytest.raises(GraphError, match="'x' is not a net input"):
        g.set_input_shape("x", (1,))


def test_layer_proto_round_trip():
    p = caffe_pb2.LayerParameter(name="c", type="Convolution", bottom=["a"], top=["b"])
    p.convolution_param.num_output = 3
    p.include.add().phase = caffe_pb2.TEST
    layer = Layer.from_proto(p, blobs=[])
    assert layer.params.name == "" and not len(layer.params.bottom)
    assert layer.to_proto().SerializeToString(deterministic=True) == p.SerializeToString(deterministic=True)
