"""Bias correction: remove the mean error that quantization adds to each layer's output.

Quantizing a layer's weights and its input shifts the mean of its output per
channel: rounding and clipping errors do not average out to zero over a
channel, and the shift of one layer travels into the next.  Bias correction
(Nagel et al., "Data-Free Quantization", 2019, §4.2 in its empirical form)
measures that shift on the calibration inputs and subtracts it from the
layer's bias, which the deploy model carries for free as its int32 bias.

The shift is measured layer by layer in execution order on the fake-quant
model, each layer after the corrections of every earlier layer, so a layer
corrects only its own error and not one that upstream already removed.  One
sweep does this: the fake-quant net runs segment by segment (each segment ends
at a DeQuant) over all calibration inputs at once, and only the values that
later segments still read are held between segments.

The reference is the float model after the same fusions, observed at each
quantized layer's output (before its activation).  Only the bias changes: the
record, the scales and the int8 weights stay as calibrated.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import attrs
import numpy as np

from amct.errors import DataError
from amct.ir import Graph, Layer

log = logging.getLogger("amct.bias_correction")

#: Layer types whose bias can absorb a per-channel shift.
CORRECTABLE_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
#: Activation memory the sweep may hold for all calibration batches at once.
#: Beyond it the correction measures on the first batches that fit: channel
#: means settle long before thousands of images.
DEFAULT_MEMORY_BUDGET = 2 << 30


@attrs.frozen
class BiasShift:
    """The correction applied to one layer: ``bias -= shift`` (per output channel)."""

    layer: str
    shift: np.ndarray
    #: mean |shift| relative to the layer's mean |float output|, for the log and reports.
    relative: float


def _channel_sums(arr: np.ndarray) -> tuple[np.ndarray, int]:
    a = np.asarray(arr)
    if a.ndim < 2:
        raise DataError(f"bias correction needs (N, C, ...) outputs, got shape {a.shape}")
    axes = (0,) + tuple(range(2, a.ndim))
    # float64 accumulation without a float64 copy of the activation.
    return a.sum(axis=axes, dtype=np.float64), a.size // a.shape[1]


@attrs.frozen
class BatchMeans:
    """Per-channel means of one layer's output, per batch: ``means[b, c]``
    over ``counts[b]`` values of each channel in batch b."""

    means: np.ndarray
    counts: np.ndarray

    @property
    def overall(self) -> np.ndarray:
        return (self.means * self.counts[:, None]).sum(axis=0) / self.counts.sum()


def float_output_means(float_graph: Graph, layers: Sequence[str],
                       feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, BatchMeans]:
    """Per-batch channel means of the first output of each of ``layers``."""
    from amct.runtime import compile as compile_graph

    wanted = set(layers)
    rows: dict[str, list] = {k: [] for k in wanted}

    def observe(layer, top, blob, vid, arr):
        if top == 0 and layer.name in wanted:
            s, n = _channel_sums(arr)
            rows[layer.name].append((s / n, n))

    prog = None
    for feed in feeds:
        if prog is None:
            prog = compile_graph(float_graph, {k: np.shape(v) for k, v in feeds[0].items()})
        prog.run(feed, observers=[(observe, None, sorted(wanted))])
    return {k: BatchMeans(np.stack([m for m, _ in r]), np.array([n for _, n in r], np.float64))
            for k, r in rows.items() if len(r) == len(feeds)}


def shrunk_shift(diff: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The shift to apply from per-batch differences ``diff[b, c]`` (fake − float).

    The mean difference ``d`` over all values, shrunk towards 0 by its
    batch-to-batch spread: ``d · max(0, 1 − se² / d²)`` per channel, where
    ``se`` is the standard error of ``d`` estimated from how the batches
    disagree.  A shift the batches agree on is kept nearly whole; one that
    changes sign from batch to batch (e.g. the input layer's rounding error,
    which follows each image's histogram) is dropped, since it would not hold
    on other inputs.  With one batch there is no spread to measure and ``d``
    is kept.
    """
    w = counts / counts.sum()
    d = w @ diff
    if len(counts) < 2:
        return d
    b_eff = 1.0 / float(np.sum(w * w))
    var = w @ (diff - d) ** 2
    se2 = var / max(b_eff - 1.0, 1e-12)
    keep = np.clip(1.0 - np.divide(se2, d * d, out=np.ones_like(d), where=d != 0), 0.0, 1.0)
    return d * keep


