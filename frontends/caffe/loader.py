"""Load a Caffe prototxt (+ optional caffemodel) into an ``amct.ir.Graph``."""
from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
from google.protobuf import message as pb_message

from amct.errors import (CaffemodelError, ModelFormatError, PrototxtSyntaxError, UnsupportedLayerError,
                         WeightsError)
from amct.frontends.caffe import upgrade, wire
from amct.ir import Graph, Layer, get_layer_def
from amct.proto import caffe_pb2
from amct.proto.text import parse_text


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a directory, expected a prototxt file") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        head = raw[:4096]
        binary = b"\0" in head or sum(c < 9 or 13 < c < 32 for c in head) > len(head) // 20
        hint = "; this looks like a binary file (a caffemodel?), not a prototxt" if binary else ""
        raise PrototxtSyntaxError(
            f"{path}:{line}:{col}: not UTF-8 text (byte offset {e.start}){hint}") from None


def parse_prototxt(path: str, text: str | None = None) -> caffe_pb2.NetParameter:
    """Parse a text NetParameter; syntax errors name file:line:column."""
    if text is None:
        text = _read_text(path)
    net = parse_text(text, caffe_pb2.NetParameter(), path, PrototxtSyntaxError)
    return net


def read_caffemodel(path: str) -> tuple[caffe_pb2.NetParameter, list[tuple[caffe_pb2.LayerParameter, list]]]:
    """Decode a caffemodel: net-level fields and (layer, blob arrays) pairs, V2 form."""
    try:
        buf = wire.read_file_buffer(path)
    except FileNotFoundError:
        raise CaffemodelError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaffemodelError(f"{path}: is a directory, expected a caffemodel file") from None
    except OSError as e:
        raise CaffemodelError(f"{path}: cannot read: {e.strerror}") from None
    if len(buf) == 0:
        raise CaffemodelError(f"{path}: file is empty")
    rest, raw_layers = wire.decode_net(buf, path)
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(rest)
    except pb_message.DecodeError as e:
        raise CaffemodelError(f"{path}: corrupt net-level fields: {e}") from None
    out = []
    legacy: list[tuple[caffe_pb2.V1LayerParameter, list]] = []
    for k, rl in enumerate(raw_layers):
        where = f"{path}: layer #{k} at byte {rl.offset}"
        try:
            if rl.kind == "v2":
                lp = caffe_pb2.LayerParameter()
                lp.ParseFromString(rl.header)
                out.append((lp, rl.blobs))
                continue
            v1 = caffe_pb2.V1LayerParameter()
            v1.ParseFromString(rl.header)
            if rl.v0_header is not None:
                v1.layer.ParseFromString(rl.v0_header)
            legacy.append((v1, rl.blobs))
        except pb_message.DecodeError as e:
            raise CaffemodelError(f"{where}: corrupt layer fields: {e}") from None
    if legacy:
        out.extend(_upgrade_binary_legacy(legacy, path))
    if not out and len(buf) > 0 and not rest:
        raise CaffemodelError(f"{path}: holds no layers")
    if not out:
        raise CaffemodelError(f"{path}: holds no layers; is this a caffemodel?")
    return net, out


def _upgrade_binary_legacy(legacy, path: str) -> list[tuple[caffe_pb2.LayerParameter, list]]:
    """V1/V0 layers of a caffemodel (headers without blobs) -> V2, blobs kept
    beside them.  The whole-net V0 upgrade runs so that ``padding`` layers
    (which carry no blobs) merge into the layer after them, as on text nets."""
    net = caffe_pb2.NetParameter()
    for v1, _ in legacy:
        net.layers.add().CopyFrom(v1)
    try:
        upgrade.upgrade_v0_layers(net, path)
        upgraded = [upgrade.upgrade_v1_layer(x, path) for x in net.layers]
    except ModelFormatError as e:
        raise CaffemodelError(str(e)) from None
    kept = [blobs for v1, blobs in legacy
            if not (v1.HasField("layer") and v1.layer.type == "padding")]
    if len(kept) != len(upgraded):   # upgrade_v0_layers drops exactly the padding layers
        raise CaffemodelError(f"{path}: inconsistent V0 padding layers")
    return list(zip(upgraded, kept))


def graph_from_netparam(net: caffe_pb2.NetParameter, source: str) -> Graph:
    legacy_inputs = upgrade.upgrade_net(net, source)
    upgrade.filter_phase(net, source)
    extra = caffe_pb2.NetParameter()
    extra.CopyFrom(net)
    for f in ("name", "layer", "layers", "input", "input_dim", "input_shape"):
        extra.ClearField(f)
    g = Graph(net.name, source=source, net_params=extra)
    g.input_style = "fields" if legacy_inputs else "layer"
    for lp in net.layer:
        if not lp.type:
            raise ModelFormatError(f"{source}: layer '{lp.name}' has no type")
        if lp.type == "Input":
            for s in lp.input_param.shape:
                if any(d < 0 for d in s.dim):
                    raise ModelFormatError(f"{source}: input layer '{lp.name}' declares the negative "
                                           f"shape {tuple(s.dim)}")
        g.add_layer(Layer.from_proto(lp, blobs=[]))
        if len(lp.blobs):
            from amct.ir.blobs import blobproto_to_array
            g.layers[-1].blobs = [blobproto_to_array(b, f"{source}: layer '{lp.name}'")
                                  for b in lp.blobs]
    return g


