"""Normalising and affine layers: BatchNorm, Scale, Bias, Softmax, LRN, MVN,
Normalize (SSD).

BatchNorm and Scale/Bias with learned blobs fold their parameters into
broadcast-ready per-channel arrays at build time, so a forward pass is two
whole-tensor numpy operations into one fresh output array.
"""
from __future__ import annotations

import numpy as np

from amct.errors import WeightsError
from amct.ir.registry import LayerDef, Shape, register_layer
from amct.layers._common import (canonical_axis, channel_view_shape, count, f32, inplace,
                                 need_inputs, shape_error)
from amct.proto import caffe_pb2


def _blob(layer, i: int, shape: tuple, what: str) -> np.ndarray:
    """Learned blob ``i`` as float32 of ``shape`` (same element count accepted,
    so legacy 4-D blob shapes load)."""
    if len(layer.blobs) <= i:
        raise WeightsError(f"layer '{layer.name}' ({layer.type}): missing blob {i} ({what})")
    b = np.require(layer.blobs[i], np.float32, ["C", "A"])   # aligned: fast ufunc loops
    if b.size != count(shape):
        raise WeightsError(f"layer '{layer.name}' ({layer.type}): blob {i} ({what}) has shape "
                           f"{tuple(b.shape)}, expected {tuple(shape)}")
    return b.reshape(shape)


# --------------------------------------------------------------------------- BatchNorm
@register_layer
class BatchNormDef(LayerDef):
    """(x - mean) / sqrt(var + eps) per channel (axis 1).

    Blobs: mean*s, var*s, s (Caffe's moving-average bookkeeping): the layer
    uses mean = b0/s, var = b1/s, and 0 for both when s == 0.  In TEST phase
    ``use_global_stats`` defaults to true; when it is explicitly false the
    batch's own statistics are used (as Caffe does).
    """

    type = "BatchNorm"
    param_field = "batch_norm_param"
    min_blobs = 3

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        return [tuple(in_shapes[0])]

    @staticmethod
    def _channels(shape: Shape) -> int:
        return 1 if len(shape) == 1 else int(shape[1])

    def param_shapes(self, layer, in_shapes):
        c = self._channels(in_shapes[0])
        return [(c,), (c,), (1,)]

    def build(self, layer, in_shapes):
        shape = tuple(in_shapes[0])
        p = layer.param("batch_norm_param")
        eps = f32(p.eps)
        c = self._channels(shape)
        bshape = channel_view_shape(len(shape), 1, (c,)) if len(shape) > 1 else (1,)
        global_stats = p.use_global_stats if p.HasField("use_global_stats") else True
        if not global_stats:
            axes = tuple(i for i in range(len(shape)) if i != 1) if len(shape) > 1 else (0,)

            def batch_stats(xs):
                x = xs[0]
                mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
                out = x - mean
                var = np.square(out).mean(axis=axes, keepdims=True, dtype=np.float32)
                out /= np.sqrt(var + eps)
                return [out]
            return batch_stats
        s = _blob(layer, 2, (1,), "scale factor")[0]
        factor = f32(0) if s == 0 else f32(1) / s
        mean = _blob(layer, 0, (c,), "mean") * factor
        var = _blob(layer, 1, (c,), "variance") * factor
        mean = mean.reshape(bshape)
        inv_std = (f32(1) / np.sqrt(var + eps)).astype(np.float32).reshape(bshape)

        def bn(xs, reuse=None):
            out = np.subtract(xs[0], mean, out=xs[0] if reuse == 0 else None)
            out *= inv_std
            return [out]
        return inplace(bn)


# --------------------------------------------------------------------------- Scale / Bias
def _affine_geometry(layer, in_shapes, p) -> tuple[int, Shape]:
    """(axis, parameter shape) of Scale/Bias, following Caffe's rules: with a
    second bottom the parameter is that bottom; otherwise it spans
    ``num_axes`` axes of the input from ``axis`` (-1: to the end)."""
    need_inputs(layer, in_shapes, 1, 2)
    x = tuple(in_shapes[0])
    if len(in_shapes) == 2:
        s = tuple(in_shapes[1])
        axis = 0 if len(s) == 0 else canonical_axis(layer, p.axis, len(x))
    else:
        if p.num_axes < -1:
            raise shape_error(layer, f"num_axes must be >= -1, got {p.num_axes}")
        axis = canonical_axis(layer, p.axis, len(x)) if x else 0
        end = len(x) if p.num_axes == -1 else axis + p.num_axes
        if end > len(x):
            raise shape_error(layer, f"axis {axis} + num_axes {p.num_axes} exceeds the "
                                     f"{len(x)} axes of input {x}")
        s = x[axis:end]
        if p.num_axes == 0:
            axis = 0
    if x[axis:axis + len(s)] != s:
        raise shape_error(layer, f"parameter shape {s} does not match input {x} at axis {axis}")
    return axis, s


