"""ONNX Runtime INT8 beside our fake-quant, on the same images (issue 4, "How it will be checked").

Usage::

    python bench/ort_compare.py [--models lenet det1 det2 det3 cifar10 ultraface]
                                [--algos ifmr ifmr_nobc hfmg minmax] [--work bench/_work/ort]
                                [--split bench|swap|mixed|covered]

For every model, with exactly the calibration and evaluation batches (and
preprocessing) of ``bench/accuracy.py``:

* the fp32 net is exported to ONNX (``bench/onnx_export.py``) and checked
  against our runtime;
* ONNX Runtime ``quantize_static`` makes an INT8 model: QDQ format, per-channel
  int8 weights, MinMax calibration over the calibration batches, activations
  uint8 and (second run) int8;
* the cosine of every output, INT8 vs fp32 in ONNX Runtime, is printed beside
  our fake-quant vs fp32 (IFMR and HFMG, the flow of ``bench/accuracy.py``),
  (a third ORT run: int8 activations with ActivationSymmetric=True),
  a ``<`` marking where ours is below the best ONNX Runtime figure.
* LeNet: also top-1 on the 10,000 test images.

``--split swap`` (calibrate on the evaluation images and the other way round)
and ``--split mixed`` (half of every image's views or crops each way) repeat
the comparison on other divisions of the same images, into
``WORK/split_<split>/``: held-out checks for the default config's rules.
``--split covered`` calibrates on the evaluation images too (not held out):
what a calibration set that covers the evaluation images changes.

Results: ``WORK/ort_compare.json``.  Needs ``onnx``, ``onnxruntime`` and
``shared/models``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy as acc  # noqa: E402  (the bench's data and flow, not re-implemented)
from accuracy import SPLITS, split_case, split_work  # noqa: E402
from onnx_export import export_onnx, max_abs_diff  # noqa: E402

from amct.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

# label -> (activation QuantType, extra_options).  ORT's activations are
# asymmetric by default, so QInt8 is QUInt8 with the zero point moved by 128
# (same grid); the symmetric int8 variant is the one that differs.
ACT_TYPES = {"QUInt8": ("QUInt8", {}), "QInt8": ("QInt8", {}),
             "QInt8_sym": ("QInt8", {"ActivationSymmetric": True})}


class _Batches:
    """onnxruntime CalibrationDataReader over a list of input batches."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self._it = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        raise NotImplementedError


