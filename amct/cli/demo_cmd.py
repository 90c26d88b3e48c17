"""``amct-caffe demo``: quantize the bundled LeNet on bundled MNIST images and show the accuracy.

Uses only files in ``examples/lenet_mnist`` (no download, no install): calibrates
on 300 training images, then compares float, fake-quant INT8 and the deploy
simulation on 1,000 test images.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from amct.errors import DataError

NAME = "demo"
HELP = "quantize the bundled LeNet on bundled MNIST images; print fp32 vs INT8 accuracy"

CALIB = "calib-images-idx3-ubyte.gz"
TEST = "test-images-idx3-ubyte.gz"


def example_dir() -> Path:
    """examples/lenet_mnist of the checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "examples" / "lenet_mnist"


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    p.add_argument("--out", default="amct_demo", metavar="DIR",
                   help="where the quantized models and the report go (default ./amct_demo)")
    p.add_argument("--example-dir", default=None, metavar="DIR",
                   help="the bundled example (default: examples/lenet_mnist of this checkout)")
    p.add_argument("--algo", choices=("ifmr", "hfmg", "minmax"), default="ifmr",
                   help="activation calibration algorithm (default ifmr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amct.cli import build_parser, common
    from amct.cli.calibrate_cmd import calibrate
    from amct.cli.compare_cmd import report_for

    if not os.environ.get("AMCT_LOG_LEVEL") and not getattr(args, "debug", False):
        # A first run should show results, not the passes' INFO lines (the
        # log file still gets them).
        from amct.log import setup_logging

        setup_logging("WARNING")
    ex = Path(args.example_dir) if args.example_dir else example_dir()
    model, weights = ex / "mnist_deploy.prototxt", ex / "lenet_iter_10000.caffemodel"
    for f in (model, weights, ex / CALIB, ex / TEST):
        if not f.is_file():
            raise DataError(f"{f}: missing; the demo needs the repository checkout "
                            "(pip install -e .) or --example-dir")
    prefix = os.path.join(args.out, "lenet")
    flags = ["--quiet"] if getattr(args, "quiet", False) else []
    common_args = ["--model", str(model), "--weights", str(weights), "--scale", "0.00390625",
                   "--batch-size", "50"]
    parser = build_parser()
    cal = parser.parse_args(flags + ["calibrate", *common_args, "--data", str(ex / CALIB),
                                     "--save-path", prefix, "--algo", args.algo, "--no-report"])
    cmp = parser.parse_args(flags + ["compare", *common_args, "--data", str(ex / TEST),
                                     "--save-path", prefix])
    graph = common.load_graph(str(model), str(weights))
    print(f"calibrating LeNet ({model.name}) on {CALIB} ...")
    ds, bs = common.open_data(cal, graph)
    outputs, batch_num = calibrate(cal, graph, ds, bs)
    print(f"calibrated on {min(len(ds), batch_num * bs)} images ({batch_num} batches of {bs})")
    print(f"comparing on {TEST} ...")
    test, tbs = common.open_data(cmp, graph, labels=True)
    report = report_for(cmp, graph, test, tbs, None, outputs, kind="compare")
    acc = report["outputs"][0]["accuracy"] or {}
    n = report["outputs"][0]["labelled_samples"]
    print()
    print(f"top-1 accuracy on {n} MNIST test images:")
    for key, label in (("float", "fp32 (original model)"), ("fake_quant", "INT8 fake-quant model"),
                       ("deploy", "INT8 deploy-model simulation")):
        if key in acc:
            print(f"  {label:<30} {100 * acc[key]:6.2f} %")
    print("outputs:")
    for path in outputs.values():
        print(f"  {path}")
    return 0
