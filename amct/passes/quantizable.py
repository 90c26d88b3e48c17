"""Which layers can be quantized (SPEC §5.1), and their output channel layout.

Not a pass: the shared predicate used by the config builder, the passes and
convert_model, so the rule lives in one place.
"""
from __future__ import annotations

import numpy as np

from amct.ir import Layer
from amct.proto import caffe_pb2
from amct.quant.arq import channel_scale_view

QUANTIZABLE_TYPES = ("Convolution", "Deconvolution", "InnerProduct", "Pooling")
WEIGHTED_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
#: channel_wise may be true only for these (per output channel).
CHANNEL_WISE_TYPES = ("Convolution", "Deconvolution")


def _spatial_kernel_dims(cp: caffe_pb2.ConvolutionParameter) -> int:
    if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
        return 2
    return max(len(cp.kernel_size), 1)


def not_quantizable_reason(layer: Layer) -> str | None:
    """None when ``layer`` is quantizable, else a short reason (for messages)."""
    t = layer.type
    if t not in QUANTIZABLE_TYPES:
        return f"type '{t}' is not quantizable (only {', '.join(QUANTIZABLE_TYPES)})"
    if t in ("Convolution", "Deconvolution"):
        cp = layer.params.convolution_param
        four_d = layer.blobs[0].ndim == 4 if layer.blobs else _spatial_kernel_dims(cp) == 2
        if not four_d or cp.axis != 1:
            return f"{t} without a 4-D filter"
        if t == "Deconvolution" and any(d != 1 for d in cp.dilation):
            return "Deconvolution with dilation != 1"
    elif t == "InnerProduct":
        ip = layer.params.inner_product_param
        if ip.axis != 1:
            return f"InnerProduct with axis {ip.axis} (only axis 1)"
        if ip.transpose:
            return "InnerProduct with transpose true"
    else:  # Pooling
        pp = layer.params.pooling_param
        if pp.pool != caffe_pb2.PoolingParameter.AVE:
            return "Pooling that is not AVE"
        if pp.global_pooling:
            return "global Pooling"
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        return f"{t} with {len(layer.bottoms)} bottoms and {len(layer.tops)} tops (only 1 and 1)"
    if t in WEIGHTED_TYPES and not layer.blobs:
        return f"{t} without weights"
    return None


def is_quantizable(layer: Layer) -> bool:
    return not_quantizable_reason(layer) is None


def group_count(layer: Layer) -> int:
    return int(layer.params.convolution_param.group) if layer.type in ("Convolution", "Deconvolution") else 1


def output_channels(layer: Layer) -> int:
    """Number of output channels of a weighted layer (from its weight blob)."""
    w = layer.blobs[0]
    if layer.type == "Deconvolution":
        return int(w.shape[1]) * group_count(layer)
    return int(w.shape[0])


def scale_output_channels(w: np.ndarray, a: np.ndarray, layer: Layer) -> np.ndarray:
    """``w`` with output channel c multiplied by ``a[c]`` (new float32 array)."""
    view = channel_scale_view(np.asarray(a, np.float64), w.shape, layer.type, group_count(layer))
    return (w.astype(np.float64) * view).astype(np.float32)


def choose_layers(requested, available: list[str], step: str, what: str) -> list[str]:
    """The names in ``requested`` (a ``layers=`` argument), in ``available``'s
    order.  A name that is not available is a ``ConfigError`` that lists them."""
    from amct.errors import ConfigError

    chosen = set(requested)
    unknown = sorted(chosen - set(available))
    if unknown:
        raise ConfigError(f"{step}: {unknown} are not {what} (those are: "
                          f"{', '.join(available) or 'none'})")
    return [n for n in available if n in chosen]