@register_layer
class ScaleDef(LayerDef):
    """y = x * gamma (+ beta), gamma learned (1 bottom) or the 2nd bottom."""

    type = "Scale"
    param_field = "scale_param"

    def infer_shapes(self, layer, in_shapes):
        _affine_geometry(layer, in_shapes, layer.param("scale_param"))
        return [tuple(in_shapes[0])]

    def param_shapes(self, layer, in_shapes):
        p = layer.param("scale_param")
        _, s = _affine_geometry(layer, in_shapes, p)
        shapes = [s] if len(in_shapes) == 1 else []
        return shapes + ([s] if p.bias_term else [])

    def build(self, layer, in_shapes):
        p = layer.param("scale_param")
        ndim = len(in_shapes[0])
        axis, s = _affine_geometry(layer, in_shapes, p)
        bshape = channel_view_shape(ndim, axis, s)
        bias = None
        if p.bias_term:
            bias = _blob(layer, 1 if len(in_shapes) == 1 else 0, s, "bias").reshape(bshape)
        if len(in_shapes) == 1:
            gamma = _blob(layer, 0, s, "scale").reshape(bshape)

            def scale(xs, reuse=None):
                out = np.multiply(xs[0], gamma, out=xs[0] if reuse == 0 else None)
                if bias is not None:
                    out += bias
                return [out]
            return inplace(scale)

        def scale2(xs, reuse=None):
            out = np.multiply(xs[0], xs[1].reshape(bshape), out=xs[0] if reuse == 0 else None)
            if bias is not None:
                out += bias
            return [out]
        return inplace(scale2)


@register_layer
class BiasDef(LayerDef):
    """y = x + beta, beta learned (1 bottom) or the 2nd bottom."""

    type = "Bias"
    param_field = "bias_param"

    def infer_shapes(self, layer, in_shapes):
        _affine_geometry(layer, in_shapes, layer.param("bias_param"))
        return [tuple(in_shapes[0])]

    def param_shapes(self, layer, in_shapes):
        _, s = _affine_geometry(layer, in_shapes, layer.param("bias_param"))
        return [s] if len(in_shapes) == 1 else []

    def build(self, layer, in_shapes):
        ndim = len(in_shapes[0])
        axis, s = _affine_geometry(layer, in_shapes, layer.param("bias_param"))
        bshape = channel_view_shape(ndim, axis, s)
        if len(in_shapes) == 1:
            beta = _blob(layer, 0, s, "bias").reshape(bshape)
            return inplace(lambda xs, reuse=None: [np.add(xs[0], beta,
                                                          out=xs[0] if reuse == 0 else None)])
        return inplace(lambda xs, reuse=None: [np.add(xs[0], xs[1].reshape(bshape),
                                                      out=xs[0] if reuse == 0 else None)])


# --------------------------------------------------------------------------- Softmax
@register_layer
class SoftmaxDef(LayerDef):
    """exp(x - max) / sum along ``axis`` (max subtracted as Caffe does)."""

    type = "Softmax"
    param_field = "softmax_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        canonical_axis(layer, layer.param("softmax_param").axis, len(in_shapes[0]))
        return [tuple(in_shapes[0])]

    def build(self, layer, in_shapes):
        axis = canonical_axis(layer, layer.param("softmax_param").axis, len(in_shapes[0]))

        def softmax(xs):
            x = xs[0]
            out = np.subtract(x, x.max(axis=axis, keepdims=True))
            np.exp(out, out=out)
            out /= out.sum(axis=axis, keepdims=True)
            return [out]
        return softmax


# --------------------------------------------------------------------------- LRN
def _neg_power_mul(x: np.ndarray, scale: np.ndarray, beta: np.float32) -> np.ndarray:
    """x * scale^-beta, overwriting ``scale``.  beta 0.75 (AlexNet/GoogLeNet)
    uses two square roots instead of pow, several times faster."""
    if beta == f32(0.75):
        t = np.sqrt(scale)
        t *= scale                      # scale^1.5
        np.sqrt(t, out=t)               # scale^0.75
        np.divide(x, t, out=t)
        return t
    np.power(scale, -beta, out=scale)
    scale *= x
    return scale


