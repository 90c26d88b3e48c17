"""GPTQ weight rounding: int8 codes chosen for the layer's output on the calibration data.

ARQ (SPEC §4.2) rounds every weight to its nearest grid point.  That
minimises each weight's own error, not the layer's output error, and where a
layer's inputs are correlated (neighbouring pixels, channels that fire
together) the errors of the weights they meet can be made to cancel.  This
step keeps ARQ's scales and re-chooses the codes with GPTQ
(``amct.quant.gptq``), using ``H = Σ x xᵀ`` of each layer's input on the
calibration batches.

The input is taken as the layer meets it in the fake-quant model: the fused
float model's activation, quantized by the layer's own Quant factors from the
record.  Layers are independent of each other, so the statistics of all of
them come from forward passes of the float model (one pass over the batches
per group of layers whose ``H`` fit ``memory_budget`` together).

With fewer input rows than weight columns (an InnerProduct sees one row per
image) GPTQ can fit the calibration inputs almost exactly and do worse on
new ones.  So a layer with fewer than ``VALIDATE_BELOW_ROWS_PER_COLUMN`` rows
per column is cross-validated first: GPTQ on the even-numbered calibration
images is measured on the odd ones and the other way round, and the codes
change only if that held-out error is below nearest rounding's.  A layer
whose codes would not lower the error on all calibration inputs keeps ARQ's
codes too.

Rounded: Convolution (2-D and 1-D, grouped and depthwise, channel axis 1)
and InnerProduct.  Deconvolution keeps nearest rounding (its output is a
scatter of overlapping kernel copies, so no single input Gram matrix
describes it), and so does a layer with more than ``max_columns`` weights per
output row (``H`` would be that size squared).

The record, the scales, deq_scale and the biases are untouched; the deploy
model carries the new codes in its ordinary int8 weights.  Bias correction,
when it runs, runs after this step and measures the rounded model.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import attrs
import numpy as np

from amct.errors import DataError
from amct.ir import Graph, Layer
from amct.layers._im2col import blas_thread_count, blas_threads
from amct.quant import gptq

log = logging.getLogger("amct.weight_rounding")

#: Layer types whose codes are re-chosen.
ROUNDABLE_TYPES = ("Convolution", "InnerProduct")
#: Above this many weights per output row, H (columns² float64) is not built.
DEFAULT_MAX_COLUMNS = 2304
#: Memory for the H matrices of the layers gathered in one forward sweep.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: A convolution's H takes at most this many output windows per image per
#: weight column (a regular sub-grid of larger maps, ``gptq.conv_gram``).
#: GPTQ is usually run with tens of rows per column; with 4 per image, ten
#: calibration images already give 40.
POSITIONS_PER_COLUMN = 4
#: The rounding methods ``amct.quantize`` and the CLI accept.
METHODS = ("gptq", "nearest")


#: Layers with fewer input rows (images x windows) than this many per weight
#: column are cross-validated before their codes change (``round_weights``).
VALIDATE_BELOW_ROWS_PER_COLUMN = 16


@attrs.frozen
class RoundedLayer:
    """What GPTQ did to one layer, measured on the calibration inputs."""

    layer: str
    #: fraction of the weights whose code differs from nearest rounding (0: kept)
    changed: float
    #: ``||(Ŵ − W) X||²`` summed over the calibration inputs, nearest and GPTQ codes
    error_nearest: float
    error: float
    #: input rows H was summed over
    rows: int = 0
    #: cross-validated layers: GPTQ's output error over nearest rounding's on
    #: the half of the calibration images it did not see (None: not validated)
    heldout_ratio: float | None = None


@attrs.frozen
class _Geometry:
    """How one layer's weights and input become GPTQ's (G, R, K) problem."""

    kind: str                   # "dense" or "conv"
    group: int
    axis: int = 1
    kernel: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    one_d: bool = False

    def _max_positions(self, channels: int) -> int:
        return POSITIONS_PER_COLUMN * channels // self.group * self.kernel[0] * self.kernel[1]

    def gram(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "dense":
            return gptq.dense_gram(x, self.axis)
        if self.one_d:
            x = x[:, :, None, :]
        return gptq.conv_gram(x, self.group, self.kernel, self.pad, self.stride, self.dilation,
                              max_positions=self._max_positions(x.shape[1]))

    def rows(self, shape: tuple[int, ...]) -> int:
        """Input rows (one per output position the weights meet) ``gram`` sums over."""
        if self.kind == "dense":
            return int(np.prod(shape[:self.axis]))
        hw = (1, shape[2]) if self.one_d else (shape[2], shape[3])
        oh, ow, _ = gptq.sampled_windows(hw, self.kernel, self.pad, self.stride, self.dilation,
                                         self._max_positions(shape[1]))
        return int(shape[0]) * oh * ow


def _geometry(layer: Layer, in_shape: tuple[int, ...]) -> _Geometry | None:
    """The layer's problem shape, or None when this step leaves it to ARQ."""
    if layer.type == "InnerProduct":
        ax = layer.params.inner_product_param.axis
        ax = ax + len(in_shape) if ax < 0 else ax
        if getattr(layer.params.inner_product_param, "transpose", False):
            return None
        return _Geometry("dense", 1, axis=ax)
    from amct.layers.convolution import conv_spec

    spec = conv_spec(layer, in_shape)
    if spec.axis != 1 or len(spec.kernel) not in (1, 2):
        return None
    if len(spec.kernel) == 1:
        return _Geometry("conv", spec.group, kernel=(1, spec.kernel[0]), pad=(0, spec.pad[0]),
                         stride=(1, spec.stride[0]), dilation=(1, spec.dilation[0]), one_d=True)
    return _Geometry("conv", spec.group, kernel=spec.kernel, pad=spec.pad, stride=spec.stride,
                     dilation=spec.dilation)