def attach_weights(g: Graph, model_layers, weights_file: str) -> None:
    """Copy blobs onto the graph's layers, matched by name (the i-th layer of a
    name gets the i-th source layer of that name).  Source layers that match
    nothing are ignored, as Caffe does."""
    by_name: dict[str, list] = defaultdict(list)
    for lp, blobs in model_layers:
        by_name[lp.name].append(blobs)
    seen: dict[str, int] = defaultdict(int)
    for layer in g.layers:
        k = seen[layer.name]
        seen[layer.name] += 1
        cands = by_name.get(layer.name)
        if not cands:
            continue
        raw = cands[min(k, len(cands) - 1)]
        if not raw:
            continue
        layer.blobs = [rb.array for rb in raw]
        layer.meta["legacy_blob_shape"] = [rb.legacy_shape for rb in raw]


_FINITE_CHUNK = 1 << 18     # elements; a 1 MB float32 scratch stays in cache


def _all_finite(a: np.ndarray) -> bool:
    """Whether every value of a float array is finite, in one cheap pass.

    Blob arrays are views of the file buffer and mostly unaligned, which makes
    numpy's reductions slow and BLAS copy the whole array.  So the values are
    checked a cache-sized chunk at a time in an aligned scratch: a dot product
    is NaN/Inf whenever an element is; only then (huge finite values can
    overflow it too) min/max decide exactly.  No mask as large as the blob."""
    flat = a.reshape(-1)
    scratch = np.empty(min(_FINITE_CHUNK, flat.size), dtype=flat.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, flat.size, scratch.size):
            part = flat[i:i + scratch.size]
            s = scratch[:part.size]
            np.copyto(s, part)
            if not np.isfinite(np.dot(s, s)) and not (np.isfinite(s.min()) and np.isfinite(s.max())):
                return False
    return True


def check_weights(g: Graph, weights_file: str | None) -> None:
    """Every layer whose type needs learned blobs must have them, with the
    right count and element count; legacy 4-D blob shapes are reshaped to the
    shape the layer expects."""
    try:
        shapes = g.infer_value_shapes()
    except Exception:  # noqa: BLE001 - shapes unknown (inputs without shape, unknown types)
        shapes = None
    src = weights_file or g.source
    flow = g.dataflow()      # once: per-layer queries would re-fingerprint the graph
    for layer in g.layers:
        ldef = get_layer_def(layer.type)
        if ldef is None:
            continue
        if layer.blobs:
            for i, b in enumerate(layer.blobs):
                if b.dtype.kind == "f" and b.size and not _all_finite(b):
                    raise WeightsError(f"{src}: layer '{layer.name}' blob {i} contains NaN or Inf")
        if ldef.min_blobs and len(layer.blobs) < ldef.min_blobs:
            if not layer.blobs:
                raise WeightsError(f"{src}: layer '{layer.name}' ({layer.type}) needs learned "
                                   "weights but the caffemodel has none for it")
            raise WeightsError(f"{src}: layer '{layer.name}' ({layer.type}) needs at least "
                               f"{ldef.min_blobs} blobs, found {len(layer.blobs)}")
        if shapes is None or not layer.blobs:
            continue
        ins = [shapes[v] for v in flow.inputs[id(layer)]]
        try:
            want = ldef.param_shapes(layer, ins)
        except Exception:  # noqa: BLE001
            continue
        if not want:
            continue
        if len(layer.blobs) != len(want):
            raise WeightsError(f"{src}: layer '{layer.name}' ({layer.type}) has {len(layer.blobs)} "
                               f"blobs, expected {len(want)} with shapes {want}")
        legacy = layer.meta.pop("legacy_blob_shape", [False] * len(want))
        for i, (b, w) in enumerate(zip(layer.blobs, want)):
            w = tuple(w)
            if tuple(b.shape) == w:
                continue
            if int(np.prod(w)) == b.size and (legacy[i] if i < len(legacy) else False):
                layer.blobs[i] = b.reshape(w)
                continue
            raise WeightsError(f"{src}: layer '{layer.name}' ({layer.type}) blob {i} has shape "
                               f"{tuple(b.shape)}, expected {w}")


def load_caffe(model_file: str, weights_file: str | None = None, *, check: bool = True) -> Graph:
    """Load a prototxt and optional caffemodel into a ``Graph`` (TEST phase)."""
    net = parse_prototxt(model_file)
    g = graph_from_netparam(net, model_file)
    g.check()
    if weights_file is not None:
        _, model_layers = read_caffemodel(weights_file)
        attach_weights(g, model_layers, weights_file)
    for layer in g.layers:
        layer.meta.setdefault("legacy_blob_shape", [False] * len(layer.blobs))
    if check:
        check_weights(g, weights_file) if weights_file is not None else None
    for layer in g.layers:
        layer.meta.pop("legacy_blob_shape", None)
    g.declared_outputs = g.outputs
    return g


def load_binary_net(weights_file: str) -> Graph:
    """Build a graph from a caffemodel alone (its layers and blobs, V2 form)."""
    net, model_layers = read_caffemodel(weights_file)
    for lp, _ in model_layers:
        net.layer.add().CopyFrom(lp)
    g = graph_from_netparam(net, weights_file)
    for layer, (_, raw) in zip(g.layers, model_layers):
        layer.blobs = [rb.array for rb in raw]
    return g


def is_file(path: str) -> bool:
    return os.path.isfile(path)
