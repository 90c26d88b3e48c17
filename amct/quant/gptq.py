"""GPTQ rounding of weights onto a fixed grid (``amct.weight_rounding`` applies it).

Nearest rounding makes each weight's error as small as it can be on its own.
What the network feels is the layer's output error ``||(Q·s − W) X||²`` on
real inputs ``X``, and there the errors of weights whose inputs are
correlated can cancel.  GPTQ (Frantar et al., "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", 2022, after Optimal
Brain Quantization) rounds one input column at a time and moves the columns
not yet rounded so that they make up for the error just made.  The amount
each column moves comes from the inverse of ``H = X Xᵀ``.

Here the grid is given: the scales stay ARQ's, so the deploy model's
deq_scale, the record and every file format are unchanged; only the int8
codes differ.  Columns are taken in order of decreasing ``H`` diagonal (the
inputs with most energy first, GPTQ's "act order"), and ``damp`` times the
mean diagonal is added to ``H`` so that it can be inverted when inputs are
collinear.  A column whose input was always zero gets no compensation in
either direction, so it keeps its nearest rounding.

Everything is batched over groups: ``w`` is ``(G, R, K)`` (G independent
problems of R output rows over K input columns), ``H`` is ``(G, K, K)``.
"""
from __future__ import annotations

import numpy as np

from amct.errors import QuantizationError
from amct.quant.rounding import activation_codes, round_half_away

#: GPTQ's dampening, as a fraction of the mean of H's diagonal.
DEFAULT_DAMP = 0.01
#: Columns rounded before the rest of the matrix is updated (one GEMM per block).
BLOCK = 128


def _check(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray) -> None:
    if w.ndim != 3 or hessian.shape != (w.shape[0], w.shape[2], w.shape[2]):
        raise QuantizationError(f"GPTQ needs weights (G, R, K) and H (G, K, K); got {w.shape} "
                                f"and {hessian.shape}")
    if scale.shape != w.shape[:2]:
        raise QuantizationError(f"GPTQ needs one scale per row, shape {w.shape[:2]}; got "
                                f"{scale.shape}")
    if not (np.isfinite(w).all() and np.isfinite(hessian).all()):
        raise QuantizationError("GPTQ: weights or input statistics contain NaN or Inf")
    if not (scale > 0).all():
        raise QuantizationError("GPTQ: every scale must be positive")


def gptq_codes(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, *,
               damp: float = DEFAULT_DAMP, qmin: int = -128, qmax: int = 127,
               block: int = BLOCK) -> np.ndarray:
    """Integer codes (float64, integral, in ``[qmin, qmax]``) for ``w ≈ codes · scale``.

    ``w``: ``(G, R, K)``; ``hessian``: ``(G, K, K)``, the sum of ``x xᵀ`` over
    the layer's input columns ``x`` (positive semi-definite); ``scale``:
    ``(G, R)``, one positive scale per output row.  Deterministic: the column
    order is a stable sort and every step is plain float64 arithmetic.
    """
    w = np.asarray(w, np.float64)
    hessian = np.asarray(hessian, np.float64)
    scale = np.asarray(scale, np.float64)
    _check(w, hessian, scale)
    g, r, k = w.shape
    gi = np.arange(g)[:, None]
    diag = hessian[:, np.arange(k), np.arange(k)]
    order = np.argsort(-diag, axis=1, kind="stable")
    W = np.take_along_axis(w, order[:, None, :], axis=2)
    H = hessian[gi[:, :, None], order[:, :, None], order[:, None, :]]
    d = np.take_along_axis(diag, order, axis=1)
    dead = d <= 0
    live_mean = np.where(dead, 0.0, d).sum(axis=1) / np.maximum((~dead).sum(axis=1), 1)
    # A dead column's row and column of H are zero (H is a Gram matrix): a unit
    # diagonal makes it invertible without coupling it to anything.
    add = np.where(dead, 1.0, damp * np.where(live_mean > 0, live_mean, 1.0)[:, None])
    H[:, np.arange(k), np.arange(k)] += add
    U = inverse_cholesky_upper(H)
    codes = np.empty_like(W)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        Wb = W[:, :, b0:b1].copy()
        err = np.empty_like(Wb)
        for j in range(b1 - b0):
            col = Wb[:, :, j]
            q = np.clip(round_half_away(col / scale), qmin, qmax)
            codes[:, :, b0 + j] = q
            e = (col - q * scale) / U[:, b0 + j, b0 + j][:, None]
            err[:, :, j] = e
            Wb[:, :, j + 1:] -= e[:, :, None] * U[:, None, b0 + j, b0 + j + 1:b1]
        if b1 < k:
            W[:, :, b1:] -= np.matmul(err, U[:, b0:b1, b1:])
    out = np.empty_like(codes)
    np.put_along_axis(out, order[:, None, :], codes, axis=2)
    return out


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    """Inverse of lower-triangular matrices (G, n, n), by halves: the
    off-diagonal block is -C⁻¹ B A⁻¹, so all the work is matrix products."""
    n = low.shape[-1]
    if n <= 64:
        return np.linalg.inv(low)
    h = n // 2
    a_inv, c_inv = _lower_inverse(low[:, :h, :h]), _lower_inverse(low[:, h:, h:])
    out = np.zeros_like(low)
    out[:, :h, :h] = a_inv
    out[:, h:, h:] = c_inv
    out[:, h:, :h] = -np.matmul(np.matmul(c_inv, low[:, h:, :h]), a_inv)
    return out


