"""Streaming protobuf codec for caffemodel files.

A caffemodel is one ``NetParameter`` whose bulk is packed float arrays inside
``BlobProto`` messages.  Parsing it with protobuf and converting each repeated
field to numpy costs several times the file size in memory and seconds of
per-element work.  This module walks the wire format itself: it reads the file
into one buffer, hands every layer's small non-blob part to protobuf, and turns
each blob's packed payload into a numpy view of the buffer (no copy, no Python
object per element).  Encoding is the mirror image and produces exactly the
bytes protobuf's deterministic serializer would.

Field numbers used (caffe.proto): NetParameter.layer = 100, .layers = 2 (V1);
LayerParameter.blobs = 7; V1LayerParameter.blobs = 6, .layer = 1 (V0);
V0LayerParameter.blobs = 50; BlobProto: num..width = 1..4, data = 5, diff = 6,
shape = 7, double_data = 8, double_diff = 9, int8_data = 10, int32_data = 11,
uint64_data = 12; BlobShape.dim = 1.  OpenCV's FP16 caffemodels reuse 10 as a
varint (raw_data_type, FLOAT16 = 2) and 12 as raw half-float bytes; they are
read and widened to float32.
"""
from __future__ import annotations

import contextlib
import mmap
import os
from typing import IO, Iterable

import attrs
import numpy as np

from amct.errors import CaffemodelError

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5


