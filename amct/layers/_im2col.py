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
import threading
import time
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


_CPUS = os.cpu_count() or 1


def kernel_threads() -> int:
    """Threads the kernels plan for: ``AMCT_NUM_THREADS`` or the core count."""
    env = os.environ.get("AMCT_NUM_THREADS", "")
    return max(1, int(env)) if env.isdigit() else _CPUS


# Threads actually used by ``parallel_map`` during the current forward pass.
_ACTIVE: int | None = None

# How busy the cores are with *other* jobs is measured from CPU time, not
# from the instantaneous runnable count of /proc/loadavg: read at the start
# of a pass, that count includes this process's own pool threads still
# winding down from the previous pass's last split layer (measured: right
# after a ``parallel_map`` it read 1 higher than 2 ms later in 70 % of
# samples), so back-to-back passes on an idle machine often fell back to one
# thread.  Instead: (system-wide busy CPU time - this process's CPU time) /
# wall time over a window of at least _LOAD_WINDOW seconds = cores used by
# others.  Decisions are cached for _LOAD_TTL seconds so a small net's
# sub-millisecond pass does not pay for reading /proc each time.
_LOAD_WINDOW = 0.2
_LOAD_TTL = 0.05
# A sample older than this describes another phase of the machine's load;
# the window restarts and the instantaneous count is used meanwhile.
_LOAD_STALE = 5.0
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_load = {"t": -1.0, "sample": None, "threads": None}


