"""Winograd minimal filtering for 3x3, stride-1, dilation-1, group-1 convolutions.

F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input
tile with ``(m+2)**2`` multiplications per (input, output) channel pair
instead of ``9 m**2``: F(2x2, 3x3) does 16 instead of 36 (2.25x fewer
multiply-adds), F(4x4, 3x3) 36 instead of 144 (4x).  With the channel sums
moved inside, the products become ``(m+2)**2`` independent GEMMs

    M[k] = U[k] @ V[k],   U[k]: (Cout, Cin),  V[k]: (Cin, tiles),

where ``U = G g G^T`` is the filter transform (done once, at build time) and
``V = B^T d B`` the input-tile transform; the output tile is ``A^T M A``.

The tiles overlap by two rows/columns, so row ``i`` of every tile is the
slice ``[i::m]`` of the padded input; with the input split into its m x m
phases those become contiguous slices, and the input transform is a few
numpy adds over all tiles of a channel block at once (no per-tile Python).
The output transform is one small GEMM with ``A^T kron A^T``.  Work is done
in chunks of images (small maps) or of tile rows (large maps) so the work
buffers stay bounded (``MAX_WORK``), whatever the batch and map size.

Only float32 kernels use this: the integer (deploy) path needs exact sums,
which the fractional transforms of Winograd do not give.
"""
from __future__ import annotations

import os
import queue

import numpy as np

from amct.layers import _im2col as ic

# ``AMCT_WINOGRAD=0`` disables the Winograd path (read when a kernel is
# built); ``AMCT_WINOGRAD=4`` selects F(4x4, 3x3) instead of F(2x2, 3x3).
ENV = "AMCT_WINOGRAD"

# Winograd pays when the GEMM work it saves (prop. to Cin*Cout per output
# pixel) outweighs its transform passes (prop. to Cin + Cout): used when
# Cin*Cout >= MIN_WIDTH * (Cin + Cout), i.e. a "harmonic width"
# Cin*Cout/(Cin+Cout) of at least MIN_WIDTH.  Measured (one thread):
# 64->64 0.8-1.1x, 64->128 ~1.0x, 96->128 1.25x, 128->128 1.2-1.5x,
# 512->512 1.6-1.7x the speed of im2col (docs/layers_compute.md).
MIN_WIDTH = 48

# Work buffer of one chunk (float32 elements: transformed tiles V, products
# M, channel-block scratch): about WORK_LIMIT, but at least MIN_TILES tiles
# (wide layers: thinner GEMMs and the per-chunk numpy call overhead cost
# more than cache misses; measured 512 -> 1.3-1.7x vs 64 tiles at 512
# channels) and never more than MAX_WORK.
WORK_LIMIT = 2 * 1024 * 1024
MIN_TILES = 512
MAX_WORK = 16 * 1024 * 1024          # 64 MB
# Channel-block scratch of the input/output transforms (float32 elements):
# ~1 MB, measured best among 64 KB .. 1 MB and unblocked.
BLOCK = 256 * 1024


