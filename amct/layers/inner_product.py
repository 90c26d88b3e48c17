"""InnerProduct (Caffe semantics).

The input is flattened from ``axis`` on: ``(M, K)`` with ``M`` the product of
the axes before ``axis``; the output is ``in[:axis] + (num_output,)``.  The
weight is stored ``(N, K)``, or ``(K, N)`` when ``transpose`` is true.

Deploy models (int8 weights) get an exact integer kernel: float64 GEMM on the
integer input, int32 result ``acc + bias``.
"""
from __future__ import annotations

import math

import numpy as np

from amct.errors import ShapeError, WeightsError
from amct.ir.registry import Kernel, LayerDef, Shape, register_layer
from amct.layers import _im2col as ic
from amct.layers._common import prepared
from amct.layers.convolution import integer_kernel


def _axis(layer, shape: Shape) -> int:
    ax = layer.param("inner_product_param").axis
    ax = ax + len(shape) if ax < 0 else ax
    if not 0 <= ax < len(shape):
        raise ShapeError(f"layer '{layer.name}' (InnerProduct): axis "
                         f"{layer.param('inner_product_param').axis} out of range for input {shape}")
    return ax


@register_layer
class InnerProductDef(LayerDef):
    type = "InnerProduct"
    param_field = "inner_product_param"
    min_blobs = 1

    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        if len(in_shapes) != 1:
            raise ShapeError(f"layer '{layer.name}' (InnerProduct): needs exactly 1 bottom, "
                             f"has {len(in_shapes)}")
        n = layer.param("inner_product_param").num_output
        if n < 1:
            raise ShapeError(f"layer '{layer.name}' (InnerProduct): num_output must be positive")
        s = tuple(in_shapes[0])
        return [s[:_axis(layer, s)] + (int(n),)]

    def param_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        p = layer.param("inner_product_param")
        s = tuple(in_shapes[0])
        k = math.prod(s[_axis(layer, s):])
        n = int(p.num_output)
        w = (k, n) if p.transpose else (n, k)
        return [w, (n,)] if p.bias_term else [w]

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        return self._make(layer, in_shapes, None, None)

    def build_with(self, layer, in_shapes: list[Shape], weight: np.ndarray,
                   bias: np.ndarray | None, epilogue=None) -> Kernel:
        """A float kernel with ``weight`` (the weight blob's layout) and
        ``bias`` instead of the layer's blobs, and ``epilogue`` applied in
        place to the output (the runtime's plan optimizer fuses with it)."""
        if np.asarray(weight).dtype == np.int8:
            raise WeightsError(f"layer '{layer.name}' (InnerProduct): build_with is float only")
        return self._make(layer, in_shapes, weight, bias, epilogue)

    def _make(self, layer, in_shapes, weight_override, bias_override, epilogue=None) -> Kernel:
        want = self.param_shapes(layer, in_shapes)
        if weight_override is not None:
            return self._kernel(layer, in_shapes, np.asarray(weight_override, np.float32)
                                .reshape(want[0]), bias_override, np.float32, epilogue)
        if len(layer.blobs) < len(want):
            raise WeightsError(f"layer '{layer.name}' (InnerProduct): needs {len(want)} blobs "
                               f"{want}, has {len(layer.blobs)}")
        weight = layer.blobs[0]
        if weight.size != math.prod(want[0]):
            raise WeightsError(f"layer '{layer.name}' (InnerProduct): weight shape "
                               f"{tuple(weight.shape)}, expected {want[0]}")
        deploy = weight.dtype == np.int8
        dtype = np.float64 if deploy else np.float32
        weight = weight.reshape(want[0]).astype(dtype, copy=False)
        bias = None
        if len(want) > 1:
            b = layer.blobs[1].reshape(-1)
            if b.size != want[1][0]:
                raise WeightsError(f"layer '{layer.name}' (InnerProduct): bias has {b.size} "
                                   f"values, expected {want[1][0]}")
            if deploy and b.dtype.kind not in "iu":
                raise WeightsError(f"layer '{layer.name}' (InnerProduct): int8 weights need an "
                                   f"int32 bias, got {b.dtype}")
            bias = b.astype(dtype)
        kern = self._kernel(layer, in_shapes, weight, bias, dtype)
        return integer_kernel(kern, layer.name) if deploy else kern

    @staticmethod
    def _kernel(layer, in_shapes, weight, bias, dtype, epilogue=None) -> Kernel:
        # (K, N) operand of x @ w; a transposed view costs nothing (BLAS flag).
        weight = prepared(weight, dtype)
        wkn = weight if layer.param("inner_product_param").transpose else weight.T
        if bias is not None:
            bias = prepared(np.asarray(bias).reshape(-1), dtype)
        s = tuple(in_shapes[0])
        ax = _axis(layer, s)
        m, k = math.prod(s[:ax]), math.prod(s[ax:])
        nout = wkn.shape[1]
        out_shape = s[:ax] + (nout,)
        # Few rows (a small batch): OpenBLAS is 2-5x faster on W[rows] @ x^T
        # (weight rows contiguous) than on x @ W^T, and blocks of 512 weight
        # rows keep the packed panels small; blocks also spread over threads.
        row_form = m <= 16 and not layer.param("inner_product_param").transpose
        groups = [[(r, min(b, r + 512)) for r in range(a, b, 512)]
                  for a, b in ic.gemm_blocks(nout, m * k * nout)]     # per thread
        cols = [] if row_form else ic.gemm_blocks(nout, m * k * nout)

        def run(inputs):
            x = inputs[0].reshape(m, k)
            if row_form:
                xt = np.ascontiguousarray(x.T)
                out_t = np.empty((nout, m), dtype)

                def part(blks):
                    for a, b in blks:
                        np.matmul(weight[a:b], xt, out=out_t[a:b])

                if len(groups) > 1:
                    ic.parallel_map(part, groups)
                else:
                    part(groups[0])
                out = np.ascontiguousarray(out_t.T)
            elif len(cols) > 1:
                # Larger batches: blocks of output columns on the kernel
                # threads (the BLAS runs single-threaded inside a pass, so a
                # single call would use one core); each block reads all of x,
                # the small operand, and its own slice of the weights.
                out = np.empty((m, nout), dtype)

                def cpart(blk):
                    np.matmul(x, wkn[:, blk[0]:blk[1]], out=out[:, blk[0]:blk[1]])

                ic.parallel_map(cpart, cols)
            else:
                out = np.matmul(x, wkn)
            if bias is not None:
                out += bias
            if epilogue is not None:
                epilogue(out)
            return [out.reshape(out_shape)]

        return run