def _reader(name: str, batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    # Subclassing at call time keeps onnxruntime an import-on-use dependency.
    return type("BatchReader", (_Batches, CalibrationDataReader), {})(name, batches)


def ort_int8(fp32_path: Path, out: Path, inp: str, calib: list[np.ndarray], act: str) -> Path:
    """quantize_static: QDQ, per-channel int8 weights, MinMax, activations ``act``
    (a key of ACT_TYPES)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The pre-processing step ORT's docs prescribe (shape inference and graph
    # optimisation, e.g. BatchNorm folding) before quantize_static.
    pre = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), _reader(inp, calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=getattr(QuantType, ACT_TYPES[act][0]),
                    calibrate_method=CalibrationMethod.MinMax, extra_options=ACT_TYPES[act][1])
    return out


def ort_run(path: Path, inp: str, batches: list[np.ndarray], names: list[str]) -> dict:
    """Every output over all batches, concatenated (outputs in graph.outputs order)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1         # a shared 2-core machine
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs: dict[str, list] = {k: [] for k in names}
    for x in batches:
        for k, v in zip(names, sess.run(None, {inp: x})):
            outs[k].append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def measure_ort(name: str, case: dict, work: Path) -> dict:
    """Export, check and ORT-quantize one model; the ORT cosines (and LeNet top-1)."""
    from amct.frontends.caffe import load_caffe

    graph = load_caffe(str(case["model"]), str(case["weights"]))
    inp, outputs = graph.inputs[0], graph.outputs
    evals = case["eval"]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    fp32_path = d / f"{name}_fp32.onnx"
    model = export_onnx(graph, {inp: case["calib"][0].shape})
    atomic_write_bytes(str(fp32_path), model.SerializeToString())
    row: dict = {"calib_inputs": sum(len(b) for b in case["calib"]),
                 "eval_inputs": sum(len(b) for b in evals),
                 "export_max_abs_diff": max_abs_diff(graph, model, {inp: evals[0]}),
                 "outputs": {k: {} for k in outputs}}
    ref = ort_run(fp32_path, inp, evals, outputs)
    labels = case.get("labels")
    if labels is not None:
        row["top1"] = {"fp32": float((ref[outputs[0]].argmax(1) == labels).mean())}
    for act in ACT_TYPES:
        q = ort_int8(fp32_path, d / f"{name}_int8_{act}.onnx", inp, case["calib"], act)
        got = ort_run(q, inp, evals, outputs)
        for k in outputs:
            row["outputs"][k][f"ort_{act}"] = acc.cosine(ref[k], got[k])
        if labels is not None:
            row["top1"][f"ort_{act}"] = float((got[outputs[0]].argmax(1) == labels).mean())
    return row


def compare_model(name: str, algos, work: Path, split: str = "bench") -> dict:
    """ORT's INT8 and our fake-quant (each algorithm) on the same batches."""
    case = acc.lenet_case() if name == "lenet" else split_case(acc.model_case(name), split)
    row = measure_ort(name, case, work)
    evals, labels = case["eval"], case.get("labels")
    for algo in algos:
        r = acc.run_flow(name, algo, case, work / "amct")
        fg, fk, _ = r["graphs"]
        ours_ref, fake = acc._run_all(fg, evals), acc._run_all(fk, evals)
        for k in row["outputs"]:
            row["outputs"][k][algo] = acc.cosine(ours_ref[k], fake[k])
        if labels is not None:
            row["top1"][algo] = float((fake[fg.outputs[0]].argmax(1) == labels).mean())
    return row


def _print_model(name: str, row: dict, algos) -> None:
    print(f"{name}: calibration {row['calib_inputs']} inputs, evaluation {row['eval_inputs']}; "
          "export max |ours - ORT fp32| = "
          + ", ".join(f"{k} {v:.2g}" for k, v in row["export_max_abs_diff"].items()))
    cols = [f"ort_{a}" for a in ACT_TYPES] + list(algos)
    print(f"  {'output':<10} " + " ".join(f"{c:>14}" for c in cols))
    for k, cos in row["outputs"].items():
        best_ort = max(cos[f"ort_{a}"] for a in ACT_TYPES)
        cells = [f"{cos[c]:>14.6f}" for c in cols[:len(ACT_TYPES)]]
        cells += [f"{cos[a]:>13.6f}{'<' if cos[a] < best_ort else ' '}" for a in algos]
        print(f"  {k:<10} " + " ".join(cells))
    if "top1" in row:
        top = row["top1"]
        print("  top-1 %   " + " ".join(f"{100 * top[c]:>14.2f}" for c in cols)
              + f"   (fp32 {100 * top['fp32']:.2f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=acc.MODEL_NAMES)
    ap.add_argument("--algos", nargs="+", default=["ifmr", "ifmr_nobc", "hfmg", "minmax"],
                    choices=acc.ALGOS,
                    help="our calibration presets (default: IFMR with and without bias "
                         "correction, HFMG, minmax); NAME_nobc: without bias correction")
    ap.add_argument("--work", default=str(acc.REPO / "bench/_work/ort"))
    ap.add_argument("--split", choices=SPLITS, default="bench",
                    help="how the images are divided between calibration and evaluation "
                         "(swap, mixed: held-out checks; covered: calibrates on the evaluation "
                         "images too; LeNet always uses its own split)")
    args = ap.parse_args(argv)
    if acc.shared_missing():
        return 2
    import onnxruntime

    work, args.models = split_work(Path(args.work), args.split, args.models)
    out = work / "ort_compare.json"
    report = json.loads(out.read_text()) if out.exists() else {}
    report["_meta"] = {"onnxruntime": onnxruntime.__version__,
                       "date": time.strftime("%Y-%m-%d"), "split": args.split,
                       "ort_settings": "quantize_static QDQ, per_channel=True, weight QInt8, "
                                       "MinMax; activations " + ", ".join(ACT_TYPES)}
    print("'<': our fake-quant cosine below the better ONNX Runtime one\n")
    for name in args.models:
        t = time.perf_counter()
        report[name] = compare_model(name, args.algos, work, args.split)
        _print_model(name, report[name], args.algos)
        print(f"  ({time.perf_counter() - t:.1f} s)\n")
        atomic_write_text(str(out), json.dumps(report, indent=2, default=float) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
