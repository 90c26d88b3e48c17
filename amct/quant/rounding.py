"""The one rounding rule of the toolkit (SPEC §4.1): half away from zero.

numpy's ``np.round`` rounds half to even (2.5 -> 2), which is not what the
Ascend hardware nor AMCT do, so every quantization formula goes through
``round_half_away`` instead.
"""
from __future__ import annotations

import numpy as np

#: float32 machine epsilon: scales below it are replaced by 1.0 (SPEC §4.2, §4.3).
FLT_EPSILON = float(np.finfo(np.float32).eps)


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (0.5 -> 1, -0.5 -> -1, 2.5 -> 3).

    Keeps the floating dtype of ``x`` (float64 for Python scalars and ints).
    ``floor(|x| + 0.5)`` is avoided on purpose: for the largest double below
    0.5 the addition itself rounds up to 1.0.  Instead the fractional part,
    which is computed exactly, is compared with 0.5.
    """
    a = np.asarray(x)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    mag = np.abs(a)
    whole = np.floor(mag)
    rounded = whole + (mag - whole >= 0.5)
    return np.copysign(rounded, a)
