"""Convolution and Deconvolution (Caffe semantics, NCHW).

Parameters follow Caffe's ``BaseConvolutionLayer``: ``kernel_h``/``kernel_w``,
``pad_h``/``pad_w`` and ``stride_h``/``stride_w`` replace the repeated fields
for 2-D; the repeated ``kernel_size``/``pad``/``stride``/``dilation`` hold one
value for all spatial axes or one per axis.  ``axis`` is the channel axis; the
axes before it are batch-like, those after it spatial.

Kernels (see docs/layers_compute.md):

* float: im2col into a bounded work buffer + one float32 GEMM per chunk
  (whole batch for small maps, row bands for large ones); 1x1/stride-1 convs
  are a GEMM on the input itself; depthwise convs are a multiply-accumulate
  over the kh*kw shifted views; groups are a stacked matmul.
* deploy (int8 weights): the same code in float64 on the integer input
  (``q - offset``), which is exact for int8/int16 data, returning int32
  ``acc + bias``.

Spatial ranks 1 and 2 run; higher ranks have shapes but no kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amct.errors import ShapeError, UnsupportedLayerError, WeightsError
from amct.ir.registry import Kernel, LayerDef, Shape, register_layer
from amct.layers import _im2col as ic
from amct.layers import _winograd as wino
from amct.layers._common import prepared

_INT32_MIN, _INT32_MAX = float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max)


@dataclass(frozen=True)
class ConvSpec:
    """The resolved ``convolution_param`` of one layer for one input shape."""

    axis: int
    channels: int
    num_output: int
    group: int
    bias_term: bool
    kernel: tuple[int, ...]
    pad: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]

    def window(self) -> ic.Window:
        """The 2-D window (a 1-D conv is a 2-D one with a unit height)."""
        if len(self.kernel) == 1:
            return ic.Window(1, self.kernel[0], 0, self.pad[0], 1, self.stride[0], 1, self.dilation[0])
        return ic.Window(self.kernel[0], self.kernel[1], self.pad[0], self.pad[1],
                         self.stride[0], self.stride[1], self.dilation[0], self.dilation[1])


def _per_axis(layer, name: str, values, nsp: int, default: int) -> tuple[int, ...]:
    vals = [int(v) for v in values]
    if not vals:
        return (default,) * nsp
    if len(vals) == 1:
        return (vals[0],) * nsp
    if len(vals) != nsp:
        raise ShapeError(f"layer '{layer.name}': {name} has {len(vals)} values; "
                         f"expected 1 or {nsp} (one per spatial axis)")
    return tuple(vals)


def conv_spec(layer, in_shape: Shape) -> ConvSpec:
    """Resolve the parameters of a Convolution/Deconvolution layer, as Caffe does."""
    cp = layer.param("convolution_param")
    ndim = len(in_shape)
    axis = cp.axis + ndim if cp.axis < 0 else cp.axis
    if not 0 <= axis < ndim:
        raise ShapeError(f"layer '{layer.name}': axis {cp.axis} out of range for input {in_shape}")
    nsp = ndim - axis - 1
    if nsp < 1:
        raise ShapeError(f"layer '{layer.name}': input {in_shape} has no spatial axis after "
                         f"channel axis {axis}")
    two_d = "2-d only fields (kernel_h/w, pad_h/w, stride_h/w) need exactly 2 spatial axes"
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        if nsp != 2 or len(cp.kernel_size):
            raise ShapeError(f"layer '{layer.name}': {two_d}, and no kernel_size")
        if not (cp.HasField("kernel_h") and cp.HasField("kernel_w")):
            raise ShapeError(f"layer '{layer.name}': kernel_h and kernel_w must both be given")
        kernel = (cp.kernel_h, cp.kernel_w)
    else:
        if not len(cp.kernel_size):
            raise ShapeError(f"layer '{layer.name}': kernel_size (or kernel_h/kernel_w) is required")
        kernel = _per_axis(layer, "kernel_size", cp.kernel_size, nsp, 0)
    if cp.HasField("pad_h") or cp.HasField("pad_w"):
        if nsp != 2 or len(cp.pad):
            raise ShapeError(f"layer '{layer.name}': {two_d}, and no pad")
        pad = (cp.pad_h, cp.pad_w)
    else:
        pad = _per_axis(layer, "pad", cp.pad, nsp, 0)
    if cp.HasField("stride_h") or cp.HasField("stride_w"):
        if nsp != 2 or len(cp.stride):
            raise ShapeError(f"layer '{layer.name}': {two_d}, and no stride")
        stride = (cp.stride_h, cp.stride_w)
    else:
        stride = _per_axis(layer, "stride", cp.stride, nsp, 1)
    dilation = _per_axis(layer, "dilation", cp.dilation, nsp, 1)
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ShapeError(f"layer '{layer.name}': kernel {kernel}, stride {stride} and dilation "
                         f"{dilation} must be positive")
    channels = int(in_shape[axis])
    group = int(cp.group)
    if cp.num_output < 1:
        raise ShapeError(f"layer '{layer.name}': num_output must be positive")
    if group < 1 or channels % group or cp.num_output % group:
        raise ShapeError(f"layer '{layer.name}': group {group} must divide both the input channels "
                         f"({channels}) and num_output ({cp.num_output})")
    return ConvSpec(axis, channels, int(cp.num_output), group, bool(cp.bias_term),
                    tuple(int(k) for k in kernel), tuple(int(p) for p in pad),
                    tuple(int(s) for s in stride), tuple(int(d) for d in dilation))


def _check_blobs(layer, want: list[Shape]) -> tuple[np.ndarray, np.ndarray | None]:
    if len(layer.blobs) < len(want):
        raise WeightsError(f"layer '{layer.name}' ({layer.type}): needs {len(want)} blobs "
                           f"{want}, has {len(layer.blobs)}")
    w = layer.blobs[0]
    if tuple(w.shape) != tuple(want[0]):
        if w.size != math.prod(want[0]):
            raise WeightsError(f"layer '{layer.name}' ({layer.type}): weight shape "
                               f"{tuple(w.shape)}, expected {tuple(want[0])}")
        w = w.reshape(want[0])
    b = None
    if len(want) > 1:
        b = layer.blobs[1].reshape(-1)
        if b.size != want[1][0]:
            raise WeightsError(f"layer '{layer.name}' ({layer.type}): bias has {b.size} values, "
                               f"expected {want[1][0]}")
    return w, b


def is_deploy(layer) -> bool:
    """A deploy-model layer: int8 weights, integer input, int32 output."""
    return bool(layer.blobs) and layer.blobs[0].dtype == np.int8


def integer_kernel(float_kernel, name: str) -> Kernel:
    """Wrap a float64 kernel (built on integer weights/bias) for integer data.

    Every product and partial sum is an integer below 2**53 for int8 weights
    and int8/int16 activations, so float64 GEMMs are exact; the result is
    saturated to int32 (what the accumulator holds)."""

    def run(inputs):
        x = inputs[0]
        xf = x.astype(np.float64) if x.dtype != np.float64 else x
        if xf.dtype.kind == "f" and x.dtype.kind == "f":
            xf = np.rint(xf)
        acc = float_kernel([xf])[0]
        np.clip(acc, _INT32_MIN, _INT32_MAX, out=acc)
        return [acc.astype(np.int32)]

    run.__name__ = f"int_{name}"
    return run


# ---------------------------------------------------------------- Convolution

def _geometry(spec: "ConvSpec", in_shape: Shape, out_hw, what: str):
    """Images, input and output size, and output shape of a (de)convolution.

    1-D convolutions run as 2-D with height 1; ``out_hw(h, w)`` is the
    window's conv or deconv size rule."""
    lead = tuple(in_shape[:spec.axis])
    spatial = tuple(in_shape[spec.axis + 1:])
    h, w = (1, spatial[0]) if len(spatial) == 1 else spatial
    oh, ow = out_hw(h, w)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{what} output {oh}x{ow} from input {in_shape}")
    out_shape = lead + (spec.num_output,) + ((ow,) if len(spatial) == 1 else (oh, ow))
    return math.prod(lead), h, w, oh, ow, out_shape


