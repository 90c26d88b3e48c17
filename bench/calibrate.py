"""Calibration cost on ResNet-50: IFMR compute time and HFMG memory.

Usage::

    python bench/calibrate.py [--work bench/_work/calibrate] [--images 32] [--batch 8]
                              [--skip-ifmr] [--skip-hfmg] [--hfmg-batches 16]

1. IFMR time.  ResNet-50 (``shared/models/prototxt/resnet50.prototxt``) with
   seeded random weights; the AMCT flow (create_quant_config, init,
   quantize_model) writes the modified model with one IFMR layer per quantized
   input; it then runs ``images/batch`` forward passes (default 4 x 8 real
   image crops), and the same passes again with the collectors and record
   writes switched off (the reference).  Printed: the factor computation
   (what is left of the sorts when a layer's last batch is in, and the
   candidate search) against the reference forward time (target: < 30 %);
   the collection (one copy of each batch, sorted in a background thread);
   the record writes; and the whole IFMR cost as extra wall time.  Then the
   final record printed by the record module and by protobuf's text_format
   (same bytes; the ratio is the speed-up of every record write).
2. HFMG memory.  The same flow with HFMG layers, run in a fresh subprocess
   per setting, batch size 2, each printing its peak RSS
   (VmHWM, see ``_rss.py``): batch_num = N (default 16) and batch_num = 1,
   both over N forward passes (with batch_num 1 the HFMG layers ignore the
   later ones), so the only difference is the calibration state.  Target:
   within 10 %.  For information also batch_num = 1 with a single forward
   pass: the runtime itself grows by ~30 % of RSS between its first and
   second forward pass (plain fp32 net too), which is not calibration memory.

Timings on a shared machine are noisy; the ratio is what matters.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _rss import peak_rss_bytes  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AMCT_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
SEED = 20240611


def resnet50_files(work: Path) -> tuple[str, str]:
    """ResNet-50 prototxt + seeded random caffemodel (written once into ``work``)."""
    from amct.frontends.caffe import load_caffe, save_caffe
    from amct.ir.random import random_weights

    work.mkdir(parents=True, exist_ok=True)
    proto, weights = work / "resnet50.prototxt", work / "resnet50.caffemodel"
    if not (proto.exists() and weights.exists()):
        print(f"writing seeded random ResNet-50 weights to {weights} ...", flush=True)
        g = load_caffe(str(MODELS / "prototxt/resnet50.prototxt"))
        random_weights(g, SEED)
        save_caffe(g, str(proto), str(weights))
    return str(proto), str(weights)


def images(n: int, size: int = 224) -> np.ndarray:
    """``n`` real image crops (shared/models/images), mean-subtracted BGR, NCHW."""
    from PIL import Image

    files = sorted(p for p in (MODELS / "images").iterdir() if p.suffix in (".jpg", ".png"))
    out = []
    k = 0
    while len(out) < n:
        im = Image.open(files[k % len(files)]).convert("RGB")
        w, h = im.size
        side = min(w, h) * (10 - (k // len(files)) % 5) // 10
        x0, y0 = (w - side) * ((k * 7) % 5) // 4, (h - side) * ((k * 3) % 5) // 4
        crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, np.float32)[:, :, ::-1] - np.array([104, 117, 123], np.float32)
        out.append(arr.transpose(2, 0, 1))
        k += 1
    return np.stack(out).astype(np.float32)


def prepare(work: Path, algo: str, batch_num: int, tag: str):
    """Config (every quantizable layer, ``algo``), init and quantize_model; returns the paths."""
    import amct

    proto, weights = resnet50_files(work)
    d = work / tag
    d.mkdir(parents=True, exist_ok=True)
    cfg, rec = str(d / "config.json"), str(d / "record.txt")
    amct.create_quant_config(cfg, proto, weights, batch_num=batch_num)
    if algo != "ifmr":
        conf = json.loads(Path(cfg).read_text())
        for v in conf.values():
            if isinstance(v, dict) and "activation_quant_params" in v:
                # the IFMR search parameters do not apply to HFMG
                v["activation_quant_params"] = {"act_algo": algo}
        Path(cfg).write_text(json.dumps(conf, indent=4, separators=(",", ":")))
    graph = amct.init(cfg, proto, weights, rec)
    mp, mw = str(d / "modified.prototxt"), str(d / "modified.caffemodel")
    amct.quantize_model(graph, mp, mw)
    return graph, mp, mw, rec


class Timed:
    """Wraps a collector class's update/compute to add up the time spent in them."""

    def __init__(self, cls):
        self.cls, self.calls = cls, 0
        self.by_method = {"update": 0.0, "compute": 0.0}
        self._orig = {m: getattr(cls, m) for m in ("update", "compute")}
        for m, f in self._orig.items():
            setattr(cls, m, self._wrap(m, f))

    @property
    def seconds(self) -> float:
        return sum(self.by_method.values())

    def _wrap(self, name, f):
        def timed(obj, *a, **k):
            t = time.perf_counter()
            try:
                return f(obj, *a, **k)
            finally:
                self.by_method[name] += time.perf_counter() - t
                self.calls += 1
        return timed

    def restore(self) -> None:
        for m, f in self._orig.items():
            setattr(self.cls, m, f)


