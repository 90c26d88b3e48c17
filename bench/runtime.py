"""Forward-pass speed of the project's numpy runtime vs OpenCV's DNN module.

Usage::

    python bench/runtime.py [--models lenet det3 resnet50] [--batch 1 8] [--repeat 5]
                            [--work bench/_work/runtime] [--threads N] [--no-opencv]
                            [--plain] [--no-memory]

Models: the trained LeNet, MTCNN det3 and cifar10_quick from ``shared/models``,
and SqueezeNet v1.1, MobileNet v2, GoogLeNet, ResNet-50 and VGG16 from
``shared/models/prototxt`` with seeded random weights written by the project's
own writer (``random_weights`` + ``save_caffe``) into the work directory
(reused when present).  Both runtimes load the same prototxt/caffemodel pair
and run the same random input.

For each model and batch size it prints the best-of-``--repeat`` time per
image of ours and of OpenCV (``cv2.dnn.readNetFromCaffe``), the ratio
ours/OpenCV, the max |difference| of the final outputs, and at batch 8 the
geometric mean of the ratios.  ``--plain`` also times the unoptimized plan
(``compile(..., optimize=False)``: no folding, no in-place execution) in the
same run.  The peak memory column is the largest amount of memory numpy
allocated during one forward pass beyond the weights (tracemalloc, measured
in a separate untimed pass), next to the largest single layer's input +
output.  Reference figures (OpenCV / BVLC Caffe, batch 8,
ms/image, measured elsewhere) are printed alongside; a model slower than the
Caffe figure is flagged.  Timings on a shared machine are noisy: compare the
ratios measured in the same run, not absolute numbers across runs.

Requires the ``bench`` extra (``opencv-python-headless<5``) for the reference.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path


def _thread_env_from_argv() -> None:
    """``--threads N`` must reach OpenBLAS before numpy is imported."""
    if "--threads" in sys.argv[:-1]:
        n = sys.argv[sys.argv.index("--threads") + 1]
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "AMCT_NUM_THREADS"):
            os.environ[var] = n


_thread_env_from_argv()

import numpy as np  # noqa: E402  (after the thread settings)

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AMCT_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"

# name -> (prototxt, caffemodel or None for seeded random weights)
CATALOG: dict[str, tuple[Path, Path | None]] = {
    "lenet": (MODELS / "lenet_mnist/mnist_deploy.prototxt",
              MODELS / "lenet_mnist/lenet_iter_10000.caffemodel"),
    "det3": (MODELS / "mtcnn/det3.prototxt", MODELS / "mtcnn/det3.caffemodel"),
    "cifar": (MODELS / "cifar10_quick/cifar10_quick.prototxt",
              MODELS / "cifar10_quick/cifar10_quick_iter_5000.caffemodel"),
    "squeezenet": (MODELS / "prototxt/squeezenet_v1.1.prototxt", None),
    "mobilenet_v2": (MODELS / "prototxt/mobilenet_v2.prototxt", None),
    "googlenet": (MODELS / "prototxt/googlenet.prototxt", None),
    "resnet50": (MODELS / "prototxt/resnet50.prototxt", None),
    "vgg16": (MODELS / "prototxt/vgg16.prototxt", None),
}
# Batch-8 ms/image: (OpenCV, BVLC Caffe), measured on the reference machine.
REFERENCE = {"lenet": (0.09, 0.33), "det3": (0.39, 2.2), "cifar": (0.46, 1.5),
             "squeezenet": (10.1, 23), "mobilenet_v2": (16.7, 49), "googlenet": (33, 64),
             "resnet50": (82, 132), "vgg16": (167, 275)}
SEED = 20240611


def model_files(name: str, work: Path) -> tuple[str, str]:
    """The prototxt/caffemodel pair of ``name``; random weights are written once."""
    from amct.frontends.caffe import load_caffe, save_caffe
    from amct.ir.random import random_weights

    proto, weights = CATALOG[name]
    if weights is not None:
        return str(proto), str(weights)
    work.mkdir(parents=True, exist_ok=True)
    out_p, out_w = work / f"{name}.prototxt", work / f"{name}.caffemodel"
    if not (out_p.exists() and out_w.exists()):
        print(f"[{name}] writing seeded random weights to {out_w} ...", flush=True)
        g = load_caffe(str(proto))
        random_weights(g, SEED)
        tmp_p, tmp_w = out_p.with_suffix(".tmp.prototxt"), out_w.with_suffix(".tmp.caffemodel")
        save_caffe(g, str(tmp_p), str(tmp_w))
        tmp_p.replace(out_p)
        tmp_w.replace(out_w)
    return str(out_p), str(out_w)


def best_time(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up call), seconds."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class OursRunner:
    """The project's runtime: ``amct.runtime.compile`` when present, else a
    plain loop over the layers' kernels (before the executor existed)."""

    def __init__(self, proto: str, weights: str, batch: int, optimize: bool = True,
                 graph=None):
        from amct.frontends.caffe import load_caffe

        self.graph = graph if graph is not None else load_caffe(proto, weights)
        self.input = self.graph.inputs[0]
        # Looked up once: the graph derives its outputs by walking every layer.
        self.output = self.graph.outputs[-1]
        try:
            from amct.runtime import compile as rt_compile
        except ImportError:
            rt_compile = None
        if rt_compile is not None:
            try:
                self.prog = rt_compile(self.graph, batch_size=batch, optimize=optimize)
            except TypeError:           # a runtime without the optimizer
                self.prog = rt_compile(self.graph, batch_size=batch)
            self.shape = tuple(self.prog.input_shapes[self.input])
            self.forward = self._run_program
        else:
            self._build_loop(batch)
            self.forward = self._run_loop

    def _run_program(self, x: np.ndarray) -> np.ndarray:
        out = self.prog.run({self.input: x})
        return out[self.output]

    def _build_loop(self, batch: int) -> None:
        from amct.ir.registry import require_layer_def

        g = self.graph
        shapes = g.infer_value_shapes(batch_size=batch)
        self.shape = shapes[self.input]
        self.steps = []
        for layer in g.layers:
            if layer.type == "Input":
                continue
            ins = g.input_values(layer)
            kern = require_layer_def(layer).build(layer, [shapes[v] for v in ins])
            self.steps.append((kern, ins, g.output_values(layer)))
        self.out_vid = g.dataflow().final[g.outputs[-1]]

    def _run_loop(self, x: np.ndarray) -> np.ndarray:
        vals = {self.input: x}
        for kern, ins, outs in self.steps:
            for v, a in zip(outs, kern([vals[i] for i in ins])):
                vals[v] = a
        return vals[self.out_vid]


