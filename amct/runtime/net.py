"""``Net``: a pycaffe-compatible face over the numpy executor.

Scripts written for pycaffe run with only the import changed
(``import amct.runtime as caffe``): ``net.blobs[...].data[...] = x``,
``net.forward()``, ``net.params[...][i].data``, ``forward(start=, end=)``,
``forward_all``, ``reshape``, ``save``.  See docs/runtime.md for the table of
what is and is not supported.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Iterable, Mapping

import numpy as np

from amct.errors import AmctError, DataError, GraphError
from amct.ir.graph import Graph
from amct.ir.layer import Layer
from amct.proto import caffe_pb2
from amct.runtime.executor import Observer, Program

log = logging.getLogger("amct.runtime")

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


class UnsupportedPhaseError(AmctError, NotImplementedError):
    """The runtime only runs nets in the TEST phase (inference)."""


def _legacy_dim(shape: tuple[int, ...], axis: int) -> int:
    # Caffe's LegacyShape: a missing axis counts as 1.
    return int(shape[axis]) if axis < len(shape) else 1


class Blob:
    """A named array of the net, like pycaffe's ``Blob``.

    ``data`` is a writable float32 array of the blob's current shape; it is
    allocated (zeros) on first access, so a blob nobody looks at costs
    nothing.  After a forward pass it is the array the layer produced.
    """

    def __init__(self, shape: tuple[int, ...]):
        self._shape = tuple(int(d) for d in shape)
        self._data: np.ndarray | None = None
        self._diff: np.ndarray | None = None

    # The array itself; subclasses redirect it (learned blobs live on the layer).
    def _get(self) -> np.ndarray | None:
        return self._data

    def _put(self, arr: np.ndarray) -> None:
        self._data = arr

    @property
    def data(self) -> np.ndarray:
        a = self._get()
        if a is None or a.shape != self._shape:
            a = np.zeros(self._shape, dtype=np.float32)
            self._put(a)
        elif not a.flags.writeable:
            # Kernels may hand out read-only arrays (broadcast views); the
            # blob's data must be writable like Caffe's memory.
            a = a.copy()
            self._put(a)
        return a

    @property
    def diff(self) -> np.ndarray:
        """Gradients are not computed: always zeros of the blob's shape."""
        if self._diff is None or self._diff.shape != self._shape:
            self._diff = np.zeros(self._shape, dtype=np.float32)
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def count(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def num(self) -> int:
        return _legacy_dim(self._shape, 0)

    @property
    def channels(self) -> int:
        return _legacy_dim(self._shape, 1)

    @property
    def height(self) -> int:
        return _legacy_dim(self._shape, 2)

    @property
    def width(self) -> int:
        return _legacy_dim(self._shape, 3)

    def reshape(self, *shape: int) -> None:
        """Give the blob a new shape (its data becomes zeros of that shape)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        if any(int(d) < 0 for d in shape):
            raise DataError(f"blob reshape: negative dimension in {shape}")
        self._shape = tuple(int(d) for d in shape)
        self._put(np.zeros(self._shape, dtype=np.float32))

    def _set(self, arr: np.ndarray) -> None:
        """Adopt a produced array (no copy)."""
        self._shape = tuple(arr.shape)
        self._put(arr)

    def __repr__(self) -> str:
        return f"Blob(shape={self._shape})"


class ParamBlob(Blob):
    """A learned blob: ``data`` IS ``layer.blobs[i]``, so writing into it
    changes the weights the next forward pass uses."""

    def __init__(self, net: "Net", layer: Layer, index: int):
        self._net, self._layer, self._index = net, layer, index
        super().__init__(layer.blobs[index].shape)

    def _get(self) -> np.ndarray:
        # Handing out the array means it may be written: the net checks the
        # layer's weights for changes before each forward from now on.
        self._net._watch(self._layer)
        return self._layer.blobs[self._index]

    def _put(self, arr: np.ndarray) -> None:
        self._net._watch(self._layer)
        self._layer.blobs[self._index] = arr

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._layer.blobs[self._index].shape)

    @property
    def data(self) -> np.ndarray:
        self._shape = self.shape
        return super().data


class LayerView:
    """What ``net.layers[i]`` gives: the layer's type, name and blobs."""

    def __init__(self, net: "Net", layer: Layer):
        self._net, self.layer = net, layer

    @property
    def type(self) -> str:
        return self.layer.type

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def blobs(self) -> list[ParamBlob]:
        return [ParamBlob(self._net, self.layer, i) for i in range(len(self.layer.blobs))]

    def __repr__(self) -> str:
        return f"<Layer '{self.name}' ({self.type})>"


class _BlobFeeds(Mapping):
    """The net's current blob contents as a feeds mapping for the executor
    (looked up lazily: only the blobs a partial forward reads are touched)."""

    def __init__(self, blobs: "OrderedDict[str, Blob]"):
        self._blobs = blobs

    def __getitem__(self, key: str) -> np.ndarray:
        return self._blobs[key].data

    def __contains__(self, key) -> bool:
        return key in self._blobs

    def __iter__(self):
        return iter(self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)


class Net:
    """A Caffe net on the numpy runtime, with pycaffe's interface.

    ``Net(model_file, weights_file, TEST)``, ``Net(model_file, TEST)`` and
    ``Net(model_file, TEST, weights=weights_file)`` all work, as in pycaffe.
    ``Net.from_graph(graph)`` runs an in-memory graph (sharing its weights).
    """

    def __init__(self, model_file: str, weights_file: str | int | None = None,
                 phase: int = TEST, *, weights: str | None = None):
        if isinstance(weights_file, (int, np.integer)) and not isinstance(weights_file, bool):
            phase, weights_file = int(weights_file), None
        if weights_file is not None and weights is not None:
            raise DataError(f"{model_file}: give the weights file once (positional or weights=)")
        _check_phase(phase, model_file)
        from amct.frontends.caffe import load_caffe

        self._init(load_caffe(str(model_file), None if (weights_file or weights) is None
                              else str(weights_file or weights)))

    @classmethod
    def from_graph(cls, graph: Graph, phase: int = TEST) -> "Net":
        """A net over ``graph`` itself: weight writes through ``params`` land
        in the graph's layers.  Call ``reshape()`` after editing the graph."""
        _check_phase(phase, graph.source)
        net = cls.__new__(cls)
        net._init(graph)
        return net

    def _init(self, graph: Graph) -> None:
        self.graph = graph
        for layer in graph.layers:
            for i, b in enumerate(layer.blobs):
                if isinstance(b, np.ndarray) and not b.flags.writeable:
                    layer.blobs[i] = b.copy()
        self._program = Program(graph)
        self._watched: dict[int, tuple[Layer, list[np.ndarray], list[np.ndarray]]] = {}
        self._blobs: OrderedDict[str, Blob] = OrderedDict()
        self._make_blobs()

    def _make_blobs(self) -> None:
        shapes = self._program.blob_shapes
        old = self._blobs
        self._blobs = OrderedDict()
        for layer in self.graph.layers:
            for t in layer.tops:
                if t not in self._blobs:
                    blob = old.get(t) or Blob(shapes[t])
                    if blob.shape != shapes[t]:
                        blob.reshape(*shapes[t])
                    self._blobs[t] = blob

    # ------------------------------------------------------------- structure
    @property
    def blobs(self) -> "OrderedDict[str, Blob]":
        return self._blobs

    @property
    def params(self) -> "OrderedDict[str, list[ParamBlob]]":
        """Layer name -> its learned blobs (layers without any are absent)."""
        return OrderedDict((x.name, [ParamBlob(self, x, i) for i in range(len(x.blobs))])
                           for x in self.graph.layers if x.blobs)

    @property
    def layers(self) -> list[LayerView]:
        return [LayerView(self, x) for x in self.graph.layers]

    @property
    def layer_dict(self) -> "OrderedDict[str, LayerView]":
        return OrderedDict((x.name, LayerView(self, x)) for x in self.graph.layers)

    @property
    def _layer_names(self) -> list[str]:
        return [x.name for x in self.graph.layers]

    @property
    def _blob_names(self) -> list[str]:
        return list(self._blobs)

    @property
    def top_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((x.name, list(x.tops)) for x in self.graph.layers)

    @property
    def bottom_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((x.name, list(x.bottoms)) for x in self.graph.layers)

    @property
    def inputs(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.graph.outputs)

    @property
    def program(self) -> Program:
        """The compiled executor behind this net."""
        return self._program

    # ------------------------------------------------------------- observers
    def add_observer(self, fn: Observer, blobs: Iterable[str] | None = None,
                     layers: Iterable[str] | None = None) -> Observer:
        """See ``Program.add_observer``: ``fn(layer, top_index, blob_name,
        value_id, array)`` is called as each output is produced."""
        return self._program.add_observer(fn, blobs, layers)

    def remove_observer(self, fn: Observer) -> None:
        self._program.remove_observer(fn)

    # ---------------------------------------------------------------- weights
    def _watch(self, layer: Layer) -> None:
        """Remember ``layer``'s weights as the kernel saw them, to detect
        in-place writes through ``params`` before the next forward."""
        if id(layer) not in self._watched:
            self._watched[id(layer)] = (layer, list(layer.blobs), [b.copy() for b in layer.blobs])

    def _sync_weights(self) -> None:
        changed = []
        for key, (layer, arrays, snap) in self._watched.items():
            same = len(arrays) == len(layer.blobs) and all(
                a is b and s.shape == b.shape and np.array_equal(s, b)
                for a, b, s in zip(arrays, layer.blobs, snap))
            if not same:
                changed.append(layer)
                self._watched[key] = (layer, list(layer.blobs), [b.copy() for b in layer.blobs])
        if changed:
            log.debug("weights changed in %s; re-building their kernels",
                      [x.name for x in changed])
            self._program.rebuild(changed)

    def copy_from(self, weights_file: str) -> None:
        """Load learned blobs from a caffemodel, matched by layer name."""
        from amct.frontends.caffe.loader import attach_weights, check_weights, read_caffemodel

        _, model_layers = read_caffemodel(str(weights_file))
        attach_weights(self.graph, model_layers, str(weights_file))
        for layer in self.graph.layers:
            layer.meta.setdefault("legacy_blob_shape", [False] * len(layer.blobs))
        check_weights(self.graph, str(weights_file))
        for layer in self.graph.layers:
            layer.meta.pop("legacy_blob_shape", None)
        self._watched.clear()
        self._program.recompile()

    def save(self, filename: str) -> None:
        """Write the net with its current weights as a caffemodel."""
        from amct.frontends.caffe import write_caffemodel

        write_caffemodel(self.graph, str(filename))

    # -------------------------------------------------------------- execution
    def reshape(self) -> None:
        """Propagate the input blobs' shapes through the net (as Caffe's
        ``Net::Reshape``): kernels are built for them and every other blob
        takes its new shape."""
        self._program.recompile({t: self._blobs[t].shape for t in self.inputs
                                 if t in self._blobs})
        self._make_blobs()
        shapes = self._program.blob_shapes
        for name, blob in self._blobs.items():
            if blob.shape != shapes[name]:
                blob.reshape(*shapes[name])

    def _feed(self, name: str, arr) -> None:
        if name not in self.inputs:
            raise DataError(f"{self.graph.source}: '{name}' is not a net input "
                            f"(inputs: {self.inputs})")
        arr = np.asarray(arr, dtype=np.float32)
        blob = self._blobs[name]
        if arr.shape != blob.shape:
            if arr.ndim != len(blob.shape):
                raise DataError(f"{self.graph.source}: input '{name}' has shape {arr.shape}, "
                                f"the blob has shape {blob.shape}")
            # pycaffe insists on the blob's batch size; here any shape the
            # net can take is accepted and the net is reshaped for it.
            blob.reshape(*arr.shape)
        blob.data[...] = arr

    def forward(self, blobs: Iterable[str] | None = None, start: str | None = None,
                end: str | None = None, **kwargs) -> dict[str, np.ndarray]:
        """Run the net (or layers ``start``..``end``) as pycaffe's ``forward``.

        Keyword arguments are input arrays, copied into the input blobs.
        Returns ``{blob: array}`` for the net outputs (or the tops of ``end``)
        plus ``blobs``; the arrays are the blobs' new data, which the next
        forward pass replaces rather than overwrites.
        """
        for name, arr in kwargs.items():
            self._feed(name, arr)
        self._sync_weights()
        prog = self._program
        steps = prog.steps
        i0 = 0 if start is None else prog.step_index(start)
        i1 = len(steps) - 1 if end is None else prog.step_index(end)
        written = list(OrderedDict.fromkeys(t for s in steps[i0:i1 + 1] for t in s.layer.tops))
        values = prog.forward(_BlobFeeds(self._blobs), start=i0, end=i1, outputs=written)
        for name in written:
            self._blobs[name]._set(values[name])
        if self._blobs and any(self._blobs[t].shape != prog.blob_shapes[t]
                               for t in self._blobs if t not in written):
            # A new input shape re-shaped the net: the blobs outside the range
            # take their new shapes too (as Caffe reshapes every layer).
            shapes = prog.blob_shapes
            for t, blob in self._blobs.items():
                if t not in written and blob.shape != shapes[t]:
                    blob.reshape(*shapes[t])
        want = list(steps[i1].layer.tops if end is not None else self.outputs)
        want += [b for b in (blobs or ()) if b not in want]
        missing = [b for b in want if b not in self._blobs]
        if missing:
            raise GraphError(f"{self.graph.source}: no blobs named {missing}")
        return {b: self._blobs[b].data for b in want}

    def forward_all(self, blobs: Iterable[str] | None = None, **kwargs) -> dict[str, np.ndarray]:
        """Run over inputs of any length in batches of the net's batch size
        (the last batch zero-padded, as pycaffe does) and concatenate."""
        if not kwargs:
            raise DataError(f"{self.graph.source}: forward_all needs the input arrays")
        if set(kwargs) != set(self.inputs):
            raise DataError(f"{self.graph.source}: forward_all inputs {sorted(kwargs)} do not "
                            f"match the net inputs {self.inputs}")
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in kwargs.items()}
        total = {len(v) for v in arrays.values()}
        if len(total) != 1:
            raise DataError(f"{self.graph.source}: forward_all inputs differ in length: "
                            f"{ {k: len(v) for k, v in arrays.items()} }")
        n = total.pop()
        batch = max(self._blobs[self.inputs[0]].num, 1)
        collected: dict[str, list[np.ndarray]] = OrderedDict()
        for i in range(0, n, batch):
            chunk = {}
            for k, v in arrays.items():
                part = v[i:i + batch]
                if len(part) < batch:
                    pad = np.zeros((batch - len(part),) + part.shape[1:], dtype=np.float32)
                    part = np.concatenate([part, pad])
                chunk[k] = part
            outs = self.forward(blobs=blobs, **chunk)
            for k, v in outs.items():
                collected.setdefault(k, []).append(np.array(v, copy=True))
        return {k: np.concatenate(v)[:n] for k, v in collected.items()}

    def __repr__(self) -> str:
        return f"Net({self.graph.name!r}, {len(self.graph)} layers, inputs={self.inputs})"


def _check_phase(phase: int, where) -> None:
    if phase == TRAIN:
        raise UnsupportedPhaseError(f"{where}: the runtime runs inference only; use phase TEST")
    if phase != TEST:
        raise DataError(f"{where}: unknown phase {phase!r} (use TEST)")
