"""Float vs fake-quant vs deploy simulation, layer by layer, on real data.

The float reference is the original model with the same BatchNorm/Scale
fusions quantization applied (run by the project's own fusion passes), so
every quantized layer ``L`` has the same name and output blob in all three
models and its outputs can be compared directly:

* float: the output of ``L`` in the fused float model;
* fake-quant / deploy: the output of ``L``'s DeQuant layer.

The clip ratio of ``L`` is measured on the float pass: the fraction of the
values ``L`` reads that fall outside its activation range
``[(-128 - offset_d)·scale_d, (127 - offset_d)·scale_d]``.

Everything is streamed batch by batch through runtime observers; only the
float outputs of the quantized layers for the current batch are held.
"""
from __future__ import annotations

from typing import Callable, Iterable

import attrs
import numpy as np

from amct.errors import GraphError
from amct.ir import Graph
from amct.report.stats import Agreement, ClipStats, PairStats

AFFINE_TYPES = ("BatchNorm", "Scale")


@attrs.frozen
class QuantLayerInfo:
    """One quantized layer as the fake-quant model describes it."""

    name: str
    type: str
    scale_d: float
    offset_d: int
    scale_w: np.ndarray
    quant_layer: str
    dequant_layer: str

    @property
    def has_weights(self) -> bool:
        return self.type != "Pooling"

    @property
    def clip_range(self) -> tuple[float, float]:
        return ((-128 - self.offset_d) * self.scale_d, (127 - self.offset_d) * self.scale_d)


