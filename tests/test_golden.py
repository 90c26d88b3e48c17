"""Conformance: every golden case (BVLC Caffe reference blobs) through the runtime.

For each case directory in shared/golden: load net + weights, feed the stored
``in:`` arrays, and compare every ``blob:<name>`` (final value of each blob)
and every ``layer:<layer>:top<i>`` (each layer's output right after it ran,
captured with an observer) against the reference, shapes exactly, values with
the case's tolerance.  Keys of Caffe's implicit Split layers are skipped: the
runtime shares arrays instead of creating split blobs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import GOLDEN

from amct.runtime import Net


def _cases() -> list[str]:
    if not GOLDEN.is_dir():
        return []
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "meta.json").is_file())


def _load(case: str):
    d = GOLDEN / case
    meta = json.loads((d / "meta.json").read_text())
    weights = d / "weights.caffemodel"
    if not weights.is_file():
        pytest.skip(f"{case}: weights not stored here ({meta.get('weights')})")
    return d, meta, np.load(d / "io.npz"), weights


def _check(name: str, got: np.ndarray, want: np.ndarray, tol: dict) -> str | None:
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, Caffe {want.shape}"
    if not np.allclose(got, want, rtol=tol["rtol"], atol=tol["atol"]):
        err = np.abs(got.astype(np.float64) - want)
        return (f"{name}: max abs error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)} "
                f"(rtol {tol['rtol']}, atol {tol['atol']})")
    return None


@pytest.mark.skipif(not _cases(), reason=f"{GOLDEN} not present")
@pytest.mark.parametrize("case", _cases() or ["<none>"])
def test_golden_case(case: str) -> None:
    d, meta, io, weights = _load(case)
    tol = meta["tolerance"]
    implicit_layers = {x["name"] for x in meta["layers"]
                       if x.get("implicit") and x["type"] == "Split"}
    implicit_blobs = {t for x in meta["layers"] if x["name"] in implicit_layers for t in x["tops"]}

    net = Net(str(d / "net.prototxt"), str(weights))
    per_layer: dict[str, np.ndarray] = {}

    def capture(layer, j, blob, vid, arr):
        per_layer[f"layer:{layer.name}:top{j}"] = np.array(arr, copy=True)

    net.add_observer(capture)
    inputs = {k[3:]: io[k] for k in io.files if k.startswith("in:")}
    out = net.forward(**inputs)

    failures = []
    # Layer outputs in execution order, so the first failure is the first bad layer.
    order = {x.name: i for i, x in enumerate(net.graph.layers)}
    layer_keys = [k for k in io.files if k.startswith("layer:")
                  and k[6:].rpartition(":top")[0] not in implicit_layers]
    layer_keys.sort(key=lambda k: (order.get(k[6:].rpartition(":top")[0], -1), k))
    for k in layer_keys:
        if k not in per_layer:
            failures.append(f"{k}: the runtime produced no such output")
            continue
        msg = _check(k, per_layer[k], io[k], tol)
        if msg:
            failures.append(msg)
    for k in io.files:
        if not k.startswith("blob:") or k[5:] in implicit_blobs:
            continue
        name = k[5:]
        if name not in net.blobs:
            failures.append(f"{k}: the net has no blob '{name}'")
            continue
        msg = _check(k, net.blobs[name].data, io[k], tol)
        if msg:
            failures.append(msg)
    for name in meta["net_outputs"]:
        if name not in out:
            failures.append(f"net output '{name}' missing from forward() (got {sorted(out)})")
    assert not failures, f"{case}: {len(failures)} mismatches, first:\n  " + "\n  ".join(failures[:8])