def peak_memory(forward, x) -> float:
    """Peak bytes numpy allocates during ``forward(x)`` (weights excluded:
    they exist before tracing starts)."""
    import tracemalloc

    tracemalloc.start()
    try:
        forward(x)
        return float(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def largest_layer_bytes(runner: OursRunner) -> float:
    """max over layers of (inputs + outputs) bytes in float32."""
    prog = getattr(runner, "prog", None)
    if prog is None:
        return float("nan")
    shapes = prog.value_shapes
    best = 0
    for st in prog.steps:
        n = sum(int(np.prod(shapes[v])) for v in st.in_vids + st.out_vids)
        best = max(best, n * 4)
    return float(best)


def bench_model(name: str, batch: int, repeat: int, work: Path, with_cv: bool,
                threads: int | None = None, plain: bool = False, memory: bool = True) -> dict:
    proto, weights = model_files(name, work)
    ours = OursRunner(proto, weights, batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(ours.shape).astype(np.float32)
    res = {"model": name, "batch": batch}
    y = ours.forward(x)
    res["ours"] = best_time(lambda: ours.forward(x), repeat) * 1e3 / batch
    if memory:
        res["peak_mb"] = peak_memory(ours.forward, x) / 2**20
        res["layer_mb"] = largest_layer_bytes(ours) / 2**20
    if plain:
        ref = OursRunner(proto, weights, batch, optimize=False, graph=ours.graph)
        yp = ref.forward(x)
        res["plain"] = best_time(lambda: ref.forward(x), repeat) * 1e3 / batch
        res["opt_diff"] = float(np.abs(yp - y).max())
        if memory:
            res["plain_peak_mb"] = peak_memory(ref.forward, x) / 2**20
    if with_cv:
        import cv2

        if threads is not None:
            cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromCaffe(proto, weights)

        def cv_forward():
            net.setInput(x)
            return net.forward()

        ycv = cv_forward()
        res["opencv"] = best_time(cv_forward, repeat) * 1e3 / batch
        if ycv.size == y.size:
            res["diff"] = float(np.abs(ycv.reshape(y.shape) - y).max())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(CATALOG), choices=list(CATALOG))
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=Path, default=REPO / "bench/_work/runtime")
    ap.add_argument("--no-opencv", action="store_true", help="time only the project's runtime")
    ap.add_argument("--plain", action="store_true",
                    help="also time the unoptimized plan (compile(optimize=False))")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both runtimes (AMCT_NUM_THREADS, BLAS, cv2.setNumThreads); "
                         "default: all cores (ours then also leaves out cores that other jobs "
                         "are using, see docs/runtime.md 'Performance'). Use 1 to compare "
                         "single-threaded speed on a machine shared with other jobs")
    args = ap.parse_args(argv)
    with_cv = not args.no_opencv
    if with_cv:
        try:
            import cv2  # noqa: F401
        except ImportError:
            print("opencv-python-headless is not installed (pip install 'opencv-python-headless<5'); "
                  "timing ours only", file=sys.stderr)
            with_cv = False

    print(f"{'model':<13} {'batch':>5} {'ours ms/img':>12} {'opencv ms/img':>14} {'ratio':>7} "
          f"{'max|diff|':>10}  {'ref cv/caffe (b8)':>18}  {'peak MB':>8} {'layer MB':>8}"
          + (f" {'plain ms/img':>12} {'plain peak':>10}" if args.plain else "") + "  flag")
    ratios8 = []
    slow = []
    for name in args.models:
        for b in args.batch:
            r = bench_model(name, b, args.repeat, args.work, with_cv, args.threads,
                            args.plain, not args.no_memory)
            cvt = r.get("opencv")
            ratio = r["ours"] / cvt if cvt else float("nan")
            ref_cv, ref_caffe = REFERENCE[name]
            flag = ""
            if b == 8:
                if cvt:
                    ratios8.append(ratio)
                # Absolute: the Caffe figure as measured on the reference machine.
                # Scaled: the same figure scaled by this machine's OpenCV speed
                # (a loaded machine slows both runtimes alike).
                scaled = ref_caffe * (cvt / ref_cv) if cvt else ref_caffe
                if r["ours"] > ref_caffe:
                    flag = "SLOWER THAN CAFFE (absolute"
                    flag += ", and scaled)" if r["ours"] > scaled else "; not when scaled)"
                    slow.append(name)
                elif r["ours"] > scaled:
                    flag = "slower than Caffe scaled by OpenCV speed"
            diff = f"{r['diff']:.2e}" if "diff" in r else "-"
            mem = f"{r.get('peak_mb', float('nan')):>8.1f} {r.get('layer_mb', float('nan')):>8.1f}"
            extra = ""
            if args.plain:
                extra = f" {r['plain']:>12.3f} {r.get('plain_peak_mb', float('nan')):>10.1f}"
            print(f"{name:<13} {b:>5} {r['ours']:>12.3f} {cvt if cvt else float('nan'):>14.3f} "
                  f"{ratio:>7.2f} {diff:>10}  {ref_cv:>8.2f} / {ref_caffe:<7.1f}  {mem}{extra}  {flag}",
                  flush=True)
    if ratios8:
        gm = math.exp(sum(math.log(r) for r in ratios8) / len(ratios8))
        print(f"\ngeometric mean ours/OpenCV at batch 8 over {len(ratios8)} models: {gm:.2f} "
              f"(target <= 1.5)")
    if slow:
        print("slower than the BVLC Caffe reference at batch 8: " + ", ".join(slow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
