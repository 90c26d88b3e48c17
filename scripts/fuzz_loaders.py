"""Longer fuzz campaign for the Caffe loaders (the CI runs a bounded version in
tests/test_fuzz_loaders.py).

    python scripts/fuzz_loaders.py --minutes 5 [--seed 1] [--crashes fuzz_crashes/]

Mutates the real models in tests/data: prototxts by tokens (delete, duplicate, replace,
truncate) and caffemodels by bytes (flip, truncate, insert) and by structure (a real length
varint made too short, too long or huge).  Each mutant is loaded (and its shapes inferred);
the outcome is counted per error class.  Anything that is not an ``AmctError`` -- or takes
longer than 10 s -- is a finding: it is printed and its input saved under ``--crashes``.
Exit status 1 when there were findings.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
PROTOTXTS = ["lenet/mnist_deploy.prototxt", "mtcnn/det1.prototxt", "mtcnn/det3.prototxt",
             "ultraface_slim320/slim-320.prototxt", "cifar10_quick/cifar10_quick.prototxt"]
PAIRS = [("mtcnn/det1.prototxt", "mtcnn/det1.caffemodel"),
         ("lenet/mnist_deploy.prototxt", "lenet/lenet_iter_10000.caffemodel")]
TOKEN = re.compile(r'"[^"\n]*"|[{}:]|[^\s{}:"]+')
REPLACEMENTS = ["{", "}", ":", '"x"', "-1", "0", "99999999999", "layer", "layers", "bottom", "top",
                "type", "input_dim", "input_shape", "name", "1e999", "nan", "TRAIN", "TEST", "\x00",
                "é", "convolution_param", "include", "phase", "dim"]


class Hang(Exception):
    pass


def _alarm(_s, _f):
    raise Hang


def mutate_text(rng: random.Random, src: str) -> str:
    out = src
    for _ in range(rng.randint(1, 4)):
        toks = [(m.start(), m.end()) for m in TOKEN.finditer(out)] or [(0, 0)]
        a, b = rng.choice(toks)
        op = rng.choice(["delete", "duplicate", "replace", "replace", "truncate"])
        if op == "delete":
            out = out[:a] + out[b:]
        elif op == "duplicate":
            out = out[:b] + " " + out[a:b] + out[b:]
        elif op == "replace":
            out = out[:a] + rng.choice(REPLACEMENTS) + out[b:]
        else:
            out = out[:rng.randint(0, len(out))]
    return out


def length_spots(data: bytes) -> list[tuple[int, int, int]]:
    from amct.frontends.caffe import wire

    spots = []
    try:
        for fn, wt, a, b, _, fs in wire.iter_fields(data, 0, len(data)):
            if wt == wire.WT_LEN:
                spots.append((fs + len(wire.encode_varint(fn << 3 | wt)), a, b - a))
                if fn in (100, 2):
                    for f2, w2, a2, b2, _, fs2 in wire.iter_fields(data, a, b):
                        if w2 == wire.WT_LEN:
                            spots.append((fs2 + len(wire.encode_varint(f2 << 3 | w2)), a2, b2 - a2))
    except Exception:  # noqa: BLE001 - a corrupt input simply has fewer known spots
        pass
    return spots


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    from amct.frontends.caffe import wire

    buf = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        if not buf:
            break
        op = rng.choice(["flip", "flip", "truncate", "insert", "length"])
        i = rng.randrange(len(buf))
        if op == "flip":
            buf[i] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            spots = length_spots(bytes(buf))
            if spots:
                s, e, n = rng.choice(spots)
                new = max(0, n + rng.choice([-7, -1, 1, 3, 2**31, 2**40]))
                buf[s:e] = wire.encode_varint(new)
    return bytes(buf)


def run_one(model: str, weights: str | None) -> str:
    from amct.errors import AmctError
    from amct.frontends.caffe import load_caffe

    signal.alarm(10)
    try:
        g = load_caffe(model, weights)
        try:
            g.infer_shapes()
        except AmctError as e:
            return type(e).__name__
        return "ok"
    except AmctError as e:
        return type(e).__name__
    finally:
        signal.alarm(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crashes", default="fuzz_crashes")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    texts = {p: open(os.path.join(DATA, p), encoding="utf-8").read() for p in PROTOTXTS}
    blobs = {w: open(os.path.join(DATA, w), "rb").read() for _, w in PAIRS}
    counts: dict[str, collections.Counter] = {"prototxt": collections.Counter(),
                                              "caffemodel": collections.Counter()}
    findings = 0
    t_end = time.monotonic() + args.minutes * 60
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        while time.monotonic() < t_end:
            n += 1
            if n % 2:
                kind, src = "prototxt", rng.choice(PROTOTXTS)
                path = os.path.join(tmp, "m.prototxt")
                payload = mutate_text(rng, texts[src]).encode("utf-8", "surrogatepass")
                model, weights = path, None
            else:
                kind, (p, w) = "caffemodel", rng.choice(PAIRS)
                path = os.path.join(tmp, "m.caffemodel")
                payload = mutate_bytes(rng, blobs[w])
                model, weights = os.path.join(DATA, p), path
            with open(path, "wb") as f:
                f.write(payload)
            try:
                outcome = run_one(model, weights)
            except Exception as e:  # noqa: BLE001 - this is what we are looking for
                outcome = f"FINDING:{type(e).__name__}"
                findings += 1
                os.makedirs(args.crashes, exist_ok=True)
                keep = os.path.join(args.crashes, f"{kind}_{n}{os.path.splitext(path)[1]}")
                with open(keep, "wb") as f:
                    f.write(payload)
                print(f"finding #{findings}: {type(e).__name__}: {e} (input saved as {keep})")
                traceback.print_exc(limit=4)
            counts[kind][outcome] += 1
    total = sum(sum(c.values()) for c in counts.values())
    print(f"{total} mutants in {args.minutes:g} min (seed {args.seed}); findings: {findings}")
    for kind, c in counts.items():
        print(f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in c.most_common()))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
