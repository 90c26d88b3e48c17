"""``amct-caffe calibrate``: model + weights + calibration data -> the five files of save_model + a report.

It runs AMCT's flow step by step (config, init, quantize_model, batch_num
forward passes of the modified model, GPTQ weight rounding unless
``--weight-rounding nearest``, bias correction unless
``--no-bias-correction``, save_model) so the forward passes read the data
lazily, batch by batch, under a progress bar.  Then it runs the
float, fake-quant and deploy models on the calibration batches to write the
report (per-layer factors, clip ratio, cosine, SQNR).
"""
from __future__ import annotations

import argparse
import logging
import os

from amct.cli import common
from amct.errors import ConfigError, DataError

NAME = "calibrate"
HELP = "quantize a model on calibration data (writes fake-quant + deploy models, quant.json, report)"

log = logging.getLogger("amct.cli")


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p)
    common.add_data_args(p)
    add_save_args(p)
    q = p.add_argument_group("quantization")
    q.add_argument("--batch-num", "--batch_num", dest="batch_num", type=common.positive_int,
                   help="calibration batches (default: the config's batch_num for a JSON config, "
                        "else every batch the data gives)")
    q.add_argument("--config", metavar="FILE",
                   help="quantization config: AMCT JSON (.json) or simplified protobuf text (.cfg)")
    q.add_argument("--skip-layers", "--skip_layers", dest="skip_layers", metavar="A,B",
                   help="layers to leave in float (comma-separated; without --config)")
    q.add_argument("--algo", choices=("ifmr", "hfmg", "minmax"),
                   help="activation calibration: ifmr (default, AMCT), hfmg, or minmax (an IFMR config that keeps the full observed range); overrides a config")
    q.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="keep the biases of AMCT's flow; by default the mean error quantization "
                        "adds to each layer's output is measured on the calibration batches and "
                        "taken out of its bias (docs/bias_correction.md)")
    q.add_argument("--weight-rounding", "--weight_rounding", dest="weight_rounding",
                   choices=("gptq", "nearest"), default="gptq",
                   help="int8 weights: gptq (default) re-chooses them on ARQ's grid for each "
                        "layer's output on the calibration batches; nearest keeps ARQ's "
                        "rounding (docs/weight_rounding.md)")
    q.add_argument("--work-dir", "--work_dir", dest="work_dir", metavar="DIR",
                   help="where config.json, record.txt and the modified model go "
                        "(default: SAVE_PATH_work)")
    p.set_defaults(func=run)


def add_save_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--save-path", "--save_path", dest="save_path", required=True, metavar="PREFIX",
                   help="directory + file name prefix of the outputs, e.g. out/lenet")
    g.add_argument("--save-type", "--save_type", dest="save_type", default="Both",
                   type=_save_type, metavar="{Both,Fakequant,Deploy}", help="models to write (default Both)")
    g.add_argument("--no-report", dest="report", action="store_false",
                   help="do not run the comparison and write PREFIX_report.*")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="no PREFIX_report.png")


def _save_type(text: str) -> str:
    low = text.lower()
    if low not in ("both", "fakequant", "fake_quant", "deploy"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected Both, Fakequant or Deploy")
    return {"both": "Both", "deploy": "Deploy"}.get(low, "Fakequant")


def _config(args, graph, work: str, batches: int) -> tuple[str, int]:
    """Write the JSON config calibration uses; returns (path, batch_num)."""
    from amct.api import build_default_config
    from amct.config import check_against_graph, read_config, read_simple_config, write_config

    skip = common.split_names(args.skip_layers)
    if args.config and skip:
        raise ConfigError("--skip-layers applies without --config; put the layers in the config "
                          "(quant_enable: false, or skip_layers in a .cfg)")
    if args.config is None:
        # The default config per algorithm (head and depthwise rules included, docs/api.md).
        cfg = build_default_config(graph, skip, args.batch_num or batches,
                                   act_algo=args.algo or "ifmr")
    elif args.config.lower().endswith(".json"):
        cfg = read_config(args.config, graph)
    else:
        cfg = read_simple_config(args.config, graph)
    if args.algo and args.config is not None:
        from amct.config import apply_algo_preset

        for c in cfg.layers.values():
            apply_algo_preset(c, args.algo)
    if args.batch_num:
        cfg.batch_num = int(args.batch_num)
    elif args.config is None or not args.config.lower().endswith(".json"):
        cfg.batch_num = batches
    path = os.path.join(work, "config.json")
    check_against_graph(cfg, graph, path)
    write_config(cfg, path)
    return path, int(cfg.batch_num)


def calibrate(args, graph, ds, bs: int) -> tuple[dict[str, str], int]:
    """Run AMCT's five steps; returns (save_model's {kind: path}, batches used)."""
    import amct
    from amct.frontends.caffe import load_caffe
    from amct.runtime import compile as compile_net

    work = args.work_dir or args.save_path + "_work"
    os.makedirs(work, exist_ok=True)
    available = ds.batch_count(bs)
    cfg_path, batch_num = _config(args, graph, work, available)
    if batch_num > available:
        where = ", ".join(s.where for s in ds.sources.values())
        raise DataError(f"calibration needs {batch_num} batches of {bs} but {where} "
                        f"({len(ds)} samples) gives {available}; lower --batch-num or --batch-size")
    record = os.path.join(work, "record.txt")
    model = os.path.join(work, "modified_model.prototxt")
    weights = os.path.join(work, "modified_weights.caffemodel")
    g = amct.init(cfg_path, args.model, args.weights, record)
    amct.quantize_model(g, model, weights)
    prog = compile_net(load_caffe(model, weights))
    n = min(len(ds), batch_num * bs)
    log.info("calibrating on %d batches of %d (%d samples)", batch_num, bs, n)
    for batch in common.progress(ds.batches(bs, batch_num), n, "calibrate", args):
        prog.run(batch)
    if getattr(args, "weight_rounding", "gptq") == "gptq":
        # The same batches again, read lazily, through the float model.
        # On a large net this takes several times the calibration itself
        # (docs/weight_rounding.md, "Cost"): say so before it starts.
        log.info("weight rounding (GPTQ) on the calibration batches; --weight-rounding nearest "
                 "skips it")
        amct.round_weights(g, ds.batches(bs, batch_num))
    if getattr(args, "bias_correction", True):
        # The same batches again, read lazily: the correction runs the fake-quant model on them.
        shifts = amct.correct_bias(g, ds.batches(bs, batch_num))
        log.info("bias correction: %d layers", len(shifts))
    out = amct.save_model(g, args.save_type, args.save_path)
    log.info("config and record in %s", work)
    return out, batch_num


def run(args: argparse.Namespace) -> int:
    graph = common.load_graph(args.model, args.weights)
    ds, bs = common.open_data(args, graph)
    outputs, batch_num = calibrate(args, graph, ds, bs)
    print("wrote:")
    for kind in ("fake_model", "fake_weights", "deploy_model", "deploy_weights", "quant_json"):
        if kind in outputs:
            print(f"  {outputs[kind]}")
    if args.report:
        from amct.cli.compare_cmd import report_for

        if "fake_model" not in outputs:
            log.warning("no fake-quant model written (--save-type Deploy): no report")
            return 0
        report_for(args, graph, ds, bs, batch_num, outputs, kind="calibrate")
    return 0
