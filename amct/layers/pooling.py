"""Pooling (Caffe semantics): MAX, AVE, STOCHASTIC (TEST-phase form).

Output size: ``ceil((in + 2*pad - k) / stride) + 1`` (``round_mode: FLOOR``
rounds down), then, when there is padding, a last window that starts at or
past ``in + pad`` is dropped.  MAX takes the maximum over the window clipped to
the image (padding never wins; an empty window gives -FLT_MAX like Caffe).
AVE sums the window clipped to the image and divides by the window clipped to
``[-pad, in + pad)``.  STOCHASTIC in TEST is Caffe's probability-weighted
average ``sum(x*x) / sum(x)`` over the window without padding.

The kernels run one numpy operation per kernel tap on contiguous slices of
the padded input split into stride phases (``_im2col.PhaseLayout``).  Integer input (a
deploy model): MAX keeps the dtype, AVE returns float64 ``sum / divisor``.
"""
from __future__ import annotations

import numpy as np

from amct.errors import ShapeError, UnsupportedLayerError
from amct.ir.registry import Kernel, LayerDef, Shape, register_layer
from amct.layers import _im2col as ic
from amct.proto import caffe_pb2

_PP = caffe_pb2.PoolingParameter
_FLT_MAX = float(np.finfo(np.float32).max)


