"""Accuracy of the PTQ flow on the real models (the figures of issue "The PTQ pipeline").

Usage::

    python bench/accuracy.py [--models lenet det1 det2 det3 cifar10 ultraface]
                             [--algos ifmr hfmg] [--work bench/_work/accuracy]
                             [--json bench/_work/accuracy/layers.json] [--no-ort]
                             [--split bench|swap|mixed|covered]

* LeNet: calibrated on 100 MNIST *training* images (a spread over the
  label-sorted 5k file: every 50th row, 2 batches of 50), evaluated on the
  10,000 test images: top-1 of fp32 / fake-quant / deploy (integer simulation)
  and the share of test images where deploy predicts the same class as
  fake-quant.  Targets: fp32 99.04 %, fake and deploy >= 99.00 %, agreement
  >= 99.95 %.
* MTCNN det1-3, cifar10_quick, UltraFace slim-320: calibrated on crops of some
  real images, evaluated on *other* images: cosine similarity of every net
  output, fake-quant vs fp32, printed beside ONNX Runtime INT8 measured on
  the same batches (the best of ``bench/ort_compare.py``'s three variants,
  when onnxruntime is installed) and the issue's quoted ONNX Runtime
  figures, which come from other images.  ``--split`` divides the images
  otherwise (``split_case``); ``covered`` also calibrates on the evaluation
  images, to tell what uncovered calibration data cost from what the method
  costs.
* A per-layer table for every model and algorithm (``amct.api.layer_table``:
  scale_d, offset_d, clip ratio = share of the layer's float input values
  outside the int8 range, reach, cosine of the layer's float output vs its
  fake-quant output) written as JSON.

Everything runs on the project's own runtime.  Needs ``shared/models``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AMCT_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
IMAGES = MODELS / "images"

# ONNX Runtime INT8 (QDQ) vs fp32 cosine similarities quoted in the issue.
ORT_REFERENCE = {
    ("ultraface", "scores"): 0.99998, ("ultraface", "boxes"): 0.989,
    ("det3", "prob1"): 0.99997, ("det3", "conv6-2"): 0.9987, ("det3", "conv6-3"): 0.99997,
    ("det1", "prob1"): 0.9997, ("det1", "conv4-2"): 0.9931,
    ("cifar10", "prob"): 0.9995,
}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den else float(np.array_equal(a, b))


# ------------------------------------------------------------------ data
def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", ndim, 4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float32)


def _grid(img: np.ndarray, ch: int, cw: int, h: int, w: int, grid: int = 3) -> list[np.ndarray]:
    """The whole image and a grid x grid of ch x cw crops, each resized to h x w."""
    H, W = img.shape[:2]
    out = [_resize(img, h, w)]
    for i in range(grid):
        for j in range(grid):
            y = (H - ch) * i // max(grid - 1, 1)
            x = (W - cw) * j // max(grid - 1, 1)
            out.append(_resize(img[y:y + ch, x:x + cw], h, w))
    return out


def _crops(img: np.ndarray, size: int, grid: int = 3) -> list[np.ndarray]:
    """Square views: side = half the short edge, resized to size x size."""
    side = min(img.shape[:2]) // 2
    return _grid(img, side, side, size, size, grid)


def _views(img: np.ndarray, h: int, w: int, grid: int = 3) -> list[np.ndarray]:
    """Views of the image's own aspect: half-size crops, resized to h x w."""
    return _grid(img, img.shape[0] // 2, img.shape[1] // 2, h, w, grid)


def _zoomed_out(img: np.ndarray, h: int, w: int, tiles=(2, 3)) -> list[np.ndarray]:
    """The image shrunk n times and tiled n x n, at h x w, for each n in ``tiles``."""
    return [_resize(np.tile(_resize(img, h // n, w // n), (n, n, 1)), h, w) for n in tiles]


def _mtcnn(batch_hwc: list[np.ndarray]) -> np.ndarray:
    """RGB, (x - 127.5)·0.0078125, transposed (blob axis 2 = image column)."""
    x = (np.stack(batch_hwc) - 127.5) * 0.0078125
    return np.ascontiguousarray(x.transpose(0, 3, 2, 1)).astype(np.float32)


CALIB_IMAGES = ["cat.jpg", "000001.jpg", "000456.jpg"]
EVAL_IMAGES = ["fish-bike.jpg", "004545.jpg"]


def _image_paths(names, extra=()) -> list[Path]:
    return [IMAGES / n for n in names] + [Path(p) for p in extra]


def model_case(name: str) -> dict:
    """Model files, calibration batches and evaluation batches of one model."""
    m = MODELS
    if name in ("det1", "det2", "det3"):
        size = {"det2": 24, "det3": 48}.get(name)
        calib_imgs = [_rgb(p) for p in _image_paths(CALIB_IMAGES, [m / "mtcnn/test1.jpg"])]
        eval_imgs = [_rgb(p) for p in _image_paths(EVAL_IMAGES, [m / "mtcnn/test2.jpg"])]
        if size is None:         # PNet is fully convolutional: whole images at 61x49
            calib = [_mtcnn([_resize(c, 61, 49) for c in _crops(im, 98)]) for im in calib_imgs]
            evals = [_mtcnn([_resize(c, 61, 49) for c in _crops(im, 98)]) for im in eval_imgs]
        else:
            calib = [_mtcnn(_crops(im, size)) for im in calib_imgs]
            evals = [_mtcnn(_crops(im, size)) for im in eval_imgs]
        return {"model": m / f"mtcnn/{name}.prototxt", "weights": m / f"mtcnn/{name}.caffemodel",
                "calib": calib, "eval": evals}
    if name == "cifar10":
        from amct.data.preprocess import load_mean
        mean = load_mean(str(m / "cifar10_quick/mean.binaryproto")).reshape(1, 3, 32, 32)

        def prep(imgs):
            return (np.stack(imgs).transpose(0, 3, 1, 2) - mean).astype(np.float32)
        calib = [prep(_crops(_rgb(p), 32)) for p in _image_paths(CALIB_IMAGES,
                                                                [m / "mtcnn/test1.jpg"])]
        evals = [prep([_resize(_rgb(m / "cifar10_quick/dog4.png"), 32, 32)]
                      + [c for p in _image_paths(EVAL_IMAGES) for c in _crops(_rgb(p), 32)])]
        return {"model": m / "cifar10_quick/cifar10_quick.prototxt",
                "weights": m / "cifar10_quick/cifar10_quick_iter_5000.caffemodel",
                "calib": calib, "eval": evals}
    if name == "ultraface":
        # Whole images and 3x3 grids of half-size crops (10 views per image),
        # so that both calibration and evaluation see faces at several scales;
        # one batch per source image.  Calibration also gets two zoomed-out
        # views of each of its images (``zoom``, added by split_case): the
        # finest score head fires on small faces, and the photos alone show
        # few (docs/benchmarks.md).
        def prep(views):
            return np.stack([(v - 127.0) / 128.0 for v in views]
                            ).transpose(0, 3, 1, 2).astype(np.float32)
        calib_p = _image_paths(CALIB_IMAGES, [m / "mtcnn/test1.jpg"])
        eval_p = _image_paths(EVAL_IMAGES, [m / "ultraface_slim320/face.jpg", m / "mtcnn/test2.jpg"])
        return {"model": m / "ultraface_slim320/slim-320.prototxt",
                "weights": m / "ultraface_slim320/slim-320.caffemodel",
                "calib": [prep(_views(_rgb(p), 240, 320)) for p in calib_p],
                "eval": [prep(_views(_rgb(p), 240, 320)) for p in eval_p],
                "zoom": {"calib": [prep(_zoomed_out(_rgb(p), 240, 320)) for p in calib_p],
                         "eval": [prep(_zoomed_out(_rgb(p), 240, 320)) for p in eval_p]}}
    raise SystemExit(f"unknown model {name!r}")


#: The shared models the benches run by default.
MODEL_NAMES = ["lenet", "det1", "det2", "det3", "cifar10", "ultraface"]


def shared_missing() -> bool:
    """True (after saying so on stderr) when shared/models is not there."""
    if MODELS.exists():
        return False
    print(f"{MODELS} not found (set AMCT_SHARED)", file=sys.stderr)
    return True


#: Other ways to divide the bench's images between calibration and evaluation,
#: to check that a result is not an artefact of one division (``--split``).
#: "covered" is not held out: it calibrates on the evaluation images too, to
#: separate what calibration data that do not cover the evaluation images
#: cost from what the method costs.
SPLITS = ("bench", "swap", "mixed", "covered")


def split_case(case: dict, split: str) -> dict:
    """``case`` with its batches re-divided: "swap" exchanges calibration and
    evaluation; "mixed" pools both and gives the first half of every batch
    (an image's first views or crops) to calibration, the rest to evaluation;
    "covered" calibrates on the calibration and the evaluation batches and
    evaluates on the evaluation batches (a coverage check, not held out).

    A case with ``zoom`` (extra calibration views per source image, for the
    calibration and the evaluation images) has the extra views of the images
    that calibrate appended to their calibration batches; evaluation never
    gets them."""
    zoom = case.get("zoom") or {"calib": [None] * len(case["calib"]),
                                "eval": [None] * len(case["eval"])}
    # (views, that image's zoom views or None) per source image
    calib = list(zip(case["calib"], zoom["calib"], strict=True))
    evals = list(zip(case["eval"], zoom["eval"], strict=True))
    if split == "bench":
        cal, ev = calib, evals
    elif split == "covered":
        cal, ev = calib + evals, evals
    elif split == "swap":
        cal, ev = evals, calib
    else:
        pooled = [(b, z) for b, z in calib + evals if len(b) > 1]
        cal = [(b[: len(b) // 2], z) for b, z in pooled]
        ev = [(b[len(b) // 2:], None) for b, _ in pooled]
    out = {k: v for k, v in case.items() if k != "zoom"}
    out["calib"] = [b if z is None else np.concatenate([b, z]) for b, z in cal]
    out["eval"] = [b for b, _ in ev]
    return out


def split_work(work: Path, split: str, models: list[str]) -> tuple[Path, list[str]]:
    """The work folder of a run on ``split`` (WORK/split_<split>/ unless the
    bench split) and the models it covers (LeNet has a split of its own)."""
    if split == "bench":
        return work, models
    return work / f"split_{split}", [m for m in models if m != "lenet"]


# ------------------------------------------------------------ per layer
def layer_table(case: dict, prefix: str, batches: list[np.ndarray]) -> dict:
    """scale_d, offset_d, clip ratio and reach, and float-vs-fake cosine of every
    quantized layer of the model saved at ``prefix`` (``amct.api.layer_table``)."""
    import amct.api

    rows = amct.api.layer_table(str(case["model"]), str(case["weights"]), prefix, batches,
                                deploy=False)
    return {r["layer"]: {"scale_d": r["scale_d"], "offset_d": r["offset_d"],
                         "clip_ratio": r["clip_ratio"], "clip_reach": r["clip_reach"],
                         "cosine": r["fake_quant"]["cosine"]} for r in rows}


def _print_layers(title: str, table: dict) -> None:
    print(f"  per layer ({title})")
    print(f"    {'layer':<22} {'scale_d':>11} {'offset_d':>8} {'clip %':>8} {'reach':>6} "
          f"{'cosine':>9}")
    for k, r in table.items():
        cos = f"{r['cosine']:.6f}" if r["cosine"] is not None else "-"
        print(f"    {k:<22} {r['scale_d']:>11.4g} {r['offset_d']:>8d} "
              f"{100 * r['clip_ratio']:>8.4f} {r['clip_reach']:>6.2f} {cos:>9}")


# ---------------------------------------------------------------- flows
#: The algorithm names the benches take: a preset, then optional variants:
#: "_nearest" keeps ARQ's nearest weight rounding instead of GPTQ, "_nobc"
#: skips bias correction ("ifmr_nearest_nobc": AMCT's flow with the default rules).
PRESETS = ("ifmr", "hfmg", "minmax")
ALGOS = [p + v for p in PRESETS for v in ("", "_nobc", "_nearest", "_nearest_nobc")]


def flow_options(algo: str) -> dict:
    """``amct.quantize`` keywords of a bench algorithm name."""
    base, *variants = algo.split("_")
    return {"algo": base, "bias_correction": "nobc" not in variants,
            "weight_rounding": "nearest" if "nearest" in variants else "gptq"}


def run_flow(name: str, algo: str, case: dict, work: Path) -> dict:
    import amct
    from amct.frontends.caffe import load_caffe

    prefix = work / name / algo / name
    t0 = time.perf_counter()
    res = amct.quantize(str(case["model"]), str(case["weights"]), case["calib"], str(prefix),
                        **flow_options(algo))
    t_q = time.perf_counter() - t0
    fg = load_caffe(str(case["model"]), str(case["weights"]))
    fk = load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"])
    dp = load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])
    info = json.loads(Path(res.outputs["quant_json"]).read_text())
    return {"graphs": (fg, fk, dp), "info": info, "seconds": t_q, "outputs": res.outputs,
            "prefix": str(prefix)}


def _run_all(graph, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    from amct.runtime import compile as compile_graph

    inp = graph.inputs[0]
    outs: dict[str, list] = {}
    prog = None
    for x in batches:
        if prog is None:
            prog = compile_graph(graph, {inp: x.shape})
        for k, v in prog.run({inp: x}).items():
            outs.setdefault(k, []).append(np.array(v))
    return {k: np.concatenate(v) for k, v in outs.items()}


def lenet_case() -> dict:
    """LeNet files, calibration batches, the 10k test images in batches of 1000, labels."""
    m = MODELS
    rows = np.loadtxt(gzip.open(m / "mnist/mnist_5k_train.csv.gz"), delimiter=",",
                      dtype=np.float32)
    calib = rows[::50, :784].reshape(-1, 1, 28, 28) / 256.0      # 100 images, all labels
    batches = [calib[0::2], calib[1::2]]
    images = _read_idx(m / "mnist/t10k-images-idx3-ubyte.gz").astype(np.float32) / 256.0
    labels = _read_idx(m / "mnist/t10k-labels-idx1-ubyte.gz")
    test = [images[i:i + 1000, None] for i in range(0, len(images), 1000)]
    return {"model": m / "lenet_mnist/mnist_deploy.prototxt",
            "weights": m / "lenet_mnist/lenet_iter_10000.caffemodel", "calib": batches,
            "eval": test, "labels": labels}


def bench_lenet(algos, work: Path, report: dict) -> None:
    case = lenet_case()
    test, labels = case["eval"], case["labels"]
    print("LeNet / MNIST (calibration: 100 training images; test: 10,000 images)")
    fp32 = None
    for algo in algos:
        r = run_flow("lenet", algo, case, work)
        fg, fk, dp = r["graphs"]
        out = fg.outputs[0]
        if fp32 is None:
            fp32 = _run_all(fg, test)[out].argmax(1)
            print(f"  fp32           top-1 {100 * (fp32 == labels).mean():6.2f} %   (target 99.04)")
        fake = _run_all(fk, test)[out].argmax(1)
        dep = _run_all(dp, test)[out].argmax(1)
        agree = (fake == dep).mean()
        row = {"fp32": float((fp32 == labels).mean()), "fake": float((fake == labels).mean()),
               "deploy": float((dep == labels).mean()), "deploy_vs_fake": float(agree),
               "quantize_seconds": r["seconds"]}
        print(f"  {algo:<5} fake     top-1 {100 * row['fake']:6.2f} %   (target >= 99.00)")
        print(f"  {algo:<5} deploy   top-1 {100 * row['deploy']:6.2f} %   (target >= 99.00)")
        print(f"  {algo:<5} deploy == fake on {100 * agree:6.2f} % of images (target >= 99.95)")
        row["layers"] = layer_table(case, r["prefix"], test[:2])
        _print_layers(algo, row["layers"])
        report.setdefault("lenet", {})[algo] = row


def bench_cosine(name: str, case: dict, algos, work: Path, report: dict,
                 ort: dict | None = None, split: str = "bench") -> None:
    """``ort``: ONNX Runtime cosines measured on these batches, printed beside
    the issue's quoted figures (which come from other images)."""
    which = "the same, also calibrated on" if split == "covered" else "other"
    print(f"{name}: calibration {sum(len(b) for b in case['calib'])} inputs, "
          f"evaluation {sum(len(b) for b in case['eval'])} inputs ({which}; division {split})")
    for algo in algos:
        r = run_flow(name, algo, case, work)
        fg, fk, dp = r["graphs"]
        ref, fake, dep = (_run_all(g, case["eval"]) for g in (fg, fk, dp))
        row = {"outputs": {}, "quantize_seconds": r["seconds"]}
        for k in ref:
            c = cosine(ref[k], fake[k])
            cd = cosine(fake[k], dep[k])
            quoted = ORT_REFERENCE.get((name, k))
            measured = ort[k] if ort is not None else None
            row["outputs"][k] = {"cosine_fake_vs_fp32": c, "cosine_deploy_vs_fake": cd,
                                 "onnxruntime_quoted": quoted, "onnxruntime_measured": measured}
            q_s = f"{quoted:.5f}" if quoted is not None else "   -   "
            m_s = (f"{measured:.6f}{' <' if c < measured else '  '}" if measured is not None
                   else "    -     ")
            print(f"  {algo:<6} {k:<10} cosine fake/fp32 {c:.6f}   ONNX Runtime: same images "
                  f"{m_s}  quoted (other images) {q_s}   deploy/fake {cd:.7f}")
        row["layers"] = layer_table(case, r["prefix"], case["eval"][:1])
        _print_layers(algo, row["layers"])
        report.setdefault(name, {})[algo] = row


def _measured_ort(name: str, case: dict, work: Path) -> dict | None:
    """{output: the best ORT INT8 cosine of ort_compare's three variants} on
    this bench's batches; None without onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from ort_compare import measure_ort

    row = measure_ort(name, case, work / "ort")
    return {k: max(v.values()) for k, v in row["outputs"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODEL_NAMES)
    ap.add_argument("--algos", nargs="+", default=["ifmr", "hfmg", "minmax"], choices=ALGOS,
                    help="calibration presets; NAME_nobc: without bias correction; "
                         "NAME_nearest: ARQ's nearest weight rounding instead of GPTQ")
    ap.add_argument("--work", default=str(REPO / "bench/_work/accuracy"))
    ap.add_argument("--json", default=None, help="per-layer report (default: WORK/layers.json)")
    ap.add_argument("--no-ort", action="store_true",
                    help="do not measure ONNX Runtime INT8 on the same images (measured by "
                         "default when onnxruntime is installed; see bench/ort_compare.py)")
    ap.add_argument("--split", choices=SPLITS, default="bench",
                    help="the division of the images into calibration and evaluation "
                         "(swap, mixed: held out; covered: calibrates on the evaluation images "
                         "too); LeNet runs on the bench division only")
    args = ap.parse_args(argv)
    if shared_missing():
        return 2
    work, args.models = split_work(Path(args.work), args.split, args.models)
    report: dict = {}
    for name in args.models:
        t = time.perf_counter()
        if name == "lenet":
            bench_lenet(args.algos, work, report)
        else:
            case = split_case(model_case(name), args.split)
            bench_cosine(name, case, args.algos, work, report,
                         None if args.no_ort else _measured_ort(name, case, work), args.split)
        print(f"  ({time.perf_counter() - t:.1f} s)\n")
    out = Path(args.json or work / "layers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from amct.fileio import atomic_write_text
    atomic_write_text(str(out), json.dumps(report, indent=2, default=float) + "\n")
    print(f"per-layer report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
