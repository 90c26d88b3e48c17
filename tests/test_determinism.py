"""Issue 7: the same inputs give byte-identical outputs, across runs and across processes.

Each case runs the whole flow (``amct.quantize``: config, init, quantize_model,
calibration forwards, save_model) and compares the seven files it writes: the
config, the record and save_model's five outputs.  Twice in this process, and
once more in a child process with another PYTHONHASHSEED (set and dict orders,
hash-based anything would show).  The modified model is left out on purpose:
it holds the record file's absolute path, which differs between run folders.

Runnable as a script (the child): ``python tests/test_determinism.py OUT_DIR``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
FILES = ("work/config.json", "work/record.txt", "net_fake_quant_model.prototxt",
         "net_fake_quant_weights.caffemodel", "net_deploy_model.prototxt",
         "net_deploy_weights.caffemodel", "net_quant.json")


def _batches(shape: tuple[int, ...], n: int, seed: int, lo: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(lo, 1.0, shape).astype(np.float32) for _ in range(n)]


CASES = {
    "lenet_ifmr": (DATA / "lenet/mnist_deploy.prototxt", DATA / "lenet/lenet_iter_10000.caffemodel",
                   "ifmr", ((4, 1, 28, 28), 0.0)),
    "lenet_hfmg": (DATA / "lenet/mnist_deploy.prototxt", DATA / "lenet/lenet_iter_10000.caffemodel",
                   "hfmg", ((4, 1, 28, 28), 0.0)),
    "mtcnn_det1": (DATA / "mtcnn/det1.prototxt", DATA / "mtcnn/det1.caffemodel",
                   "ifmr", ((2, 3, 24, 24), -1.0)),
}


def run_case(name: str, out: Path) -> dict[str, bytes]:
    """The seven output files of case ``name`` written under ``out``."""
    import amct

    model, weights, algo, (shape, lo) = CASES[name]
    prefix = out / name / "net"
    amct.quantize(str(model), str(weights), _batches(shape, 2, seed=7, lo=lo), str(prefix),
                  algo=algo, work_dir=str(out / name / "work"))
    return {f: (out / name / f).read_bytes() for f in FILES}


def test_same_process_twice(tmp_path):
    for name in CASES:
        a = run_case(name, tmp_path / "a")
        b = run_case(name, tmp_path / "b")
        assert sorted(a) == sorted(FILES)
        different = [f for f in FILES if a[f] != b[f]]
        assert not different, f"{name}: {different} differ between two runs"
        assert b"scale_d" in a["work/record.txt"] and len(a["net_deploy_weights.caffemodel"]) > 0


def test_algorithms_really_differ(tmp_path):
    """Guard: the comparison above is meaningful (IFMR and HFMG records are not equal)."""
    a = run_case("lenet_ifmr", tmp_path)
    b = run_case("lenet_hfmg", tmp_path)
    assert a["work/record.txt"] != b["work/record.txt"]


def test_other_process_other_hash_seed(tmp_path):
    here = {name: run_case(name, tmp_path / "parent") for name in CASES}
    env = dict(os.environ, PYTHONHASHSEED="4242" if os.environ.get("PYTHONHASHSEED") != "4242"
               else "17")
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "child")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in CASES:
        for f in FILES:
            child = (tmp_path / "child" / name / f).read_bytes()
            assert child == here[name][f], f"{name}/{f} differs in another process"


if __name__ == "__main__":
    for case in CASES:
        run_case(case, Path(sys.argv[1]))
