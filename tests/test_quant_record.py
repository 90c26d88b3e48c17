"""Record file I/O: format, determinism, merging and validation messages."""
from __future__ import annotations

import os

import numpy as np
import pytest

from amct.errors import RecordError
from amct.quant import (LayerRecord, create_empty_record, merge_record, read_record,
                        write_record)

EXAMPLE = """record { key: "conv1"
  value { scale_d: 1.0745 offset_d: -14 scale_w: 0.0045 scale_w: 0.0004 offset_w: 0 offset_w: 0
          channels: 3 height: 224 width: 224 } }
record { key: "fc1" value { scale_d: 0.5 offset_d: 0 scale_w: 0.01 skip_fusion: true } }
"""


def test_read_spec_example(tmp_path) -> None:
    p = tmp_path / "record.txt"
    p.write_text(EXAMPLE)
    rec = read_record(str(p))
    assert list(rec) == ["conv1", "fc1"]
    c = rec["conv1"]
    assert c.scale_d == pytest.approx(1.0745) and c.offset_d == -14
    np.testing.assert_allclose(c.scale_w, [0.0045, 0.0004], rtol=1e-6)
    assert (c.channels, c.height, c.width) == (3, 224, 224)
    assert c.shift_bit is None and c.skip_fusion is None
    assert rec["fc1"].skip_fusion is True and rec["fc1"].offset_w is None


def test_write_is_sorted_and_deterministic(tmp_path) -> None:
    recs = {"b": LayerRecord(scale_d=0.1, offset_d=3), "a": LayerRecord(scale_w=[0.5, 0.25])}
    p1, p2 = tmp_path / "1.txt", tmp_path / "2.txt"
    write_record(str(p1), recs)
    write_record(str(p2), dict(reversed(list(recs.items()))))
    assert p1.read_bytes() == p2.read_bytes()
    text = p1.read_text()
    assert text.index('key: "a"') < text.index('key: "b"')
    back = read_record(str(p1))
    assert back["b"].scale_d == pytest.approx(0.1) and back["b"].offset_d == 3
    np.testing.assert_array_equal(back["a"].scale_w, [0.5, 0.25])


def test_empty_and_merge(tmp_path) -> None:
    p = str(tmp_path / "sub" / "r.txt")
    create_empty_record(p)
    assert read_record(p) == {}
    merge_record(p, "conv1", scale_w=np.array([0.1, 0.2]), offset_w=[0, 0])
    merge_record(p, "conv2", scale_d=2.0, offset_d=-128)
    merge_record(p, "conv1", scale_d=0.5, offset_d=7, channels=3, height=5, width=6)
    rec = read_record(p)
    assert rec["conv1"].scale_d == 0.5 and rec["conv1"].offset_d == 7
    np.testing.assert_allclose(rec["conv1"].scale_w, [0.1, 0.2], rtol=1e-6)
    assert rec["conv2"].offset_d == -128
    merge_record(p, "conv2", offset_d=None)
    assert read_record(p)["conv2"].offset_d is None
    with pytest.raises(RecordError, match="unknown field"):
        merge_record(p, "conv2", bogus=1)


@pytest.mark.parametrize("value, field", [
    ("scale_d: 0", "scale_d"), ("scale_d: -1", "scale_d"), ("scale_d: inf", "scale_d"),
    ("scale_d: nan", "scale_d"), ("offset_d: 128", "offset_d"), ("offset_d: -129", "offset_d"),
    ("scale_w: 0.1 scale_w: 0", "scale_w"), ("offset_w: 0 offset_w: 3", "offset_w"),
])
def test_validation_names_file_key_field(tmp_path, value, field) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(f'record {{ key: "conv7" value {{ {value} }} }}\n')
    with pytest.raises(RecordError, match=rf"bad.txt: record 'conv7': {field}"):
        read_record(str(p))


def test_parse_error_has_line_and_column(tmp_path) -> None:
    p = tmp_path / "bad.txt"
    p.write_text('record {\n  key: "a"\n  value { scale_q: 1 }\n}\n')
    with pytest.raises(RecordError, match=r"bad.txt:3:\d+"):
        read_record(str(p))


def test_duplicate_and_missing_keys(tmp_path) -> None:
    p = tmp_path / "dup.txt"
    p.write_text('record { key: "a" } record { key: "a" }')
    with pytest.raises(RecordError, match="'a' appears twice"):
        read_record(str(p))
    p.write_text('record { value { scale_d: 1 } }')
    with pytest.raises(RecordError, match="no key"):
        read_record(str(p))
    with pytest.raises(RecordError, match="does not exist"):
        read_record(str(tmp_path / "none.txt"))