def _rows(layer: Layer, group: int) -> np.ndarray:
    """Weights as (G, R, K): output rows of each group over its input columns."""
    w = np.asarray(layer.blobs[0], np.float64)
    out = w.shape[0]
    return w.reshape(group, out // group, -1)


def _row_scales(scale_w: np.ndarray, rows: int) -> np.ndarray:
    s = np.asarray(scale_w, np.float64).reshape(-1)
    return np.full(rows, s[0]) if s.size == 1 else s


def roundable_layers(qgraph: Graph, max_columns: int = DEFAULT_MAX_COLUMNS) -> list[str]:
    """Quantized layers of a quantized graph (``amct.quantized_graph``) this step rounds."""
    shapes = qgraph.infer_value_shapes()
    out = []
    for layer in qgraph.layers:
        q = layer.meta.get("quant")
        if q is None or q.w_q is None or layer.type not in ROUNDABLE_TYPES:
            continue
        shape = shapes.get(qgraph.input_values(layer)[0])
        if shape is None or _geometry(layer, tuple(shape)) is None:
            continue
        if q.w_q.size // q.w_q.shape[0] > max_columns:
            continue
        out.append(layer.name)
    return out


def _sweeps(names: Sequence[str], columns: Mapping[str, tuple[int, int]],
            budget: int) -> list[list[str]]:
    """Layers in groups whose statistics (group·K² float64, three times) fit ``budget``."""
    out: list[list[str]] = [[]]
    held = 0
    for name in names:
        g, k = columns[name]
        size = 3 * 8 * g * k * k        # both halves' H and their sum, float64
        if out[-1] and held + size > budget:
            out.append([])
            held = 0
        out[-1].append(name)
        held += size
    return out if out[0] else []


@attrs.define
class _Stats:
    """One layer's H, split by calibration image: even-numbered images in
    ``folds[0]``, odd ones in ``folds[1]``; ``rows`` likewise."""

    folds: list = attrs.field(factory=lambda: [0.0, 0.0])
    rows: list = attrs.field(factory=lambda: [0, 0])

    @property
    def total(self) -> np.ndarray:
        return self.folds[0] + self.folds[1]


def input_grams(float_graph: Graph, geometry: Mapping[str, _Geometry],
                factors: Mapping[str, tuple[float, int]], inputs: Mapping[str, str],
                feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, _Stats]:
    """``H`` of each layer's quantized input over ``feeds`` (one sweep), by image parity."""
    from amct.runtime import compile as compile_graph

    readers: dict[str, list[str]] = {}
    for name, vid in inputs.items():
        readers.setdefault(vid, []).append(name)
    stats = {name: _Stats() for name in inputs}
    first = [0]          # index of the current batch's first image
    # The forward pass keeps BLAS at one thread for its own small GEMMs; the
    # Gram matrices are large ones and get the caller's threads back.
    threads = blas_thread_count()

    def observe(layer, top, blob, vid, arr):
        for name in readers.get(vid, ()):
            scale_d, offset_d = factors[name]
            x = gptq.quantize_input(arr, scale_d, offset_d)
            st, geo = stats[name], geometry[name]
            for fold in (0, 1):
                part = x[(fold - first[0]) % 2::2]
                if len(part):
                    with blas_threads(threads):
                        st.folds[fold] = st.folds[fold] + geo.gram(part)
                    st.rows[fold] += geo.rows(part.shape)

    # Observing only the producers keeps the runtime's fusions everywhere else.
    producers = sorted(x.name for x in float_graph.layers
                       if set(float_graph.output_values(x)) & set(readers))
    # The pass over the batches stops at the last of them: a sweep of early
    # layers does not run the rest of the net.
    order = {x.name: i for i, x in enumerate(float_graph.layers)}
    last = max(producers, key=order.__getitem__)
    progs: dict[tuple, Any] = {}
    for feed in feeds:
        key = tuple(sorted((k, np.shape(v)) for k, v in feed.items()))
        if key not in progs:
            progs[key] = compile_graph(float_graph, dict(key))
        progs[key].forward(feed, end=last, outputs=[], observers=[(observe, None, producers)])
        first[0] += len(next(iter(feed.values())))
    return stats


def round_weights(graph: Graph, batches: Iterable[Any], layers: Iterable[str] | None = None,
                  *, damp: float = gptq.DEFAULT_DAMP, max_columns: int = DEFAULT_MAX_COLUMNS,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[RoundedLayer]:
    """Re-choose the int8 weights of the calibrated ``graph`` with GPTQ, in place.

    ``graph`` is the graph ``init`` returned, after ``quantize_model`` and the
    calibration forwards (the record must hold every layer's factors);
    ``batches`` are calibration inputs (arrays for single-input nets, or dicts
    input name -> array), normally the ones calibration saw.  ``layers``: the
    layers to round (default ``roundable_layers``); a name that is not a
    quantized Convolution or InnerProduct this step can round is a
    ``ConfigError``.  ``save_model`` then writes the new codes.  Returns one
    ``RoundedLayer`` per layer, in execution order.
    """
    from amct.api import _feeds, quantized_graph
    from amct.passes.quantizable import choose_layers
    from amct.passes.remove_calibration import without_calibration

    qgraph = quantized_graph(graph)
    candidates = roundable_layers(qgraph, max_columns)
    names = candidates if layers is None else choose_layers(
        layers, candidates, "weight rounding",
        "quantized Convolution or InnerProduct layers it can round")
    declared = graph.input_shapes()
    float_graph = without_calibration(graph)
    shapes = float_graph.infer_value_shapes()
    inputs, geometry, factors, columns = {}, {}, {}, {}
    for name in names:
        layer = float_graph.layer(name)
        vid = float_graph.input_values(layer)[0]
        q = qgraph.layer(name).meta["quant"]
        inputs[name] = vid
        geometry[name] = _geometry(layer, tuple(shapes[vid]))
        factors[name] = (q.scale_d, q.offset_d)
        columns[name] = (geometry[name].group, q.w_q.size // q.w_q.shape[0])
    sweeps = _sweeps(names, columns, memory_budget)
    if names:
        log.info("weight rounding (GPTQ): %d layers, %d pass(es) over the calibration batches",
                 len(names), len(sweeps))
    # One sweep reads the batches lazily; several need them again.
    feeds: Iterable[Mapping[str, np.ndarray]] = (
        _feeds(b, graph.inputs, i, declared) for i, b in enumerate(batches))
    if len(sweeps) > 1 or not names:
        feeds = list(feeds)
    out, codes, seen = [], {}, _Counter()
    for sweep in sweeps:
        grams = input_grams(float_graph, {n: geometry[n] for n in sweep}, factors,
                            {n: inputs[n] for n in sweep}, seen.counting(feeds))
        if not seen.count:
            raise DataError("weight rounding needs at least one batch of calibration inputs")
        for name in sweep:
            result, new = _round_layer(graph.layer(name), qgraph.layer(name).meta["quant"],
                                       geometry[name].group, grams[name], damp)
            out.append(result)
            if new is not None:
                codes[name] = new
        del grams
    # Only now, with every layer done: an error above leaves the graph as it was.
    for name, new in codes.items():
        graph.layer(name).meta["w_q"] = new
    if not names:
        if not feeds:
            raise DataError("weight rounding needs at least one batch of calibration inputs")
        return []
    order = {n: i for i, n in enumerate(names)}
    out.sort(key=lambda r: order[r.layer])
    for r in out:
        log.debug("weight rounding %s: %.1f %% of codes changed, output error x%.3f on %d rows"
                  "%s", r.layer, 100 * r.changed,
                  r.error / r.error_nearest if r.error_nearest else 1.0, r.rows,
                  "" if r.heldout_ratio is None else f", x{r.heldout_ratio:.3f} held out")
    log.info("weight rounding (GPTQ): new codes on %d of %d layers, measured on %d batches",
             sum(r.changed > 0 for r in out), len(out), seen.count)
    return out


class _Counter:
    """Counts the batches an iterable gives (the last pass over it)."""

    def __init__(self) -> None:
        self.count = 0

    def counting(self, items):
        self.count = 0
        for x in items:
            self.count += 1
            yield x


def _round_layer(layer: Layer, q, group: int, stats: _Stats,
                 damp: float) -> tuple[RoundedLayer, np.ndarray | None]:
    """What GPTQ makes of one layer, and its new int8 codes (None: ARQ's stay)."""
    if not all(np.isfinite(f).all() for f in stats.folds):
        raise DataError(f"weight rounding: layer '{layer.name}': its input is not finite on "
                        "these batches (NaN or Inf in the inputs?)")
    rows = _rows(layer, group)
    scale = _row_scales(q.scale_w, rows.shape[0] * rows.shape[1]).reshape(rows.shape[:2])
    nearest = np.asarray(q.w_q, np.float64).reshape(rows.shape)
    gram, n_rows = stats.total, sum(stats.rows)
    before = float(gptq.output_error(rows, nearest, gram, scale).sum())
    kept = RoundedLayer(layer.name, 0.0, before, before, n_rows)
    heldout = None
    if n_rows < VALIDATE_BELOW_ROWS_PER_COLUMN * rows.shape[2]:
        # Few rows per column: GPTQ can fit the calibration inputs far better
        # than new ones (an InnerProduct sees one row per image).  Round on
        # each half of the images and measure on the other half.
        if min(stats.rows) == 0:
            return kept, None
        err = near = 0.0
        for fit, check in ((0, 1), (1, 0)):
            codes = gptq.gptq_codes(rows, stats.folds[fit], scale, damp=damp)
            err += float(gptq.output_error(rows, codes, stats.folds[check], scale).sum())
            near += float(gptq.output_error(rows, nearest, stats.folds[check], scale).sum())
        heldout = err / near if near > 0 else 1.0
        if not heldout < 1.0:
            return attrs.evolve(kept, heldout_ratio=heldout), None
    codes = gptq.gptq_codes(rows, gram, scale, damp=damp)
    after = float(gptq.output_error(rows, codes, gram, scale).sum())
    if not after < before:
        # GPTQ minimises a damped version of this error; should the damping
        # cost more than it gains, ARQ's codes stay.
        return attrs.evolve(kept, heldout_ratio=heldout), None
    return (RoundedLayer(layer.name, float(np.mean(codes != nearest)), before, after, n_rows,
                         heldout), codes.reshape(layer.blobs[0].shape).astype(np.int8))
