"""Layers that move data without arithmetic: Concat, Slice, Flatten, Reshape,
Crop, Tile, Permute, Upsample, ShuffleChannel.

Flatten, Reshape, Slice and Crop return numpy *views* of their input (no
copy); that is safe because no kernel writes into its inputs.
"""
from __future__ import annotations

import numpy as np

from amct.ir.registry import LayerDef, Shape, register_layer
from amct.layers._common import canonical_axis, count, need_inputs, shape_error


# --------------------------------------------------------------------------- Concat
def _concat_axis(layer, ndim: int) -> int:
    p = layer.param("concat_param")
    if p.HasField("concat_dim"):            # legacy field wins, as in Caffe
        if p.concat_dim >= ndim:
            raise shape_error(layer, f"concat_dim {p.concat_dim} out of range for {ndim}-D inputs")
        return int(p.concat_dim)
    return canonical_axis(layer, p.axis, ndim)


@register_layer
class ConcatDef(LayerDef):
    type = "Concat"
    param_field = "concat_param"

    def infer_shapes(self, layer, in_shapes):
        if not in_shapes:
            raise shape_error(layer, "needs at least one bottom")
        first = tuple(in_shapes[0])
        axis = _concat_axis(layer, len(first))
        total = 0
        for i, s in enumerate(in_shapes):
            s = tuple(s)
            if len(s) != len(first) or s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise shape_error(layer, f"bottom {i} shape {s} does not match bottom 0 shape "
                                         f"{first} outside concat axis {axis}")
            total += s[axis]
        return [first[:axis] + (total,) + first[axis + 1:]]

    def build(self, layer, in_shapes):
        axis = _concat_axis(layer, len(in_shapes[0]))
        if len(in_shapes) == 1:
            return lambda xs: [xs[0]]
        return lambda xs: [np.concatenate(xs, axis=axis)]


# --------------------------------------------------------------------------- Slice
def _slice_bounds(layer, shape: Shape, ntops: int) -> tuple[int, list[tuple[int, int]]]:
    p = layer.param("slice_param")
    if p.HasField("slice_dim"):
        axis = int(p.slice_dim)
        if axis >= len(shape):
            raise shape_error(layer, f"slice_dim {axis} out of range for input {shape}")
    else:
        axis = canonical_axis(layer, p.axis, len(shape))
    dim = shape[axis]
    if len(p.slice_point):
        if len(p.slice_point) != ntops - 1:
            raise shape_error(layer, f"{len(p.slice_point)} slice_points need "
                                     f"{len(p.slice_point) + 1} tops, got {ntops}")
        points = [0] + [int(v) for v in p.slice_point] + [dim]
        if any(b <= a for a, b in zip(points[:-1], points[1:])):
            raise shape_error(layer, f"slice_points {list(p.slice_point)} must increase "
                                     f"strictly within (0, {dim}) on axis {axis}")
    else:
        if ntops == 0 or dim % ntops:
            raise shape_error(layer, f"axis {axis} of size {dim} cannot be split equally "
                                     f"into {ntops} tops")
        step = dim // ntops
        points = list(range(0, dim + 1, step))
    return axis, list(zip(points[:-1], points[1:]))


@register_layer
class SliceDef(LayerDef):
    type = "Slice"
    param_field = "slice_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        s = tuple(in_shapes[0])
        axis, bounds = _slice_bounds(layer, s, len(layer.tops))
        return [s[:axis] + (b - a,) + s[axis + 1:] for a, b in bounds]

    def build(self, layer, in_shapes):
        axis, bounds = _slice_bounds(layer, tuple(in_shapes[0]), len(layer.tops))
        lead = (slice(None),) * axis
        index = [lead + (slice(a, b),) for a, b in bounds]
        return lambda xs: [xs[0][i] for i in index]


# --------------------------------------------------------------------------- Flatten / Reshape
@register_layer
class FlattenDef(LayerDef):
    """Merge axes [axis, end_axis] into one."""

    type = "Flatten"
    param_field = "flatten_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        s = tuple(in_shapes[0])
        p = layer.param("flatten_param")
        a = canonical_axis(layer, p.axis, len(s))
        e = canonical_axis(layer, p.end_axis, len(s), "end_axis")
        if e < a:
            raise shape_error(layer, f"end_axis {p.end_axis} comes before axis {p.axis}")
        return [s[:a] + (count(s, a, e + 1),) + s[e + 1:]]

    def build(self, layer, in_shapes):
        out = self.infer_shapes(layer, in_shapes)[0]
        return lambda xs: [xs[0].reshape(out)]


