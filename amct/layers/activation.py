"""Element-wise activation layers (one bottom, one top of the same shape).

ReLU, PReLU, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL, ELU, Threshold,
Clip, Swish, ReLU6.  Kernels allocate exactly one output array and then work
in place on it (``out=``), so a layer costs one pass of allocation, not one
per arithmetic step.  All parameters are cast to float32 at build time so
numpy 2's promotion rules keep the data float32.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from amct.ir.registry import LayerDef, Shape, register_layer
from amct.layers._common import f32, inplace, need_inputs, shape_error

UnaryFn = Callable[[np.ndarray], np.ndarray]


class ElementwiseDef(LayerDef):
    """Base of the one-in/one-out, shape-preserving layers."""

    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        need_inputs(layer, in_shapes, 1)
        return [tuple(in_shapes[0])]

    def make(self, layer, shape: Shape) -> UnaryFn:
        raise NotImplementedError

    def build(self, layer, in_shapes):
        fn = self.make(layer, tuple(in_shapes[0]))
        if getattr(fn, "writes_out", False):
            def kernel(xs, reuse=None):
                x = xs[0]
                return [fn(x, x if reuse == 0 else None)]
            return inplace(kernel)
        return lambda xs: [fn(xs[0])]


def _out_capable(fn: Callable) -> Callable:
    """Mark ``fn(x, out=None)`` as correct when ``out`` is ``x`` itself, so
    the layer may run in place (see ``_common.inplace``)."""
    fn.writes_out = True
    return fn


def _sigmoid_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Caffe's sigmoid, 0.5*tanh(0.5x)+0.5: no overflow for large |x|."""
    np.multiply(x, f32(0.5), out=out)
    np.tanh(out, out=out)
    out *= f32(0.5)
    out += f32(0.5)
    return out


def _slope_kernel(slope):
    """max(x,0) + slope*min(x,0) (leaky ReLU, PReLU); ``slope`` a scalar or an
    array broadcasting over the channel axis."""
    if np.all((slope >= 0) & (slope <= 1)):
        # max(x, s*x) is bit-identical to Caffe's formula for slopes in [0, 1]
        # and needs two passes instead of four.
        @_out_capable
        def fast(x, out=None):
            t = np.multiply(x, slope)
            return np.maximum(x, t, out=t if out is None else out)
        return fast

    @_out_capable
    def general(x, out=None):
        # pos + neg equals Caffe's neg + pos bit for bit (addition commutes).
        neg = np.minimum(x, f32(0))
        neg *= slope
        out = np.maximum(x, f32(0), out=out)
        out += neg
        return out
    return general


@register_layer
class ReLUDef(ElementwiseDef):
    type = "ReLU"
    param_field = "relu_param"

    def make(self, layer, shape):
        slope = f32(layer.param("relu_param").negative_slope)
        if slope == 0:
            return _out_capable(lambda x, out=None: np.maximum(x, f32(0), out=out))
        return _slope_kernel(slope)


@register_layer
class ReLU6Def(ElementwiseDef):
    """min(max(x, 0), 6).  A non-zero ``negative_slope`` (relu6_param, or
    relu_param when relu6_param is absent) scales negative inputs as in
    leaky ReLU; forks differ here, the common nets use none."""

    type = "ReLU6"
    param_field = "relu6_param"

    def make(self, layer, shape):
        if layer.has_param("relu6_param"):
            slope = f32(layer.param("relu6_param").negative_slope)
        else:
            slope = f32(layer.param("relu_param").negative_slope)
        if slope == 0:
            return _out_capable(lambda x, out=None: np.clip(x, f32(0), f32(6), out=out))

        def leaky6(x):
            out = np.minimum(x, f32(0))
            out *= slope
            out += np.clip(x, f32(0), f32(6))
            return out
        return leaky6


@register_layer
class PReLUDef(ElementwiseDef):
    """max(x,0) + a[c]*min(x,0) with c = axis 1.  Blob: (C,) or, with
    channel_shared, a 0-d scalar (Caffe's ``Blob(vector<int>(0))``)."""

    type = "PReLU"
    param_field = "prelu_param"
    min_blobs = 1

    def param_shapes(self, layer, in_shapes):
        if len(in_shapes[0]) < 2:
            raise shape_error(layer, f"needs an input with >= 2 axes, got {in_shapes[0]}")
        if layer.param("prelu_param").channel_shared:
            return [()]
        return [(in_shapes[0][1],)]

    def make(self, layer, shape):
        self.param_shapes(layer, [shape])
        a = np.require(layer.blobs[0], np.float32, ["C", "A"])   # aligned: fast ufunc loops
        if layer.param("prelu_param").channel_shared:
            if a.size != 1:
                raise shape_error(layer, f"channel_shared needs 1 slope, blob has {a.size}")
            a = a.reshape(())
        else:
            if a.size != shape[1]:
                raise shape_error(layer, f"needs {shape[1]} slopes, blob has {a.size}")
            a = a.reshape((shape[1],) + (1,) * (len(shape) - 2))

        return _slope_kernel(a)


