"""Per-channel affine maps y = mul·x + add of BatchNorm and Scale layers.

Not a pass: the arithmetic shared by the two fusion passes (SPEC §5.2).
Computed in float64 so the folded float32 weights do not depend on the order
in which BN and Scale are combined.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Layer

Affine = tuple[np.ndarray, np.ndarray]


def batchnorm_affine(bn: Layer) -> Affine | None:
    """BatchNorm in inference form as (mul, add), or None if it cannot fold.

    Caffe stores [mean·f, var·f, f]; mean = b0/f and var = b1/f, and f = 0
    means "no statistics" (Caffe then uses 0, so mean = var = 0).
    """
    if len(bn.blobs) < 3 or len(bn.bottoms) != 1 or len(bn.tops) != 1:
        return None
    f = float(np.asarray(bn.blobs[2], np.float64).reshape(-1)[0])
    k = 0.0 if f == 0 else 1.0 / f
    mean = np.asarray(bn.blobs[0], np.float64).reshape(-1) * k
    var = np.asarray(bn.blobs[1], np.float64).reshape(-1) * k
    eps = float(np.float32(bn.params.batch_norm_param.eps))
    inv = 1.0 / np.sqrt(var + eps)
    return inv, -mean * inv


def scale_affine(sc: Layer) -> Affine | None:
    """A per-channel (axis 1, one axis) single-bottom Scale as (mul, add), else None."""
    sp = sc.params.scale_param
    if len(sc.bottoms) != 1 or len(sc.tops) != 1 or not sc.blobs:
        return None
    if sp.axis != 1 or sp.num_axes != 1 or sc.blobs[0].ndim != 1:
        return None
    gamma = np.asarray(sc.blobs[0], np.float64).reshape(-1)
    beta = (np.asarray(sc.blobs[1], np.float64).reshape(-1) if sp.bias_term and len(sc.blobs) > 1
            else np.zeros_like(gamma))
    return gamma, beta


def layer_affine(layer: Layer) -> Affine | None:
    if layer.type == "BatchNorm":
        return batchnorm_affine(layer)
    if layer.type == "Scale":
        return scale_affine(layer)
    return None


def compose(first: Affine, then: Affine) -> Affine:
    """The affine map of ``then(first(x))``."""
    return first[0] * then[0], first[1] * then[0] + then[1]