def test_merges_after_write_and_outside_edits_stay_consistent(tmp_path) -> None:
    """merge_records reuses what this process wrote last, but never a stale
    copy: the file always equals a fresh rendering of its parsed content."""
    from amct.quant.record import merge_records, record_text, write_record

    p = str(tmp_path / "r.txt")
    write_record(p, {"b": LayerRecord(scale_w=np.array([0.5, 0.25]), offset_w=[0, 0]),
                     "a": LayerRecord(scale_w=np.array([1.0]), offset_w=[0])})
    merge_records(p, {"a": {"scale_d": 0.125, "offset_d": -3}, "c": {"scale_d": 2.0,
                                                                     "offset_d": 0}})
    text = open(p).read()
    assert text == record_text(read_record(p))
    assert list(read_record(p)) == ["a", "b", "c"]
    assert read_record(p)["a"].scale_d == 0.125 and read_record(p)["a"].scale_w[0] == 1.0
    # Someone else rewrites the file (same size even): the next merge reads it.
    edited = text.replace('key: "c"', 'key: "d"')
    assert len(edited) == len(text)
    with open(p + ".tmp", "w") as f:
        f.write(edited)
    os.replace(p + ".tmp", p)
    merge_records(p, {"b": {"scale_d": 4.0, "offset_d": 1}})
    recs = read_record(p)
    assert sorted(recs) == ["a", "b", "d"] and recs["b"].scale_d == 4.0
    assert open(p).read() == record_text(recs)


def test_merge_cache_keeps_the_recently_used_paths_only(tmp_path) -> None:
    """One cache entry per record path, bounded: the least recently merged
    path goes first, and a path that left the cache still merges correctly."""
    from amct.quant import record as rec_mod

    size = rec_mod._MERGE_CACHE_SIZE
    rec_mod._MERGE_CACHE.clear()
    paths = [str(tmp_path / f"r{i}.txt") for i in range(size + 2)]
    for i, p in enumerate(paths):
        rec_mod.merge_records(p, {"conv": {"scale_d": 1.0 + i, "offset_d": 0}})
    # touch the oldest kept one again: it becomes the most recent
    rec_mod.merge_records(paths[2], {"fc": {"scale_d": 0.5, "offset_d": 1}})
    kept = [os.path.basename(k) for k in rec_mod._MERGE_CACHE]
    assert len(kept) == size
    assert kept[-1] == "r2.txt" and "r0.txt" not in kept and "r1.txt" not in kept
    # an evicted path re-reads its file and keeps its entries
    rec_mod.merge_records(paths[0], {"fc": {"scale_d": 0.25, "offset_d": 2}})
    got = read_record(paths[0])
    assert got["conv"].scale_d == 1.0 and got["fc"].scale_d == 0.25
    assert sorted(read_record(paths[2])) == ["conv", "fc"]


# ------------------------------------------------- the record's own printer
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from amct.quant.record import _entry_text, _entry_text_protobuf, float32_texts  # noqa: E402

_F32 = hnp.from_dtype(np.dtype(np.float32), allow_nan=False, allow_infinity=False)


def test_float32_texts_by_hand() -> None:
    # 0.1f is 0.100000001490116...: six digits read back; 16777217 is not a
    # float32 and rounds to 16777216, which needs eight digits; the smallest
    # subnormal (1.401298e-45) keeps the six digits %g leaves of it.
    vals = np.array([0.1, 1.0, -0.0, 1e-5, 16777217.0, 3.4028235e38, 1e-45, 0.3], np.float32)
    assert float32_texts(vals) == ["0.1", "1.0", "-0.0", "1e-05", "16777216.0", "3.4028235e+38",
                                   "1.4013e-45", "0.3"]
    assert float32_texts(np.array([np.inf, -np.inf, np.nan], np.float32)) == ["inf", "-inf", "nan"]
    assert float32_texts(np.zeros(0, np.float32)) == []


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 40),
                  elements=hnp.from_dtype(np.dtype(np.float32))))
def test_float32_texts_match_protobuf(vals) -> None:
    from google.protobuf.internal import type_checkers

    want = [str(v) if np.isnan(v) else str(type_checkers.ToShortestFloat(float(v)))
            for v in vals.tolist()]
    assert float32_texts(vals) == want


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=12),
       scale_d=st.none() | _F32,
       offset_d=st.none() | st.integers(-128, 127),
       scale_w=st.none() | hnp.arrays(np.float32, st.integers(0, 20), elements=_F32),
       n_off=st.none() | st.integers(0, 5),
       shift=st.none() | hnp.arrays(np.uint32, st.integers(0, 4)),
       dims=st.tuples(*[st.none() | st.integers(0, 2**32 - 1)] * 3),
       skip=st.none() | st.booleans())
def test_entry_text_is_what_protobuf_prints(key, scale_d, offset_d, scale_w, n_off, shift, dims,
                                            skip) -> None:
    rec = LayerRecord(scale_d=scale_d, offset_d=offset_d, scale_w=scale_w,
                      offset_w=None if n_off is None else np.zeros(n_off, np.int32),
                      shift_bit=shift, channels=dims[0], height=dims[1], width=dims[2],
                      skip_fusion=skip)
    assert _entry_text(key, rec) == _entry_text_protobuf(key, rec)