def inverse_cholesky_upper(hessian: np.ndarray) -> np.ndarray:
    """The upper-triangular U with ``H⁻¹ = Uᵀ U`` (positive diagonal), for (G, K, K).

    Row j of U, divided by ``U[j, j]``, is how far the columns after j move per
    unit of error in column j once the columns before j are fixed.  With P the
    order reversal and ``P H P = R Rᵀ`` (R lower), ``U = P R⁻¹ P``: one
    Cholesky and one triangular inverse instead of inverting H and factoring
    the inverse (measured 1.7 times faster at K = 2304).
    """
    try:
        low = np.linalg.cholesky(hessian[:, ::-1, ::-1])
    except np.linalg.LinAlgError as e:
        raise QuantizationError(f"GPTQ: input statistics are not positive definite ({e})") from e
    return np.ascontiguousarray(_lower_inverse(low)[:, ::-1, ::-1])


def output_error(w: np.ndarray, codes: np.ndarray, hessian: np.ndarray,
                 scale: np.ndarray) -> np.ndarray:
    """``||(codes·scale − w) X||²`` per group, from ``H = X Xᵀ``: the squared
    output error the rounding adds on the inputs H was measured on."""
    delta = np.asarray(codes, np.float64) * np.asarray(scale, np.float64)[:, :, None] - w
    # matmul (BLAS) then an elementwise sum: einsum would not use BLAS here.
    dh = np.matmul(delta, np.asarray(hessian, np.float64))
    return (dh * delta).sum(axis=(1, 2))


def quantize_input(x: np.ndarray, scale_d: float, offset_d: int) -> np.ndarray:
    """``x`` as the layer's Quant layer delivers it in the fake-quant model
    (SPEC §4.1: the same float32 reciprocal, rounding and clamp)."""
    inv = np.float32(1.0) / np.float32(scale_d)
    q = activation_codes(x, inv, offset_d)
    return np.divide(q, inv, out=q)


def dense_gram(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """``H`` of an InnerProduct input: ``x`` flattened from ``axis`` into
    ``(N, K)`` rows, ``Σ x xᵀ`` as ``(1, K, K)`` float64."""
    x = np.asarray(x, np.float32)
    rows = x.reshape(int(np.prod(x.shape[:axis])), -1)
    return (rows.T @ rows).astype(np.float64)[None]


#: Bytes of im2col columns built at once when accumulating a convolution's H.
COLUMN_BYTES = 64 << 20


def position_step(oh: int, ow: int, max_positions: int | None) -> int:
    """Every how many output rows and columns ``conv_gram`` takes a window so
    that at most ``max_positions`` of the oh x ow windows are taken per image."""
    if not max_positions or oh * ow <= max_positions:
        return 1
    step = max(1, int(np.ceil(np.sqrt(oh * ow / max_positions))))
    while -(-oh // step) * -(-ow // step) > max_positions:
        step += 1
    return step


def sampled_windows(hw: tuple[int, int], kernel: tuple[int, int], pad: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int],
                    max_positions: int | None = None) -> tuple[int, int, tuple[int, int]]:
    """``(rows, columns, stride)`` of the output windows ``conv_gram`` takes
    from one image of spatial size ``hw``: the convolution's output grid, or
    its regular sub-grid when it has more than ``max_positions`` windows."""
    oh = (hw[0] + 2 * pad[0] - (dilation[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    ow = (hw[1] + 2 * pad[1] - (dilation[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise QuantizationError(f"convolution input {tuple(hw)} gives no output for kernel "
                                f"{kernel}, pad {pad}, stride {stride}, dilation {dilation}")
    step = position_step(oh, ow, max_positions)
    return -(-oh // step), -(-ow // step), (stride[0] * step, stride[1] * step)


def conv_gram(x: np.ndarray, group: int, kernel: tuple[int, int], pad: tuple[int, int],
              stride: tuple[int, int], dilation: tuple[int, int],
              max_positions: int | None = None) -> np.ndarray:
    """``H`` of a 2-D convolution's input ``x`` (N, C, H, W), per group:
    ``(group, K, K)`` float64 with K = C/group·kh·kw in the weights' order
    (input channel, kernel row, kernel column), summed over the output
    positions of every image, padding included as zeros (as the convolution
    sees it).  With ``max_positions``, a large output map contributes only
    the windows on a regular sub-grid (every ``position_step``-th row and
    column), at most that many per image: H only needs to be known up to a
    scale, and neighbouring windows add little to it."""
    x = np.asarray(x, np.float32)
    n, c, h, wd = x.shape
    kh, kw = kernel
    ph, pw = pad
    dh, dw = dilation
    if c % group:
        raise QuantizationError(f"convolution input {x.shape}: {c} channels in {group} groups")
    oh, ow, (sh, sw) = sampled_windows((h, wd), kernel, pad, stride, dilation, max_positions)
    cg = c // group
    k = cg * kh * kw
    out = np.zeros((group, k, k), np.float64)
    per_image = c * kh * kw * oh * ow * 4
    per_chunk = max(1, COLUMN_BYTES // max(per_image, 1))
    for i0 in range(0, n, per_chunk):
        xp = np.pad(x[i0:i0 + per_chunk], ((0, 0), (0, 0), (ph, ph), (pw, pw))).swapaxes(0, 1)
        m = xp.shape[1]
        # Channel-major columns (C, kh, kw, image, oh, ow): (group, K, positions)
        # is then a view, and each chunk is one GEMM per group.
        cols = np.empty((c, kh, kw, m, oh, ow), np.float32)
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                   j * dw:j * dw + sw * (ow - 1) + 1:sw]
        cols = cols.reshape(group, k, m * oh * ow)
        out += np.matmul(cols, np.swapaxes(cols, 1, 2))
    return out
