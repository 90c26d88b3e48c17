"""What bias correction costs: time and peak memory of ``amct.quantize`` with and without it.

Usage::

    python bench/bias_correction.py [--model ultraface|det3|cifar10|resnet50] [--images 4]
                                    [--work bench/_work/bias_correction]

The model's calibration batches are those of ``bench/accuracy.py`` (real photos,
10 views each), the first ``--images`` of them.  Each setting runs in a fresh
subprocess (so peak RSS, VmHWM, is its own): ``amct.quantize`` with
``bias_correction=False`` (the reference: AMCT's flow) and with ``True``, both
with ARQ's nearest weight rounding so that only the correction differs.
Printed: wall time and peak RSS of each, the ratios on/off, and what the
correction buys, the cosine of every output against fp32 on the evaluation
images.  Timings on a shared machine are noisy; run it twice.

``bench/weight_rounding.py`` runs the same comparison for GPTQ weight rounding.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _rss import peak_rss_bytes  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent


#: step -> (what it is called, the quantize() arguments that switch it on)
STEPS = {"bias_correction": ("bias correction", {"bias_correction": True}),
         "weight_rounding": ("GPTQ weight rounding", {"weight_rounding": "gptq"})}
#: The reference both compare against: AMCT's flow.
OFF = {"bias_correction": False, "weight_rounding": "nearest"}


def resnet50_case(work: Path) -> dict:
    """ResNet-50 with seeded random weights (``bench/calibrate.py``'s) on 32 real
    image crops in batches of 4, evaluated on 8 more: a large net for the cost
    figures (its cosines say nothing about trained accuracy)."""
    import calibrate

    proto, weights = calibrate.resnet50_files(REPO / "bench/_work/calibrate")
    crops = calibrate.images(40)
    return {"model": proto, "weights": weights,
            "calib": [crops[i:i + 4] for i in range(0, 32, 4)], "eval": [crops[32:]]}


def child(model: str, images: int, work: Path, on: bool, step: str) -> dict:
    import accuracy as acc

    import amct

    if model == "resnet50":
        case = resnet50_case(work)
        calib = case["calib"]
    else:
        case = acc.model_case(model)
        calib = case["calib"][:images]
    kwargs = {**OFF, **(STEPS[step][1] if on else {})}
    t0 = time.perf_counter()
    res = amct.quantize(str(case["model"]), str(case["weights"]), calib,
                        str(work / ("on" if on else "off") / model), save_type="Fakequant",
                        **kwargs)
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    fg = amct.load_caffe(str(case["model"]), str(case["weights"]))
    fk = amct.load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"])
    ref, got = acc._run_all(fg, case["eval"]), acc._run_all(fk, case["eval"])
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20,
            "calib_inputs": sum(len(b) for b in calib),
            "layers": len(res.bias_shifts) + len(res.rounding),
            "cosine": {k: acc.cosine(ref[k], got[k]) for k in ref}}


def main(argv=None, step: str = "bias_correction", doc: str = __doc__,
         script: str = __file__) -> int:
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--model", default="ultraface",
                    choices=["ultraface", "det3", "cifar10", "resnet50"])
    ap.add_argument("--images", type=int, default=4,
                    help="calibration photos (10 views each; resnet50: always 32 crops)")
    ap.add_argument("--work", default=str(REPO / "bench/_work" / step))
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.child:
        print(json.dumps(child(args.model, args.images, work, args.child == "on", step)))
        return 0
    import accuracy as acc

    if acc.shared_missing():
        return 2
    rows = {}
    for setting in ("off", "on"):
        out = subprocess.run([sys.executable, script, "--model", args.model, "--images",
                              str(args.images), "--work", str(work), "--child", setting],
                             check=True, capture_output=True, text=True).stdout
        rows[setting] = json.loads(out.strip().splitlines()[-1])
    off, on = rows["off"], rows["on"]
    print(f"{args.model}: {on['calib_inputs']} calibration inputs; {STEPS[step][0]} on "
          f"{on['layers']} layers")
    print(f"  {'':<22} {'without':>10} {'with':>10} {'ratio':>7}")
    print(f"  {'quantize wall (s)':<22} {off['seconds']:>10.2f} {on['seconds']:>10.2f} "
          f"{on['seconds'] / off['seconds']:>7.2f}")
    print(f"  {'peak RSS (MB)':<22} {off['peak_rss_mb']:>10.0f} {on['peak_rss_mb']:>10.0f} "
          f"{on['peak_rss_mb'] / off['peak_rss_mb']:>7.2f}")
    for k in on["cosine"]:
        print(f"  {'cosine ' + k:<22} {off['cosine'][k]:>10.6f} {on['cosine'][k]:>10.6f}")
    work.mkdir(parents=True, exist_ok=True)
    from amct.fileio import atomic_write_text

    atomic_write_text(str(work / f"{args.model}.json"), json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
