"""pycaffe's ``caffe.io``: image loading and the input ``Transformer``.

Semantics follow pycaffe (``python/caffe/io.py``): images are float32 HxWxC
in [0, 1], RGB; ``Transformer.preprocess`` resizes, transposes, swaps
channels, then applies raw scale, mean and input scale, in that order.
Images are decoded with Pillow instead of scikit-image; ``resize_image`` is
bilinear (``interp_order`` 1) or nearest (0) with pixel-centre alignment and
edge clamping, which matches scikit-image inside the image and can differ by
a fraction of a grey level on the border rows/columns.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from amct.errors import DataError
from amct.ir.blobs import array_to_blobproto as _array_to_blobproto
from amct.ir.blobs import blobproto_to_array as _blobproto_to_array
from amct.proto import caffe_pb2

# scikit-image's rgb2gray weights (ITU-R 709), which pycaffe's grey loading uses.
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """Load an image as float32 HxWx3 RGB (``color``) or HxWx1 grey in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(filename) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float64)
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
            else:
                # Alpha is dropped (not composited), as pycaffe does.
                arr = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{filename}: cannot read image: {e}") from e
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if color:
        if arr.shape[2] == 1:
            arr = np.tile(arr, (1, 1, 3))
    elif arr.shape[2] == 3:
        arr = (arr @ _GRAY_WEIGHTS)[:, :, np.newaxis]
    return arr.astype(np.float32)


def _resize_axis(im: np.ndarray, axis: int, new: int, order: int) -> np.ndarray:
    old = im.shape[axis]
    if old == new:
        return im
    # Pixel centres: output i samples input coordinate (i + 0.5) * old/new - 0.5.
    pos = (np.arange(new, dtype=np.float64) + 0.5) * (old / new) - 0.5
    pos = np.clip(pos, 0, old - 1)
    if order == 0:
        return np.take(im, np.rint(pos).astype(np.intp), axis=axis)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, old - 1)
    w = (pos - lo).reshape([-1 if a == axis else 1 for a in range(im.ndim)])
    return np.take(im, lo, axis=axis) * (1 - w) + np.take(im, hi, axis=axis) * w


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an HxWxK image to ``new_dims`` (H', W')."""
    if interp_order not in (0, 1):
        raise DataError(f"resize_image: interp_order {interp_order} is not supported (0 or 1)")
    im = np.asarray(im)
    if im.ndim < 2 or len(new_dims) != 2:
        raise DataError(f"resize_image: need an HxW(xK) image and two new dims, got {im.shape} "
                        f"and {tuple(new_dims)}")
    out = _resize_axis(im.astype(np.float64), 0, int(new_dims[0]), interp_order)
    out = _resize_axis(out, 1, int(new_dims[1]), interp_order)
    return out.astype(np.float32)


def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The blob's data as an array of its shape (legacy 4-field shapes too)."""
    if return_diff:
        shape = tuple(blob.shape.dim) if blob.HasField("shape") else (
            blob.num, blob.channels, blob.height, blob.width)
        return np.asarray(blob.diff, dtype=np.float32).reshape(shape)
    return _blobproto_to_array(blob)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    blob = _array_to_blobproto(np.asarray(arr))
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob


class Transformer:
    """Turn images into net input the way pycaffe's ``caffe.io.Transformer`` does.

    ``inputs`` maps input blob names to their shapes (N, C, H, W).
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise DataError(f"{in_} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """HxWxK image -> KxHxW net input: resize to the input's H, W;
        transpose; swap channels; * raw_scale; - mean; * input_scale."""
        self._check(in_)
        # Always a new array: the steps below work in place.
        x = np.array(data, dtype=np.float32, copy=True)
        dims = self.inputs[in_][2:]
        if x.shape[:2] != dims:
            x = resize_image(x, dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            x *= self.raw_scale[in_]
        if in_ in self.mean:
            x -= self.mean[in_]
        if in_ in self.input_scale:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Invert ``preprocess`` (except the resize)."""
        self._check(in_)
        x = np.array(data, dtype=np.float32, copy=True).squeeze()
        if in_ in self.input_scale:
            x /= self.input_scale[in_]
        if in_ in self.mean:
            x += self.mean[in_]
        if in_ in self.raw_scale:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Axis order of the input, e.g. (2, 0, 1) for HxWxC -> CxHxW."""
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise DataError("Transpose order needs to have the same number of dimensions "
                            "as the input.")
        self.transpose[in_] = tuple(int(i) for i in order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order, e.g. (2, 1, 0) for RGB -> BGR (after transpose)."""
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise DataError("Channel swap needs to have the same number of dimensions as "
                            "the input channels.")
        self.channel_swap[in_] = tuple(int(i) for i in order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Scale applied before the mean, e.g. 255 for [0, 1] images."""
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Per-channel (C,) or element-wise (C, H, W) / (H, W) mean."""
        self._check(in_)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise DataError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            ms = mean.shape if mean.ndim != 2 else (1,) + mean.shape
            if len(ms) != 3:
                raise DataError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                raise DataError("Mean shape incompatible with input shape.")
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Scale applied after the mean, e.g. 0.017 for some ImageNet nets."""
        self._check(in_)
        self.input_scale[in_] = scale