def _cpu_sample() -> tuple[float, float, float]:
    """(monotonic time, system-wide busy CPU seconds, this process's CPU seconds)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    ticks = [int(v) for v in fields[1:9]]          # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    t = os.times()
    return time.monotonic(), busy / _CLK_TCK, t[0] + t[1]


def _runnable_others() -> int:
    """Other runnable tasks right now (/proc/loadavg; this thread excluded)."""
    with open("/proc/loadavg") as f:
        return max(0, int(f.read().split()[3].split("/")[0]) - 1)


def _free_cores(n: int) -> int:
    """Of ``n`` cores, how many other jobs leave to this process (>= 1)."""
    now = time.monotonic()
    if _load["threads"] is not None and now - _load["t"] < _LOAD_TTL:
        return _load["threads"]
    try:
        cur = _cpu_sample()
        prev = _load["sample"]
        if prev is None or cur[0] - prev[0] > _LOAD_STALE:
            _load["sample"] = cur
            threads = n - _runnable_others()
        elif cur[0] - prev[0] >= _LOAD_WINDOW:
            others = ((cur[1] - prev[1]) - (cur[2] - prev[2])) / (cur[0] - prev[0])
            _load["sample"] = cur
            # A core counts as taken when other jobs used more than half of it.
            threads = n - int(max(0.0, others) + 0.5)
        else:
            threads = _load["threads"] if _load["threads"] is not None else n - _runnable_others()
    except (OSError, ValueError, IndexError):
        threads = n
    threads = max(1, min(n, threads))
    _load["t"], _load["threads"] = now, threads
    return threads


def adapt_threads() -> int:
    """Choose the threads for the next forward pass (called by the runtime).

    With ``AMCT_NUM_THREADS`` set, that number.  Otherwise the core count
    minus the cores other jobs keep busy (see ``_free_cores``): on a machine
    shared with other jobs, a second thread that must time-share a core with
    them makes every split layer wait for it (measured 10-50 % slower
    forwards of small nets than one thread), while on idle cores it is a
    near 2x for the GEMMs and elementwise loops."""
    global _ACTIVE
    env = os.environ.get("AMCT_NUM_THREADS", "")
    if env.isdigit():
        n = max(1, int(env))
    else:
        n = _CPUS if _CPUS < 2 else _free_cores(_CPUS)
    _ACTIVE = n
    return n


def active_threads() -> int:
    return kernel_threads() if _ACTIVE is None else min(_ACTIVE, kernel_threads())


def split(n: int, parts: int, min_size: int = 1) -> list[tuple[int, int]]:
    """``range(n)`` as at most ``parts`` contiguous ``[a, b)`` ranges of at
    least ``min_size`` (fewer ranges when ``n`` is small)."""
    parts = max(1, min(parts, n // max(1, min_size)))
    step = -(-n // parts)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


# Work is split over the kernel threads only above these amounts per thread
# (GEMM multiply-adds; elements touched by elementwise loops): a hand-off to
# the Python thread pool costs 50-100 us (more when the cores are busy with
# other jobs), i.e. a few million multiply-adds or element operations.
PARALLEL_MACS = 8_000_000
PARALLEL_ELEMS = 2_000_000


def work_threads(elems: int) -> int:
    """Kernel threads worth using for an elementwise loop over ``elems``."""
    return max(1, min(kernel_threads(), elems // PARALLEL_ELEMS))


# Parallel work is cut into this many pieces per thread, handed out on
# demand (see ``parallel_map``), so a thread that the OS does not schedule
# (busy cores) delays only its current piece.
PIECES_PER_THREAD = 3


# Row blocks per thread of one split GEMM.  Every block re-packs the whole
# shared operand (the column matrix of a convolution: often megabytes) with
# the BLAS single-threaded, so more blocks cost memory traffic; see
# ``GemmBlocks``.
GEMM_PIECES_PER_THREAD = 1
# Rows of a GEMM block: below this the BLAS kernel is mostly edge handling.
GEMM_MIN_ROWS = 16


class GemmBlocks(list):
    """Output-row blocks ``[(a, b), ...]`` of one GEMM, re-cut for each pass.

    Built with the largest thread count (so ``len(blocks) > 1`` tells a
    kernel the GEMM is worth splitting at all); ``parallel_map`` cuts the
    rows again for the threads actually in use in the current pass
    (``adapt_threads``).  With one thread the GEMM then runs as one block:
    split blocks run one after the other would each re-pack the shared
    operand for nothing (the previous fixed cut did that on busy machines)."""

    def __init__(self, rows: int, threads: int):
        self.rows = rows
        self.threads = threads
        super().__init__(self.cut(threads))

    def cut(self, threads: int) -> list[tuple[int, int]]:
        threads = min(threads, self.threads)
        if threads < 2:
            return [(0, self.rows)]
        return split(self.rows, threads * GEMM_PIECES_PER_THREAD, GEMM_MIN_ROWS)


def gemm_blocks(rows: int, macs: int) -> list[tuple[int, int]]:
    """Output-row blocks for one GEMM of ``macs`` multiply-adds producing
    ``rows`` rows: one block when threads are not worth it, else a few per
    kernel thread (at least GEMM_MIN_ROWS rows each, so every block is still
    an efficient GEMM); re-cut per pass, see ``GemmBlocks``."""
    threads = min(kernel_threads(), max(1, macs // PARALLEL_MACS))
    if threads < 2:
        return [(0, rows)]
    return GemmBlocks(rows, threads)


def shares(items: list, threads: int) -> list[list]:
    """``items`` dealt into pieces for ``threads`` threads (see PIECES_PER_THREAD)."""
    if threads < 2:
        return [items]
    k = min(len(items), threads * PIECES_PER_THREAD)
    return [items[i::k] for i in range(k)]


def parallel_map(fn, items) -> list:
    """``[fn(i) for i in items]`` on a small thread pool (one thread per core).

    numpy releases the GIL inside its loops, so elementwise kernels made of
    many cache-sized operations (depthwise conv, pooling) scale over cores
    the way the BLAS already does for the GEMMs."""
    global _POOL
    active = active_threads()
    items = items.cut(active) if isinstance(items, GemmBlocks) else list(items)
    workers = min(len(items), active)
    if workers < 2:
        return [fn(i) for i in items]
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=max(1, kernel_threads() - 1),
                                   thread_name_prefix="amct-kernel")
    # Items are taken on demand and the calling thread works too: when the
    # cores are busy with other jobs and a pool thread is not scheduled, the
    # caller simply does (almost) everything instead of waiting a time slice.
    results = [None] * len(items)
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def drain():
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                return
            results[k] = fn(items[k])

    futures = [_POOL.submit(drain) for _ in range(workers - 1)]
    try:
        drain()
    finally:
        for f in futures:
            f.result()
    return results


# ------------------------------------------------------------ BLAS threads
# The runtime parallelises its GEMMs itself (``gemm_blocks`` over the kernel
# thread pool) and runs each BLAS call single-threaded.  OpenBLAS's own
# threads spin while they wait; when the cores are shared with other jobs a
# descheduled BLAS thread stalls every GEMM (measured 3-10x slower forwards on
# a loaded 2-core machine), while the pool's threads block and degrade
# gracefully.  ``single_blas`` switches OpenBLAS to one thread for a forward
# pass and restores the caller's setting after it.
_BLAS = None


def _openblas():
    """(get, set) for numpy's OpenBLAS thread count, or None if not found."""
    global _BLAS
    if _BLAS is None:
        _BLAS = False
        try:
            import ctypes
            import glob

            libs = []
            for mod in ("numpy", ):
                root = os.path.dirname(__import__(mod).__file__)
                libs += glob.glob(os.path.join(root, os.pardir, mod + ".libs", "*openblas*"))
            for path in libs:
                lib = ctypes.CDLL(path)
                for get, set_ in (("scipy_openblas_get_num_threads64_",
                                   "scipy_openblas_set_num_threads64_"),
                                  ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                                  ("openblas_get_num_threads", "openblas_set_num_threads")):
                    if hasattr(lib, get) and hasattr(lib, set_):
                        g, st = getattr(lib, get), getattr(lib, set_)
                        g.restype, g.argtypes = ctypes.c_int, []
                        st.restype, st.argtypes = None, [ctypes.c_int]
                        _BLAS = (g, st)
                        break
                if _BLAS:
                    break
        except (OSError, AttributeError, ImportError):
            _BLAS = False
    return _BLAS or None


class blas_threads:
    """Context manager: OpenBLAS at ``n`` threads inside, the previous count
    after.  For large GEMMs that run inside a forward pass (an observer's
    work), where ``single_blas`` has left one thread.  A no-op without a
    detectable OpenBLAS or for ``n`` < 1."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        self._prev = None
        blas = _openblas()
        if blas is not None and self.n >= 1:
            prev = blas[0]()
            if prev != self.n:
                blas[1](self.n)
                self._prev = prev
        return self

    def __exit__(self, *exc):
        if self._prev is not None:
            _openblas()[1](self._prev)
        return False


class single_blas(blas_threads):
    """Context manager: OpenBLAS single-threaded inside (see above).  A no-op
    without a detectable OpenBLAS or when ``AMCT_BLAS_THREADS=native``."""

    def __init__(self) -> None:
        super().__init__(1)

    def __enter__(self):
        if os.environ.get("AMCT_BLAS_THREADS", "") == "native":
            self._prev = None
            return self
        return super().__enter__()


def blas_thread_count() -> int:
    """numpy's OpenBLAS thread count now (0 when it cannot be read)."""
    blas = _openblas()
    return int(blas[0]()) if blas is not None else 0


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
