"""Packing of the deploy DeQuant parameter into one uint64 per channel (SPEC §4.5).

Bit layout: bits 0..31 = IEEE float32 bits of deq_scale, bits 32..39 = shift
N (uint8), bits 40..47 = offset_w as uint8 (two's complement), 48..63 = 0.
"""
from __future__ import annotations

import numpy as np

from amct.errors import QuantizationError


def pack_deq_scale(deq_scale: np.ndarray, shift: np.ndarray | int = 0,
                   offset_w: np.ndarray | int = 0) -> np.ndarray:
    """Pack ``deq_scale`` float32 [C] (with shift and offset_w, scalars or [C]) to uint64 [C]."""
    d = np.ascontiguousarray(deq_scale, dtype=np.float32).reshape(-1)
    n = np.broadcast_to(np.asarray(shift, dtype=np.int64), d.shape)
    o = np.broadcast_to(np.asarray(offset_w, dtype=np.int64), d.shape)
    if ((n < 0) | (n > 255)).any():
        raise QuantizationError(f"deq_scale shift must be in [0, 255], got {n.min()}..{n.max()}")
    if ((o < -128) | (o > 127)).any():
        raise QuantizationError(f"offset_w must be in [-128, 127], got {o.min()}..{o.max()}")
    bits = d.view(np.uint32).astype(np.uint64)
    return (bits | (n.astype(np.uint64) << np.uint64(32))
            | ((o & 0xFF).astype(np.uint64) << np.uint64(40)))


def unpack_deq_scale(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``pack_deq_scale``: ``(deq_scale float32, shift uint8, offset_w int8)``."""
    p = np.ascontiguousarray(packed, dtype=np.uint64).reshape(-1)
    deq = (p & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    shift = ((p >> np.uint64(32)) & np.uint64(0xFF)).astype(np.uint8)
    offset = ((p >> np.uint64(40)) & np.uint64(0xFF)).astype(np.uint8).view(np.int8)
    return deq, shift, offset
