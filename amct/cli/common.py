"""Pieces every subcommand shares: argument groups, value parsers, model and data opening, progress."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Iterable, Iterator

import numpy as np

from amct.errors import DataError

log = logging.getLogger("amct.cli")

Shape = tuple[int, ...]


# ------------------------------------------------------------- value parsers
def int_list(text: str, n: int | None = None, what: str = "value") -> tuple[int, ...]:
    """``"3,224,224"`` -> (3, 224, 224); argparse turns the ValueError into a usage error."""
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected integers separated by commas") from None
    if n is not None and len(vals) != n:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected {n} integers")
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{what} {text!r}: sizes must be positive")
    return vals


def hw(text: str) -> tuple[int, int]:
    return int_list(text, 2, "size H,W")  # type: ignore[return-value]


def float_list(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def scale_value(text: str) -> float:
    """A float or a fraction like ``1/255`` (convenient for pixel scaling)."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.0078125 or 1/128)") from None


def input_shapes(values: Iterable[str] | None) -> dict[str, Shape]:
    """``--input-shape name:n,c,h,w`` (repeatable; AMCT's ``a:..;b:..`` also accepted)."""
    out: dict[str, Shape] = {}
    for v in values or ():
        for part in v.split(";"):
            if not part.strip():
                continue
            name, sep, dims = part.rpartition(":")
            if not sep or not name:
                raise DataError(f"--input-shape {part!r}: expected name:n,c,h,w")
            try:
                out[name.strip()] = int_list(dims, what=f"--input-shape {part!r}:")
            except argparse.ArgumentTypeError as e:
                raise DataError(str(e)) from None
    return out


def split_names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


# ---------------------------------------------------------- argument groups
def add_model_args(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="PROTOTXT", help="Caffe network definition (.prototxt)")
    g.add_argument("--weights", required=weights_required, metavar="CAFFEMODEL",
                   help="trained weights (.caffemodel)")


def add_data_args(p: argparse.ArgumentParser, required: bool = True, labels: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", "--data_dir", "--data-dir", dest="data", action="append", required=required,
                   metavar="[NAME=]PATH",
                   help="image folder or file, .npy/.npz, .bin, MNIST idx or .csv; "
                        "NAME=PATH per input for multi-input nets (repeatable)")
    g.add_argument("--input-shape", "--input_shape", dest="input_shape", action="append", metavar="NAME:N,C,H,W",
                   help="shape of a network input (repeatable); N is the default batch size")
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int,
                   help="samples per forward pass (default: N of --input-shape, else 16)")
    g.add_argument("--data-type", "--data_types", "--data-types", dest="data_type", default="float32",
                   help="element type of raw .bin files (default float32)")
    if labels:
        g.add_argument("--labels", metavar="FILE",
                       help="labels: 'filename label' lines for an image folder, one integer per "
                            "line, .npy or MNIST idx (csv, npz 'label' and idx pairs are found "
                            "automatically)")
    pre = p.add_argument_group("image preprocessing (images, MNIST idx and csv pixels only)")
    pre.add_argument("--resize", type=hw, metavar="H,W", help="resize images to H,W (bilinear)")
    pre.add_argument("--crop", type=hw, metavar="H,W", help="center crop to H,W after resizing")
    m = pre.add_mutually_exclusive_group()
    m.add_argument("--mean", type=float_list, metavar="V[,V,V]",
                   help="subtract per-channel mean values (in the network's channel order)")
    m.add_argument("--mean-file", "--mean_file", dest="mean_file", metavar="FILE",
                   help="subtract a mean image (.binaryproto or .npy)")
    pre.add_argument("--scale", type=scale_value, default=1.0, metavar="S",
                     help="multiply after mean subtraction (e.g. 0.00390625 or 1/256)")
    pre.add_argument("--rgb", action="store_true", help="feed RGB channel order (default BGR, as Caffe)")
    pre.add_argument("--transpose-hw", "--transpose_hw", dest="transpose_hw", action="store_true",
                     help="swap H and W of every image (MTCNN)")


