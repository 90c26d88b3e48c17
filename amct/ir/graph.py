"""The network graph: Caffe layers in execution order, backed by networkx.

Representation (see docs/ir.md):

* A node is a ``Layer`` object (identity-hashed, so duplicate layer names, which
  Caffe allows, are representable).  ``Graph.layers`` is the execution order.
* Edges are data flow.  Blob names follow Caffe's sequential semantics: a bottom
  reads the most recent write of that name *before* the layer.  In-place layers
  (top == bottom) therefore create a new *version* of the blob.  Internally each
  version has an SSA value id: the first write of blob ``b`` is ``"b"``, the
  k-th rewrite is ``"b@k"``.  Layers keep the plain Caffe names, so nothing has
  to be renamed back when writing; value ids are only used by the data-flow
  queries, the runtime and the networkx view.
* The data flow is derived from the layer list and recomputed when the layers'
  names/bottoms/tops change, so passes may edit ``layer.bottoms``/``tops``
  directly or use the named operations below.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

import attrs
import networkx as nx
import numpy as np

from amct.errors import (DuplicateNameError, GraphCycleError, GraphError, MissingBottomError,
                         UnsupportedLayerError,
                         ShapeError)
from amct.ir.layer import Layer
from amct.ir.registry import Shape, require_layer_def
from amct.proto import caffe_pb2

# Layer types whose tops are fed from outside the net at inference time.
INPUT_TYPES = frozenset({"Input"})


def value_id(blob: str, version: int) -> str:
    return blob if version == 0 else f"{blob}@{version}"


def blob_of(vid: str) -> str:
    """The Caffe blob name of a value id."""
    head, sep, tail = vid.rpartition("@")
    return head if sep and tail.isdigit() else vid


@attrs.frozen
class Dataflow:
    """Resolved data flow of the current layer list."""

    inputs: dict[int, list[str]]                       # id(layer) -> value ids read
    outputs: dict[int, list[str]]                      # id(layer) -> value ids written
    producer: dict[str, tuple[Layer, int]]             # value id -> (layer, top index)
    consumers: dict[str, list[tuple[Layer, int]]]      # value id -> [(layer, bottom index)]
    final: dict[str, str]                              # blob name -> last value id
    missing: list[tuple[Layer, int, str]]              # (layer, bottom index, blob) unresolved


class Graph:
    """A Caffe network as an ordered, typed data-flow graph."""

    def __init__(self, name: str = "", layers: Iterable[Layer] = (),
                 net_params: caffe_pb2.NetParameter | None = None, source: str = "<memory>"):
        self.name = name
        #: Net-level fields other than layers/inputs (force_backward, state, ...).
        self.net_params = net_params if net_params is not None else caffe_pb2.NetParameter()
        #: Where the graph came from (used in error messages).
        self.source = source
        #: "layer": inputs are Input layers; "fields": they came from legacy
        #: ``input:``/``input_shape``/``input_dim`` fields and are written back so.
        self.input_style = "layer"
        self._layers: list[Layer] = []
        self._nx = nx.MultiDiGraph()
        self._fingerprint: tuple | None = None
        self._flow: Dataflow | None = None
        #: Blob names the graph must keep producing (set on load; see cleanup()).
        self.declared_outputs: list[str] | None = None
        for layer in layers:
            self.add_layer(layer)

    # ------------------------------------------------------------------ access
    @property
    def layers(self) -> list[Layer]:
        """Layers in execution order (a copy of the list; the Layer objects are live)."""
        return list(self._layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(list(self._layers))

    def __len__(self) -> int:
        return len(self._layers)

    def __contains__(self, name: str) -> bool:
        return any(layer.name == name for layer in self._layers)

    def layer(self, name: str) -> Layer:
        """The layer called ``name``; error if absent or ambiguous."""
        found = [layer for layer in self._layers if layer.name == name]
        if not found:
            raise GraphError(f"{self.source}: no layer named '{name}'")
        if len(found) > 1:
            raise DuplicateNameError(
                f"{self.source}: {len(found)} layers are named '{name}'; the name is ambiguous here")
        return found[0]

    def find(self, name: str) -> Layer | None:
        found = [layer for layer in self._layers if layer.name == name]
        return found[0] if len(found) == 1 else None

    def index(self, layer: Layer) -> int:
        for i, x in enumerate(self._layers):
            if x is layer:
                return i
        raise GraphError(f"{self.source}: layer '{layer.name}' is not in the graph")

    @property
    def inputs(self) -> list[str]:
        """Blob names fed from outside (tops of Input layers), in order."""
        return [t for layer in self._layers if layer.type in INPUT_TYPES for t in layer.tops]

    @property
    def outputs(self) -> list[str]:
        """Caffe's net outputs: final blob versions that no layer reads."""
        flow = self.dataflow()
        outs = []
        for layer in self._layers:
            for vid in flow.outputs[id(layer)]:
                if not flow.consumers.get(vid) and flow.final[blob_of(vid)] == vid:
                    outs.append(blob_of(vid))
        return outs

    # --------------------------------------------------------------- data flow
    def _fp(self) -> tuple:
        return tuple((id(x), x.name, tuple(x.bottoms), tuple(x.tops)) for x in self._layers)

    def dataflow(self) -> Dataflow:
        """Resolve bottoms to the value versions they read (cached)."""
        fp = self._fp()
        if self._flow is not None and fp == self._fingerprint:
            return self._flow
        version: dict[str, int] = {}
        inputs, outputs, producer = {}, {}, {}
        consumers: dict[str, list] = defaultdict(list)
        missing = []
        for layer in self._layers:
            ins = []
            for i, b in enumerate(layer.bottoms):
                if b in version:
                    vid = value_id(b, version[b])
                    consumers[vid].append((layer, i))
                else:
                    vid = b
                    missing.append((layer, i, b))
                ins.append(vid)
            outs = []
            for j, t in enumerate(layer.tops):
                version[t] = version[t] + 1 if t in version else 0
                vid = value_id(t, version[t])
                producer[vid] = (layer, j)
                outs.append(vid)
            inputs[id(layer)] = ins
            outputs[id(layer)] = outs
        final = {b: value_id(b, v) for b, v in version.items()}
        self._flow = Dataflow(inputs, outputs, producer, dict(consumers), final, missing)
        self._fingerprint = fp
        self._rebuild_nx()
        return self._flow

    def _rebuild_nx(self) -> None:
        flow = self._flow
        g = nx.MultiDiGraph()
        for i, layer in enumerate(self._layers):
            g.add_node(layer, index=i)
        for vid, (src, j) in flow.producer.items():
            for dst, i in flow.consumers.get(vid, ()):
                g.add_edge(src, dst, key=vid, blob=blob_of(vid), top=j, bottom=i)
        self._nx = g

    @property
    def nx_graph(self) -> nx.MultiDiGraph:
        """The networkx view: nodes are Layers, edges carry ``blob``/value id. Read only."""
        self.dataflow()
        return self._nx

    def input_values(self, layer: Layer) -> list[str]:
        return list(self.dataflow().inputs[id(layer)])

    def output_values(self, layer: Layer) -> list[str]:
        return list(self.dataflow().outputs[id(layer)])

    def producer(self, layer: Layer, bottom_index: int = 0) -> tuple[Layer, int] | None:
        """The (layer, top index) whose output ``layer``'s bottom reads."""
        flow = self.dataflow()
        return flow.producer.get(flow.inputs[id(layer)][bottom_index])

    def consumers(self, layer: Layer, top_index: int = 0) -> list[tuple[Layer, int]]:
        """The (layer, bottom index) pairs reading this exact output version."""
        flow = self.dataflow()
        return list(flow.consumers.get(flow.outputs[id(layer)][top_index], ()))

    def successors(self, layer: Layer) -> list[Layer]:
        seen: list[Layer] = []
        for j in range(len(layer.tops)):
            for c, _ in self.consumers(layer, j):
                if all(c is not s for s in seen):
                    seen.append(c)
        return seen

    def predecessors(self, layer: Layer) -> list[Layer]:
        seen: list[Layer] = []
        for i in range(len(layer.bottoms)):
            p = self.producer(layer, i)
            if p is not None and all(p[0] is not s for s in seen):
                seen.append(p[0])
        return seen

    # -------------------------------------------------------- named operations
    def add_layer(self, layer: Layer, *, before: Layer | None = None,
                  after: Layer | None = None) -> Layer:
        """Insert ``layer`` (at the end, or just before/after another layer)."""
        if any(x is layer for x in self._layers):
            raise GraphError(f"{self.source}: layer '{layer.name}' is already in the graph")
        if before is not None:
            self._layers.insert(self.index(before), layer)
        elif after is not None:
            self._layers.insert(self.index(after) + 1, layer)
        else:
            self._layers.append(layer)
        return layer

    def remove_layer(self, layer: Layer) -> None:
        """Remove a layer; its readers keep their bottoms (see ``bypass``)."""
        del self._layers[self.index(layer)]

    def replace_layer(self, old: Layer, new: Layer) -> None:
        """Put ``new`` at ``old``'s position."""
        self._layers[self.index(old)] = new

    def rewire(self, layer: Layer, top_index: int, new_blob: str,
               only: Iterable[Layer] | None = None) -> list[Layer]:
        """Make the readers of ``layer``'s output ``top_index`` read ``new_blob``.

        ``only`` restricts the change to some readers.  Returns the rewired layers.
        """
        keep = None if only is None else {id(x) for x in only}
        changed = []
        for c, i in self.consumers(layer, top_index):
            if keep is None or id(c) in keep:
                c.bottoms[i] = new_blob
                changed.append(c)
        return changed

    def insert_after_output(self, layer: Layer, top_index: int, new: Layer,
                            only: Iterable[Layer] | None = None) -> Layer:
        """Insert ``new`` between an output and its readers.

        ``new`` must read ``layer.tops[top_index]`` as its first bottom and
        write a new blob as its first top; it is placed right after ``layer``,
        and the readers (or ``only`` those) are rewired to its first top.
        """
        readers = [c for c, _ in self.consumers(layer, top_index)
                   if only is None or any(c is o for o in only)]
        self.add_layer(new, after=layer)
        if new.tops and new.tops[0] != layer.tops[top_index]:
            for c in readers:
                for i, b in enumerate(c.bottoms):
                    if b == layer.tops[top_index]:
                        c.bottoms[i] = new.tops[0]
        return new

    def bypass(self, layer: Layer) -> None:
        """Remove a one-in/one-out layer, joining its input to its readers.

        In place (``x -> x``): the layer is dropped; readers of its version of
        ``x`` read the previous one.  Otherwise (``x -> y``): when the producer
        of ``x`` is neither an input nor read by anyone else, it takes over the
        name ``y``, so every blob name seen by the rest of the net (net outputs
        included) is unchanged; else the readers of ``y`` are rewired to ``x``.
        Refused (``GraphError``, graph unchanged) when that would change what a
        reader sees: ``y`` is a net output that would disappear, or ``x`` is
        rewritten in place between the layer and one of its readers.
        """
        if len(layer.bottoms) != 1 or len(layer.tops) != 1:
            raise GraphError(f"{self.source}: layer '{layer.name}': only one-in/one-out layers "
                             "can be bypassed")
        src = self.producer(layer, 0)
        top, bottom = layer.tops[0], layer.bottoms[0]
        if bottom == top:           # in place: the previous version takes its place
            self.remove_layer(layer)
            return
        flow = self.dataflow()
        source_vid = flow.inputs[id(layer)][0]
        readers = self.consumers(layer, 0)
        if src is not None and src[0].type not in INPUT_TYPES \
                and len(self.consumers(src[0], src[1])) == 1:
            # Renaming the producer's top is invisible to everyone else: this
            # layer is its only reader, so ``x`` (that version) is no net output.
            self.remove_layer(layer)
            src[0].tops[src[1]] = top
            return
        if not readers and flow.final.get(top) == flow.outputs[id(layer)][0]:
            raise GraphError(f"{self.source}: cannot bypass layer '{layer.name}': its top '{top}' "
                             f"is a net output and '{bottom}' is also read elsewhere or is a net input")
        index = self.index(layer)
        self.remove_layer(layer)
        for c, i in readers:
            c.bottoms[i] = bottom
        seen = self.dataflow().inputs
        if any(seen[id(c)][i] != source_vid for c, i in readers):
            self._layers.insert(index, layer)       # undo: restore the old wiring
            for c, i in readers:
                c.bottoms[i] = top
            raise GraphError(f"{self.source}: cannot bypass layer '{layer.name}': blob '{bottom}' "
                             "is rewritten in place before a reader of its output")

    def toposort(self) -> None:
        """Reorder layers so every read follows its write and precedes the next
        in-place rewrite of the same blob; otherwise keep the current order.

        A bottom that no earlier layer writes (after a pass moved or rewired
        layers) reads the first write of that name wherever it is.  Raises
        ``GraphCycleError`` when no order satisfies all reads."""
        flow = self.dataflow()
        g = nx.DiGraph()
        pos = {id(x): i for i, x in enumerate(self._layers)}
        for x in self._layers:
            g.add_node(id(x))
        for vid, (src, _) in flow.producer.items():
            readers = flow.consumers.get(vid, ())
            for dst, _ in readers:
                g.add_edge(id(src), id(dst))
        # Anti-dependencies: readers of version k run before the writer of k+1.
        for vid, (writer, _) in flow.producer.items():
            blob = blob_of(vid)
            k = 0 if vid == blob else int(vid.rpartition("@")[2])
            if k > 0:
                prev = value_id(blob, k - 1)
                for r, _ in flow.consumers.get(prev, ()):
                    if r is not writer:
                        g.add_edge(id(r), id(writer))
                if prev in flow.producer:
                    g.add_edge(id(flow.producer[prev][0]), id(writer))
        # Reads that no earlier layer satisfies (a pass moved or rewired
        # something): bind them to the first write of that name anywhere, and
        # keep them before its next in-place rewrite.
        for layer, _, b in flow.missing:
            if b in flow.producer:
                g.add_edge(id(flow.producer[b][0]), id(layer))
                nxt = value_id(b, 1)
                if nxt in flow.producer and flow.producer[nxt][0] is not layer:
                    g.add_edge(id(layer), id(flow.producer[nxt][0]))
        try:
            order = list(nx.lexicographical_topological_sort(g, key=pos.get))
        except nx.NetworkXUnfeasible as e:
            raise GraphCycleError(f"{self.source}: the data flow has a cycle") from e
        by_id = {id(x): x for x in self._layers}
        self._layers = [by_id[i] for i in order]

    def cleanup(self, keep: Iterable[str] | None = None) -> list[Layer]:
        """Remove layers that contribute to no kept blob.

        Kept: ``keep`` blob names (default: the outputs declared at load time,
        or the current outputs), and every layer without tops (sinks such as
        calibration layers).  Returns the removed layers.
        """
        targets = set(keep) if keep is not None else set(
            self.declared_outputs if self.declared_outputs is not None else self.outputs)
        flow = self.dataflow()
        live_ids: set[int] = set()
        stack = [x for x in self._layers if not x.tops or x.type in INPUT_TYPES]
        for b in targets:
            vid = flow.final.get(b)
            if vid is not None and vid in flow.producer:
                stack.append(flow.producer[vid][0])
        while stack:
            x = stack.pop()
            if id(x) in live_ids:
                continue
            live_ids.add(id(x))
            for vid in flow.inputs[id(x)]:
                if vid in flow.producer:
                    stack.append(flow.producer[vid][0])
                # An in-place chain: the earlier writers of the same blob feed it.
        removed = [x for x in self._layers if id(x) not in live_ids]
        self._layers = [x for x in self._layers if id(x) in live_ids]
        return removed

    # ------------------------------------------------------------- validation
    def check(self) -> None:
        """Raise a ``GraphError`` unless the graph is well formed."""
        flow = self.dataflow()
        if flow.missing:
            layer, i, b = flow.missing[0]
            later = [x.name for x in self._layers[self.index(layer):] if b in x.tops]
            if later:
                raise GraphCycleError(
                    f"{self.source}: layer '{layer.name}' reads blob '{b}' which is only "
                    f"produced later (by layer '{later[0]}'): the net has a cycle or is out of order")
            raise MissingBottomError(
                f"{self.source}: layer '{layer.name}' (bottom {i}) reads blob '{b}' "
                "which no earlier layer produces")
        seen: set[str] = set()
        for layer in self._layers:
            if len(set(layer.tops)) != len(layer.tops):
                raise DuplicateNameError(f"{self.source}: layer '{layer.name}' lists a top twice")
            for j, t in enumerate(layer.tops):
                in_place = j < len(layer.bottoms) and layer.bottoms[j] == t
                if t in seen and not in_place:
                    raise DuplicateNameError(
                        f"{self.source}: layer '{layer.name}' writes blob '{t}' which an earlier "
                        "layer already produces (only in-place layers, top i == bottom i, may)")
                seen.add(t)

    # ------------------------------------------------------------------ shapes
    def input_shapes(self) -> dict[str, Shape]:
        """Declared shapes of the net inputs (from the Input layers)."""
        shapes: dict[str, Shape] = {}
        for layer in self._layers:
            if layer.type in INPUT_TYPES:
                ps = layer.param("input_param").shape
                for j, t in enumerate(layer.tops):
                    if not ps:
                        continue
                    s = ps[j] if len(ps) > 1 else ps[0]
                    shapes[t] = tuple(int(d) for d in s.dim)
        return shapes

    def infer_value_shapes(self, input_shapes: dict[str, Shape] | None = None,
                           batch_size: int | None = None) -> dict[str, Shape]:
        """Shapes of every value version (SSA ids), see ``infer_shapes``."""
        self.check()
        flow = self.dataflow()
        given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        declared = self.input_shapes()
        shapes: dict[str, Shape] = {}
        for layer in self._layers:
            if layer.type in INPUT_TYPES:
                outs = []
                for t in layer.tops:
                    s = given.get(t, declared.get(t))
                    if s is None:
                        raise ShapeError(f"{self.source}: input '{t}' has no declared shape; "
                                         "pass input_shapes")
                    if batch_size is not None and t not in given and len(s) > 0:
                        s = (int(batch_size),) + tuple(s[1:])
                    if any(d <= 0 for d in s):
                        raise ShapeError(f"{self.source}: input '{t}' (layer '{layer.name}') has "
                                         f"shape {tuple(s)}; every dimension must be positive")
                    outs.append(tuple(s))
            else:
                ins = [shapes[v] for v in flow.inputs[id(layer)]]
                try:
                    ldef = require_layer_def(layer)
                except UnsupportedLayerError as e:
                    raise UnsupportedLayerError(f"{self.source}: {e}") from None
                where = f"{self.source}: layer '{layer.name}' ({layer.type})"
                try:
                    outs = [tuple(int(d) for d in s) for s in ldef.infer_shapes(layer, ins)]
                except ShapeError as e:
                    if layer.name in str(e):
                        raise ShapeError(f"{self.source}: {e}") from e
                    raise ShapeError(f"{where}: {e}") from e
                except (ValueError, LookupError, ArithmeticError, TypeError, AttributeError) as e:
                    # A shape function tripping over odd parameters is still a
                    # shape problem of this layer, not a crash of the toolkit.
                    raise ShapeError(f"{where}: cannot infer output shape from inputs {ins}: "
                                     f"{type(e).__name__}: {e}") from e
                if len(outs) != len(layer.tops):
                    raise ShapeError(f"{where}: produces {len(outs)} "
                                     f"outputs but lists {len(layer.tops)} tops")
                for s in outs:
                    if any(d < 0 for d in s) or (len(s) and 0 in s and layer.type != "Silence"):
                        raise ShapeError(f"{where}: invalid output "
                                         f"shape {s} from inputs {ins}")
            for vid, s in zip(flow.outputs[id(layer)], outs):
                shapes[vid] = s
        return shapes

    def infer_shapes(self, input_shapes: dict[str, Shape] | None = None,
                     batch_size: int | None = None) -> dict[str, Shape]:
        """Shape of every blob by its Caffe name (an in-place blob: its final
        version).  ``input_shapes`` overrides declared input shapes;
        ``batch_size`` replaces the first axis of the declared ones."""
        vs = self.infer_value_shapes(input_shapes, batch_size)
        return {b: vs[vid] for b, vid in self.dataflow().final.items()}

    def set_input_shape(self, blob: str, shape: Shape) -> None:
        """Change the declared shape of input ``blob`` (e.g. its batch size)."""
        for layer in self._layers:
            if layer.type in INPUT_TYPES and blob in layer.tops:
                ip = layer.params.input_param
                j = layer.tops.index(blob)
                while len(ip.shape) < len(layer.tops):
                    ip.shape.add().CopyFrom(ip.shape[0] if len(ip.shape) else caffe_pb2.BlobShape())
                del ip.shape[j].dim[:]
                ip.shape[j].dim.extend(int(d) for d in shape)
                return
        raise GraphError(f"{self.source}: '{blob}' is not a net input")

    # ------------------------------------------------------------------- misc
    def copy(self) -> "Graph":
        """A structural copy (layers and params copied, weight arrays shared)."""
        g = Graph(self.name, [x.copy() for x in self._layers], source=self.source)
        g.net_params.CopyFrom(self.net_params)
        g.input_style = self.input_style
        g.declared_outputs = None if self.declared_outputs is None else list(self.declared_outputs)
        return g

    def param_count(self) -> int:
        return int(sum(b.size for x in self._layers for b in x.blobs))

    def summary(self) -> str:
        lines = [f"net '{self.name}': {len(self._layers)} layers"]
        for x in self._layers:
            lines.append(f"  {x.name:<24} {x.type:<14} {','.join(x.bottoms):<20} -> {','.join(x.tops)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self._layers)} layers)"


def blobs_equal(a: Graph, b: Graph) -> bool:
    """True when both graphs carry bit-identical blobs layer by layer."""
    if len(a) != len(b):
        return False
    for x, y in zip(a.layers, b.layers):
        if len(x.blobs) != len(y.blobs):
            return False
        for p, q in zip(x.blobs, y.blobs):
            if p.dtype != q.dtype or p.shape != q.shape or p.tobytes() != q.tobytes():
                return False
    return True
