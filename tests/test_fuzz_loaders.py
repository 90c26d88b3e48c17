"""Fuzzing the loaders: mutated real prototxts and caffemodels raise only project errors.

Text: delete / duplicate / replace tokens, truncate.  Bytes: flip, truncate, insert.
Structure: rewrite a length varint of a real field (too long, too short, huge).
Each example either loads (and then infers shapes or fails with an AmctError) or raises an
AmctError; never an IndexError, KeyError, DecodeError, RecursionError, MemoryError or a hang.
The longer campaign is ``python scripts/fuzz_loaders.py --minutes N``.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amct.errors import AmctError
from amct.frontends.caffe import load_caffe, wire
from conftest import DATA

CI = settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PROTOTXTS = [DATA / "lenet/mnist_deploy.prototxt", DATA / "mtcnn/det1.prototxt",
             DATA / "ultraface_slim320/slim-320.prototxt", DATA / "cifar10_quick/cifar10_quick.prototxt"]
PAIR = (DATA / "mtcnn/det1.prototxt", DATA / "mtcnn/det1.caffemodel")   # small: fast examples
TOKEN = re.compile(r'"[^"\n]*"|[{}:]|[^\s{}:"]+')
REPLACEMENTS = ["{", "}", ":", '"x"', "-1", "0", "99999999999", "layer", "bottom", "top", "type",
                "input_dim", "name", "1e999", "nan", "TRAIN", "\x00", "é", "convolution_param"]


class _Timeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Timeout


def exercise(model: Path, weights: Path | None) -> str:
    """Load (and infer shapes); return 'ok' or the error class. Fails on non-project errors."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)                     # a hang is a failure
    try:
        g = load_caffe(str(model), None if weights is None else str(weights))
        try:
            g.infer_shapes()
        except AmctError as e:
            return type(e).__name__
        return "ok"
    except AmctError as e:
        msg = str(e)
        assert str(model) in msg or (weights is not None and str(weights) in msg) or "layer '" in msg, msg
        return type(e).__name__
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def text_mutations(draw):
    src = draw(st.sampled_from(PROTOTXTS)).read_text()
    toks = [(m.start(), m.end()) for m in TOKEN.finditer(src)]
    out = src
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "duplicate", "replace", "truncate"]))
        toks = [(m.start(), m.end()) for m in TOKEN.finditer(out)] or [(0, 0)]
        a, b = toks[draw(st.integers(0, len(toks) - 1))]
        if op == "delete":
            out = out[:a] + out[b:]
        elif op == "duplicate":
            out = out[:b] + " " + out[a:b] + out[b:]
        elif op == "replace":
            out = out[:a] + draw(st.sampled_from(REPLACEMENTS)) + out[b:]
        else:
            out = out[:draw(st.integers(0, len(out)))]
    return out


@st.composite
def byte_mutations(draw):
    data = bytearray(PAIR[1].read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data = bytearray(rewrite_length(bytes(data), draw(st.integers(0, 10**6)),
                                            draw(st.sampled_from([-3, -1, 1, 7, 2**31, 2**40]))))
    return bytes(data)


def rewrite_length(data: bytes, pick: int, delta: int) -> bytes:
    """Change the length varint of one length-delimited field (chosen among the real ones,
    nested one level into layers) by ``delta``."""
    spots: list[tuple[int, int, int]] = []   # (varint start, varint end, length)
    try:
        for fn, wt, a, b, v, fs in wire.iter_fields(data, 0, len(data)):
            if wt == wire.WT_LEN:
                spots.append((fs + len(wire.encode_varint(fn << 3 | wt)), a, b - a))
                if fn == 100:
                    for f2, w2, a2, b2, _, fs2 in wire.iter_fields(data, a, b):
                        if w2 == wire.WT_LEN:
                            spots.append((fs2 + len(wire.encode_varint(f2 << 3 | w2)), a2, b2 - a2))
    except Exception:  # noqa: BLE001 - already corrupt: leave it
        return data
    if not spots:
        return data
    s, e, n = spots[pick % len(spots)]
    return data[:s] + wire.encode_varint(max(0, n + delta)) + data[e:]


@CI
@given(text_mutations())
def test_mutated_prototxt(tmp_path, text):
    p = tmp_path / "m.prototxt"
    p.write_text(text, encoding="utf-8")
    exercise(p, None)


@CI
@given(byte_mutations())
def test_mutated_caffemodel(tmp_path, data):
    w = tmp_path / "m.caffemodel"
    w.write_bytes(data)
    exercise(PAIR[0], w)


@pytest.mark.parametrize("delta", [-1, 1, 2**31, 2**40])
def test_every_length_field_rewritten(tmp_path, delta):
    """Structure sweep: each real length field of det1's caffemodel, made wrong."""
    data = PAIR[1].read_bytes()
    w = tmp_path / "m.caffemodel"
    results = set()
    for pick in range(0, 400, 7):
        w.write_bytes(rewrite_length(data, pick, delta))
        results.add(exercise(PAIR[0], w))
    assert results - {"ok"}, "some rewritten lengths must be detected"
