"""Conversion between ``caffe.BlobProto`` messages and numpy arrays.

Used for small blobs (mean files, tests).  Model weights go through the
streaming codec in ``amct.frontends.caffe.wire``, which never builds per-element
Python objects.
"""
from __future__ import annotations

import numpy as np

from amct.errors import WeightsError
from amct.proto import caffe_pb2


def blob_shape(b: caffe_pb2.BlobProto) -> tuple[int, ...]:
    if b.HasField("shape"):
        return tuple(int(d) for d in b.shape.dim)
    # Legacy 4-field shape: Caffe treats it as (num, channels, height, width).
    return (b.num, b.channels, b.height, b.width)


def blobproto_to_array(b: caffe_pb2.BlobProto, where: str = "blob") -> np.ndarray:
    shape = blob_shape(b)
    if len(b.int8_data):
        arr = np.frombuffer(b.int8_data, dtype=np.int8).copy()
    elif len(b.int32_data):
        arr = np.asarray(b.int32_data, dtype=np.int32)
    elif len(b.uint64_data):
        arr = np.asarray(b.uint64_data, dtype=np.uint64)
    elif len(b.double_data):
        arr = np.asarray(b.double_data, dtype=np.float64)
    else:
        arr = np.asarray(b.data, dtype=np.float32)
    n = int(np.prod(shape)) if shape else 1
    if arr.size != n:
        raise WeightsError(f"{where}: holds {arr.size} values but its shape {shape} needs {n}")
    return arr.reshape(shape)


def array_to_blobproto(a: np.ndarray) -> caffe_pb2.BlobProto:
    b = caffe_pb2.BlobProto()
    b.shape.dim.extend(int(d) for d in a.shape)
    flat = np.ascontiguousarray(a).reshape(-1)
    if a.dtype == np.int8:
        b.int8_data = flat.tobytes()
    elif a.dtype == np.int32:
        b.int32_data.extend(flat.tolist())
    elif a.dtype == np.uint64:
        b.uint64_data.extend(flat.tolist())
    elif a.dtype == np.float64:
        b.double_data.extend(flat.tolist())
    else:
        b.data.extend(flat.astype(np.float32).tolist())
    return b