class TimedRecord:
    """Adds up the time the calibration layers spend writing the record file."""

    def __init__(self):
        import amct.layers.calibration as cal

        self.mod, self.orig, self.seconds = cal, cal.merge_records, 0.0

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return self.orig(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t
        cal.merge_records = timed

    def restore(self) -> None:
        self.mod.merge_records = self.orig


def bench_ifmr(work: Path, n_images: int, batch: int) -> dict:
    from amct.quant.ifmr import IfmrCollector
    from amct.quant.record import read_record
    from amct.runtime import Net

    n_batches = n_images // batch
    _, mp, mw, rec = prepare(work, "ifmr", n_batches, "ifmr")
    data = images(n_images)
    net = Net(mp, mw)
    n_ifmr = sum(1 for x in net.layers if x.type == "IFMR")
    timer, records = Timed(IfmrCollector), TimedRecord()
    try:
        t0 = time.perf_counter()
        for i in range(n_batches):
            net.forward(data=data[i * batch:(i + 1) * batch])
        total = time.perf_counter() - t0
    finally:
        timer.restore()
        records.restore()
    done = sum(1 for r in read_record(rec).values() if r.has_activation)
    # The reference: the same passes of the same modified model with the
    # collectors and the record writes switched off, in the same process.
    # The IFMR cost is the difference in wall time, so work done in the
    # collectors' background thread counts as much as it slows the forward.
    base = _noop_passes(mp, mw, data, n_batches, batch)
    ifmr = total - records.seconds - base
    ratio = ifmr / base
    print(f"IFMR on ResNet-50: {n_batches} x {batch} images, {n_ifmr} IFMR layers, "
          f"{done} layers calibrated")
    print(f"  forward passes, IFMR switched off        {base:8.2f} s")
    print(f"  forward passes with IFMR (wall)          {total - records.seconds:8.2f} s")
    fc = timer.by_method["compute"]
    print(f"    collect (copy of each batch; sorted in a background thread)"
          f" {timer.by_method['update']:5.2f} s")
    print(f"  factor computation (rest of the sorts, candidate search)"
          f" {fc:5.2f} s = {100 * fc / base:5.1f} % of the forward   (target < 30 %)")
    print(f"  record file writes                       {records.seconds:8.2f} s")
    print(f"  whole IFMR cost: extra wall time         {100 * ratio:8.1f} % of the forward")
    print(f"  peak RSS                                 {_peak_rss_mb():8.0f} MB")
    ours, theirs = _record_printers(read_record(rec))
    print(f"  printing the final record ({done} entries): amct {1e3 * ours:.1f} ms, protobuf's "
          f"text_format {1e3 * theirs:.1f} ms (x{theirs / ours:.1f}), same bytes")
    return {"forward_s": base, "ifmr_s": ifmr, "collect_s": timer.by_method["update"],
            "factor_computation_s": fc, "factor_ratio": fc / base,
            "record_s": records.seconds, "ratio": ratio, "ifmr_layers": n_ifmr,
            "calibrated": done, "record_print_s": ours, "record_print_protobuf_s": theirs}


def _record_printers(records: dict) -> tuple[float, float]:
    """Seconds to print every entry of ``records`` with the record module's own
    printer and with protobuf's (best of 3 each); the texts must be equal."""
    from amct.quant.record import _entry_text, _entry_text_protobuf

    best = {}
    for name, fn in (("ours", _entry_text), ("protobuf", _entry_text_protobuf)):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            texts = [fn(k, r) for k, r in sorted(records.items())]
            times.append(time.perf_counter() - t)
        best[name] = (min(times), texts)
    if best["ours"][1] != best["protobuf"][1]:
        raise SystemExit("the record printers disagree")
    return best["ours"][0], best["protobuf"][0]


def _noop_passes(mp: str, mw: str, data: np.ndarray, n_batches: int, batch: int) -> float:
    """Wall time of the calibration passes with the IFMR collectors doing nothing."""
    import amct.layers.calibration as cal
    from amct.quant.ifmr import IfmrCollector
    from amct.runtime import Net

    saved = (IfmrCollector.update, IfmrCollector.compute, cal.merge_records)
    IfmrCollector.update = lambda self, x: None
    IfmrCollector.compute = lambda self: (1.0, 0)
    cal.merge_records = lambda *a, **k: None
    try:
        net = Net(mp, mw)
        t0 = time.perf_counter()
        for i in range(n_batches):
            net.forward(data=data[i * batch:(i + 1) * batch])
        return time.perf_counter() - t0
    finally:
        IfmrCollector.update, IfmrCollector.compute, cal.merge_records = saved


def _peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


def hfmg_child(work: Path, batch_num: int, batch: int, forwards: int) -> None:
    """One HFMG calibration run (in a fresh process); prints a JSON line."""
    from amct.quant.record import read_record
    from amct.runtime import Net

    _, mp, mw, rec = prepare(work, "hfmg", batch_num, f"hfmg_{batch_num}")
    data = images(batch)
    net = Net(mp, mw)
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    for i in range(forwards):
        # every batch differs (scaled) so the histograms keep growing
        net.forward(data=data * np.float32(1 + 0.05 * i))
    done = sum(1 for r in read_record(rec).values() if r.has_activation)
    print(json.dumps({"batch_num": batch_num, "forwards": forwards, "peak_rss_mb": _peak_rss_mb(),
                      "rss_before_forward_mb": base, "seconds": time.perf_counter() - t0,
                      "calibrated": done}))


def bench_hfmg(work: Path, n: int, batch: int) -> dict:
    res = {}
    for bn, fw in ((n, n), (1, n), (1, 1)):
        out = subprocess.run([sys.executable, __file__, "--work", str(work), "--hfmg-child",
                              str(bn), "--forwards", str(fw), "--batch", str(batch)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"HFMG child (batch_num {bn}) failed:\n{out.stderr[-3000:]}")
        res[(bn, fw)] = json.loads(out.stdout.strip().splitlines()[-1])
    big, one = res[(n, n)]["peak_rss_mb"], res[(1, n)]["peak_rss_mb"]
    print(f"HFMG on ResNet-50, batch size {batch}: peak RSS (fresh process each)")
    for (bn, fw), r in res.items():
        print(f"  batch_num {bn:>3}, {fw:>3} forward passes: {r['peak_rss_mb']:8.0f} MB   "
              f"({r['calibrated']} layers calibrated, {r['seconds']:.1f} s)")
    print(f"  batch_num {n} vs 1 (same forwards): {100 * (big - one) / one:+6.1f} %   "
          "(target within 10 %)")
    return {"peak_rss_mb": {f"batch_num={bn},forwards={fw}": r["peak_rss_mb"]
                            for (bn, fw), r in res.items()},
            "difference": (big - one) / one}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(REPO / "bench/_work/calibrate"))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--hfmg-batches", type=int, default=16)
    ap.add_argument("--skip-ifmr", action="store_true")
    ap.add_argument("--skip-hfmg", action="store_true")
    ap.add_argument("--hfmg-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--forwards", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.hfmg_child is not None:
        hfmg_child(work, args.hfmg_child, args.batch or 2, args.forwards or args.hfmg_child)
        return 0
    report = {}
    if not args.skip_ifmr:
        report["ifmr"] = bench_ifmr(work, args.images, args.batch or 8)
    if not args.skip_hfmg:
        report["hfmg"] = bench_hfmg(work, args.hfmg_batches, args.batch or 2)
    from amct.fileio import atomic_write_text
    atomic_write_text(str(work / "calibrate.json"), json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
