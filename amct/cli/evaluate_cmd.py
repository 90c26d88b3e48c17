"""``amct-caffe evaluate``: top-1/top-5 accuracy of a model on labelled data."""
from __future__ import annotations

import argparse
import json
import sys

import attrs
import numpy as np

from amct.cli import common
from amct.errors import DataError

NAME = "evaluate"
HELP = "top-1/top-5 accuracy of a model (float, fake-quant or deploy) on labelled data"


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p)
    common.add_data_args(p, labels=True)
    p.add_argument("--output", metavar="BLOB", help="blob holding the class scores (default: the only output)")
    p.add_argument("--batch-num", "--batch_num", dest="batch_num", type=common.positive_int,
                   help="evaluate only the first N batches")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


@attrs.frozen
class Accuracy:
    samples: int
    top1: int
    top5: int

    @property
    def top1_rate(self) -> float:
        return self.top1 / self.samples

    @property
    def top5_rate(self) -> float:
        return self.top5 / self.samples

    def to_json(self) -> dict:
        return {"samples": self.samples, "top1": self.top1_rate, "top5": self.top5_rate,
                "top1_correct": self.top1, "top5_correct": self.top5}


def accuracy(graph, dataset, batch_size: int, output: str, *, batch_num: int | None = None,
             args=None, desc: str = "evaluate") -> Accuracy:
    """Run ``graph`` over ``dataset`` and count top-1/top-5 hits on ``output``."""
    from amct.runtime import compile as compile_net

    if dataset.labels is None:
        first = next(iter(dataset.sources.values()))
        raise DataError(f"{first.where}: no labels; give --labels (image folders: 'filename label' "
                        "lines; tensors: one integer per line, .npy or idx)")
    prog = compile_net(graph)
    n = t1 = t5 = 0
    total = min(len(dataset), dataset.batch_count(batch_size, batch_num) * batch_size)
    batches = dataset.labelled_batches(batch_size, batch_num)
    for batch, labels in common.progress(batches, total, desc, args):
        scores = np.asarray(prog.run(batch, outputs=[output])[output])
        if scores.shape[0] != len(labels):
            raise DataError(f"output '{output}' has {scores.shape[0]} rows for a batch of {len(labels)}")
        n += len(labels)
        t1 += common.topk_hits(scores, labels, 1)
        t5 += common.topk_hits(scores, labels, 5)
    return Accuracy(n, t1, t5)


def run(args: argparse.Namespace) -> int:
    graph = common.load_graph(args.model, args.weights)
    ds, bs = common.open_data(args, graph, labels=True)
    out = common.pick_output(graph, args.output)
    acc = accuracy(graph, ds, bs, out, batch_num=args.batch_num, args=args)
    if args.json:
        json.dump({"model": args.model, "weights": args.weights, "output": out, **acc.to_json()},
                  sys.stdout, indent=2)
        print()
    else:
        print(f"{args.model}: {acc.samples} samples, output '{out}'")
        print(f"top-1 accuracy: {100 * acc.top1_rate:.2f} % ({acc.top1}/{acc.samples})")
        print(f"top-5 accuracy: {100 * acc.top5_rate:.2f} % ({acc.top5}/{acc.samples})")
    return 0