def _segments(fake: Graph, only: Iterable[str] | None = None) -> list[tuple[int, Layer]]:
    """(index of the DeQuant, DeQuant layer) of every correctable quantized layer
    (among ``only`` when given)."""
    wanted = None if only is None else set(only)
    out = []
    for i, layer in enumerate(fake.layers):
        if layer.type != "DeQuant":
            continue
        name = layer.params.dequant_param.object_layer
        obj = fake.find(name)
        if obj is not None and obj.type in CORRECTABLE_TYPES and (wanted is None
                                                                  or name in wanted):
            out.append((i, layer))
    return out


def default_layers(fake: Graph) -> list[str]:
    """The layers corrected by default: every quantized layer but the heads.

    A head's output reaches a net output without being quantized again, so
    its measured shift is mostly the gain that clipping upstream leaves
    (outputs shrunk by a few per cent) times the output's mean.  Subtracting
    it turns an error proportional to the output into an offset, which no
    later layer absorbs (measured: MobileNet-SSD's class logits lose cosine,
    docs/bias_correction.md).  Inside the net the shift is what the next
    layer's threshold and the next quantizer see, and correcting it pays.
    """
    from amct.passes.heads import head_layers

    quantized = [x.params.dequant_param.object_layer for x in fake.layers if x.type == "DeQuant"]
    heads = set(head_layers(fake, quantized))
    return [n for n in quantized if n not in heads]


class _Plan:
    """Which values each layer of ``fake`` reads and writes, and the last reader of each."""

    def __init__(self, fake: Graph) -> None:
        self.reads = [fake.input_values(x) for x in fake.layers]
        self.writes = [fake.output_values(x) for x in fake.layers]
        self.last_read: dict[str, int] = {}
        for i, vids in enumerate(self.reads):
            for v in vids:
                self.last_read[v] = i

    def live_after(self, end: int) -> list[str]:
        """Values written at or before layer ``end`` that a later layer reads
        (net inputs included)."""
        written = [v for vids in self.writes[:end + 1] for v in vids]
        return [v for v in written if self.last_read.get(v, -1) > end]


