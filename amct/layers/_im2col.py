"""Private helpers of the compute layers: window geometry and im2col/col2im plans.

Everything here works on NCHW arrays and on one rule: for a sliding window
with kernel tap offset ``off = tap * dilation - pad`` and stride ``s``, output
position ``o`` reads input position ``o * s + off``.  A tap therefore touches
one rectangular, strided block of the input and one rectangular block of the
output (``tap_range``).  Padding is never materialised: out-of-image taps are
either skipped (pooling, col2im) or written as zeros into the column buffer
(im2col), so a layer needs no padded copy of its input.

Plans (lists of slices) are computed once at build time so the kernels only
run numpy operations.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# Upper bound (in elements) of one column buffer.  Large enough for good GEMM
# efficiency, small enough that the buffer of a VGG-sized layer stays in the
# tens of megabytes (the input is processed in chunks of images or rows).
COL_LIMIT = 4 * 1024 * 1024
# Below this many output positions per image, images are batched into one
# GEMM (tiny GEMMs are dominated by call overhead).
SMALL_SPATIAL = 1024


def tap_range(lo: int, hi: int, off: int, stride: int, size: int) -> tuple[int, int]:
    """Output positions ``o`` in ``[lo, hi)`` with ``0 <= o*stride + off < size``."""
    first = -(off // stride)                      # ceil(-off / stride)
    last = (size - 1 - off) // stride + 1         # one past the largest valid o
    a = max(lo, first)
    b = min(hi, last)
    return a, max(a, b)


def strided(start: int, count: int, step: int) -> slice:
    """The slice of ``count`` positions from ``start`` with ``step`` (count > 0)."""
    return slice(start, start + (count - 1) * step + 1, step)


@dataclass(frozen=True)
class Window:
    """A 2-D sliding window: kernel, padding, stride, dilation per axis (h, w)."""

    kh: int
    kw: int
    ph: int = 0
    pw: int = 0
    sh: int = 1
    sw: int = 1
    dh: int = 1
    dw: int = 1

    def conv_out(self, h: int, w: int) -> tuple[int, int]:
        """Convolution output size (Caffe rounds down)."""
        oh = (h + 2 * self.ph - (self.dh * (self.kh - 1) + 1)) // self.sh + 1
        ow = (w + 2 * self.pw - (self.dw * (self.kw - 1) + 1)) // self.sw + 1
        return oh, ow

    def deconv_out(self, h: int, w: int) -> tuple[int, int]:
        """Deconvolution output size: the input size of the matching convolution."""
        oh = self.sh * (h - 1) + self.dh * (self.kh - 1) + 1 - 2 * self.ph
        ow = self.sw * (w - 1) + self.dw * (self.kw - 1) + 1 - 2 * self.pw
        return oh, ow

    @property
    def is_pointwise(self) -> bool:
        return (self.kh == self.kw == 1 and self.ph == self.pw == 0
                and self.sh == self.sw == 1)

    @property
    def has_pad(self) -> bool:
        return self.ph > 0 or self.pw > 0

    def taps(self):
        """(i, j, row offset, column offset) of every kernel tap, row-major."""
        for i in range(self.kh):
            for j in range(self.kw):
                yield i, j, i * self.dh - self.ph, j * self.dw - self.pw


@dataclass(frozen=True)
class TapBlock:
    """One tap of a windowed reduction/scatter: output block <-> input block."""

    i: int
    j: int
    out_rows: slice
    out_cols: slice
    in_rows: slice
    in_cols: slice
    full: bool                    # the block covers the whole output


def window_plan(win: Window, h: int, w: int, oh: int, ow: int) -> list[TapBlock]:
    """For pooling-like layers: for each tap, the output block whose windows
    contain that tap inside the image, and the input block they read."""
    plan = []
    for i, j, oy, ox in win.taps():
        ya, yb = tap_range(0, oh, oy, win.sh, h)
        xa, xb = tap_range(0, ow, ox, win.sw, w)
        if ya >= yb or xa >= xb:
            continue
        plan.append(TapBlock(i, j, slice(ya, yb), slice(xa, xb),
                             strided(ya * win.sh + oy, yb - ya, win.sh),
                             strided(xa * win.sw + ox, xb - xa, win.sw),
                             ya == 0 and yb == oh and xa == 0 and xb == ow))
    return plan


def scatter_plan(win: Window, h: int, w: int, oh: int, ow: int) -> list[TapBlock]:
    """For col2im (deconvolution): input position ``y`` of tap ``i`` lands on
    output row ``y*s + i*d - p``; the blocks that land inside the output."""
    plan = []
    for i, j, oy, ox in win.taps():
        # input rows y with 0 <= y*s + oy < oh  (same rule with roles swapped)
        ya, yb = tap_range(0, h, oy, win.sh, oh)
        xa, xb = tap_range(0, w, ox, win.sw, ow)
        if ya >= yb or xa >= xb:
            continue
        plan.append(TapBlock(i, j, strided(ya * win.sh + oy, yb - ya, win.sh),
                             strided(xa * win.sw + ox, xb - xa, win.sw),
                             slice(ya, yb), slice(xa, xb), False))
    return plan


def chunks(n: int, step: int):
    """``[a, b)`` ranges covering ``range(n)`` in steps of ``step``."""
    step = max(1, step)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


# Rows of a blocked elementwise loop are grouped so one block's working set
# (accumulator, scratch, input rows) stays in the L2 cache.
BLOCK = 32 * 1024
# Column block of a depthwise convolution (channels x taps x wide plane): the
# copies into it and the matmul reading it stay within the L2 cache.
DW_BLOCK = 256 * 1024


_POOL = None


def kernel_threads() -> int:
    """Threads for the elementwise kernels: ``AMCT_NUM_THREADS`` or the core count."""
    env = os.environ.get("AMCT_NUM_THREADS", "")
    return max(1, int(env)) if env.isdigit() else (os.cpu_count() or 1)


def parallel_map(fn, items) -> list:
    """``[fn(i) for i in items]`` on a small thread pool (one thread per core).

    numpy releases the GIL inside its loops, so elementwise kernels made of
    many cache-sized operations (depthwise conv, pooling) scale over cores
    the way the BLAS already does for the GEMMs."""
    global _POOL
    items = list(items)
    workers = min(len(items), kernel_threads())
    if workers < 2:
        return [fn(i) for i in items]
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=kernel_threads(),
                                   thread_name_prefix="amct-kernel")
    return list(_POOL.map(fn, items))


@dataclass(frozen=True)
class PhaseLayout:
    """The input padded, split into stride phases and flattened ("wide" layout).

    Padded row ``Y = y + pad`` belongs to phase ``Y % stride`` at phase row
    ``Y // stride`` (same for columns).  Each phase plane is ``hq x wq``,
    stored flat with ``slack`` spare elements, so the plane is ``plane`` long.
    Output position ``(oy, ox)`` is computed at flat index ``oy*wq + ox`` of a
    wide ``oh x wq`` grid (the columns ``>= ow`` are discarded), and kernel tap
    ``t`` reads its phase plane at that index plus ``offsets[t]``: every tap of
    every output row is one contiguous slice, the fastest access numpy has.
    """

    phases: tuple[tuple[int, int], ...]     # (row phase, column phase) in use
    hq: int
    wq: int
    plane: int
    tap_phase: tuple[int, ...]              # per tap (row-major): index into phases
    offsets: tuple[int, ...]                # per tap: flat offset in the phase plane
    fills: tuple[tuple[slice, slice, slice, slice], ...]  # per phase: dst rows/cols, src rows/cols
    oh: int
    ow: int

    @property
    def wide(self) -> int:
        """Length of the wide output of one channel (``oh * wq``)."""
        return self.oh * self.wq


def phase_layout(win: Window, h: int, w: int, oh: int, ow: int) -> PhaseLayout:
    """The phase layout reading input (h, w) for an (oh, ow) output of ``win``."""
    need_h = (oh - 1) * win.sh + (win.kh - 1) * win.dh + 1      # padded extent read
    need_w = (ow - 1) * win.sw + (win.kw - 1) * win.dw + 1
    hq = -(-need_h // win.sh)
    wq = -(-need_w // win.sw)
    phases: list[tuple[int, int]] = []
    tap_phase, offsets = [], []
    slack = 0
    for i, j, _, _ in win.taps():
        qi, a = divmod(i * win.dh, win.sh)
        qj, b = divmod(j * win.dw, win.sw)
        if (a, b) not in phases:
            phases.append((a, b))
        tap_phase.append(phases.index((a, b)))
        offsets.append(qi * wq + qj)
        slack = max(slack, qj)
    fills = []
    for a, b in phases:
        qa, qb = tap_range(0, hq, a - win.ph, win.sh, h)
        ra, rb = tap_range(0, wq, b - win.pw, win.sw, w)
        if qa < qb and ra < rb:
            fills.append((slice(qa, qb), slice(ra, rb),
                          strided(qa * win.sh + a - win.ph, qb - qa, win.sh),
                          strided(ra * win.sw + b - win.pw, rb - ra, win.sw)))
        else:
            fills.append(None)
    return PhaseLayout(tuple(phases), hq, wq, hq * wq + slack, tuple(tap_phase), tuple(offsets),
                       tuple(fills), oh, ow)


def to_phases(x: np.ndarray, lay: PhaseLayout, fill, dtype, out: np.ndarray | None = None
              ) -> np.ndarray:
    """``x`` (N, C, H, W) in phase layout: (N, C, len(phases), plane), padding = ``fill``.

    ``out`` (any array with at least that many elements, of ``dtype``) is
    used as the buffer when given: kernels convert one cache-sized block at a
    time into a reused scratch buffer, which is much faster than one large
    fresh array (whose first touch page-faults every time)."""
    n, c = x.shape[:2]
    shape = (n, c, len(lay.phases), lay.plane)
    if out is None:
        buf = np.empty(shape, dtype)
    else:
        buf = out.reshape(-1)[:n * c * len(lay.phases) * lay.plane].reshape(shape)
    if fill == 0:
        buf.fill(0)
    else:
        buf.fill(fill)
    for p, f in enumerate(lay.fills):
        if f is None:
            continue
        rows, cols, ys, xs = f
        dst = buf[:, :, p, :lay.hq * lay.wq].reshape(n, c, lay.hq, lay.wq)
        dst[:, :, rows, cols] = x[:, :, ys, xs]
    return buf