class _Truncated(Exception):
    pass


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Truncated(pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(buf, start: int, end: int):
    """Yield (field number, wire type, value start, value end, varint value, field start)."""
    pos = start
    while pos < end:
        fstart = pos
        key, pos = read_varint(buf, pos, end)
        fn, wt = key >> 3, key & 7
        if fn == 0:
            raise ValueError(f"field number 0 at byte {fstart}")
        if wt == WT_VARINT:
            v, pos = read_varint(buf, pos, end)
            yield fn, wt, pos, pos, v, fstart
        elif wt == WT_LEN:
            ln, p = read_varint(buf, pos, end)
            if p + ln > end:
                raise _Truncated(fstart)
            yield fn, wt, p, p + ln, ln, fstart
            pos = p + ln
        elif wt == WT_I32:
            if pos + 4 > end:
                raise _Truncated(fstart)
            yield fn, wt, pos, pos + 4, 0, fstart
            pos += 4
        elif wt == WT_I64:
            if pos + 8 > end:
                raise _Truncated(fstart)
            yield fn, wt, pos, pos + 8, 0, fstart
            pos += 8
        else:
            raise ValueError(f"invalid wire type {wt} (field {fn}) at byte {fstart}")


def decode_packed_varints(data: np.ndarray, dtype) -> np.ndarray:
    """Decode a run of varints (a packed repeated int field) with numpy."""
    b = np.asarray(data, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=dtype)
    if b[-1] >= 0x80:
        raise ValueError("packed varint run ends mid-value")
    ends = np.flatnonzero(b < 0x80)
    group = np.zeros(b.size, dtype=np.int64)
    group[ends[:-1] + 1] = 1
    group = np.cumsum(group)
    starts = np.concatenate(([0], ends[:-1] + 1))
    shift = (np.arange(b.size) - starts[group]) * 7
    if shift.max(initial=0) > 63:
        raise ValueError("varint longer than 10 bytes")
    vals = np.zeros(ends.size, dtype=np.uint64)
    np.add.at(vals, group, (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64))
    if np.dtype(dtype) == np.int32:
        return vals.astype(np.int64).astype(np.int32)   # two's complement wrap
    return vals.astype(dtype)


@attrs.define
class RawBlob:
    """A decoded blob: its array and whether its shape used the legacy fields."""

    array: np.ndarray
    legacy_shape: bool = False


#: OpenCV's caffe.proto: BlobProto.raw_data_type value for half floats.
OPENCV_FLOAT16 = 2


def decode_blob(buf, start: int, end: int, where: str) -> RawBlob:
    """Decode one BlobProto occupying buf[start:end]."""
    legacy = [0, 0, 0, 0]
    has_legacy = False
    shape: list[int] | None = None
    chunks: dict[str, list] = {}
    singles: dict[str, list] = {}
    field12: list[tuple[int, int]] = []     # uint64_data, or OpenCV's raw_data (below)
    raw_type: int | None = None
    for fn, wt, a, b, v, fs in iter_fields(buf, start, end):
        if 1 <= fn <= 4 and wt == WT_VARINT:
            legacy[fn - 1] = v - (1 << 64) if v >= 1 << 63 else v
            has_legacy = True
        elif fn == 7 and wt == WT_LEN:
            dims = []
            for f2, w2, a2, b2, v2, _ in iter_fields(buf, a, b):
                if f2 != 1:
                    continue
                if w2 == WT_VARINT:
                    dims.append(v2)
                elif w2 == WT_LEN:
                    pos = a2                       # a handful of bytes: no numpy round trip
                    while pos < b2:
                        d, pos = read_varint(buf, pos, b2)
                        dims.append(d)
            shape = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
        elif fn == 5:
            if wt == WT_LEN:
                if (b - a) % 4:
                    raise ValueError(f"packed float data of {b - a} bytes at byte {a} "
                                     "is not a multiple of 4")
                chunks.setdefault("f4", []).append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
            elif wt == WT_I32:
                singles.setdefault("f4", []).append(a)
        elif fn == 8:
            if wt == WT_LEN:
                if (b - a) % 8:
                    raise ValueError(f"packed double data at byte {a} is not a multiple of 8")
                chunks.setdefault("f8", []).append(np.frombuffer(buf, "<f8", (b - a) // 8, a))
            elif wt == WT_I64:
                singles.setdefault("f8", []).append(a)
        elif fn == 10 and wt == WT_LEN:
            chunks.setdefault("i1", []).append(np.frombuffer(buf, np.int8, b - a, a))
        elif fn == 10 and wt == WT_VARINT:
            # OpenCV's compressed caffemodels (shrink_caffe_model) reuse field
            # 10 as an enum, raw_data_type, and put the payload in field 12 as
            # raw little-endian bytes; the varint wire type tells them apart
            # from the Ascend int8_data bytes.
            raw_type = v
        elif fn == 11:
            if wt == WT_LEN:
                chunks.setdefault("i4", []).append(
                    decode_packed_varints(np.frombuffer(buf, np.uint8, b - a, a), np.int32))
            elif wt == WT_VARINT:
                chunks.setdefault("i4", []).append(
                    np.array([v], dtype=np.uint64).astype(np.int64).astype(np.int32))
        elif fn == 12:
            if wt == WT_LEN:
                field12.append((a, b))
            elif wt == WT_VARINT:
                chunks.setdefault("u8", []).append(np.array([v], dtype=np.uint64))
        # diff (6), double_diff (9) and unknown fields are training state: skipped.
    if raw_type is not None and field12:
        if raw_type != OPENCV_FLOAT16:
            raise ValueError(f"{where}: OpenCV raw_data_type {raw_type} is not supported "
                             f"(only FLOAT16 = {OPENCV_FLOAT16}, as shrink_caffe_model writes)")
        if any((b - a) % 2 for a, b in field12):
            raise ValueError(f"{where}: FLOAT16 raw_data is not a whole number of 2-byte values")
        # Widened to float32 at once: every kernel and writer works in float32.
        chunks.setdefault("f4", []).extend(
            np.frombuffer(buf, "<f2", (b - a) // 2, a).astype(np.float32) for a, b in field12)
    elif field12:
        chunks.setdefault("u8", []).extend(
            decode_packed_varints(np.frombuffer(buf, np.uint8, b - a, a), np.uint64)
            for a, b in field12)
    for kind, offs in singles.items():
        # Unpacked repeated floats: one 4/8-byte value after each 1-byte key.
        size = 4 if kind == "f4" else 8
        chunks.setdefault(kind, []).append(
            np.array([np.frombuffer(buf, "<" + kind, 1, o)[0] for o in offs], dtype="<" + kind))
    kinds = [k for k in ("i1", "i4", "u8", "f8", "f4") if k in chunks]
    if len(kinds) > 1:
        # Caffe fills one of data/double_data; prefer the float payload like Caffe does.
        kinds = ["f4"] if "f4" in kinds else kinds[:1]
    if kinds:
        parts = chunks[kinds[0]]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    else:
        arr = np.zeros(0, dtype=np.float32)
    if shape is None:
        # Caffe's Blob::ToProto writes no shape at all for a 0-d blob (e.g.
        # PReLU/Normalize with channel_shared), and FromProto reads it back 0-d.
        shape = legacy if has_legacy else [] if arr.size == 1 else [arr.size] if arr.size else [0]
        legacy_used = has_legacy
    else:
        legacy_used = False
    if any(d < 0 for d in shape):
        raise ValueError(f"{where}: negative dimension in shape {shape}")
    n = 1
    for d in shape:
        n *= d
    if arr.size != n:
        raise ValueError(f"{where}: holds {arr.size} values but its shape {tuple(shape)} needs {n}")
    dtype = {"i1": np.int8, "i4": np.int32, "u8": np.uint64, "f8": np.float64}.get(
        kinds[0] if kinds else "f4", np.float32)
    return RawBlob(arr.reshape(shape).astype(dtype, copy=False), legacy_used)


@attrs.define
class RawLayer:
    """One layer of a caffemodel: its non-blob bytes and its decoded blobs."""

    kind: str                 # "v2" (NetParameter.layer) or "v1" (NetParameter.layers)
    header: bytes             # the layer message without its blobs
    blobs: list[RawBlob]
    offset: int               # byte offset of the layer in the file
    v0_header: bytes | None = None   # V1 layers wrapping a V0 layer: its non-blob bytes


def _split_message(buf, start, end, blob_field, where, nested_v0=False):
    """Split a layer message into (header bytes, blobs, v0 header)."""
    header = bytearray()
    blobs: list[RawBlob] = []
    v0_header = None
    for fn, wt, a, b, v, fs in iter_fields(buf, start, end):
        if fn == blob_field and wt == WT_LEN:
            blobs.append(decode_blob(buf, a, b, f"{where}, blob {len(blobs)} at byte {fs}"))
        elif nested_v0 and fn == 1 and wt == WT_LEN:
            v0_header, v0_blobs, _ = _split_message(buf, a, b, 50, where)
            blobs.extend(v0_blobs)
        else:
            header += bytes(buf[fs:b])
    return bytes(header), blobs, v0_header


def decode_net(buf, path: str) -> tuple[bytes, list[RawLayer]]:
    """Split a serialized NetParameter into its non-layer bytes and its layers."""
    end = len(buf)
    rest = bytearray()
    layers: list[RawLayer] = []
    try:
        for fn, wt, a, b, v, fs in iter_fields(buf, 0, end):
            if fn in (100, 2) and wt == WT_LEN:
                kind = "v2" if fn == 100 else "v1"
                where = f"{path}: layer #{len(layers)} at byte {fs}"
                try:
                    header, blobs, v0 = _split_message(buf, a, b, 7 if kind == "v2" else 6, where,
                                                       nested_v0=(kind == "v1"))
                except _Truncated as t:
                    raise CaffemodelError(f"{where}: truncated or corrupt data at byte {t.args[0]}")
                except ValueError as e:
                    msg = str(e)
                    raise CaffemodelError(msg if msg.startswith(path) else f"{where}: {msg}")
                layers.append(RawLayer(kind, header, blobs, fs, v0))
            else:
                rest += bytes(buf[fs:b])
    except _Truncated as t:
        raise CaffemodelError(f"{path}: truncated or corrupt at byte {t.args[0]} of {end}") from None
    except ValueError as e:
        raise CaffemodelError(f"{path}: corrupt protobuf data: {e}") from None
    return bytes(rest), layers


#: Files at least this large are memory-mapped instead of read (see read_file_buffer).
MMAP_THRESHOLD = 8 << 20
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)   # Linux >= 5.14


def read_file_buffer(path: str) -> memoryview:
    """The whole file as one writable buffer; blob arrays become views of it.

    Large files are mapped copy-on-write (``ACCESS_COPY``) and pre-faulted with
    ``MADV_POPULATE_READ``: the pages of the kernel's page cache are mapped
    into the process without a copy, so loading costs neither a second copy of
    the file in memory nor the time of copying it, and writing into a blob
    array copies just that page, never touching the file.  Caveat: the mapping
    reads the file lazily where the kernel lacks MADV_POPULATE_READ, and a
    file truncated *in place* by another program while its arrays are alive
    would fault; the toolkit's own writers replace files atomically (new
    inode), which is safe.  Small files, and systems where mapping fails, are
    read into an uninitialised numpy buffer (no zero-fill, writable).
    Indexing the returned memoryview yields Python ints (the varint reader
    relies on it).
    """
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as f:
        if size >= MMAP_THRESHOLD:
            try:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError):
                m = None
            if m is not None:
                if len(m) != size:
                    raise CaffemodelError(f"{path}: file changed size while opening")
                try:
                    m.madvise(_MADV_POPULATE_READ)
                except (OSError, ValueError, AttributeError):
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        m.madvise(mmap.MADV_WILLNEED)
                return memoryview(m)
        arr = np.empty(size, dtype=np.uint8)
        view = memoryview(arr)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    if got != size:
        raise CaffemodelError(f"{path}: file shrank while reading ({got} of {size} bytes)")
    return view


# ---------------------------------------------------------------- encoding
def encode_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(fn: int, wt: int) -> bytes:
    return encode_varint((fn << 3) | wt)


def encode_packed_varints(values: np.ndarray) -> bytes:
    """Varint-encode an integer array (negative int32 as 10-byte two's complement)."""
    v = np.asarray(values)
    u = v.astype(np.int64).astype(np.uint64) if v.dtype.kind == "i" else v.astype(np.uint64)
    if u.size == 0:
        return b""
    nbytes = np.ones(u.size, dtype=np.int64)
    t = u >> np.uint64(7)
    while t.any():
        nbytes += (t > 0)
        t = t >> np.uint64(7)
    total = int(nbytes.sum())
    out = np.zeros(total, dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(nbytes)[:-1]))
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        byte = ((u[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        more = (nbytes[sel] > k + 1).astype(np.uint8) << 7
        out[starts[sel] + k] = byte | more
    return out.tobytes()


def blob_chunks(arr: np.ndarray) -> list:
    """The BlobProto encoding of ``arr`` as a list of bytes-like chunks.

    dtype selects the payload field: float32 -> data, float64 -> double_data,
    int8 -> int8_data, int32 -> int32_data, uint64 -> uint64_data.  Fields are
    emitted in field-number order, as protobuf serializes them.
    """
    a = np.asarray(arr)
    # BlobShape.dim is declared packed in caffe.proto.
    packed_dims = encode_packed_varints(np.asarray(a.shape, dtype=np.int64)) if a.ndim else b""
    shape_msg = (_key(1, WT_LEN) + encode_varint(len(packed_dims)) + packed_dims) if a.ndim else b""
    shape_field = _key(7, WT_LEN) + encode_varint(len(shape_msg)) + shape_msg
    if a.dtype == np.float32 or a.dtype.kind == "f" and a.dtype.itemsize == 2:
        payload = np.ascontiguousarray(a, dtype="<f4")
        fn = 5
    elif a.dtype == np.float64:
        payload = np.ascontiguousarray(a, dtype="<f8")
        fn = 8
    elif a.dtype == np.int8:
        payload = np.ascontiguousarray(a)
        fn = 10
    elif a.dtype == np.int32:
        payload = encode_packed_varints(a.reshape(-1))
        fn = 11
    elif a.dtype == np.uint64:
        payload = encode_packed_varints(a.reshape(-1))
        fn = 12
    else:
        payload = np.ascontiguousarray(a, dtype="<f4")
        fn = 5
    nbytes = len(payload) if isinstance(payload, bytes) else payload.nbytes
    if not nbytes:
        # int8_data is an optional bytes field: protobuf writes it even when
        # empty (and so keeps the dtype); empty repeated fields are omitted.
        return [shape_field, _key(fn, WT_LEN) + b"\0"] if fn == 10 else [shape_field]
    head = _key(fn, WT_LEN) + encode_varint(nbytes)
    # A flat byte view of the array: written without a tobytes() copy.
    body = payload if isinstance(payload, bytes) else memoryview(payload.reshape(-1)).cast("B")
    # Field-number order, as protobuf serializes: data (5) < shape (7) < the others.
    return [head, body, shape_field] if fn == 5 else [shape_field, head, body]


def _chunks_len(chunks) -> int:
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


def layer_chunks(header: bytes, blobs: Iterable[np.ndarray], blob_field: int = 7) -> list:
    """Encode a layer message: ``header`` (serialized without blobs) with blobs
    spliced in at their field-number position."""
    # Find where fields numbered above blob_field start in the header.
    split = len(header)
    for fn, wt, a, b, v, fs in iter_fields(header, 0, len(header)):
        if fn > blob_field:
            split = fs
            break
    out = [header[:split]]
    for arr in blobs:
        ch = blob_chunks(arr)
        out.append(_key(blob_field, WT_LEN) + encode_varint(_chunks_len(ch)))
        out.extend(ch)
    out.append(header[split:])
    return out


def write_net(f: IO[bytes], net_header: bytes, layers: Iterable[tuple[bytes, list[np.ndarray]]]) -> int:
    """Write a NetParameter: ``net_header`` (fields other than ``layer``) then
    each V2 layer as field 100.  Returns the bytes written."""
    total = 0
    f.write(net_header)
    total += len(net_header)
    for header, blobs in layers:
        ch = layer_chunks(header, blobs)
        head = _key(100, WT_LEN) + encode_varint(_chunks_len(ch))
        f.write(head)
        total += len(head)
        for c in ch:
            f.write(c)
            total += len(c) if isinstance(c, bytes) else c.nbytes
    return total
