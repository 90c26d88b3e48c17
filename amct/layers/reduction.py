"""Reduction and ArgMax."""
from __future__ import annotations

import numpy as np

from amct.ir.registry import LayerDef, register_layer
from amct.layers._common import canonical_axis, count, f32, need_inputs, shape_error
from amct.proto import caffe_pb2

_R = caffe_pb2.ReductionParameter


@register_layer
class ReductionDef(LayerDef):
    """SUM / ASUM / SUMSQ / MEAN over every axis from ``axis`` on, times
    ``coeff``.  Output shape: input shape[:axis] (0-d for axis 0)."""

    type = "Reduction"
    param_field = "reduction_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        s = tuple(in_shapes[0])
        axis = canonical_axis(layer, layer.param("reduction_param").axis, len(s))
        return [s[:axis]]

    def build(self, layer, in_shapes):
        s = tuple(in_shapes[0])
        p = layer.param("reduction_param")
        axis = canonical_axis(layer, p.axis, len(s))
        out_shape, flat = s[:axis], (count(s, 0, axis), count(s, axis))
        coeff = f32(p.coeff)
        if p.operation == _R.MEAN:
            coeff = f32(coeff / f32(flat[1]))      # Caffe divides coeff by the count at setup
        op = p.operation
        if op not in (_R.SUM, _R.ASUM, _R.SUMSQ, _R.MEAN):
            raise shape_error(layer, f"unknown reduction operation {op}")

        def reduce(xs):
            x = xs[0].reshape(flat)
            if op == _R.ASUM:
                x = np.abs(x)
            elif op == _R.SUMSQ:
                x = np.square(x)
            out = x.sum(axis=1, dtype=np.float32)
            if coeff != 1:
                out *= coeff
            return [out.reshape(out_shape)]
        return reduce


@register_layer
class ArgMaxDef(LayerDef):
    """Indices (as float) of the ``top_k`` largest values.

    With ``axis``: along that axis; output = input with that axis -> top_k,
    holding the values instead of the indices when out_max_val.  Without:
    over all of C*H*W per sample; output (N, 1 or 2, top_k, 1...) with at least
    3 axes, channel 0 the flat indices and channel 1 (out_max_val) the values.
    Ties: Caffe sorts (value, index) pairs descending, so among equal values
    the larger index comes first; we reproduce that.
    """

    type = "ArgMax"
    param_field = "argmax_param"

    def _geometry(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        s = tuple(in_shapes[0])
        p = layer.param("argmax_param")
        k = int(p.top_k)
        if p.HasField("axis"):
            axis = canonical_axis(layer, p.axis, len(s))
            if k < 1 or k > s[axis]:
                raise shape_error(layer, f"top_k {k} must be in [1, {s[axis]}] (size of axis {axis})")
            return axis, k
        if k < 1 or k > count(s, 1):
            raise shape_error(layer, f"top_k {k} must be in [1, {count(s, 1)}]")
        return None, k

    def infer_shapes(self, layer, in_shapes):
        axis, k = self._geometry(layer, in_shapes)
        s = list(in_shapes[0])
        if axis is not None:
            s[axis] = k
            return [tuple(s)]
        out = [1] * max(len(s), 3)
        out[0] = s[0]
        out[2] = k
        if layer.param("argmax_param").out_max_val:
            out[1] = 2
        return [tuple(out)]

    def build(self, layer, in_shapes):
        axis, k = self._geometry(layer, in_shapes)
        out_shape = self.infer_shapes(layer, in_shapes)[0]
        s = tuple(in_shapes[0])
        max_val = layer.param("argmax_param").out_max_val

        def topk_last(x: np.ndarray) -> np.ndarray:
            """Indices of the k largest along the last axis, Caffe's tie order."""
            rev = x[..., ::-1]                     # larger index first among ties
            d = x.shape[-1]
            if k == 1:
                return (d - 1 - np.argmax(rev, axis=-1))[..., None]
            order = np.argsort(-rev, axis=-1, kind="stable")[..., :k]
            return d - 1 - order

        if axis is None:
            def argmax_flat(xs):
                x = xs[0].reshape(s[0], -1)
                idx = topk_last(x)                          # (N, k)
                if max_val:
                    vals = np.take_along_axis(x, idx, axis=1)
                    out = np.stack([idx.astype(np.float32), vals], axis=1)
                else:
                    out = idx.astype(np.float32)[:, None, :]
                return [out.reshape(out_shape)]
            return argmax_flat

        def argmax_axis(xs):
            x = np.moveaxis(xs[0], axis, -1)
            idx = topk_last(x)
            res = np.take_along_axis(x, idx, axis=-1) if max_val else idx.astype(np.float32)
            return [np.ascontiguousarray(np.moveaxis(res, -1, axis))]
        return argmax_axis
