"""Caffe-style preprocessing of images and pixel arrays.

Order (as Caffe's data transformer and the usual deploy scripts do it): decode
(grayscale for 1-channel nets, colour otherwise), resize to H,W, center crop
H,W, channel order (BGR by default, as OpenCV/Caffe read images; ``rgb`` keeps
RGB), subtract the mean (values in the network's channel order, or a mean file
cropped like the image), multiply by ``scale``, and finally swap H and W
(``transpose_hw``, for MTCNN which was trained on transposed images).
Pixel arrays (MNIST idx/csv) skip decoding and channel order.
"""
from __future__ import annotations

import os

import attrs
import numpy as np

from amct.errors import DataError

HW = tuple[int, int]


@attrs.frozen
class Preprocess:
    """The preprocessing recipe; all fields optional (identity by default)."""

    resize: HW | None = None
    crop: HW | None = None
    mean: tuple[float, ...] | None = None
    mean_file: str | None = None
    scale: float = 1.0
    rgb: bool = False
    transpose_hw: bool = False

    def __attrs_post_init__(self) -> None:
        if self.mean is not None and self.mean_file is not None:
            raise DataError("give either mean values or a mean file, not both")
        for what, hw in (("resize", self.resize), ("crop", self.crop)):
            if hw is not None and (len(hw) != 2 or min(hw) < 1):
                raise DataError(f"{what} must be two positive sizes H,W, got {hw}")

    @property
    def is_identity(self) -> bool:
        return self == Preprocess()

    def image_size(self, net_hw: HW) -> HW:
        """The H,W the image must have before the transpose, for a net input of ``net_hw``."""
        return (net_hw[1], net_hw[0]) if self.transpose_hw else net_hw

    # ------------------------------------------------------------ images
    def image(self, path: str, channels: int, net_hw: HW) -> np.ndarray:
        """Decode and preprocess one image file into a (C, H, W) float32 array."""
        from PIL import Image, UnidentifiedImageError

        if channels not in (1, 3):
            raise DataError(f"{path}: images can feed 1- or 3-channel inputs only, the network "
                            f"input has {channels} channels (use .npy/.bin tensors)")
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except UnidentifiedImageError:
            raise DataError(f"{path}: not an image Pillow can decode") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: cannot decode image: {e}") from None
        want = self.image_size(net_hw)
        if self.resize is not None:
            im = _resize(im, self.resize)
        elif self.crop is None and (im.height, im.width) != want:
            # Without explicit geometry the image is resized to what the
            # network takes; that is what a user who gives nothing expects.
            im = _resize(im, want)
        arr = np.asarray(im, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        arr = self._crop(arr, path)
        if channels == 3 and not self.rgb:
            arr = arr[::-1]
        return self._finish(arr, path, net_hw)

    # ------------------------------------------------------ pixel arrays
    def pixels(self, batch: np.ndarray, where: str, net_hw: HW) -> np.ndarray:
        """Preprocess a (N, C, H, W) batch of raw pixel values (no channel swap)."""
        batch = np.asarray(batch, dtype=np.float32)
        if self.resize is not None:
            from PIL import Image

            if batch.shape[1] != 1:
                raise DataError(f"{where}: resizing pixel arrays is supported for 1 channel only")
            batch = np.stack([np.asarray(_resize(Image.fromarray(s[0], mode="F"), self.resize),
                                         dtype=np.float32)[None] for s in batch])
        batch = self._crop(batch, where)
        out = self._finish(batch, where, net_hw)
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------ common
    def _crop(self, arr: np.ndarray, where: str) -> np.ndarray:
        if self.crop is None:
            return arr
        h, w = arr.shape[-2:]
        ch, cw = self.crop
        if ch > h or cw > w:
            raise DataError(f"{where}: crop {ch}x{cw} is larger than the image {h}x{w} "
                            "(resize first with --resize)")
        top, left = (h - ch) // 2, (w - cw) // 2
        return arr[..., top:top + ch, left:left + cw]

    def _finish(self, arr: np.ndarray, where: str, net_hw: HW) -> np.ndarray:
        """Mean, scale, transpose; then check the size against the network."""
        if self.mean is not None:
            m = np.asarray(self.mean, dtype=np.float32)
            c = arr.shape[-3]
            if m.size == 1:
                m = np.repeat(m, c)
            if m.size != c:
                raise DataError(f"{where}: {m.size} mean values for {c} channels")
            arr = arr - m.reshape(c, 1, 1)
        elif self.mean_file is not None:
            arr = arr - _fit_mean(load_mean(self.mean_file), arr.shape[-3:], self.mean_file)
        if self.scale != 1.0:
            arr = arr * np.float32(self.scale)
        if self.transpose_hw:
            arr = np.swapaxes(arr, -1, -2)
        if tuple(arr.shape[-2:]) != tuple(net_hw):
            raise DataError(f"{where}: preprocessed size is {arr.shape[-2]}x{arr.shape[-1]} but the "
                            f"network input takes {net_hw[0]}x{net_hw[1]} (check --resize/--crop"
                            f"{'/--transpose-hw' if self.transpose_hw else ''} or --input-shape)")
        return arr.astype(np.float32, copy=False)


def _resize(im, hw: HW):
    from PIL import Image

    # Bilinear like cv2.INTER_LINEAR (what Caffe's scripts use); reducing_gap
    # None keeps Pillow from a box pre-reduction that OpenCV does not do.
    return im.resize((hw[1], hw[0]), Image.BILINEAR)


_MEAN_CACHE: dict[str, np.ndarray] = {}


def load_mean(path: str) -> np.ndarray:
    """A mean image (C, H, W) or per-channel means (C,) from .binaryproto or .npy."""
    key = os.path.abspath(path)
    if key in _MEAN_CACHE:
        return _MEAN_CACHE[key]
    if not os.path.isfile(path):
        raise DataError(f"{path}: mean file not found")
    if path.lower().endswith(".npy"):
        try:
            m = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npy mean file: {e}") from None
    else:
        from google.protobuf import message as pb_message

        from amct.errors import WeightsError
        from amct.ir.blobs import blobproto_to_array
        from amct.proto import caffe_pb2

        blob = caffe_pb2.BlobProto()
        try:
            with open(path, "rb") as f:
                blob.ParseFromString(f.read())
            m = blobproto_to_array(blob, where=path)
        except (pb_message.DecodeError, WeightsError) as e:
            raise DataError(f"{path}: not a Caffe BlobProto mean file: {e}") from None
        if m.size == 0:
            raise DataError(f"{path}: the mean blob is empty (is this a BlobProto?)")
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim not in (1, 3):
        raise DataError(f"{path}: mean has shape {m.shape}; expected (C,), (C,H,W) or (1,C,H,W)")
    _MEAN_CACHE[key] = m
    return m


def _fit_mean(m: np.ndarray, shape: tuple[int, ...], path: str) -> np.ndarray:
    """The mean as it applies to a (C, H, W) image: per channel, equal, or center-cropped."""
    c, h, w = shape
    if m.shape[0] != c:
        raise DataError(f"{path}: mean has {m.shape[0]} channels, the data {c}")
    if m.ndim == 1:
        return m.reshape(c, 1, 1)
    mh, mw = m.shape[1:]
    if mh < h or mw < w:
        raise DataError(f"{path}: mean image is {mh}x{mw}, smaller than the data {h}x{w}")
    top, left = (mh - h) // 2, (mw - w) // 2
    return m[:, top:top + h, left:left + w]