def _reshape_shape(layer, s: Shape) -> Shape:
    """Caffe's ReshapeLayer::Reshape: dims 0 copy the input dim at the same
    position, one -1 is inferred; ``axis``/``num_axes`` choose which input
    axes the new dims replace."""
    p = layer.param("reshape_param")
    dims = [int(d) for d in p.shape.dim]
    if dims.count(-1) > 1:
        raise shape_error(layer, f"at most one -1 allowed in shape {dims}")
    if any(d < -1 for d in dims):
        raise shape_error(layer, f"invalid dim in shape {dims}")
    nd = len(s)
    start = p.axis if p.axis >= 0 else nd + p.axis + 1
    if not 0 <= start <= nd:
        raise shape_error(layer, f"axis {p.axis} out of range for input {s}")
    if p.num_axes < -1:
        raise shape_error(layer, f"num_axes must be >= -1, got {p.num_axes}")
    end = nd if p.num_axes == -1 else start + p.num_axes
    if end > nd:
        raise shape_error(layer, f"axis {p.axis} + num_axes {p.num_axes} exceeds input {s}")
    new = list(dims)
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= nd:
                raise shape_error(layer, f"dim {i} is 0 (copy) but input {s} has no axis {start + i}")
            new[i] = s[start + i]
    out = list(s[:start]) + new + list(s[end:])
    total = count(s)
    if -1 in new:
        j = start + new.index(-1)
        known = count([d for k, d in enumerate(out) if k != j])
        if known == 0 or total % known:
            raise shape_error(layer, f"cannot infer the -1 dim of {dims}: input {s} has {total} "
                                     f"elements, not a multiple of {known}")
        out[j] = total // known
    if count(out) != total:
        raise shape_error(layer, f"output shape {tuple(out)} has {count(out)} elements, "
                                 f"input {s} has {total}")
    return tuple(out)


@register_layer
class ReshapeDef(LayerDef):
    type = "Reshape"
    param_field = "reshape_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        return [_reshape_shape(layer, tuple(in_shapes[0]))]

    def build(self, layer, in_shapes):
        out = _reshape_shape(layer, tuple(in_shapes[0]))
        return lambda xs: [xs[0].reshape(out)]


# --------------------------------------------------------------------------- Crop
def _crop_geometry(layer, in_shapes) -> tuple[Shape, list[int]]:
    need_inputs(layer, in_shapes, 2)
    x, ref = tuple(in_shapes[0]), tuple(in_shapes[1])
    if len(x) != len(ref):
        raise shape_error(layer, f"input {x} and reference {ref} differ in number of axes")
    p = layer.param("crop_param")
    axis = canonical_axis(layer, p.axis, len(x))
    n = len(x) - axis
    if len(p.offset) not in (0, 1, n):
        raise shape_error(layer, f"{len(p.offset)} offsets given; need 0, 1 or {n} "
                                 f"(one per axis from {axis})")
    offsets = [0] * len(x)
    out = list(x)
    for i in range(axis, len(x)):
        off = 0 if not len(p.offset) else int(p.offset[0] if len(p.offset) == 1 else p.offset[i - axis])
        if off + ref[i] > x[i]:
            raise shape_error(layer, f"axis {i}: offset {off} + size {ref[i]} exceeds input size {x[i]}")
        offsets[i] = off
        out[i] = ref[i]
    return tuple(out), offsets


@register_layer
class CropDef(LayerDef):
    """Crop bottom 0 to bottom 1's size on every axis from ``axis`` on."""

    type = "Crop"
    param_field = "crop_param"

    def infer_shapes(self, layer, in_shapes):
        return [_crop_geometry(layer, in_shapes)[0]]

    def build(self, layer, in_shapes):
        out, offsets = _crop_geometry(layer, in_shapes)
        index = tuple(slice(o, o + n) for o, n in zip(offsets, out))
        return lambda xs: [xs[0][index]]


