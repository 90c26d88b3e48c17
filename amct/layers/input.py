"""Data-movement layers without computation: Input, Split, Dropout, Silence.

Their kernels return the input arrays themselves (no copy).  That is safe
because no kernel ever writes into its inputs; it saves a full copy per
Split top, which matters for the runtime's speed.
"""
from __future__ import annotations

from amct.ir.registry import LayerDef, Shape, register_layer
from amct.layers._common import need_inputs, shape_error


@register_layer
class InputDef(LayerDef):
    """Net input: shapes come from ``input_param.shape`` (one per top, or one
    shared by all tops).  The runtime feeds its tops; the kernel is only the
    identity on whatever it is handed."""

    type = "Input"
    param_field = "input_param"
    identity = True

    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        ps = layer.param("input_param").shape
        if len(ps) not in (1, len(layer.tops)):
            raise shape_error(layer, f"input_param has {len(ps)} shapes for "
                                     f"{len(layer.tops)} tops (need 1 or one per top)")
        return [tuple(int(d) for d in (ps[j] if len(ps) > 1 else ps[0]).dim)
                for j in range(len(layer.tops))]

    def build(self, layer, in_shapes):
        return lambda xs: list(xs)


@register_layer
class SplitDef(LayerDef):
    """Each top is the bottom (Caffe copies; we share the array)."""

    type = "Split"
    identity = True

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        return [in_shapes[0]] * len(layer.tops)

    def build(self, layer, in_shapes):
        n = len(layer.tops)
        return lambda xs: [xs[0]] * n


@register_layer
class DropoutDef(LayerDef):
    """TEST phase: the identity (Caffe scales at training time only)."""

    type = "Dropout"
    param_field = "dropout_param"
    identity = True

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        return [in_shapes[0]]

    def build(self, layer, in_shapes):
        return lambda xs: [xs[0]]


@register_layer
class SilenceDef(LayerDef):
    """Consumes its bottoms, produces nothing."""

    type = "Silence"

    def infer_shapes(self, layer, in_shapes):
        return []

    def build(self, layer, in_shapes):
        return lambda xs: []
