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
    0.5 the addition itself rounds up to 1.0.
    """
    a = np.asarray(x)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    # rint rounds ties to even; only exact ties need moving.  ``a - rint(a)``
    # is exact (the two are within a factor of 2 of each other, or a is
    # already whole), so a tie shows as |difference| == 0.5 exactly.  This
    # costs three passes over the data where the floor/fraction form took six.
    r = np.rint(a, out=np.empty_like(a))
    with np.errstate(invalid="ignore"):        # inf - inf: nan, never a tie
        d = np.subtract(a, r, out=np.empty_like(a))
    np.abs(d, out=d)
    ties = np.flatnonzero(d == 0.5)
    if ties.size:
        t = a.flat[ties]           # C order on any memory layout, like flatnonzero
        r.flat[ties] = t + np.copysign(a.dtype.type(0.5), t)
    return r if r.ndim else r[()]


def activation_codes(x: np.ndarray, scale: np.floating, offset: int) -> np.ndarray:
    """A Quant layer's codes minus its offset (SPEC §4.1), as float32:
    ``clamp(round(x·scale) + offset, −128, 127) − offset``, which is
    ``clamp(round(x·scale), −128 − offset, 127 − offset)``.  ``scale`` is the
    layer's ``quant_param.scale`` (1 / scale_d, float32).  A fresh array."""
    q = round_half_away(np.multiply(x, scale, dtype=np.float32))
    return np.clip(q, np.float32(-128 - offset), np.float32(127 - offset), out=q)
