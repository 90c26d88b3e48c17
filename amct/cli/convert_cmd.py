"""``amct-caffe convert``: model + weights + a scale/offset record -> the quantized models (convert_model)."""
from __future__ import annotations

import argparse

from amct.cli import common

NAME = "convert"
HELP = "build fake-quant + deploy models and quant.json from a record file (no calibration)"


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p)
    p.add_argument("--record", "--scale_offset_record_file", dest="record", required=True, metavar="FILE",
                   help="ScaleOffsetRecord text file (scale_d/offset_d per layer, optional scale_w)")
    p.add_argument("--save-path", "--save_path", dest="save_path", required=True, metavar="PREFIX",
                   help="directory + file name prefix of the outputs")
    common.add_data_args(p, required=False, labels=True)
    p.add_argument("--batch-num", "--batch_num", dest="batch_num", type=common.positive_int,
                   help="with --data: compare on the first N batches only")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="no PREFIX_report.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import amct

    outputs = amct.convert_model(args.model, args.weights, args.record, args.save_path)
    print("wrote:")
    for path in (outputs or {}).values():
        print(f"  {path}")
    if args.data:
        from amct.cli.compare_cmd import report_for

        graph = common.load_graph(args.model, args.weights)
        ds, bs = common.open_data(args, graph, labels=True)
        report_for(args, graph, ds, bs, args.batch_num, outputs, kind="convert")
    return 0
