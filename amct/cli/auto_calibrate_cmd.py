"""``amct-caffe auto-calibrate``: accuracy-based automatic calibration with a top-1 evaluator.

Calibrates on ``--calib-data`` (default: the first batches of ``--data``),
evaluates top-1 accuracy on the labelled ``--data``, and lets
``amct.accuracy_based_auto_calibration`` keep the fewest, most sensitive layers
in float so that accuracy drops by at most ``--tolerance``.
"""
from __future__ import annotations

import argparse
import copy
import os

from amct.auto_calibration import AutoCalibrationEvaluatorBase
from amct.cli import common
from amct.cli.calibrate_cmd import _config
from amct.errors import DataError

NAME = "auto-calibrate"
HELP = "accuracy-based automatic calibration: keep the fewest layers in float to meet a top-1 tolerance"


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p)
    common.add_data_args(p, labels=True)
    g = p.add_argument_group("automatic calibration")
    g.add_argument("--calib-data", dest="calib_data", action="append", metavar="[NAME=]PATH",
                   help="calibration data (default: --data); same preprocessing")
    g.add_argument("--save-dir", "--save_dir", dest="save_dir", required=True, metavar="DIR",
                   help="where the final models, config, record, ranking and history go")
    g.add_argument("--tolerance", type=float, default=0.005, metavar="DROP",
                   help="largest accepted top-1 drop, as a fraction (default 0.005 = 0.5 points)")
    g.add_argument("--batch-num", "--batch_num", dest="batch_num", type=common.positive_int,
                   default=1, help="calibration batches (default 1)")
    g.add_argument("--eval-batches", dest="eval_batches", type=common.positive_int,
                   help="evaluate on the first N batches of --data only")
    g.add_argument("--config", metavar="FILE", help="starting quantization config (.json or .cfg)")
    g.add_argument("--skip-layers", "--skip_layers", dest="skip_layers", metavar="A,B",
                   help="layers always left in float (without --config)")
    g.add_argument("--algo", choices=("ifmr", "hfmg", "minmax"), help="activation calibration algorithm")
    g.add_argument("--output", metavar="BLOB", help="blob holding the class scores (default: the only output)")
    p.set_defaults(func=run)


class Top1Evaluator(AutoCalibrationEvaluatorBase):
    """Top-1 accuracy on a labelled dataset; accepts a drop of at most ``tolerance``."""

    def __init__(self, args, eval_ds, calib_ds, bs: int, output: str):
        self.args, self.eval_ds, self.calib_ds, self.bs, self.output = args, eval_ds, calib_ds, bs, output

    def calibration(self, model_file: str, weights_file: str) -> None:
        from amct.frontends.caffe import load_caffe
        from amct.runtime import compile as compile_net

        prog = compile_net(load_caffe(model_file, weights_file))
        n = min(len(self.calib_ds), self.args.batch_num * self.bs)
        for batch in common.progress(self.calib_ds.batches(self.bs, self.args.batch_num), n,
                                     "calibrate", self.args):
            prog.run(batch)

    def evaluate(self, model_file: str, weights_file: str) -> float:
        from amct.cli.evaluate_cmd import accuracy
        from amct.frontends.caffe import load_caffe

        acc = accuracy(load_caffe(model_file, weights_file), self.eval_ds, self.bs, self.output,
                       batch_num=self.args.eval_batches, args=self.args,
                       desc=os.path.basename(model_file))
        return acc.top1_rate

    def metric_eval(self, original_metric: float, new_metric: float) -> tuple[bool, float]:
        loss = original_metric - new_metric
        return loss <= self.args.tolerance, loss


def run(args: argparse.Namespace) -> int:
    from amct.auto_calibration import accuracy_based_auto_calibration

    if not 0 <= args.tolerance < 1:
        raise DataError(f"--tolerance must be a fraction in [0, 1), got {args.tolerance}")
    graph = common.load_graph(args.model, args.weights)
    eval_ds, bs = common.open_data(args, graph, labels=True)
    if args.calib_data:
        cargs = copy.copy(args)
        cargs.data = args.calib_data
        calib_ds, _ = common.open_data(cargs, graph)
    else:
        calib_ds = eval_ds
    available = calib_ds.batch_count(bs)
    if args.batch_num > available:
        raise DataError(f"calibration needs {args.batch_num} batches of {bs} but the data gives "
                        f"{available}; lower --batch-num or --batch-size")
    output = common.pick_output(graph, args.output)
    os.makedirs(args.save_dir, exist_ok=True)
    work = os.path.join(args.save_dir, ".work")
    os.makedirs(work, exist_ok=True)
    cfg_path, _ = _config(args, graph, work, args.batch_num)
    record = os.path.join(work, "record.txt")

    evaluator = Top1Evaluator(args, eval_ds, calib_ds, bs, output)
    res = accuracy_based_auto_calibration(args.model, args.weights, evaluator, cfg_path, record,
                                          args.save_dir)
    print(f"float top-1 {res.original_metric:.4f}, final top-1 {res.final_metric:.4f} "
          f"({res.evaluations} evaluations)")
    print("layers kept in float: " + (", ".join(res.fallback_layers) or "none"))
    print(f"outputs: {res.save_prefix}_*  (history: {res.history_file})")
    return 0