def _window_sum(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Zero-padded centred window sum of odd ``size`` along ``axis``: one
    shifted slice-add per window offset, no padded copy."""
    pre = (size - 1) // 2
    n = a.shape[axis]
    acc = a.copy()
    idx_l = [slice(None)] * a.ndim
    idx_r = [slice(None)] * a.ndim
    for d in range(-pre, pre + 1):
        if d == 0:
            continue
        lo, hi = max(0, -d), min(n, n - d)
        if lo >= hi:
            continue
        idx_l[axis] = slice(lo, hi)
        idx_r[axis] = slice(lo + d, hi + d)
        acc[tuple(idx_l)] += a[tuple(idx_r)]
    return acc


@register_layer
class LRNDef(LayerDef):
    """Local response normalisation, 4-D input.

    ACROSS_CHANNELS: x / (k + alpha/n * sum_{n channels} x^2)^beta, channel
    window zero-padded.  WITHIN_CHANNEL: Caffe builds it from AVE pooling and
    Power, giving x / (1 + alpha/n^2 * sum_{n x n} x^2)^beta with a zero-padded
    spatial window and divisor always n^2; ``k`` is not used.
    """

    type = "LRN"
    param_field = "lrn_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        if len(in_shapes[0]) != 4:
            raise shape_error(layer, f"needs a 4-D input, got {in_shapes[0]}")
        if layer.param("lrn_param").local_size % 2 != 1:
            raise shape_error(layer, "local_size must be odd")
        return [tuple(in_shapes[0])]

    def build(self, layer, in_shapes):
        self.infer_shapes(layer, in_shapes)
        p = layer.param("lrn_param")
        size, alpha, beta, k = int(p.local_size), f32(p.alpha), f32(p.beta), f32(p.k)
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            alpha_n = f32(alpha / f32(size))

            def across(xs):
                x = xs[0]
                sq = np.square(x)
                sq *= alpha_n
                scale = _window_sum(sq, 1, size)
                scale += k
                return [_neg_power_mul(x, scale, beta)]
            return across

        inv_area = f32(1.0 / (size * size))

        def within(xs):
            x = xs[0]
            s = _window_sum(_window_sum(np.square(x), 2, size), 3, size)
            s *= inv_area           # AVE pooling's divisor
            s *= alpha              # Power layer: (1 + alpha * avg)^-beta
            s += f32(1)
            return [_neg_power_mul(x, s, beta)]
        return within


# --------------------------------------------------------------------------- MVN
@register_layer
class MVNDef(LayerDef):
    """Mean (and variance) normalisation per (n, c), or per n when
    across_channels; eps is added to the standard deviation, not the variance."""

    type = "MVN"
    param_field = "mvn_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        return [tuple(in_shapes[0])]

    def build(self, layer, in_shapes):
        shape = tuple(in_shapes[0])
        p = layer.param("mvn_param")
        eps, norm_var = f32(p.eps), p.normalize_variance
        rows = shape[0] if p.across_channels or len(shape) < 2 else shape[0] * shape[1]
        flat = (rows, count(shape) // max(rows, 1))

        def mvn(xs):
            x = xs[0].reshape(flat)
            out = x - x.mean(axis=1, keepdims=True, dtype=np.float32)
            if norm_var:
                std = np.sqrt(np.square(out).mean(axis=1, keepdims=True, dtype=np.float32))
                std += eps
                out /= std
            return [out.reshape(shape)]
        return mvn


# --------------------------------------------------------------------------- Normalize (SSD)
@register_layer
class NormalizeDef(LayerDef):
    """SSD's L2 normalisation with a learned scale.

    across_spatial: x / sqrt(sum_{C,H,W} x^2 + eps) per sample; otherwise
    x / sqrt(sum_C x^2 + eps) per pixel.  Then times scale[c] (or one shared
    scale).  Blob: (C,), or 0-d when channel_shared (as SSD creates it).
    """

    type = "Normalize"
    param_field = "norm_param"
    min_blobs = 1

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        if len(in_shapes[0]) < 2:
            raise shape_error(layer, f"needs an input with >= 2 axes, got {in_shapes[0]}")
        return [tuple(in_shapes[0])]

    def param_shapes(self, layer, in_shapes):
        self.infer_shapes(layer, in_shapes)
        return [()] if layer.param("norm_param").channel_shared else [(in_shapes[0][1],)]

    def build(self, layer, in_shapes):
        shape = tuple(in_shapes[0])
        p = layer.param("norm_param")
        eps = f32(p.eps)
        n, c = shape[0], shape[1]
        view = (n, c, count(shape, 2))
        if p.channel_shared:
            scale = _blob(layer, 0, (), "scale")
        else:
            scale = _blob(layer, 0, (c,), "scale").reshape(1, c, 1)
        across = p.across_spatial

        def normalize(xs):
            x = xs[0].reshape(view)
            sq = np.square(x)
            if across:
                norm = sq.sum(axis=(1, 2), keepdims=True, dtype=np.float32)
            else:
                norm = sq.sum(axis=1, keepdims=True, dtype=np.float32)
            norm += eps
            np.sqrt(norm, out=norm)
            if across:
                out = np.multiply(x, f32(1) / norm)
            else:
                out = np.divide(x, norm)
            out *= scale
            return [out.reshape(shape)]
        return normalize
