"""``amct-caffe compare``: float vs fake-quant vs deploy simulation on data, with a report."""
from __future__ import annotations

import argparse
import logging
import os

from amct.cli import common
from amct.errors import DataError

NAME = "compare"
HELP = ("float vs fake-quant vs deploy simulation on data: per-layer cosine, SQNR, max error, "
        "clip ratio, output agreement; writes PREFIX_report.*")

log = logging.getLogger("amct.cli")

SUFFIXES = {"fake_model": "_fake_quant_model.prototxt", "fake_weights": "_fake_quant_weights.caffemodel",
            "deploy_model": "_deploy_model.prototxt", "deploy_weights": "_deploy_weights.caffemodel"}


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p)
    common.add_data_args(p, labels=True)
    g = p.add_argument_group("quantized models")
    g.add_argument("--save-path", "--save_path", dest="save_path", metavar="PREFIX",
                   help="the prefix calibrate/convert wrote (PREFIX_fake_quant_model.prototxt, ...)")
    g.add_argument("--fake-model", metavar="PROTOTXT", help="fake-quant model (default from PREFIX)")
    g.add_argument("--fake-weights", metavar="CAFFEMODEL")
    g.add_argument("--deploy-model", metavar="PROTOTXT", help="deploy model (default from PREFIX, if present)")
    g.add_argument("--deploy-weights", metavar="CAFFEMODEL")
    g.add_argument("--no-deploy", action="store_true", help="skip the deploy simulation")
    p.add_argument("--batch-num", "--batch_num", dest="batch_num", type=common.positive_int,
                   help="compare on the first N batches only")
    p.add_argument("--report", metavar="PREFIX", help="report prefix (default: --save-path)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="no PREFIX_report.png")
    p.set_defaults(func=run)


def _paths(args) -> dict[str, str]:
    out: dict[str, str] = {}
    pre = args.save_path
    for kind, suffix in SUFFIXES.items():
        given = getattr(args, kind)
        if given:
            out[kind] = given
        elif pre and os.path.exists(pre + suffix):
            out[kind] = pre + suffix
    if "fake_model" not in out or "fake_weights" not in out:
        want = f"{pre}{SUFFIXES['fake_model']}" if pre else "--fake-model/--fake-weights"
        raise DataError(f"no fake-quant model: {want} not found (give --save-path PREFIX of "
                        "calibrate/convert, or --fake-model and --fake-weights)")
    if args.no_deploy or "deploy_model" not in out or "deploy_weights" not in out:
        out.pop("deploy_model", None)
        out.pop("deploy_weights", None)
    return out


def report_for(args, graph, ds, bs: int, batch_num: int | None, paths: dict[str, str], *,
               kind: str, report_prefix: str | None = None) -> dict:
    """Compare the models of ``paths`` on ``ds`` and write the report files."""
    from amct.frontends.caffe import load_caffe
    from amct.report.compare import compare_models
    from amct.report.write import build_report, summary_lines, write_report

    fake = load_caffe(paths["fake_model"], paths["fake_weights"])
    deploy = (load_caffe(paths["deploy_model"], paths["deploy_weights"])
              if "deploy_model" in paths else None)
    total = min(len(ds), ds.batch_count(bs, batch_num) * bs)
    models = ["float", "fake-quant"] + (["deploy"] if deploy is not None else [])
    log.info("comparing %s on %d samples", " vs ".join(models), total)
    batches = common.progress(ds.labelled_batches(bs, batch_num), total, "compare", args)
    cmp = compare_models(graph, fake, deploy, batches)
    report = build_report(cmp, kind=kind, data=", ".join(s.where for s in ds.sources.values()),
                          models={"float_model": args.model, "float_weights": args.weights,
                                  "fake_quant_model": paths["fake_model"],
                                  "fake_quant_weights": paths["fake_weights"],
                                  "deploy_model": paths.get("deploy_model"),
                                  "deploy_weights": paths.get("deploy_weights")})
    prefix = report_prefix or args.save_path
    written, note = write_report(report, prefix, plot=getattr(args, "plot", True))
    for line in summary_lines(report):
        print(line)
    print("report: " + ", ".join(written))
    if note:
        print(note)
    return report


def run(args: argparse.Namespace) -> int:
    if not args.report and not args.save_path:
        raise DataError("give --save-path PREFIX or --report PREFIX (where the report goes)")
    paths = _paths(args)
    graph = common.load_graph(args.model, args.weights)
    ds, bs = common.open_data(args, graph, labels=True)
    report_for(args, graph, ds, bs, args.batch_num, paths, kind="compare",
               report_prefix=args.report or args.save_path)
    return 0
