"""Write an ``amct.ir.Graph`` back to prototxt + caffemodel (current V2 form)."""
from __future__ import annotations

from google.protobuf import text_format

from amct.fileio import atomic_open
from amct.frontends.caffe import wire
from amct.ir import Graph
from amct.proto import caffe_pb2


def net_header(graph: Graph, for_text: bool) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    if graph.name:
        net.name = graph.name
    net.MergeFrom(graph.net_params)
    return net


def to_netparameter(graph: Graph, with_blobs: bool = False) -> caffe_pb2.NetParameter:
    """The graph as a V2 NetParameter (legacy input fields kept if loaded so)."""
    net = net_header(graph, True)
    layers = graph.layers
    if graph.input_style == "fields" and layers and layers[0].type == "Input" \
            and layers[0].name == "input":
        first = layers[0]
        net.input.extend(first.tops)
        shapes = first.param("input_param").shape
        for s in shapes:
            net.input_shape.add().CopyFrom(s)
        layers = layers[1:]
    for layer in layers:
        net.layer.add().CopyFrom(layer.to_proto(with_blobs=with_blobs))
    return net


def prototxt_text(graph: Graph) -> str:
    return text_format.MessageToString(to_netparameter(graph), as_utf8=True)


def write_prototxt(graph: Graph, path: str) -> None:
    text = prototxt_text(graph)
    with atomic_open(path, "w") as f:
        f.write(text)


def write_caffemodel(graph: Graph, path: str) -> None:
    """Write every layer (with its params, as Caffe does) and its blobs."""
    head = net_header(graph, False).SerializeToString(deterministic=True)
    items = []
    for layer in graph.layers:
        hdr = layer.to_proto(with_blobs=False).SerializeToString(deterministic=True)
        items.append((hdr, layer.blobs))
    with atomic_open(path, "wb") as f:
        wire.write_net(f, head, items)


def save_caffe(graph: Graph, model_file: str, weights_file: str | None = None) -> None:
    """Write ``graph`` as a prototxt and, if given, a caffemodel (both atomically)."""
    write_prototxt(graph, model_file)
    if weights_file is not None:
        write_caffemodel(graph, weights_file)