def pool_geometry(layer, in_shape: Shape) -> tuple[ic.Window, int, int]:
    """The window and output size (oh, ow) of a Pooling layer, as Caffe computes them."""
    if len(in_shape) != 4:
        raise ShapeError(f"layer '{layer.name}' (Pooling): input must be 4-D (N, C, H, W), "
                         f"got {tuple(in_shape)}")
    pp = layer.param("pooling_param")
    h, w = int(in_shape[2]), int(in_shape[3])
    if pp.global_pooling:
        if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
            raise ShapeError(f"layer '{layer.name}' (Pooling): global_pooling takes no kernel size")
        kh, kw = h, w
    elif pp.HasField("kernel_size"):
        if pp.HasField("kernel_h") or pp.HasField("kernel_w"):
            raise ShapeError(f"layer '{layer.name}' (Pooling): give kernel_size or "
                             "kernel_h and kernel_w, not both")
        kh = kw = pp.kernel_size
    elif pp.HasField("kernel_h") and pp.HasField("kernel_w"):
        kh, kw = pp.kernel_h, pp.kernel_w
    else:
        raise ShapeError(f"layer '{layer.name}' (Pooling): kernel_size (or kernel_h and "
                         "kernel_w) is required")
    if pp.HasField("pad_h") or pp.HasField("pad_w"):
        ph, pw = pp.pad_h, pp.pad_w
    else:
        ph = pw = pp.pad
    if pp.HasField("stride_h") or pp.HasField("stride_w"):
        sh, sw = pp.stride_h, pp.stride_w
    else:
        sh = sw = pp.stride
    if pp.global_pooling and (ph or pw or sh != 1 or sw != 1):
        raise ShapeError(f"layer '{layer.name}' (Pooling): global pooling needs pad 0 and stride 1")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ShapeError(f"layer '{layer.name}' (Pooling): kernel ({kh}, {kw}) and stride "
                         f"({sh}, {sw}) must be positive")
    if (ph or pw) and (ph >= kh or pw >= kw):
        raise ShapeError(f"layer '{layer.name}' (Pooling): pad ({ph}, {pw}) must be smaller than "
                         f"the kernel ({kh}, {kw})")
    if pp.pool == _PP.STOCHASTIC and (ph or pw):
        raise ShapeError(f"layer '{layer.name}' (Pooling): STOCHASTIC pooling takes no padding")

    def size(n: int, k: int, p: int, s: int) -> int:
        span = n + 2 * p - k
        o = (-(-span // s) if pp.round_mode == _PP.CEIL else span // s) + 1
        if p and (o - 1) * s >= n + p:
            o -= 1          # the last window would start inside the bottom/right padding
        return o

    oh, ow = size(h, kh, ph, sh), size(w, kw, pw, sw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"layer '{layer.name}' (Pooling): kernel ({kh}, {kw}) larger than the "
                         f"padded input {tuple(in_shape)}")
    return ic.Window(int(kh), int(kw), int(ph), int(pw), int(sh), int(sw)), oh, ow


def ave_divisor(win: ic.Window, h: int, w: int, oh: int, ow: int) -> np.ndarray:
    """Caffe's AVE pool_size per output: the window clipped to the padded extent."""

    def along(n: int, o: int, k: int, p: int, s: int) -> np.ndarray:
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        return (end - start).astype(np.float64)

    return np.outer(along(h, oh, win.kh, win.ph, win.sh), along(w, ow, win.kw, win.pw, win.sw))


@register_layer
class PoolingDef(LayerDef):
    type = "Pooling"
    param_field = "pooling_param"

    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        if len(in_shapes) != 1:
            raise ShapeError(f"layer '{layer.name}' (Pooling): needs exactly 1 bottom")
        if len(layer.tops) not in (1, 2):
            raise ShapeError(f"layer '{layer.name}' (Pooling): has 1 top (2 with the MAX mask)")
        _, oh, ow = pool_geometry(layer, in_shapes[0])
        out = tuple(in_shapes[0][:2]) + (oh, ow)
        return [out] * len(layer.tops)

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        if len(layer.tops) != 1:
            raise UnsupportedLayerError(f"layer '{layer.name}' (Pooling): the MAX mask top "
                                        "(training only) has no kernel")
        win, oh, ow = pool_geometry(layer, in_shapes[0])
        n, c, h, w = in_shapes[0]
        pool = layer.param("pooling_param").pool
        is_global = win.kh == h and win.kw == w and oh == ow == 1
        if pool == _PP.MAX:
            return _global_max() if is_global else _windowed(win, (n, c, h, w), oh, ow, True)
        if pool == _PP.AVE:
            if is_global and not win.has_pad:
                return _global_ave(h * w)
            return _windowed(win, (n, c, h, w), oh, ow, False)
        if pool == _PP.STOCHASTIC:
            return _stochastic_pool(win, (n, c, h, w), oh, ow)
        raise UnsupportedLayerError(f"layer '{layer.name}' (Pooling): unknown method {pool}")


def _global_max() -> Kernel:
    def run(inputs):
        x = inputs[0]
        return [x.max(axis=(2, 3), keepdims=True)]
    return run


def _global_ave(count: int) -> Kernel:
    def run(inputs):
        x = inputs[0]
        if x.dtype.kind in "iu":
            s = x.sum(axis=(2, 3), keepdims=True, dtype=np.float64)
        else:
            s = x.sum(axis=(2, 3), keepdims=True)
        s /= s.dtype.type(count)
        return [s]
    return run


def _windowed(win: ic.Window, shape, oh: int, ow: int, is_max: bool) -> Kernel:
    """MAX or AVE pooling on the wide phase layout (see ``_im2col.PhaseLayout``).

    Padding and the ceil-mode overhang are filled with -FLT_MAX (MAX: never
    wins; an all-padding window gives Caffe's -FLT_MAX) or 0 (AVE: adds
    nothing).  Taps are combined in Caffe's (row, column) order, so AVE sums
    are bit-identical to Caffe's; the sum is then divided by the clipped
    window size.  Rows (image, channel) go in cache-sized blocks over threads."""
    n, c, h, w = shape
    lay = ic.phase_layout(win, h, w, oh, ow)
    span = lay.wide
    rows = n * c
    rb = max(1, min(rows, ic.BLOCK // span))
    blocks = ic.chunks(rows, rb)
    shares = ic.shares(blocks, ic.work_threads(rows * span * len(lay.offsets)))
    tap_src = list(zip(lay.tap_phase, lay.offsets))
    div = {np.dtype(np.float32): ave_divisor(win, h, w, oh, ow).astype(np.float32),
           np.dtype(np.float64): ave_divisor(win, h, w, oh, ow)}

    def run(inputs):
        x = inputs[0]
        if is_max:
            dtype = x.dtype
            fill = np.iinfo(dtype).min if dtype.kind in "iu" else -_FLT_MAX
        else:
            dtype = np.dtype(np.float64 if x.dtype.kind in "iu" or x.dtype == np.float64
                             else np.float32)
            fill = 0
        xr = x.reshape((rows, 1) + x.shape[2:])
        out = np.empty((rows, oh, ow), dtype)

        def work(share):
            acc = np.empty((rb, span), dtype)
            ph = np.empty(rb * len(lay.phases) * lay.plane, dtype)
            for r0, r1 in share:
                a = acc[:r1 - r0]
                # Only this block in phase layout, in a reused scratch buffer.
                xph = ic.to_phases(xr[r0:r1], lay, fill, dtype, out=ph)[:, 0]
                for t, (p, off) in enumerate(tap_src):
                    src = xph[:, p, off:off + span]
                    if t == 0:
                        np.copyto(a, src)
                    elif is_max:
                        np.maximum(a, src, out=a)
                    else:
                        np.add(a, src, out=a)
                wide = a.reshape(r1 - r0, oh, lay.wq)[:, :, :ow]
                if is_max:
                    out[r0:r1] = wide
                else:
                    np.divide(wide, div[dtype], out=out[r0:r1])

        ic.parallel_map(work, shares)
        return [out.reshape(n, c, oh, ow)]

    return run


def _stochastic_pool(win: ic.Window, shape, oh: int, ow: int) -> Kernel:
    n, c, h, w = shape
    plan = ic.window_plan(win, h, w, oh, ow)
    tiny = np.float32(np.finfo(np.float32).tiny)   # Caffe starts the sum at FLT_MIN

    def run(inputs):
        x = inputs[0].astype(np.float32, copy=False)
        num = np.zeros((n, c, oh, ow), np.float32)
        den = np.full((n, c, oh, ow), tiny, np.float32)
        for t in plan:
            v = x[:, :, t.in_rows, t.in_cols]
            d = den[:, :, t.out_rows, t.out_cols]
            m = num[:, :, t.out_rows, t.out_cols]
            np.add(d, v, out=d)
            m += v * v
        num /= den
        return [num]

    return run
