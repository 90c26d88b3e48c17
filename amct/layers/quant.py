"""Quant, DeQuant and AntiQuant: the layers ATC reads in a quantized model (SPEC §6.3-6.4).

Two semantics per layer, chosen at ``bind()`` time from the model itself:

* fake-quant (accuracy simulation, float weights): Quant rounds its input to
  the int8 grid and returns the dequantized float
  ``(clamp(round(x·scale) + offset, −128, 127) − offset) / scale``; DeQuant is
  the identity (its blobs are float; shift is 0).
* deploy (int8 weights): Quant returns the integer ``q − offset`` as int16,
  the object layer accumulates it exactly in int32 (see amct.layers.convolution),
  and DeQuant multiplies the accumulator by the unpacked per-channel deq_scale.

A Quant layer is in deploy mode when its object layer carries int8 weights,
or (for a Pooling object, which has none) when the object's DeQuant holds a
packed uint64 blob.  ``scale`` in quant_param is ``1/scale_d``; ``offset`` is
one signed byte (offset_d); rounding is half away from zero.
"""
from __future__ import annotations

import math

import numpy as np

from amct.errors import QuantizationError
from amct.ir.registry import Kernel, LayerDef, Shape, register_layer
from amct.layers._common import need_inputs, shape_error
from amct.quant.deq_scale import unpack_deq_scale
from amct.quant.rounding import activation_codes

_DEPLOY = "deploy"


def quant_factors(layer) -> tuple[np.float32, int]:
    """``(scale, offset)`` of a Quant/AntiQuant layer's quant_param, checked."""
    p = layer.params.quant_param
    scale = float(p.scale) if p.HasField("scale") else math.nan
    if not (math.isfinite(scale) and scale > 0):
        got = p.scale if p.HasField("scale") else "none"
        raise QuantizationError(f"layer '{layer.name}' ({layer.type}): quant_param.scale must "
                                f"be a finite value > 0, got {got}")
    off = p.offset
    if len(off) > 1:
        raise QuantizationError(f"layer '{layer.name}' ({layer.type}): quant_param.offset must "
                                f"be one byte, got {len(off)}")
    offset = int(np.frombuffer(off, dtype=np.int8)[0]) if off and p.with_offset else 0
    return np.float32(scale), offset


def _deploy_object(graph, name: str) -> bool:
    """Does the quantized layer ``name`` run in integer (deploy) mode?"""
    for x in graph.layers:
        if x.name == name and any(b.dtype == np.int8 for b in x.blobs):
            return True
        if (x.type == "DeQuant" and x.params.dequant_param.object_layer == name
                and x.blobs and x.blobs[0].dtype == np.uint64):
            return True
    return False


class _SameShape(LayerDef):
    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        need_inputs(layer, in_shapes, 1)
        return [in_shapes[0]]


@register_layer
class QuantLayer(_SameShape):
    type = "Quant"
    param_field = "quant_param"

    def bind(self, layer, graph) -> None:
        obj = layer.params.quant_param.object_layer
        layer.meta[_DEPLOY] = bool(obj) and _deploy_object(graph, obj)

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        scale, offset = quant_factors(layer)

        def codes(x: np.ndarray) -> np.ndarray:
            return activation_codes(x, scale, offset)

        def fake(xs: list[np.ndarray]) -> list[np.ndarray]:
            q = codes(xs[0])
            return [np.divide(q, scale, out=q)]      # q is fresh: divide in place

        if layer.meta.get(_DEPLOY):
            return lambda xs: [codes(xs[0]).astype(np.int16)]
        return fake


@register_layer
class DeQuantLayer(_SameShape):
    type = "DeQuant"
    param_field = "dequant_param"

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        if not layer.blobs:
            raise QuantizationError(f"layer '{layer.name}' (DeQuant): has no deq_scale blob")
        blob = layer.blobs[0]
        if blob.dtype != np.uint64:
            # Fake-quant: the object layer already produced dequantized floats.
            return lambda xs: [xs[0]]
        deq, shift, offset_w = unpack_deq_scale(blob)
        if (offset_w != 0).any():
            raise QuantizationError(f"layer '{layer.name}' (DeQuant): offset_w must be 0 "
                                    "(weights are quantized symmetrically)")
        shape = in_shapes[0]
        if deq.size != 1 and (len(shape) < 2 or shape[1] != deq.size):
            raise shape_error(layer, f"{deq.size} deq_scale values for input shape {shape}")
        view = (1, -1) + (1,) * (len(shape) - 2) if deq.size != 1 else (1,) * len(shape)
        d = deq.astype(np.float64).reshape(view)
        n = shift.astype(np.float64).reshape(view)
        shifted = bool((shift != 0).any())

        def run(xs):
            acc = np.asarray(xs[0], dtype=np.float64)
            if shifted:   # arithmetic right shift of the accumulator by N
                acc = np.floor(acc / np.exp2(n))
            return [(acc * d).astype(np.float32)]
        return run


@register_layer
class AntiQuantLayer(_SameShape):
    """int8 codes back to float: ``y = (x − offset) / scale`` with quant_param as in Quant."""

    type = "AntiQuant"
    param_field = "quant_param"

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        scale, offset = quant_factors(layer)
        return lambda xs: [((np.asarray(xs[0], np.float32) - np.float32(offset)) / scale)
                           .astype(np.float32)]