def _conv_kernel(spec: ConvSpec, in_shape: Shape, weight: np.ndarray, bias: np.ndarray | None,
                 dtype, epilogue=None) -> Kernel:
    """The forward function of a convolution for one input shape.

    ``epilogue(block)``, when given, is applied in place to each block of the
    output right after it is written (while it is still in cache): the
    runtime's optimizer uses it to fuse a following activation."""
    win = spec.window()
    nimg, h, w, oh, ow, out_shape = _geometry(spec, in_shape, win.conv_out, "convolution")
    c, cout, g = spec.channels, spec.num_output, spec.group
    x4_shape = (nimg, c, h, w)
    wmat = prepared(weight, dtype)
    bcol = None if bias is None else prepared(bias, dtype)

    if g == c == cout and g > 1:
        body = _depthwise(win, x4_shape, oh, ow, wmat.reshape(c, win.kh * win.kw), bcol, dtype,
                          epilogue)
    elif len(in_shape) - spec.axis - 1 == 2 and wino.applies(win, g, c, cout, dtype):
        # 3x3 stride-1 float convs: Winograd F(2x2, 3x3), 2.25x fewer
        # multiply-adds (float32 only; the integer path stays exact).
        body = wino.conv3x3(x4_shape, (win.ph, win.pw), oh, ow, wmat, bcol, epilogue)
    elif win.is_pointwise:
        body = _pointwise(x4_shape, wmat.reshape(g, cout // g, c // g), bcol, dtype, epilogue)
    else:
        body = _im2col_gemm(win, x4_shape, oh, ow, wmat.reshape(g, cout // g, -1), bcol, dtype,
                            epilogue)

    def run(inputs):
        x = np.ascontiguousarray(inputs[0]).reshape(x4_shape)
        return [body(x).reshape(out_shape)]

    return run


def _pointwise(x4_shape, wg: np.ndarray, bias, dtype, epilogue=None):
    """1x1, stride 1, no padding: each image's (C, H*W) matrix is the column matrix.

    One GEMM per image, each followed by its bias and epilogue: the image's
    output is then still in cache for those passes (a GEMM over the whole
    stacked batch leaves only the last image there).  Images are spread over
    the kernel threads, or, for a single image, blocks of output channels."""
    n, c, h, w = x4_shape
    g, coutg, _ = wg.shape
    cout = g * coutg
    hw = h * w
    w2 = wg[0] if g == 1 else None
    bcol = None if bias is None else bias[:, None]
    macs = cout * (c // g) * hw
    nt = ic.kernel_threads()
    by_image = n > 1 and n * macs >= 2 * ic.PARALLEL_MACS and nt > 1
    img_shares = ic.split(n, nt) if by_image else None
    blocks = ic.gemm_blocks(cout, macs) if g == 1 and not by_image else [(0, cout)]

    def body(x):
        out = np.empty((n, cout, hw), dtype)
        xs = x.reshape(n, c, hw)

        def gemm(i, r0=0, r1=cout):
            o = out[i, r0:r1]
            if g == 1:
                np.matmul(w2[r0:r1], xs[i], out=o)
            else:
                np.matmul(wg, xs[i].reshape(g, c // g, hw), out=o.reshape(g, coutg, hw))
            if bcol is not None:
                o += bcol[r0:r1]

        def images(share):
            for i in range(*share):
                gemm(i)
                if epilogue is not None:
                    epilogue(out[i])

        if by_image:
            ic.parallel_map(images, img_shares)
            return out
        for i in range(n):
            if len(blocks) > 1:
                ic.parallel_map(lambda blk: gemm(i, *blk), blocks)
            else:
                gemm(i)
            if epilogue is not None:
                epilogue(out[i])
        return out

    return body


def _im2col_gemm(win: ic.Window, x4_shape, oh: int, ow: int, wg: np.ndarray, bias, dtype,
                 epilogue=None):
    """General convolution: im2col in the wide phase layout + one GEMM per chunk.

    The column buffer is filled with one contiguous copy per kernel tap (see
    ``_im2col.PhaseLayout``); the GEMM produces the wide output, whose valid
    columns are copied (with the bias) into the result.  Chunks of images
    (small maps) or of output rows (large maps) bound the buffers.  The tap
    copies and the GEMM's output-channel blocks run on the kernel threads."""
    n, c, h, w = x4_shape
    g, coutg, kg = wg.shape
    cout = g * coutg
    lay = ic.phase_layout(win, h, w, oh, ow)
    taps = len(lay.offsets)
    k = c * taps
    wq = lay.wq
    per_img = k * lay.wide
    if lay.wide < ic.SMALL_SPATIAL:
        nb, rows = max(1, min(n, ic.COL_LIMIT // max(1, per_img))), oh
    else:
        nb, rows = 1, max(1, min(oh, ic.COL_LIMIT // max(1, k * wq)))
    img_chunks = ic.chunks(n, nb)
    row_chunks = ic.chunks(oh, rows)
    tap_src = list(zip(lay.tap_phase, lay.offsets))
    w2 = wg[0] if g == 1 else None
    bias4 = None if bias is None else bias.reshape(1, cout, 1, 1)
    col_elems = k * nb * rows * wq
    # Small maps: the wide grid's wq - ow extra columns per row would inflate
    # the GEMM by up to 50 % (LeNet's 8x8 conv2: wq 12); above 20 % waste the
    # taps are copied compactly instead (one 2-D strided copy each).
    compact = (wq - ow) * 5 > ow
    pitch = ow if compact else wq
    tap_rc = [divmod(off, wq) for _, off in tap_src]
    # Copies are worth splitting only when the column chunk is large.
    tap_groups = [tap_src[a:b] for a, b in ic.split(taps, ic.work_threads(col_elems))]
    tap_first = [0] + [sum(len(t) for t in tap_groups[:i + 1]) for i in range(len(tap_groups))]
    blocks = ic.gemm_blocks(cout, cout * k * nb * rows * wq) if g == 1 else [(0, cout)]

    def body(x):
        out = np.empty((n, cout, oh, ow), dtype)
        col_buf = np.empty(col_elems, dtype)
        ph_buf = np.empty(nb * c * len(lay.phases) * lay.plane, dtype)
        for n0, n1 in img_chunks:
            nbi = n1 - n0
            xph = ic.to_phases(x[n0:n1], lay, 0, dtype, out=ph_buf).transpose(1, 0, 2, 3)
            for r0, r1 in row_chunks:
                span = (r1 - r0) * pitch
                col = col_buf[:k * nbi * span].reshape(c, taps, nbi, span)
                base = r0 * wq

                def copy(gi):
                    for t, (p, off) in enumerate(tap_groups[gi], tap_first[gi]):
                        if compact:
                            qi, qj = tap_rc[t]
                            plane = xph[:, :, p, :lay.hq * wq].reshape(c, nbi, lay.hq, wq)
                            col[:, t].reshape(c, nbi, r1 - r0, ow)[...] = \
                                plane[:, :, qi + r0:qi + r1, qj:qj + ow]
                        else:
                            col[:, t] = xph[:, :, p, base + off:base + off + span]

                if len(tap_groups) > 1:
                    ic.parallel_map(copy, range(len(tap_groups)))
                else:
                    copy(0)
                col2 = col.reshape(k, nbi * span)
                dst = out[n0:n1, :, r0:r1]

                def gemm(blk):
                    c0, c1 = blk
                    if g == 1:
                        res = w2[c0:c1] @ col2
                    else:
                        res = np.matmul(wg, col2.reshape(g, kg, nbi * span))
                    res = res.reshape(c1 - c0, nbi, r1 - r0, pitch)[:, :, :, :ow].transpose(1, 0, 2, 3)
                    if bias4 is not None:
                        np.add(res, bias4[:, c0:c1], out=dst[:, c0:c1])
                    else:
                        dst[:, c0:c1] = res

                if len(blocks) > 1:
                    ic.parallel_map(gemm, blocks)
                else:
                    gemm(blocks[0])
                if epilogue is not None:
                    epilogue(dst)
        return out.reshape(n, cout, oh * ow)

    return body


def _depthwise(win: ic.Window, x4_shape, oh: int, ow: int, wtaps: np.ndarray, bias, dtype,
               epilogue=None):
    """Depthwise conv (group == channels == num_output) over the wide phase layout.

    Per block of channels: the kh*kw tap slices (each one contiguous slice of
    the wide layout) are copied into a cache-sized column block (cb, taps,
    span), then one stacked matmul (cb, 1, taps) @ (cb, taps, span) does the
    weighted sum.  That is taps copies + one BLAS pass instead of taps
    multiplies + taps-1 adds of numpy (2 passes per tap): ~25 % faster."""
    n, c, h, w = x4_shape
    lay = ic.phase_layout(win, h, w, oh, ow)
    span = lay.wide
    taps = len(lay.offsets)
    cb = max(1, min(c, ic.DW_BLOCK // (taps * span)))
    blocks = ic.chunks(c, cb)
    tap_src = list(zip(lay.tap_phase, lay.offsets))
    coef = prepared(wtaps, dtype)[:, None, :]                       # (C, 1, taps)
    bias3 = None if bias is None else bias.reshape(c, 1, 1)

    # Work items: (image, channel block); each thread has its own scratch.
    items = [(i, c0, c1) for i in range(n) for c0, c1 in blocks]
    shares = ic.shares(items, ic.work_threads(n * c * span * taps))

    nph = len(lay.phases)

    def body(x):
        out = np.empty((n, c, oh, ow), dtype)

        def work(share):
            col = np.empty((cb, taps, span), dtype)
            acc = np.empty((cb, 1, span), dtype)
            ph = np.empty(cb * nph * lay.plane, dtype)
            for i, c0, c1 in share:
                # Only this block in phase layout, in a reused scratch buffer.
                xi = ic.to_phases(x[i:i + 1, c0:c1], lay, 0, dtype, out=ph)[0]
                k = c1 - c0
                cl, a = col[:k], acc[:k]
                for t, (p, off) in enumerate(tap_src):
                    cl[:, t] = xi[:, p, off:off + span]
                np.matmul(coef[c0:c1], cl, out=a)
                wide = a.reshape(k, oh, lay.wq)[:, :, :ow]
                dst = out[i, c0:c1]
                if bias3 is not None:
                    np.add(wide, bias3[c0:c1], out=dst)
                else:
                    dst[...] = wide
                if epilogue is not None:
                    epilogue(dst)

        ic.parallel_map(work, shares)
        return out

    return body


# -------------------------------------------------------------- Deconvolution

def _deconv_kernel(spec: ConvSpec, in_shape: Shape, weight: np.ndarray, bias: np.ndarray | None,
                   dtype, epilogue=None) -> Kernel:
    """Deconvolution = transposed convolution: GEMM to columns, then col2im."""
    win = spec.window()
    n, h, w, oh, ow, out_shape = _geometry(spec, in_shape, win.deconv_out, "deconvolution")
    cin, cout, g = spec.channels, spec.num_output, spec.group
    cing, coutg = cin // g, cout // g
    taps = win.kh * win.kw
    # Weight (Cin, Cout/g, kh, kw) -> per group the transposed matrix
    # (Cout/g*kh*kw, Cin/g) that maps an input pixel to its column.
    wt = prepared(np.asarray(weight, dtype=dtype).reshape(g, cing, coutg * taps)
                  .transpose(0, 2, 1), dtype)
    w2 = wt[0] if g == 1 else None
    plan = ic.scatter_plan(win, h, w, oh, ow)
    per_img = cout * taps * h * w
    nb = max(1, min(n, ic.COL_LIMIT // max(1, per_img)))
    img_chunks = ic.chunks(n, nb)
    bias4 = None if bias is None else prepared(bias, dtype).reshape(1, cout, 1, 1)

    def run(inputs):
        x = np.ascontiguousarray(inputs[0]).reshape(n, cin, h * w)
        out = np.zeros((n, cout, oh, ow), dtype)
        buf = np.empty(nb * per_img, dtype)
        for n0, n1 in img_chunks:
            nbi = n1 - n0
            col = buf[:nbi * per_img]
            if cing == 1:
                # One input channel per group (depthwise): the GEMM is an outer
                # product, which matmul runs ~10x slower than a broadcast multiply.
                np.multiply(wt, x[n0:n1].reshape(nbi, g, 1, h * w),
                            out=col.reshape(nbi, g, coutg * taps, h * w))
            elif g == 1:
                np.matmul(w2, x[n0:n1], out=col.reshape(nbi, coutg * taps, h * w))
            else:
                np.matmul(wt, x[n0:n1].reshape(nbi, g, cing, h * w),
                          out=col.reshape(nbi, g, coutg * taps, h * w))
            col6 = col.reshape(nbi, cout, win.kh, win.kw, h, w)
            o = out[n0:n1]
            for t in plan:
                dst = o[:, :, t.out_rows, t.out_cols]
                np.add(dst, col6[:, :, t.i, t.j, t.in_rows, t.in_cols], out=dst)
        if bias4 is not None:
            out += bias4
        if epilogue is not None:
            epilogue(out)
        return [out.reshape(out_shape)]

    return run


class _ConvBase(LayerDef):
    param_field = "convolution_param"
    min_blobs = 1
    transposed = False

    def _out_spatial(self, layer, spec: ConvSpec, spatial: Shape) -> tuple[int, ...]:
        outs = []
        for i, size in enumerate(spatial):
            k, p, s, d = spec.kernel[i], spec.pad[i], spec.stride[i], spec.dilation[i]
            ext = d * (k - 1) + 1
            o = s * (size - 1) + ext - 2 * p if self.transposed else (size + 2 * p - ext) // s + 1
            if o < 1:
                raise ShapeError(f"layer '{layer.name}' ({self.type}): spatial axis {i} of size "
                                 f"{size} gives output size {o} (kernel {k}, pad {p}, stride {s}, "
                                 f"dilation {d})")
            outs.append(o)
        return tuple(outs)

    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        if len(in_shapes) != len(layer.tops):
            raise ShapeError(f"layer '{layer.name}' ({self.type}): {len(in_shapes)} bottoms but "
                             f"{len(layer.tops)} tops (they pair up)")
        outs = []
        for s in in_shapes:
            spec = conv_spec(layer, s)
            if in_shapes and tuple(s[spec.axis:spec.axis + 1]) != (in_shapes[0][spec.axis],):
                raise ShapeError(f"layer '{layer.name}': all bottoms need the same channels")
            outs.append(tuple(s[:spec.axis]) + (spec.num_output,)
                        + self._out_spatial(layer, spec, tuple(s[spec.axis + 1:])))
        return outs

    def param_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        spec = conv_spec(layer, in_shapes[0])
        if self.transposed:
            wshape = (spec.channels, spec.num_output // spec.group) + spec.kernel
        else:
            wshape = (spec.num_output, spec.channels // spec.group) + spec.kernel
        return [wshape, (spec.num_output,)] if spec.bias_term else [wshape]

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        spec = conv_spec(layer, in_shapes[0])
        if len(spec.kernel) > 2:
            raise UnsupportedLayerError(f"layer '{layer.name}' ({self.type}): {len(spec.kernel)}-D "
                                        "spatial convolution has no kernel (1-D and 2-D only)")
        weight, bias = _check_blobs(layer, self.param_shapes(layer, in_shapes))
        return self._make(layer, in_shapes, spec, weight, bias)

    def build_with(self, layer, in_shapes: list[Shape], weight: np.ndarray,
                   bias: np.ndarray | None, epilogue=None) -> Kernel:
        """A float kernel of ``layer`` with ``weight``/``bias`` (same layouts as
        the layer's blobs; ``bias`` may be given when ``bias_term`` is false)
        instead of its blobs, and ``epilogue`` applied in place to every
        output block.  Used by the runtime's plan optimizer."""
        spec = conv_spec(layer, in_shapes[0])
        wshape = self.param_shapes(layer, in_shapes)[0]
        return self._make(layer, in_shapes, spec, np.asarray(weight).reshape(wshape),
                          None if bias is None else np.asarray(bias).reshape(-1), epilogue)

    def _make(self, layer, in_shapes, spec, weight, bias, epilogue=None) -> Kernel:
        if len(spec.kernel) > 2:
            raise UnsupportedLayerError(f"layer '{layer.name}' ({self.type}): {len(spec.kernel)}-D "
                                        "spatial convolution has no kernel (1-D and 2-D only)")
        make = _deconv_kernel if self.transposed else _conv_kernel
        deploy = weight.dtype == np.int8
        dtype = np.float64 if deploy else np.float32
        if deploy and bias is not None and bias.dtype.kind not in "iu":
            raise WeightsError(f"layer '{layer.name}' ({self.type}): int8 weights need an integer "
                               f"(int32) bias, got {bias.dtype}")
        if deploy and epilogue is not None:
            raise UnsupportedLayerError(f"layer '{layer.name}': no epilogue on an integer kernel")
        kernels = [make(spec, s, weight, bias, dtype, epilogue) for s in in_shapes]
        if deploy:
            kernels = [integer_kernel(k, layer.name) for k in kernels]
        if len(kernels) == 1:
            return kernels[0]
        return lambda inputs: [k([x])[0] for k, x in zip(kernels, inputs)]


@register_layer
class ConvolutionDef(_ConvBase):
    type = "Convolution"


@register_layer
class DeconvolutionDef(_ConvBase):
    type = "Deconvolution"
    transposed = True
