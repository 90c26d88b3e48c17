"""The node payload of the graph: one Caffe layer."""
from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from amct.proto import caffe_pb2


def _empty_params() -> caffe_pb2.LayerParameter:
    return caffe_pb2.LayerParameter()


@attrs.define(eq=False, repr=False)
class Layer:
    """One layer of a network.

    ``bottoms`` and ``tops`` hold Caffe blob names exactly as they are written
    in the prototxt (an in-place layer has ``tops == bottoms``).  ``params`` is
    the typed parameter record: a ``caffe.LayerParameter`` holding everything
    of the layer except its name, type, bottoms, tops and blobs (the
    ``*_param`` messages, include/exclude rules, ``param`` specs, loss
    weights...).  Keeping it as the schema's own message makes every field of
    every known layer typed and round-trips fields the toolkit does not
    interpret.  ``blobs`` are the learned parameters as numpy arrays.
    """

    name: str
    type: str
    bottoms: list[str] = attrs.field(factory=list, converter=list)
    tops: list[str] = attrs.field(factory=list, converter=list)
    blobs: list[np.ndarray] = attrs.field(factory=list, converter=list)
    params: caffe_pb2.LayerParameter = attrs.field(factory=_empty_params)
    # Free-form annotations passes attach (e.g. quantization factors).  They
    # are never written to Caffe files.
    meta: dict[str, Any] = attrs.field(factory=dict)

    def param(self, field: str) -> Any:
        """The ``*_param`` sub-message ``field`` (its defaults when unset)."""
        return getattr(self.params, field)

    def has_param(self, field: str) -> bool:
        return self.params.HasField(field)

    @property
    def in_place(self) -> bool:
        return bool(self.tops) and self.tops == self.bottoms[: len(self.tops)]

    def copy(self) -> "Layer":
        """A copy whose lists, params and meta are independent (blobs shared)."""
        p = caffe_pb2.LayerParameter()
        p.CopyFrom(self.params)
        return Layer(self.name, self.type, list(self.bottoms), list(self.tops),
                     list(self.blobs), p, dict(self.meta))

    def to_proto(self, with_blobs: bool = False) -> caffe_pb2.LayerParameter:
        """The layer as a ``LayerParameter`` (blobs only when asked)."""
        from amct.ir.blobs import array_to_blobproto

        p = caffe_pb2.LayerParameter()
        p.name = self.name
        p.type = self.type
        p.bottom.extend(self.bottoms)
        p.top.extend(self.tops)
        p.MergeFrom(self.params)
        del p.blobs[:]
        if with_blobs:
            for b in self.blobs:
                p.blobs.add().CopyFrom(array_to_blobproto(b))
        return p

    @classmethod
    def from_proto(cls, p: caffe_pb2.LayerParameter, blobs: list[np.ndarray] | None = None) -> "Layer":
        params = caffe_pb2.LayerParameter()
        params.CopyFrom(p)
        for f in ("name", "type"):
            params.ClearField(f)
        for f in ("bottom", "top", "blobs"):
            params.ClearField(f)
        if blobs is None:
            from amct.ir.blobs import blobproto_to_array
            blobs = [blobproto_to_array(b) for b in p.blobs]
        return cls(p.name, p.type, list(p.bottom), list(p.top), blobs, params)

    def __repr__(self) -> str:
        shapes = ",".join("x".join(map(str, b.shape)) for b in self.blobs)
        return (f"Layer({self.name!r}, {self.type!r}, bottoms={self.bottoms}, "
                f"tops={self.tops}, blobs=[{shapes}])")
