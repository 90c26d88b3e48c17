"""Helpers shared by the layer modules (axis handling, errors, dtype care).

Not a layer module itself (the leading underscore keeps ``amct.layers`` from
treating it as one); it is imported by the modules that need it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from amct.errors import ShapeError

F32 = np.float32


def shape_error(layer, msg: str) -> ShapeError:
    """A ``ShapeError`` naming the layer (the graph adds no second prefix)."""
    return ShapeError(f"layer '{layer.name}' ({layer.type}): {msg}")


def canonical_axis(layer, axis: int, ndim: int, what: str = "axis") -> int:
    """Caffe's ``Blob::CanonicalAxisIndex``: -ndim <= axis < ndim, negatives
    count from the end."""
    if not -ndim <= axis < ndim:
        raise shape_error(layer, f"{what} {axis} is out of range for a {ndim}-D input")
    return axis + ndim if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Caffe's ``Blob::count(start, end)``: product of dims [start, end)."""
    return int(np.prod(shape[start:end], dtype=np.int64))


def need_inputs(layer, in_shapes: list, lo: int, hi: int | None = None) -> None:
    """Check the number of bottoms is in [lo, hi] (hi None: exactly lo)."""
    hi = lo if hi is None else hi
    n = len(in_shapes)
    if not lo <= n <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise shape_error(layer, f"takes {want} bottom(s), got {n}")


def channel_view_shape(ndim: int, axis: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape that makes a parameter of ``shape`` broadcast against a
    ``ndim``-D tensor starting at ``axis`` (leading and trailing 1s)."""
    return (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))


def f32(v) -> np.float32:
    """A float32 scalar: numpy 2 promotes float32 arrays to float64 when
    combined with float64 scalars, which would change dtype and speed."""
    return np.float32(v)


def prepared(a, dtype=np.float32) -> np.ndarray:
    """``a`` as a C-contiguous, *aligned* array of ``dtype`` (copied only if
    needed).  Blobs read from a caffemodel are views into the file buffer at
    arbitrary byte offsets; numpy hands unaligned operands to neither BLAS
    (matmul falls back to a loop ~5-10x slower) nor its SIMD loops, so
    kernels prepare their weights with this once, at build time."""
    return np.require(a, dtype, ["C", "A"])


def inplace(kernel, inputs: Sequence[int] = (0,)):
    """Declare that ``kernel(xs, reuse=k)`` can write its single output into
    ``xs[k]`` (for ``k`` in ``inputs``) and return that array.

    The runtime passes ``reuse`` only when it has proved the input is dead
    after this layer, float32, writable and shared with nobody; kernels
    without the declaration are always called as ``kernel(xs)`` and never
    write into their inputs.  Saves one output allocation (and its page
    faults) per elementwise layer."""
    kernel.inplace = tuple(inputs)
    return kernel
