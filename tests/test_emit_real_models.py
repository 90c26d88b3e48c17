"""End to end on the real models: amct.quantize -> fake-quant and deploy models, run by the runtime.

Calibration uses real images other than the evaluation inputs, which are the
golden cases' stored inputs (the exact preprocessing of each model).  Checks:
fake-quant stays close to fp32 (cosine of every output, thresholds a little
under the measured values, see bench/accuracy.py), and the deploy model's
integer simulation agrees with the fake-quant model.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import shared_or_skip

import amct
from amct.frontends.caffe import load_caffe
from amct.report.deploy_check import check_deploy_layers
from amct.runtime import run


def _cos(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _rgb(path, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR), np.float32)


def _mtcnn(imgs) -> np.ndarray:
    x = (np.stack(imgs) - 127.5) * 0.0078125
    return np.ascontiguousarray(x.transpose(0, 3, 2, 1), dtype=np.float32)


def _crops(path, size: int) -> list[np.ndarray]:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    side = min(w, h) // 2
    boxes = [(0, 0, w, h)] + [((w - side) * i // 2, (h - side) * j // 2,
                               (w - side) * i // 2 + side, (h - side) * j // 2 + side)
                              for i in range(3) for j in range(3)]
    return [np.asarray(im.crop(b).resize((size, size), Image.BILINEAR), np.float32) for b in boxes]


def _case(name: str):
    models = shared_or_skip("models")
    images = models / "images"
    golden = shared_or_skip("golden")
    if name.startswith("det"):
        gold = golden / f"real_mtcnn_{name}"
        others = [models / "mtcnn/test2.jpg", images / "cat.jpg"]
        if name == "det1":          # blob (N, 3, W=49, H=61)
            calib = [_mtcnn([_rgb(p, 61, 49) for p in others])]
        else:
            size = {"det2": 24, "det3": 48}[name]
            calib = [_mtcnn(_crops(p, size)) for p in others]
        files = (models / f"mtcnn/{name}.prototxt", models / f"mtcnn/{name}.caffemodel")
    elif name == "cifar10":
        from amct.data.preprocess import load_mean
        gold = golden / "real_cifar10_quick"
        mean = load_mean(str(models / "cifar10_quick/mean.binaryproto")).reshape(1, 3, 32, 32)
        calib = [(np.stack(_crops(images / p, 32)).transpose(0, 3, 1, 2) - mean).astype(np.float32)
                 for p in ("cat.jpg", "fish-bike.jpg")]
        files = (models / "cifar10_quick/cifar10_quick.prototxt",
                 models / "cifar10_quick/cifar10_quick_iter_5000.caffemodel")
    elif name == "ultraface":
        gold = golden / "real_ultraface_slim320"
        calib = [((np.stack([_rgb(images / p, 240, 320) for p in ("cat.jpg", "000001.jpg")])
                   - 127.0) / 128.0).transpose(0, 3, 1, 2).astype(np.float32)]
        files = (models / "ultraface_slim320/slim-320.prototxt",
                 models / "ultraface_slim320/slim-320.caffemodel")
    else:
        raise AssertionError(name)
    io = np.load(gold / "io.npz")
    (key,) = [k for k in io.files if k.startswith("in:")]
    return files, calib, {key[3:]: io[key]}


def assert_layerwise_deploy_matches_fake(fake_graph, deploy_graph, feeds) -> int:
    """Each quantized layer on the *same* input: deploy == fake within 1 LSB +
    float rounding (amct.report.deploy_check).  Returns the layers checked."""
    checks = check_deploy_layers(fake_graph, deploy_graph, feeds)
    bad = [(c.layer, c.max_diff_lsb) for c in checks if not c.within_bound]
    assert not bad, bad
    return len(checks)


# (model, algorithm, minimum cosine fake vs fp32 per output)
CASES = [
    ("det1", "ifmr", 0.99), ("det2", "hfmg", 0.995), ("det3", "ifmr", 0.995),
    ("cifar10", "hfmg", 0.995), ("ultraface", "ifmr", 0.98),
]


@pytest.mark.parametrize("name, algo, min_cos", CASES, ids=[c[0] for c in CASES])
def test_real_model_fake_and_deploy(tmp_path, name, algo, min_cos) -> None:
    (model, weights), calib, feeds = _case(name)
    res = amct.quantize(str(model), str(weights), calib, str(tmp_path / name), algo=algo)
    fake_g = load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"])
    dep_g = load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])
    fp32 = run(load_caffe(str(model), str(weights)), feeds)
    fake, dep = run(fake_g, feeds), run(dep_g, feeds)
    assert set(fp32) == set(fake) == set(dep)
    for k in fp32:
        assert _cos(fp32[k], fake[k]) >= min_cos, (k, _cos(fp32[k], fake[k]))
        assert _cos(fake[k], dep[k]) >= 0.9999, (k, _cos(fake[k], dep[k]))
    assert assert_layerwise_deploy_matches_fake(fake_g, dep_g, feeds) == len(res.layers)


def test_lenet_golden_digits_and_deploy_agreement(tmp_path) -> None:
    import gzip
    models = shared_or_skip("models")
    gold = np.load(shared_or_skip("golden", "real_lenet", "io.npz"))
    rows = np.loadtxt(gzip.open(models / "mnist/mnist_5k_train.csv.gz"), delimiter=",",
                      dtype=np.float32, max_rows=5000)[::100]
    calib = [rows[:, :784].reshape(-1, 1, 28, 28) / 256.0]
    assert len(set(rows[:, 784].tolist())) == 10                # a spread over all digits
    res = amct.quantize(str(models / "lenet_mnist/mnist_deploy.prototxt"),
                        str(models / "lenet_mnist/lenet_iter_10000.caffemodel"), calib,
                        str(tmp_path / "lenet"))
    x = {"data": gold["in:data"]}
    fake = run(load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"]), x)["loss"]
    dep = run(load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"]), x)["loss"]
    np.testing.assert_array_equal(fake.argmax(1), gold["label"])
    np.testing.assert_array_equal(dep.argmax(1), fake.argmax(1))
    assert np.abs(fake - dep).max() < 1e-3
    # quant.json names every quantized layer with its factors from the record
    import json
    info = json.loads(open(res.outputs["quant_json"]).read())
    assert list(info["layers"]) == ["conv1", "conv2", "ip1", "ip2"]   # MAX pools stay float
    for k, layer in info["layers"].items():
        rec = res.record[k]
        assert np.float32(layer["scale_d"]) == np.float32(rec.scale_d)
        assert layer["offset_d"] == rec.offset_d


def test_deploy_check_finds_a_corrupted_layer(tmp_path) -> None:
    """The check is not vacuous: a deploy model with one int8 weight changed
    fails at exactly that layer, by many LSBs."""
    (model, weights), calib, feeds = _case("cifar10")
    res = amct.quantize(str(model), str(weights), calib, str(tmp_path / "c"))
    fake_g = load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"])
    dep_g = load_caffe(res.outputs["deploy_model"], res.outputs["deploy_weights"])
    good = check_deploy_layers(fake_g, dep_g, feeds)
    assert sorted(c.layer for c in good) == sorted(res.layers)
    assert all(c.within_bound for c in good)
    assert max(c.max_diff_lsb for c in good) <= 1.0 + 1e-3
    w = dep_g.layer("conv2").blobs[0]
    assert w.dtype == np.int8
    w = w.copy()
    w[0] = np.clip(w[0].astype(np.int16) + 40, -128, 127).astype(np.int8)
    dep_g.layer("conv2").blobs[0] = w
    bad = {c.layer: c for c in check_deploy_layers(fake_g, dep_g, feeds)}
    assert not bad["conv2"].within_bound and bad["conv2"].max_diff_lsb > 10
    assert all(c.within_bound for n, c in bad.items() if n != "conv2")