def sweep_bytes_per_input(fake: Graph, boundaries: Sequence[int],
                          input_shapes: Mapping[str, Sequence[int]]) -> int:
    """The most bytes the sweep holds per calibration input at a segment boundary."""
    plan = _Plan(fake)
    shapes = fake.infer_value_shapes({k: tuple(v) for k, v in input_shapes.items()})
    batch = max(int(next(iter(input_shapes.values()))[0]), 1)
    worst = 0
    for end in boundaries:
        live = plan.live_after(end)
        worst = max(worst, sum(4 * int(np.prod(shapes[v])) for v in live if v in shapes))
    return -(-worst // batch)


def measure_shifts(fake: Graph, float_means: Mapping[str, BatchMeans],
                   feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sequential per-channel shifts of the layers in ``float_means``, in
    ``fake`` (edited: its float biases are corrected as the sweep goes)."""
    from amct.runtime import compile as compile_graph

    plan = _Plan(fake)
    # One program per input shape: a range after the Input layers runs on the
    # plan of the shapes its program was compiled for.
    progs: dict[tuple, Any] = {}
    for f in feeds:
        key = tuple(sorted((k, np.shape(v)) for k, v in f.items()))
        if key not in progs:
            progs[key] = compile_graph(fake, dict(key))
    prog_of = [progs[tuple(sorted((k, np.shape(v)) for k, v in f.items()))] for f in feeds]
    live: list[dict[str, np.ndarray]] = [dict(f) for f in feeds]
    shifts: dict[str, np.ndarray] = {}
    start = 0
    for end, dq in _segments(fake, float_means):
        name = dq.params.dequant_param.object_layer
        out_vid = plan.writes[end][0]
        produced = {v for i in range(start, end + 1) for v in plan.writes[i]}
        needed = {v for i in range(start, end + 1) for v in plan.reads[i]} - produced
        means = []
        for prog, values in zip(prog_of, live):
            feed = {v: values[v] for v in needed if v in values}
            if start == 0:
                feed.update({k: values[k] for k in fake.inputs if k in values})
            values.update(prog.forward(feed, start=start, end=end, keep=True))
            s, n = _channel_sums(values[out_vid])
            means.append(s / n)
            # Only what later segments read stays (and this layer's output,
            # until its shift is known): one batch's intermediates at a time.
            for v in [v for v in values if plan.last_read.get(v, -1) <= end and v != out_vid]:
                del values[v]
        ref = float_means.get(name)
        if ref is not None and ref.means.shape == (len(means), np.size(means[0])):
            shift = shrunk_shift(np.stack(means) - ref.means, ref.counts).astype(np.float32)
            if not np.isfinite(shift).all():
                raise DataError(f"bias correction: layer '{name}': its output mean is not "
                                "finite on these batches (NaN or Inf in the inputs?)")
            _shift_bias(fake.layer(name), shift)
            for values in live:
                # The DeQuant is the identity: its output moves exactly as the bias.
                values[out_vid] = _subtract(values[out_vid], shift)
            shifts[name] = shift
        if plan.last_read.get(out_vid, -1) <= end:
            for values in live:
                values.pop(out_vid, None)
        start = end + 1
    return shifts


def _subtract(arr: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # A new array: the value may be shared with other value ids (DeQuant is the identity).
    view = shift.reshape((1, -1) + (1,) * (np.ndim(arr) - 2))
    return np.subtract(arr, view, dtype=np.float32)


def _shift_bias(layer: Layer, shift: np.ndarray) -> None:
    """``bias -= shift``, giving a bias-less layer a bias."""
    if len(layer.blobs) >= 2:
        old = np.asarray(layer.blobs[1], np.float32)
        layer.blobs[1] = (old.reshape(-1) - shift).astype(np.float32).reshape(old.shape)
        return
    layer.blobs = [layer.blobs[0], (-shift).astype(np.float32)]
    param = (layer.params.inner_product_param if layer.type == "InnerProduct"
             else layer.params.convolution_param)
    param.bias_term = True


def _inputs(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


def correct_bias(graph: Graph, batches: Iterable[Any], layers: Iterable[str] | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[BiasShift]:
    """Correct the biases of the calibrated ``graph`` in place.

    ``graph`` is the graph ``init`` returned, after ``quantize_model`` and the
    calibration forwards; ``batches`` are calibration inputs (arrays for
    single-input nets, or dicts input name -> array), normally the ones
    calibration saw.  ``layers``: the quantized layers to correct (default
    ``default_layers``: all but the heads); a name that is not a quantized
    Convolution, Deconvolution or InnerProduct is a ``ConfigError``.
    ``save_model`` then writes the corrected biases.  Returns the shifts
    applied, in execution order.

    The sweep holds the live activations of every batch at once; ``batches``
    is read lazily and only while that stays within ``memory_budget`` bytes
    (the first batch always; a cut is logged).
    """
    from amct.api import _feeds, quantized_graph
    from amct.backends.ascend.fake_quant import build_fake_quant
    from amct.passes.quantizable import choose_layers
    from amct.passes.remove_calibration import without_calibration

    declared = graph.input_shapes()
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise DataError("bias correction needs at least one batch of calibration inputs")
    feeds = [_feeds(first, graph.inputs, 0, declared)]
    fake = build_fake_quant(quantized_graph(graph))
    float_graph = without_calibration(graph)
    correctable = [d.params.dequant_param.object_layer for _, d in _segments(fake)]
    if layers is None:
        chosen = set(default_layers(fake))
        names = [n for n in correctable if n in chosen]
    else:
        names = choose_layers(layers, correctable, "bias correction",
                              "quantized Convolution, Deconvolution or InnerProduct layers")
    per_input = sweep_bytes_per_input(fake, [i for i, _ in _segments(fake, names)],
                                      {k: np.shape(v) for k, v in feeds[0].items()})
    # Batches are read lazily and only while their sweep memory fits the budget.
    held = per_input * _inputs(feeds[0])
    for i, batch in enumerate(batches, 1):
        feed = _feeds(batch, graph.inputs, i, declared)
        if held + per_input * _inputs(feed) > memory_budget:
            log.info("bias correction: measuring on the first %d batches; the next would take "
                     "the sweep's activations over memory_budget (%.0f MB)", len(feeds),
                     memory_budget / 2**20)
            break
        feeds.append(feed)
        held += per_input * _inputs(feed)
    means = float_output_means(float_graph, names, feeds)
    shifts = measure_shifts(fake, means, feeds)
    out = []
    for name in names:
        if name not in shifts:
            continue
        shift = shifts[name]
        _shift_bias(graph.layer(name), shift)
        scale = float(np.abs(means[name].overall).mean())
        rel = float(np.abs(shift).mean()) / scale if scale > 0 else 0.0
        out.append(BiasShift(name, shift, rel))
        log.debug("bias correction %s: mean |shift| %.3g (%.2g of mean |output|)",
                  name, float(np.abs(shift).mean()), rel)
    log.info("bias correction: %d layers corrected on %d batches", len(out), len(feeds))
    return out