@register_layer
class SigmoidDef(ElementwiseDef):
    type = "Sigmoid"
    param_field = "sigmoid_param"

    def make(self, layer, shape):
        return _out_capable(lambda x, out=None: _sigmoid_into(x, np.empty_like(x) if out is None
                                                             else out))


@register_layer
class TanHDef(ElementwiseDef):
    type = "TanH"
    param_field = "tanh_param"

    def make(self, layer, shape):
        return _out_capable(lambda x, out=None: np.tanh(x, out=out))


@register_layer
class AbsValDef(ElementwiseDef):
    type = "AbsVal"

    def make(self, layer, shape):
        return _out_capable(lambda x, out=None: np.abs(x, out=out))


@register_layer
class PowerDef(ElementwiseDef):
    """(shift + scale*x)^power; Caffe outputs a constant when scale or power is 0."""

    type = "Power"
    param_field = "power_param"

    def make(self, layer, shape):
        p = layer.param("power_param")
        power, scale, shift = f32(p.power), f32(p.scale), f32(p.shift)
        if scale == 0 or power == 0:
            const = f32(1) if power == 0 else f32(np.power(shift, power))
            return lambda x: np.full(x.shape, const, dtype=np.float32)

        @_out_capable
        def fn(x, out=None):
            # ``out`` is None or ``x`` itself (in-place run).
            if scale != 1:
                out = np.multiply(x, scale, out=out)
            elif out is None:
                out = x.copy()
            if shift != 0:
                out += shift
            if power == 2:
                np.multiply(out, out, out=out)
            elif power != 1:
                np.power(out, power, out=out)
            return out
        return fn


@register_layer
class ExpDef(ElementwiseDef):
    """base^(shift + scale*x), evaluated as Caffe does:
    base^shift * exp(ln(base)*scale*x); base -1 means e."""

    type = "Exp"
    param_field = "exp_param"

    def make(self, layer, shape):
        p = layer.param("exp_param")
        base, scale, shift = f32(p.base), f32(p.scale), f32(p.shift)
        if base != -1 and base <= 0:
            raise shape_error(layer, f"base must be -1 (e) or positive, got {base}")
        log_base = f32(1) if base == -1 else f32(np.log(base))
        inner = f32(log_base * scale)
        outer = f32(1) if shift == 0 else (f32(np.exp(shift)) if base == -1
                                           else f32(np.power(base, shift)))

        def fn(x):
            out = np.multiply(x, inner) if inner != 1 else x.copy()
            np.exp(out, out=out)
            if outer != 1:
                out *= outer
            return out
        return fn


@register_layer
class LogDef(ElementwiseDef):
    """log_base(shift + scale*x); base -1 means e."""

    type = "Log"
    param_field = "log_param"

    def make(self, layer, shape):
        p = layer.param("log_param")
        base, scale, shift = f32(p.base), f32(p.scale), f32(p.shift)
        if base != -1 and (base <= 0 or base == 1):
            raise shape_error(layer, f"base must be -1 (e) or positive and != 1, got {base}")
        base_scale = f32(1) if base == -1 else f32(1 / np.log(base))

        def fn(x):
            out = np.multiply(x, scale) if scale != 1 else x.copy()
            if shift != 0:
                out += shift
            np.log(out, out=out)
            if base_scale != 1:
                out *= base_scale
            return out
        return fn


@register_layer
class BNLLDef(ElementwiseDef):
    """log(1 + exp(x)) via logaddexp(0, x): no overflow for large x and
    full precision for very negative x."""

    type = "BNLL"

    def make(self, layer, shape):
        zero = f32(0)
        return lambda x: np.logaddexp(zero, x)


@register_layer
class ELUDef(ElementwiseDef):
    """max(x,0) + alpha*(exp(min(x,0)) - 1)."""

    type = "ELU"
    param_field = "elu_param"

    def make(self, layer, shape):
        alpha = f32(layer.param("elu_param").alpha)

        def fn(x):
            out = np.minimum(x, f32(0))
            np.expm1(out, out=out)
            out *= alpha
            out += np.maximum(x, f32(0))
            return out
        return fn


@register_layer
class ThresholdDef(ElementwiseDef):
    """1 where x > threshold, else 0."""

    type = "Threshold"
    param_field = "threshold_param"

    def make(self, layer, shape):
        t = f32(layer.param("threshold_param").threshold)
        return lambda x: np.greater(x, t).astype(np.float32)


@register_layer
class ClipDef(ElementwiseDef):
    """max(min, min(x, max))."""

    type = "Clip"
    param_field = "clip_param"

    def make(self, layer, shape):
        p = layer.param("clip_param")
        lo, hi = f32(p.min), f32(p.max)
        if lo > hi:
            raise shape_error(layer, f"clip_param min {lo} > max {hi}")
        return _out_capable(lambda x, out=None: np.clip(x, lo, hi, out=out))


@register_layer
class SwishDef(ElementwiseDef):
    """x * sigmoid(beta*x)."""

    type = "Swish"
    param_field = "swish_param"

    def make(self, layer, shape):
        beta = f32(layer.param("swish_param").beta)

        def fn(x):
            out = np.multiply(x, beta) if beta != 1 else x.copy()
            _sigmoid_into(out, out)
            out *= x
            return out
        return fn
