"""``amct-caffe inspect``: what is in a model and what quantization would do to it."""
from __future__ import annotations

import argparse
import json
import sys

from amct.cli import common

NAME = "inspect"
HELP = "list layers, shapes, parameters, quantizable layers and fusions"


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p, weights_required=False)
    p.add_argument("--input-shape", "--input_shape", dest="input_shape", action="append",
                   metavar="NAME:N,C,H,W", help="override a declared input shape (repeatable)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from amct.report.model_info import inspect_graph

    graph = common.load_graph(args.model, args.weights)
    shapes = common.net_input_shapes(graph, common.input_shapes(args.input_shape))
    info = inspect_graph(graph, shapes, args.weights)
    if args.json:
        json.dump(info.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_info(info))
    return 0


def _shape(s) -> str:
    return "x".join(map(str, s)) if s else "scalar"


def format_info(info) -> str:
    lines = [f"net '{info.name}'  model: {info.source}  weights: {info.weights or '(none: structure only)'}",
             "inputs:  " + ", ".join(f"{k} {_shape(v)}" for k, v in info.inputs.items()),
             "outputs: " + ", ".join(f"{k} {_shape(v)}" for k, v in info.outputs.items()), ""]
    rows = [("layer", "type", "bottoms -> tops", "output shape", "params", "INT8")]
    for x in info.layers:
        if x.quantizable:
            q = "yes, per-channel" if x.channel_wise else "yes"
        elif x.reason:
            q = "no: " + x.reason
        else:
            q = "-"
        rows.append((x.name, x.type, f"{','.join(x.bottoms)} -> {','.join(x.tops)}",
                     " ".join(_shape(s) for s in x.out_shapes), f"{x.params:,}", q))
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((28, 16, 40, 18, 12, 80))]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if k < 5 else c for k, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", f"parameters: {info.params:,}",
              f"quantizable: {len(info.quantizable)} of {len(info.layers)} layers"
              + (f" ({', '.join(info.quantizable)})" if info.quantizable else ""), ""]
    if info.fusions:
        lines.append(f"fusions that quantization applies ({len(info.fusions)}):")
        for f in info.fusions:
            chain = [f.target, *f.merged] if f.kind == "conv_bn_scale" else [*f.merged, f.target]
            lines.append(f"  {' + '.join(chain)} -> {f.target}  ({f.kind})")
    else:
        lines.append("fusions that quantization applies: none")
    if info.unfused:
        lines.append(f"BatchNorm/Scale layers that stay unfused ({len(info.unfused)}):")
        lines += [f"  {n} ({t}): {r}" for n, t, r in info.unfused]
    return "\n".join(lines) + "\n"
