"""The scale/offset record file (SPEC §6.2): protobuf text of ``ScaleOffsetRecord``.

The record is the hand-over point between calibration (which writes activation
factors from inside the runtime) and save_model / convert_model (which read
them).  It is rewritten as a whole, atomically, on every change, with keys in
sorted order so that the same content always gives the same bytes.
"""
from __future__ import annotations

import math
import os
from typing import Any

import attrs
import numpy as np
from google.protobuf import text_encoding, text_format

from amct.errors import RecordError
from amct.fileio import atomic_write_text
from amct.proto import caffe_pb2
from amct.proto.text import parse_text

_SCALARS = ("scale_d", "offset_d", "channels", "height", "width", "skip_fusion")
_ARRAYS = {"scale_w": np.float32, "offset_w": np.int32, "shift_bit": np.uint32}


def _opt_array(dtype):
    def conv(v):
        return None if v is None else np.asarray(v, dtype=dtype).reshape(-1)
    return conv


@attrs.define(eq=False)
class LayerRecord:
    """One entry of the record; a field absent from the file is None."""

    scale_d: float | None = None
    offset_d: int | None = None
    scale_w: np.ndarray | None = attrs.field(default=None, converter=_opt_array(np.float32))
    offset_w: np.ndarray | None = attrs.field(default=None, converter=_opt_array(np.int32))
    shift_bit: np.ndarray | None = attrs.field(default=None, converter=_opt_array(np.uint32))
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    skip_fusion: bool | None = None

    @property
    def has_activation(self) -> bool:
        return self.scale_d is not None and self.offset_d is not None

    @property
    def has_weights(self) -> bool:
        return self.scale_w is not None and self.scale_w.size > 0

    def to_proto(self) -> caffe_pb2.SingleLayerRecord:
        p = caffe_pb2.SingleLayerRecord()
        for f in _SCALARS:
            v = getattr(self, f)
            if v is not None:
                setattr(p, f, type(getattr(p, f))(v))
        for f in _ARRAYS:
            v = getattr(self, f)
            if v is not None:
                getattr(p, f).extend(v.tolist())
        return p

    @classmethod
    def from_proto(cls, p: caffe_pb2.SingleLayerRecord) -> "LayerRecord":
        kw: dict[str, Any] = {f: getattr(p, f) if p.HasField(f) else None for f in _SCALARS}
        for f in _ARRAYS:
            vals = getattr(p, f)
            kw[f] = list(vals) if len(vals) else None
        return cls(**kw)


def validate_record(rec: LayerRecord, where: str, key: str) -> None:
    """Raise ``RecordError`` naming file, key and field for an unusable value."""
    def bad(field: str, why: str) -> RecordError:
        return RecordError(f"{where}: record '{key}': {field} {why}")

    if rec.scale_d is not None and not (math.isfinite(rec.scale_d) and rec.scale_d > 0):
        raise bad("scale_d", f"must be a finite value > 0, got {rec.scale_d}")
    if rec.offset_d is not None and not -128 <= rec.offset_d <= 127:
        raise bad("offset_d", f"must be in [-128, 127], got {rec.offset_d}")
    if rec.scale_w is not None:
        ok = np.isfinite(rec.scale_w) & (rec.scale_w > 0)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise bad("scale_w", f"[{i}] must be a finite value > 0, got {rec.scale_w[i]}")
    if rec.offset_w is not None and (rec.offset_w != 0).any():
        i = int(np.flatnonzero(rec.offset_w != 0)[0])
        raise bad("offset_w", f"[{i}] must be 0 (weights are symmetric), got {rec.offset_w[i]}")


def parse_record_text(text: str, where: str = "<record>") -> dict[str, LayerRecord]:
    """Parse and validate record text; keys keep their order of appearance."""
    msg = parse_text(text, caffe_pb2.ScaleOffsetRecord(), where, RecordError,
                     "not a valid ScaleOffsetRecord")
    out: dict[str, LayerRecord] = {}
    for i, entry in enumerate(msg.record):
        key = entry.key
        if not key:
            raise RecordError(f"{where}: record #{i + 1} has no key")
        if key in out:
            raise RecordError(f"{where}: record '{key}' appears twice")
        rec = LayerRecord.from_proto(entry.value)
        validate_record(rec, where, key)
        out[key] = rec
    return out