# --------------------------------------------------------------------------- Tile
@register_layer
class TileDef(LayerDef):
    """Repeat the whole block from ``axis`` on ``tiles`` times along ``axis``."""

    type = "Tile"
    param_field = "tile_param"

    def _geometry(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        p = layer.param("tile_param")
        axis = canonical_axis(layer, p.axis, len(in_shapes[0]))
        if not p.HasField("tiles") or p.tiles < 1:
            raise shape_error(layer, "tile_param.tiles must be set and >= 1")
        return axis, int(p.tiles)

    def infer_shapes(self, layer, in_shapes):
        axis, tiles = self._geometry(layer, in_shapes)
        s = list(in_shapes[0])
        s[axis] *= tiles
        return [tuple(s)]

    def build(self, layer, in_shapes):
        axis, tiles = self._geometry(layer, in_shapes)
        reps = [1] * len(in_shapes[0])
        reps[axis] = tiles
        return lambda xs: [np.tile(xs[0], reps)]


# --------------------------------------------------------------------------- Permute (SSD)
def _permute_order(layer, ndim: int) -> list[int]:
    """SSD's rule: the listed axes first, then the unlisted ones in order."""
    order = []
    for o in layer.param("permute_param").order:
        if o >= ndim:
            raise shape_error(layer, f"order {o} out of range for a {ndim}-D input")
        if o in order:
            raise shape_error(layer, f"axis {o} appears twice in order")
        order.append(int(o))
    return order + [i for i in range(ndim) if i not in order]


@register_layer
class PermuteDef(LayerDef):
    type = "Permute"
    param_field = "permute_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        s = tuple(in_shapes[0])
        return [tuple(s[o] for o in _permute_order(layer, len(s)))]

    def build(self, layer, in_shapes):
        order = _permute_order(layer, len(in_shapes[0]))
        if order == sorted(order):
            return lambda xs: [xs[0]]
        # A contiguous result: the next layer is almost always a Flatten or
        # Reshape, which would otherwise copy anyway.
        return lambda xs: [np.ascontiguousarray(xs[0].transpose(order))]


# --------------------------------------------------------------------------- Upsample
def _upsample_geometry(layer, in_shapes) -> tuple[int, int]:
    need_inputs(layer, in_shapes, 1, 2)
    s = tuple(in_shapes[0])
    if len(s) != 4:
        raise shape_error(layer, f"needs a 4-D input, got {s}")
    if len(in_shapes) == 2 and tuple(in_shapes[1]) != s:
        raise shape_error(layer, f"mask shape {tuple(in_shapes[1])} differs from input {s}")
    p = layer.param("upsample_param")
    sh = p.scale_h if p.HasField("scale_h") else p.scale
    sw = p.scale_w if p.HasField("scale_w") else p.scale
    if sh < 1 or sw < 1:
        raise shape_error(layer, f"scale must be >= 1, got {sh}x{sw}")
    oh = p.upsample_h if p.HasField("upsample_h") else s[2] * sh - int(p.pad_out_h)
    ow = p.upsample_w if p.HasField("upsample_w") else s[3] * sw - int(p.pad_out_w)
    return int(oh), int(ow)


@register_layer
class UpsampleDef(LayerDef):
    """Upsample (tag 149), two fork semantics chosen by the bottom count.

    One bottom (YOLOv3 forks): nearest-neighbour, out[h, w] = x[h*H//OH, w*W//OW]
    with OH = H*scale_h (= x repeated ``scale`` times along H and W).
    Two bottoms (SegNet): max-unpooling; bottom 1 is the argmax mask of a
    Pooling layer (flat index into the OH*OW output plane), every other
    output is 0.  OH/OW: upsample_h/upsample_w if set, else H*scale - pad_out.
    """

    type = "Upsample"
    param_field = "upsample_param"

    def infer_shapes(self, layer, in_shapes):
        oh, ow = _upsample_geometry(layer, in_shapes)
        n, c = in_shapes[0][:2]
        return [(n, c, oh, ow)]

    def build(self, layer, in_shapes):
        oh, ow = _upsample_geometry(layer, in_shapes)
        n, c, h, w = in_shapes[0]
        if len(in_shapes) == 2:
            def unpool(xs):
                x, mask = xs
                out = np.zeros((n * c, oh * ow), dtype=x.dtype)
                idx = mask.reshape(n * c, h * w).astype(np.intp)
                if idx.size and (idx.min() < 0 or idx.max() >= oh * ow):
                    raise shape_error(layer, f"mask index outside the {oh}x{ow} output")
                np.put_along_axis(out, idx, x.reshape(n * c, h * w), axis=1)
                return [out.reshape(n, c, oh, ow)]
            return unpool
        if oh % h == 0 and ow % w == 0:
            fh, fw = oh // h, ow // w

            def nearest(xs):
                x = xs[0]
                b = np.broadcast_to(x[:, :, :, None, :, None], (n, c, h, fh, w, fw))
                return [b.reshape(n, c, oh, ow)]
            return nearest
        rows = (np.arange(oh) * h) // oh
        cols = (np.arange(ow) * w) // ow
        return lambda xs: [xs[0][:, :, rows[:, None], cols[None, :]]]


# --------------------------------------------------------------------------- ShuffleChannel
@register_layer
class ShuffleChannelDef(LayerDef):
    """ShuffleNet: channels viewed as (group, C/group), transposed, flattened
    back (input channel i*C/g + j goes to output channel j*g + i)."""

    type = "ShuffleChannel"
    param_field = "shuffle_channel_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 1)
        s = tuple(in_shapes[0])
        g = layer.param("shuffle_channel_param").group
        if len(s) < 2 or g < 1 or s[1] % g:
            raise shape_error(layer, f"group {g} does not divide the channels of input {s}")
        return [s]

    def build(self, layer, in_shapes):
        s = self.infer_shapes(layer, in_shapes)[0]
        g = int(layer.param("shuffle_channel_param").group)
        if g == 1 or g == s[1]:
            return lambda xs: [xs[0]]
        view = (s[0], g, s[1] // g) + s[2:]
        return lambda xs: [np.ascontiguousarray(xs[0].reshape(view).swapaxes(1, 2)).reshape(s)]