def preprocess_from(args):
    from amct.data import Preprocess

    return Preprocess(resize=args.resize, crop=args.crop, mean=args.mean, mean_file=args.mean_file,
                      scale=args.scale, rgb=args.rgb, transpose_hw=args.transpose_hw)


# ------------------------------------------------------------------- model
def load_graph(model: str, weights: str | None):
    from amct.frontends.caffe import load_caffe

    log.debug("loading %s%s", model, f" + {weights}" if weights else "")
    return load_caffe(model, weights)


def net_input_shapes(graph, given: dict[str, Shape]) -> dict[str, Shape]:
    """Full shape (N, ...) of every net input: --input-shape wins over the declaration."""
    unknown = [n for n in given if n not in graph.inputs]
    if unknown:
        raise DataError(f"--input-shape names {', '.join(unknown)}, but the inputs of "
                        f"{graph.source} are {', '.join(graph.inputs) or 'none'}")
    declared = graph.input_shapes()
    out: dict[str, Shape] = {}
    for name in graph.inputs:
        s = given.get(name, declared.get(name))
        if s is None:
            raise DataError(f"{graph.source}: input '{name}' has no declared shape; "
                            f"give --input-shape {name}:N,C,H,W")
        out[name] = tuple(int(d) for d in s)
    return out


DEFAULT_BATCH = 16


def batch_size_for(args, shapes: dict[str, Shape], given: dict[str, Shape]) -> int:
    """--batch-size, else N of an explicit --input-shape, else 16.

    A deploy prototxt usually declares N = 1, which says nothing about how the
    user wants to batch, so the declared N is not used.
    """
    if args.batch_size:
        return int(args.batch_size)
    ns = {s[0] for n, s in given.items() if s}
    return int(ns.pop()) if len(ns) == 1 else DEFAULT_BATCH


def open_data(args, graph, labels: bool = False):
    """The dataset of ``--data`` for ``graph``'s inputs, and the batch size."""
    from amct.data import open_dataset

    given = input_shapes(args.input_shape)
    shapes = net_input_shapes(graph, given)
    ds = open_dataset(args.data, {n: s[1:] for n, s in shapes.items()},
                      preprocess=preprocess_from(args), data_type=args.data_type,
                      labels=getattr(args, "labels", None) if labels else None)
    bs = batch_size_for(args, shapes, given)
    log.info("data: %d samples from %s (batch size %d)", len(ds),
             ", ".join(s.where for s in ds.sources.values()), bs)
    return ds, bs


# ---------------------------------------------------------------- progress
def progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def progress(items: Iterable, total_samples: int, desc: str, args,
             size=lambda b: len(next(iter(b.values())))) -> Iterator:
    """Iterate ``items`` (batches) with a tqdm bar counting samples (images/s, ETA)."""
    if not progress_enabled(args):
        yield from items
        return
    from tqdm import tqdm

    with tqdm(total=total_samples, desc=desc, unit="img", file=sys.stderr, leave=False,
              dynamic_ncols=True) as bar:
        for item in items:
            yield item
            batch = item[0] if isinstance(item, tuple) else item
            bar.update(size(batch))


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many samples have their label among the ``k`` highest scores."""
    flat = scores.reshape(scores.shape[0], -1)
    k = min(k, flat.shape[1])
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def pick_output(graph, requested: str | None, shapes: dict[str, Shape] | None = None) -> str:
    """The output blob whose scores are classes (``--output``, or the only/first output)."""
    outs = graph.outputs
    if requested:
        if requested not in graph.infer_shapes(shapes) and requested not in outs:
            raise DataError(f"{graph.source}: no blob named '{requested}' (outputs: {', '.join(outs)})")
        return requested
    if len(outs) == 1:
        return outs[0]
    raise DataError(f"{graph.source}: the network has several outputs ({', '.join(outs)}); "
                    "choose the class scores with --output")


def ensure_dir_of(prefix: str) -> None:
    d = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(d, exist_ok=True)