def read_record(path: str) -> dict[str, LayerRecord]:
    """Read and validate a record file.  An empty file is an empty record."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise RecordError(f"{path}: record file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: cannot read record file: {e}") from None
    return parse_record_text(text, path)


def float32_texts(values: np.ndarray) -> list[str]:
    """How protobuf's text format prints each float32 value: the shortest
    ``%.Ng`` (N from 6 up to 9) that reads back as the same float32, written
    as Python writes that float ("0.1", "1e-05", "inf"; NaN as "nan").

    Vectorised by precision: every value tries N = 6 at once, and only those
    that do not read back try N + 1.  protobuf's own printer does this value
    by value in Python, which made record writes most of IFMR's overhead on
    ResNet-50 (per-channel scale_w, thousands of values)."""
    x = np.asarray(values, np.float32).reshape(-1)
    wide = x.astype(np.float64).tolist()
    out: list[str | None] = [None] * x.size
    todo = np.flatnonzero(np.isfinite(x))
    for digits in (6, 7, 8, 9):
        if not todo.size:
            break
        back = np.array([f"{wide[i]:.{digits}g}" for i in todo.tolist()], dtype=np.float64)
        same = back.astype(np.float32) == x[todo]
        for i, v in zip(todo[same].tolist(), back[same].tolist()):
            out[i] = repr(v)
        todo = todo[~same]
    # Infinities and NaN (never in a valid record) print as Python prints them.
    return [t if t is not None else str(wide[i]) for i, t in enumerate(out)]


def _entry_text(key: str, rec: LayerRecord) -> str:
    """The text of one ``record { key value }`` entry, byte for byte what
    ``text_format.MessageToString(ScaleOffsetRecord, as_utf8=True)`` prints
    for it (fields in number order, a repeated field element by element), so
    the file is these texts joined in key order.  Written here because
    protobuf's printer is pure Python per value (see ``float32_texts``);
    tests hold the two equal."""
    lines = ["record {", f'  key: "{text_encoding.CEscape(key, True)}"', "  value {"]
    if rec.scale_d is not None:
        lines.append(f"    scale_d: {float32_texts(np.float32(rec.scale_d))[0]}")
    if rec.offset_d is not None:
        lines.append(f"    offset_d: {int(rec.offset_d)}")
    if rec.scale_w is not None:
        lines.extend(f"    scale_w: {t}" for t in float32_texts(rec.scale_w))
    for name in ("offset_w", "shift_bit"):
        arr = getattr(rec, name)
        if arr is not None:
            lines.extend(f"    {name}: {v}" for v in arr.tolist())
    for name in ("channels", "height", "width"):
        v = getattr(rec, name)
        if v is not None:
            lines.append(f"    {name}: {int(v)}")
    if rec.skip_fusion is not None:
        lines.append(f"    skip_fusion: {'true' if rec.skip_fusion else 'false'}")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _entry_text_protobuf(key: str, rec: LayerRecord) -> str:
    """``_entry_text`` by protobuf's own printer (the reference the tests use)."""
    msg = caffe_pb2.ScaleOffsetRecord()
    entry = msg.record.add()
    entry.key = key
    entry.value.CopyFrom(rec.to_proto())
    return text_format.MessageToString(msg, as_utf8=True)


def record_text(records: dict[str, LayerRecord]) -> str:
    """Deterministic text of ``records``: keys sorted, protobuf's shortest float form."""
    return "".join(_entry_text(key, records[key]) for key in sorted(records))


def write_record(path: str, records: dict[str, LayerRecord]) -> None:
    """Validate and write ``records`` atomically (keys sorted)."""
    for key, rec in records.items():
        validate_record(rec, path, key)
    # Entries are copied: the caller keeps its dict, the cache keeps these.
    # The calibration that usually follows merges into this file and is
    # spared the parse.
    _publish(path, {k: attrs.evolve(r) for k, r in records.items()},
             {k: _entry_text(k, r) for k, r in records.items()})


def create_empty_record(path: str) -> None:
    """Create (or empty) the record file so it is valid from the start."""
    atomic_write_text(path, "")


_FIELDS = set(_SCALARS) | set(_ARRAYS)

# The last record each merge_record call wrote, per path: (file signature,
# entries, their texts).  A network's calibration layers finish one after
# another in the same forward pass; without this, each re-parsed and
# re-printed the whole file in protobuf's pure-Python text format, O(layers^2)
# (MobileNet-v1: 25 of 27 s of a quantize call).  Every atomic write makes a
# new inode, so a file changed by anyone else never matches the signature.
# Each use pops and re-inserts its entry, so the dict's order is least
# recently used first; only the last _MERGE_CACHE_SIZE paths are kept (a
# process quantizing many models would otherwise hold every record forever).
_MERGE_CACHE: dict[str, tuple[tuple, dict[str, LayerRecord], dict[str, str]]] = {}
_MERGE_CACHE_SIZE = 8


def _publish(path: str, records: dict[str, LayerRecord], texts: dict[str, str]) -> None:
    """Write ``texts`` (one per entry of ``records``) in key order, atomically,
    and remember them as this file's content."""
    cache_key = os.path.realpath(path)
    _MERGE_CACHE.pop(cache_key, None)       # stale until the write succeeds
    atomic_write_text(path, "".join(texts[k] for k in sorted(records)))
    _MERGE_CACHE[cache_key] = (_signature(path), records, texts)
    while len(_MERGE_CACHE) > _MERGE_CACHE_SIZE:
        del _MERGE_CACHE[next(iter(_MERGE_CACHE))]


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def merge_record(path: str, key: str, **fields: Any) -> LayerRecord:
    """Set ``fields`` of entry ``key`` (see ``merge_records``) and rewrite the file."""
    return merge_records(path, {key: fields})[key]


def merge_records(path: str, updates: dict[str, dict[str, Any]]) -> dict[str, LayerRecord]:
    """For each ``key: fields`` of ``updates``, set those fields of entry
    ``key`` (created if absent); then rewrite the file once.

    A field given as None is removed.  Read-modify-write of the whole file,
    written atomically: calibration layers calling this one after another (as
    the runtime does within one forward pass) never lose each other's entries,
    and a crash leaves the previous complete file.  Concurrent writers from
    several processes are not coordinated.
    """
    for key, fields in updates.items():
        unknown = set(fields) - _FIELDS
        if unknown:
            raise RecordError(f"{path}: record '{key}': unknown field(s) {sorted(unknown)}")
    sig = _signature(path)
    cached = _MERGE_CACHE.pop(os.path.realpath(path), None)
    if sig is not None and cached is not None and cached[0] == sig:
        records, texts = cached[1], cached[2]
    else:
        records = read_record(path) if sig is not None else {}
        texts = {k: _entry_text(k, r) for k, r in records.items()}
    changed = {}
    for key, fields in updates.items():
        old = records.get(key)
        rec = LayerRecord() if old is None else attrs.evolve(old)
        for f, v in fields.items():
            setattr(rec, f, v)      # attrs converters normalise arrays
        validate_record(rec, path, key)
        changed[key] = rec
    for key, rec in changed.items():
        records[key], texts[key] = rec, _entry_text(key, rec)
    _publish(path, records, texts)
    return changed