def quant_layers_of(fake: Graph) -> list[QuantLayerInfo]:
    """The quantized layers of a fake-quant (or deploy) graph, from its Quant/DeQuant layers."""
    dequant = {}
    for x in fake.layers:
        if x.type == "DeQuant":
            dequant[x.params.dequant_param.object_layer] = x
    out = []
    for x in fake.layers:
        if x.name not in dequant:
            continue
        src = fake.producer(x, 0)
        if src is None or src[0].type != "Quant":
            raise GraphError(f"{fake.source}: quantized layer '{x.name}' does not read a Quant layer")
        qp = src[0].params.quant_param
        scale_d = 1.0 / float(qp.scale) if qp.scale else float("nan")
        offset_d = int(np.frombuffer(qp.offset[:1], np.int8)[0]) if qp.offset else 0
        dq = dequant[x.name]
        if dq.blobs and dq.blobs[0].dtype == np.uint64:
            deq = (dq.blobs[0].astype(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
        else:
            deq = np.asarray(dq.blobs[0] if dq.blobs else [scale_d], np.float32)
        scale_w = (np.asarray(deq, np.float64) / scale_d).astype(np.float32)
        out.append(QuantLayerInfo(x.name, x.type, scale_d, offset_d, scale_w.reshape(-1),
                                  src[0].name, dq.name))
    return out


def fused_float(float_graph: Graph, fake: Graph) -> Graph:
    """A copy of ``float_graph`` with the fusions the fake-quant model shows were applied.

    A BatchNorm/Scale still present in the fake-quant model was left alone
    (skip_fusion_layers or do_fusion false), so it is skipped here too.
    """
    from amct.passes.base import PassContext
    from amct.passes.fold_bn_scale_into_next_conv import FoldBnScaleIntoNextConv
    from amct.passes.fuse_conv_bn_scale import FuseConvBnScale

    g = float_graph.copy()
    kept = [x.name for x in fake.layers if x.type in AFFINE_TYPES]
    ctx = PassContext(do_fusion=True, skip_fusion_layers=kept)
    FuseConvBnScale().run(g, ctx)
    FoldBnScaleIntoNextConv().run(g, ctx)
    return g


@attrs.define
class LayerResult:
    info: QuantLayerInfo
    clip: ClipStats
    fake: PairStats = attrs.field(factory=PairStats)
    deploy: PairStats | None = None


@attrs.define
class OutputResult:
    name: str
    classifier: bool
    fake: PairStats = attrs.field(factory=PairStats)
    deploy: PairStats | None = None
    agree_fake: Agreement = attrs.field(factory=Agreement)
    agree_deploy: Agreement | None = None
    #: model ("float", "fake_quant", "deploy") -> top-1 hits (labelled data only)
    hits: dict[str, int] = attrs.field(factory=dict)
    labelled: int = 0
    #: The net output this blob is compared for, when that output's shape
    #: depends on the data (see ``compared_outputs``); None for the output itself.
    stands_for: str | None = None

    def accuracy(self, model: str) -> float | None:
        return self.hits[model] / self.labelled if self.labelled and model in self.hits else None


@attrs.define
class Comparison:
    layers: list[LayerResult]
    outputs: list[OutputResult]
    samples: int = 0
    batches: int = 0


def _is_classifier(shape: tuple[int, ...]) -> bool:
    if len(shape) == 2:
        return shape[1] > 1
    return len(shape) == 4 and shape[2] == 1 and shape[3] == 1 and shape[1] > 1


def compared_outputs(graph: Graph, outputs: list[str]) -> list[tuple[str, str | None]]:
    """``(blob, stands_for)`` to compare for each of ``outputs``.

    An output whose producer has data-dependent shapes (DetectionOutput: one
    row per detection) has no element-wise counterpart across models, as the
    float and quantized nets keep different numbers of rows; it is compared
    at that producer's inputs instead (the box and score tensors), each once.
    """
    from amct.ir.registry import get_layer_def

    flow = graph.dataflow()
    out: list[tuple[str, str | None]] = []
    for o in outputs:
        vid = flow.final.get(o)
        src = flow.producer.get(vid) if vid is not None else None
        ldef = get_layer_def(src[0].type) if src is not None else None
        if ldef is None or not ldef.data_dependent_shapes:
            out.append((o, None))
            continue
        for b in src[0].bottoms:
            if b not in [x for x, _ in out]:
                out.append((b, o))
    return out


def compare_models(float_graph: Graph, fake: Graph, deploy: Graph | None,
                   batches: Iterable[tuple[dict, np.ndarray | None]],
                   on_batch: Callable[[int], None] | None = None) -> Comparison:
    """Run the three models on every ``(batch, labels)`` and accumulate the statistics."""
    from amct.runtime import compile as compile_net

    infos = quant_layers_of(fake)
    ref = fused_float(float_graph, fake)
    for info in infos:
        x = ref.find(info.name)
        if x is None or x.type != info.type or x.tops[:1] != fake.layer(info.name).tops[:1]:
            raise GraphError(f"the fake-quant model {fake.source} does not match the float model "
                             f"{float_graph.source}: quantized layer '{info.name}' ({info.type}) "
                             "has no counterpart with the same output blob")
    results = {i.name: LayerResult(i, ClipStats(*i.clip_range),
                                   deploy=PairStats() if deploy is not None else None) for i in infos}
    targets = compared_outputs(fake, [o for o in fake.outputs if o in set(ref.outputs)])
    outputs = [b for b, _ in targets]

    # Where to look in the float pass: L's output, and the producer of L's input.
    out_at: dict[tuple[str, int], list[str]] = {}
    in_at: dict[tuple[str, int], list[str]] = {}
    for info in infos:
        x = ref.layer(info.name)
        out_at.setdefault((x.name, 0), []).append(info.name)
        src = ref.producer(x, 0)
        if src is not None:
            in_at.setdefault((src[0].name, src[1]), []).append(info.name)
    captured: dict[str, np.ndarray] = {}

    def float_observer(layer, j, blob, vid, arr):
        for name in in_at.get((layer.name, j), ()):
            results[name].clip.update(arr)
        for name in out_at.get((layer.name, j), ()):
            captured[name] = np.array(arr, copy=True)

    def quant_observer(which: str):
        by_dequant = {i.dequant_layer: i.name for i in infos}

        def fn(layer, j, blob, vid, arr):
            name = by_dequant.get(layer.name)
            if name is not None and j == 0 and name in captured:
                stats = results[name].fake if which == "fake" else results[name].deploy
                stats.update(captured[name], arr)
        return fn, list(by_dequant)

    p_ref, p_fake = compile_net(ref), compile_net(fake)
    p_dep = compile_net(deploy) if deploy is not None else None
    watch_float = sorted({k[0] for k in out_at} | {k[0] for k in in_at})
    fake_obs, dq_names = quant_observer("fake")
    dep_obs, _ = quant_observer("deploy")
    outs: list[OutputResult] | None = None
    cmp = Comparison(list(results.values()), [])
    for batch, labels in batches:
        captured.clear()
        r_float = p_ref.run(batch, outputs=outputs, observers=[(float_observer, None, watch_float)])
        r_fake = p_fake.run(batch, outputs=outputs, observers=[(fake_obs, None, dq_names)])
        r_dep = (p_dep.run(batch, outputs=outputs, observers=[(dep_obs, None, dq_names)])
                 if p_dep is not None else None)
        if outs is None:
            outs = [OutputResult(o, _is_classifier(np.shape(r_float[o])),
                                 deploy=PairStats() if p_dep is not None else None,
                                 agree_deploy=Agreement() if p_dep is not None else None,
                                 stands_for=via)
                    for o, via in targets]
        for o in outs:
            a, b = r_float[o.name], r_fake[o.name]
            o.fake.update(a, b)
            if r_dep is not None:
                o.deploy.update(a, r_dep[o.name])
            if o.classifier:
                o.agree_fake.update(a, b)
                if r_dep is not None:
                    o.agree_deploy.update(a, r_dep[o.name])
                if labels is not None:
                    o.labelled += len(labels)
                    for model, val in (("float", a), ("fake_quant", b)) + (
                            (("deploy", r_dep[o.name]),) if r_dep is not None else ()):
                        top = np.asarray(val).reshape(len(val), -1).argmax(axis=1)
                        o.hits[model] = o.hits.get(model, 0) + int((top == labels).sum())
        n = len(next(iter(batch.values())))
        cmp.samples += n
        cmp.batches += 1
        if on_batch is not None:
            on_batch(n)
    cmp.outputs = outs or []
    return cmp
