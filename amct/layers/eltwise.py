"""Eltwise: element-wise PROD, SUM (with per-input coefficients) or MAX of
two or more bottoms of identical shape."""
from __future__ import annotations

import numpy as np

from amct.ir.registry import LayerDef, register_layer
from amct.layers._common import f32, inplace, shape_error
from amct.proto import caffe_pb2

_Op = caffe_pb2.EltwiseParameter


@register_layer
class EltwiseDef(LayerDef):
    type = "Eltwise"
    param_field = "eltwise_param"

    def infer_shapes(self, layer, in_shapes):
        if len(in_shapes) < 2:
            raise shape_error(layer, f"needs at least 2 bottoms, got {len(in_shapes)}")
        first = tuple(in_shapes[0])
        for i, s in enumerate(in_shapes[1:], 1):
            if tuple(s) != first:
                raise shape_error(layer, f"bottom {i} has shape {tuple(s)}, bottom 0 has {first} "
                                         "(Eltwise does not broadcast)")
        p = layer.param("eltwise_param")
        if len(p.coeff) and len(p.coeff) != len(in_shapes):
            raise shape_error(layer, f"{len(p.coeff)} coeffs for {len(in_shapes)} bottoms")
        if len(p.coeff) and p.operation == _Op.PROD:
            # Caffe rejects it; with MAX it is silently ignored.
            raise shape_error(layer, "coeff is not allowed with operation PROD")
        return [first]

    def build(self, layer, in_shapes):
        self.infer_shapes(layer, in_shapes)
        p = layer.param("eltwise_param")
        # In place (``reuse``): the first operation writes into the reused
        # input.  With two bottoms either may be reused (the operation is
        # commutative, bit for bit); with more, only bottom 0, which is read
        # before it is overwritten and never again.
        reusable = (0, 1) if len(in_shapes) == 2 else (0,)

        def target(xs, reuse):
            return None if reuse is None else xs[reuse]

        if p.operation == _Op.PROD:
            def prod(xs, reuse=None):
                out = np.multiply(xs[0], xs[1], out=target(xs, reuse))
                for x in xs[2:]:
                    out *= x
                return [out]
            return inplace(prod, reusable)
        if p.operation == _Op.MAX:
            def emax(xs, reuse=None):
                out = np.maximum(xs[0], xs[1], out=target(xs, reuse))
                for x in xs[2:]:
                    np.maximum(out, x, out=out)
                return [out]
            return inplace(emax, reusable)
        coeff = [f32(c) for c in p.coeff] or [f32(1)] * len(in_shapes)
        if all(c == 1 for c in coeff):
            def esum(xs, reuse=None):
                out = np.add(xs[0], xs[1], out=target(xs, reuse))
                for x in xs[2:]:
                    out += x
                return [out]
            return inplace(esum, reusable)

        @inplace
        def wsum(xs, reuse=None):
            # Caffe: top = 0; top += c_i * x_i in bottom order.
            out = np.multiply(xs[0], coeff[0], out=target(xs, reuse))
            tmp = np.empty_like(out) if len(xs) > 1 and any(c != 1 for c in coeff[1:]) else None
            for c, x in zip(coeff[1:], xs[1:]):
                if c == 1:
                    out += x
                else:
                    np.multiply(x, c, out=tmp)
                    out += tmp
            return [out]
        return wsum