def _matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3) (Lavin & Gray's interpolation points)."""
    if m == 2:
        bt = [[1, 0, -1, 0],
              [0, 1, 1, 0],
              [0, -1, 1, 0],
              [0, 1, 0, -1]]
        g = [[1, 0, 0],
             [0.5, 0.5, 0.5],
             [0.5, -0.5, 0.5],
             [0, 0, 1]]
        at = [[1, 1, 1, 0],
              [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0],
              [0, -4, -4, 1, 1, 0],
              [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0],
              [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0],
             [-1 / 6, -1 / 6, -1 / 6],
             [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6],
             [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0],
              [0, 1, -1, 2, -2, 0],
              [0, 1, 1, 4, 4, 0],
              [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"no Winograd transform F({m}x{m}, 3x3)")
    return (np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64))


def tile_size() -> int | None:
    """The output tile size selected by ``AMCT_WINOGRAD`` (None: disabled)."""
    env = os.environ.get(ENV, "").strip()
    if env in ("0", "off", "no", "false"):
        return None
    return 4 if env == "4" else 2


def applies(win: ic.Window, group: int, cin: int, cout: int, dtype) -> bool:
    """Whether a convolution runs on the Winograd path (float32 3x3/s1/d1/g1,
    enough channels, not disabled)."""
    return (tile_size() is not None and np.dtype(dtype) == np.float32
            and win.kh == win.kw == 3 and win.sh == win.sw == 1 and win.dh == win.dw == 1
            and group == 1 and cin * cout >= MIN_WIDTH * (cin + cout))


def filter_transform(weight: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every (Cout, Cin) filter: (alpha*alpha, Cout, Cin) float32.

    Computed in float64 so the only float32 rounding of U is the final one."""
    _, g, _ = _matrices(m)
    u = np.einsum("ai,ocij,bj->aboc", g, weight.astype(np.float64), g)
    a = m + 2
    return np.ascontiguousarray(u.reshape(a * a, *weight.shape[:2]), dtype=np.float32)


def _plans(mat: np.ndarray) -> list[list[tuple[int, np.float32]]]:
    """Per row of a transform matrix: its nonzero (column, coefficient)s."""
    return [[(int(k), np.float32(r[k])) for k in np.flatnonzero(r)] for r in mat]


def _combine(plan, terms, dst: np.ndarray, init=None) -> None:
    """``dst = init + sum_k c * terms(k)`` over the ``(k, c)`` of ``plan``.

    Unit coefficients are plain adds/subtracts (all entries of the F(2x2)
    matrices), and the first two terms are combined in one pass straight
    into ``dst`` (no copy first): every pass here streams a buffer as large
    as the GEMM operands, so passes are what the transforms cost.  Other
    coefficients (F(4x4)) multiply first.  ``init`` (broadcastable, e.g.
    the bias) is added last."""
    (k0, c0), rest = plan[0], list(plan[1:])
    if rest and c0 == 1 and abs(rest[0][1]) == 1:
        k1, c1 = rest.pop(0)
        (np.add if c1 == 1 else np.subtract)(terms(k0), terms(k1), out=dst)
    elif rest and c0 == -1 and rest[0][1] == 1:
        k1, _ = rest.pop(0)
        np.subtract(terms(k1), terms(k0), out=dst)
    elif c0 == 1:
        np.copyto(dst, terms(k0))
    else:
        np.multiply(terms(k0), c0, out=dst)
    for k, c in rest:
        if c == 1:
            np.add(dst, terms(k), out=dst)
        elif c == -1:
            np.subtract(dst, terms(k), out=dst)
        else:
            dst += c * terms(k)
    if init is not None:
        np.add(dst, init, out=dst)


def conv3x3(x4_shape, pad: tuple[int, int], oh: int, ow: int, weight: np.ndarray, bias,
            epilogue=None, m: int | None = None):
    """The body ``x (N, C, H, W) -> out (N, Cout, oh*ow)`` of a Winograd convolution.

    ``weight`` (Cout, Cin, 3, 3), ``bias`` (Cout,) or None; ``epilogue`` is
    applied in place to each finished output band (fused activation)."""
    m = m or tile_size() or 2
    n, c, h, w = x4_shape
    cout = weight.shape[0]
    ph, pw = pad
    bt, _, at = _matrices(m)
    bplan = _plans(bt)
    akron = np.kron(at, at).astype(np.float32)     # (m*m, a*a): exact small integers
    a = m + 2
    a2 = a * a
    u = filter_transform(np.asarray(weight), m)
    th, tw = -(-oh // m), -(-ow // m)             # tiles per column / row
    # Floats of work per tile: V (a2*C) and M (a2*Cout), plus a small
    # channel-block scratch.
    per_tile = a2 * (c + cout)
    tiles_img = th * tw
    # Tiles per chunk: WORK_LIMIT's worth, but at least MIN_TILES (wide
    # channels: thin GEMMs and per-chunk call overhead cost more than the
    # cache misses of a larger buffer), never beyond MAX_WORK.
    tiles = max(1, min(max(MIN_TILES, WORK_LIMIT // per_tile), MAX_WORK // per_tile))
    if tiles_img <= tiles:
        nb, rows = max(1, min(n, tiles // tiles_img)), th
    else:
        nb, rows = 1, max(1, min(th, tiles // tw))
    items = [(n0, n1, r0, r1) for n0, n1 in ic.chunks(n, nb) for r0, r1 in ic.chunks(th, rows)]
    max_t = nb * rows * tw
    # Channel blocks of the transforms: their scratch (input phases and row
    # pass, or output Y) fits in cache.
    per_ch = (m * m * (rows + 1) + a * m * rows) * nb * (tw + 1)
    in_blocks = ic.chunks(c, max(1, BLOCK // per_ch))
    out_blocks = ic.chunks(cout, max(1, BLOCK // (m * m * max_t)))
    # Buffer: [block scratch | V | M].
    v_at = max(per_ch * (in_blocks[0][1] - in_blocks[0][0]),
               m * m * (out_blocks[0][1] - out_blocks[0][0]) * max_t)
    m_at = v_at + a2 * c * max_t
    buf_elems = m_at + a2 * cout * max_t
    bias4 = None if bias is None else np.ascontiguousarray(bias, np.float32).reshape(cout, 1, 1, 1)
    macs = a2 * cout * c * max_t
    # The chunks run on the kernel threads, each with its own work buffer
    # (taken from a per-call pool, so at most one buffer per thread exists);
    # a single chunk instead splits its GEMMs over the threads.
    split_gemms = len(items) < 2 and macs >= 2 * ic.PARALLEL_MACS

    def chunk(x, out, buf, n0, n1, r0, r1):
        nbi, nr = n1 - n0, r1 - r0
        t = nbi * nr * tw
        v = buf[v_at:v_at + a2 * c * t]
        mm = buf[m_at:m_at + a2 * cout * t].reshape(a2, cout, t)
        xs = x[n0:n1].transpose(1, 0, 2, 3)
        # V = B^T d B, per cache-sized block of input channels: the block's
        # padded input band split into m x m phases, qb[pr, pc][r, s] =
        # padded[r*m + pr, s*m + pc], so that tile row k of all tiles is the
        # *contiguous* slice k//m : k//m + nr of phase k % m (strided slices
        # cost 2-3x in every pass); then the row pass into v1 and the column
        # pass straight into V, all in cache.  (A gather + (B^T kron B^T)
        # GEMM measured a few % slower: the Kronecker matrix is 75 % zeros.)
        v6 = v.reshape(a, a, c, nbi, nr, tw)
        for c0, c1 in in_blocks:
            cb = c1 - c0
            qn = m * m * cb * nbi * (nr + 1) * (tw + 1)
            qb = buf[:qn].reshape(m, m, cb, nbi, nr + 1, tw + 1)
            v1 = buf[qn:qn + a * m * cb * nbi * nr * (tw + 1)].reshape(a, m, cb, nbi, nr, tw + 1)
            qb.fill(0)
            for pr in range(m):
                ra, rb = ic.tap_range(0, nr + 1, r0 * m + pr - ph, m, h)
                for pc in range(m):
                    ca, cb_ = ic.tap_range(0, tw + 1, pc - pw, m, w)
                    if ra < rb and ca < cb_:
                        qb[pr, pc, :, :, ra:rb, ca:cb_] = \
                            xs[c0:c1, :, ic.strided(r0 * m + ra * m + pr - ph, rb - ra, m),
                               ic.strided(ca * m + pc - pw, cb_ - ca, m)]
            for i in range(a):
                _combine(bplan[i], lambda k: qb[k % m, :, :, :, k // m:k // m + nr], v1[i])
            for i in range(a):
                for j in range(a):
                    _combine(bplan[j], lambda k: v1[i, k % m, ..., k // m:k // m + tw],
                             v6[i, j, c0:c1])
        vk = v.reshape(a2, c, t)

        def gemm(ks):
            for k in range(*ks):
                np.matmul(u[k], vk[k], out=mm[k])

        if split_gemms:
            ic.parallel_map(gemm, ic.split(a2, ic.active_threads() * ic.PIECES_PER_THREAD))
        else:
            gemm((0, a2))
        # Y = A^T M A for all tiles as one small GEMM (A^T kron A^T) @ M: one
        # read of M instead of a row and a column pass of numpy adds over it;
        # per cache-sized block of output channels, whose Y is then
        # interleaved into the output (cropping the last tiles) with the bias.
        o0, o1 = r0 * m, min(oh, r1 * m)
        band = out[n0:n1, :, o0:o1]
        for c0, c1 in out_blocks:
            cb = c1 - c0
            y = buf[:m * m * cb * t].reshape(m * m, cb * t)
            np.matmul(akron, mm[:, c0:c1].reshape(a2, cb * t), out=y)
            y6 = y.reshape(m, m, cb, nbi, nr, tw)
            for i in range(m):
                nri = len(range(i, o1 - o0, m))
                for j in range(m):
                    ncj = len(range(j, ow, m))
                    dst = band[:, c0:c1, i::m, j::m].transpose(1, 0, 2, 3)
                    src = y6[i, j, :, :, :nri, :ncj]
                    if bias4 is None:
                        np.copyto(dst, src)
                    else:
                        np.add(src, bias4[c0:c1], out=dst)
        if epilogue is not None:
            epilogue(band)

    def body(x):
        out = np.empty((n, cout, oh, ow), np.float32)
        threads = 1 if split_gemms else min(len(items), ic.active_threads())
        pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, threads)):
            pool.put(None)

        def run(item):
            buf = pool.get()
            if buf is None:
                buf = np.empty(buf_elems, np.float32)
            try:
                chunk(x, out, buf, *item)
            finally:
                pool.put(buf)

        if threads > 1:
            ic.parallel_map(run, items)
        else:
            buf = np.empty(buf_elems, np.float32)
            for item in items:
                chunk(x, out, buf, *item)
        return out.reshape(n, cout, oh * ow)

    return body
