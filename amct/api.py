"""The AMCT-compatible Python API (SPEC §2): a thin layer over load, passes and emit.

Flow: ``create_quant_config`` -> ``init`` -> ``quantize_model`` -> batch_num
forward passes of the modified model -> ``save_model``; or ``convert_model``
from a hand-written record; or ``quantize`` doing all of it on a list of
batches.  State that AMCT keeps inside its graph object (config, record path,
fusions, passes applied) lives in a session keyed by the ``Graph`` that
``init`` returned, so the graph itself stays a plain ``amct.ir.Graph``.
"""
from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Iterable, Mapping, Sequence

import attrs
import numpy as np

from amct.config import (ALGO_PRESETS, QuantConfig, apply_algo_preset, apply_head_rules,
                         check_against_graph, default_layer_config, read_config,
                         read_simple_config, write_config)
from amct.errors import (ConfigError, DataError, GraphError, QuantizationError, RecordError,
                         WeightsError)
from amct.fileio import AtomicGroup
from amct.ir import Graph
from amct.passes import Fusion, PassContext, pipeline
from amct.passes.quantizable import QUANTIZABLE_TYPES, not_quantizable_reason
from amct.quant.record import LayerRecord, create_empty_record, read_record, write_record

log = logging.getLogger("amct")

#: Canonical save types, by their lower-cased spellings.
SAVE_TYPES = {"fakequant": "Fakequant", "fake_quant": "Fakequant", "deploy": "Deploy",
              "both": "Both"}
#: Layer types that only exist in already-quantized or calibration models.
QUANT_LAYER_TYPES = ("Quant", "DeQuant", "AntiQuant", "IFMR", "HFMG", "SearchN")


@attrs.define
class _Session:
    config: QuantConfig
    record_file: str
    model_file: str
    weights_file: str
    ctx: PassContext | None = None   # set by quantize_model


_SESSIONS: "weakref.WeakKeyDictionary[Graph, _Session]" = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------ helpers
def _load(model_file: str, weights_file: str) -> Graph:
    from amct.frontends.caffe import load_caffe

    if weights_file is None:
        raise WeightsError(f"{model_file}: no weights file given (weights_file is None); "
                           "quantization needs the trained .caffemodel")
    graph = load_caffe(str(model_file), str(weights_file))
    for layer in graph.layers:
        bp = layer.params.batch_norm_param
        if layer.type == "BatchNorm" and bp.HasField("use_global_stats") and not bp.use_global_stats:
            raise GraphError(f"{model_file}: BatchNorm layer '{layer.name}' has use_global_stats: "
                             "false (training form); quantization needs the inference form")
    return graph


def _reject_quantized(graph: Graph, model_file: str) -> None:
    for layer in graph.layers:
        if layer.type in QUANT_LAYER_TYPES:
            raise QuantizationError(f"{model_file}: layer '{layer.name}' is of type "
                                    f"'{layer.type}': the model is already quantized")
        for b in layer.blobs:
            if b.dtype != np.float32 and b.dtype != np.float64:
                raise QuantizationError(f"{model_file}: layer '{layer.name}' carries {b.dtype} "
                                        "weights: the model is already quantized")


def _session(graph: Graph) -> _Session:
    s = _SESSIONS.get(graph) if isinstance(graph, Graph) else None
    if s is None:
        raise QuantizationError("the graph was not returned by amct.init(); call init() first")
    return s


def _check_save_type(save_type: str) -> str:
    if not isinstance(save_type, str) or save_type.lower() not in SAVE_TYPES:
        raise ConfigError(f"save_type must be 'Fakequant', 'Deploy' or 'Both', got {save_type!r}")
    return SAVE_TYPES[save_type.lower()]


def _emit(qgraph: Graph, save_type: str, save_path: str, fusions: Sequence[Fusion]) -> dict:
    from amct.backends.ascend.emit import save_outputs

    return save_outputs(qgraph, save_type, str(save_path), list(fusions))


def build_default_config(graph: Graph, skip_layers: Sequence[str] | None = None,
                         batch_num: int = 1, activation_offset: bool = True,
                         act_algo: str = "ifmr") -> QuantConfig:
    """The config ``create_quant_config`` writes, as an object (validates the arguments).

    Every quantizable layer gets AMCT's defaults with ``act_algo``, except
    head layers (a path to a net output without another quantized layer),
    which keep their calibration range (IFMR percentiles 1.0 and
    ``search_range`` [1.0, 1.3]), and depthwise-fed layers, whose IFMR search
    starts at the percentile maximum ([1.0, 1.3]); HFMG: ``clip_floor`` 1.0
    for both (docs/api.md).
    """
    if act_algo not in ALGO_PRESETS:
        raise ConfigError(f"act_algo must be one of {', '.join(ALGO_PRESETS)}, got {act_algo!r}")
    if isinstance(batch_num, bool) or not isinstance(batch_num, (int, np.integer)) or batch_num < 1:
        raise ConfigError(f"batch_num must be a positive integer, got {batch_num!r}")
    if not isinstance(activation_offset, bool):
        raise ConfigError(f"activation_offset must be true or false, got {activation_offset!r}")
    skip = list(skip_layers or [])
    if any(not isinstance(s, str) for s in skip):
        raise ConfigError(f"skip_layers must be a list of layer names, got {skip!r}")
    dup = sorted({s for s in skip if skip.count(s) > 1})
    if dup:
        raise ConfigError(f"skip_layers: duplicate layer name(s) {', '.join(dup)}")
    for name in skip:
        layer = graph.find(name)
        if layer is None:
            raise ConfigError(f"skip_layers: no layer named '{name}' in the model")
        if layer.type not in QUANTIZABLE_TYPES:
            raise ConfigError(f"skip_layers: layer '{name}' is of type '{layer.type}', which is "
                              "never quantized")
        reason = not_quantizable_reason(layer)
        if reason is not None:
            raise ConfigError(f"skip_layers: layer '{name}' is never quantized ({reason})")
    cfg = QuantConfig(batch_num=int(batch_num), activation_offset=activation_offset)
    for layer in graph.layers:
        if not_quantizable_reason(layer) is None:
            c = default_layer_config(layer.type)
            c.quant_enable = layer.name not in skip
            apply_algo_preset(c, act_algo)
            cfg.layers[layer.name] = c
    if not cfg.layers:
        raise ConfigError(f"{graph.source}: the model has no quantizable layer "
                          f"({', '.join(QUANTIZABLE_TYPES)} under the conditions of SPEC §5.1)")
    if not cfg.enabled_layers():
        raise ConfigError(f"{graph.source}: every quantizable layer is skipped")
    apply_head_rules(cfg, graph)
    return cfg


# --------------------------------------------------------------------- API
def create_quant_config(config_file: str, model_file: str, weights_file: str,
                        skip_layers: Sequence[str] | None = None, batch_num: int = 1,
                        activation_offset: bool = True,
                        config_defination: str | None = None) -> None:
    """Write the JSON config with one entry per quantizable layer (SPEC §2, §3.1).

    With ``config_defination`` (a simplified .cfg, AMCT's spelling) the other
    options are ignored.  Errors are ``ConfigError`` (a ``ValueError``).
    """
    graph = _load(model_file, weights_file)
    _reject_quantized(graph, model_file)
    if config_defination is not None:
        cfg = read_simple_config(str(config_defination), graph)
        if not cfg.layers:
            raise ConfigError(f"{model_file}: the model has no quantizable layer")
        if not cfg.enabled_layers():
            raise ConfigError(f"{config_defination}: every quantizable layer is skipped")
    else:
        cfg = build_default_config(graph, skip_layers, batch_num, activation_offset)
    write_config(cfg, str(config_file))
    log.info("wrote quantization config %s (%d layers, %d quantized)", config_file,
             len(cfg.layers), len(cfg.enabled_layers()))


def init(config_file: str, model_file: str, weights_file: str,
         scale_offset_record_file: str) -> Graph:
    """Parse model + config, create (empty) the record file, return the graph."""
    graph = _load(model_file, weights_file)
    _reject_quantized(graph, model_file)
    cfg = read_config(str(config_file), graph)
    if not cfg.enabled_layers():
        raise ConfigError(f"{config_file}: no layer has quant_enable true")
    record = os.path.abspath(str(scale_offset_record_file))
    create_empty_record(record)
    _SESSIONS[graph] = _Session(cfg, record, str(model_file), str(weights_file))
    return graph


def quantize_model(graph: Graph, modified_model_file: str, modified_weights_file: str) -> None:
    """Fuse, quantize weights (record scale_w), insert calibration layers, write the modified model.

    The graph is mutated into the modified model (fused float weights kept).
    """
    s = _session(graph)
    if s.ctx is not None:
        raise QuantizationError("quantize_model already ran on this graph; call init() again")
    cfg = s.config
    ctx = PassContext(config=cfg, record={}, record_path=s.record_file,
                      quant_layers=cfg.enabled_layers(), do_fusion=cfg.do_fusion,
                      skip_fusion_layers=list(cfg.skip_fusion_layers))
    report = pipeline("calibration").copy().run(graph, ctx)
    log.debug("quantize_model passes:\n%s", report.summary())
    write_record(s.record_file, ctx.record)
    _write_model(graph, str(modified_model_file), str(modified_weights_file))
    s.ctx = ctx


def _write_model(graph: Graph, model_file: str, weights_file: str) -> None:
    """Both files or neither (AtomicGroup)."""
    from amct.frontends.caffe import wire
    from amct.frontends.caffe.writer import net_header, prototxt_text

    text = prototxt_text(graph)
    head = net_header(graph, False).SerializeToString(deterministic=True)
    items = [(x.to_proto(with_blobs=False).SerializeToString(deterministic=True), x.blobs)
             for x in graph.layers]
    with AtomicGroup() as grp:
        with grp.open(model_file, "w") as f:
            f.write(text)
        with grp.open(weights_file, "wb") as f:
            wire.write_net(f, head, items)


def quantized_graph(graph: Graph) -> Graph:
    """The quantized graph (Quant/DeQuant inserted, ``meta["quant"]`` set) built
    from ``graph`` after calibration; ``graph`` is not changed."""
    return _quantized_graph(graph)[0]


def _quantized_graph(graph: Graph) -> tuple[Graph, list[Fusion]]:
    s = _session(graph)
    if s.ctx is None:
        raise QuantizationError("save_model needs quantize_model (and calibration) first")
    record = read_record(s.record_file)
    qgraph = graph.copy()
    ctx = PassContext(config=s.config, record=record, record_path=s.record_file,
                      quant_layers=list(s.ctx.quant_layers), fusions=list(s.ctx.fusions),
                      applied=list(s.ctx.applied))
    pipeline("quantize").copy().run(qgraph, ctx)
    return qgraph, ctx.fusions


def save_model(graph: Graph, save_type: str, save_path: str) -> dict:
    """Write the fake-quant and/or deploy model and quant.json (SPEC §2).

    Raises before writing anything when the record lacks factors for a
    quantized layer.  Returns the emitter's {kind: path} of the written files.
    """
    kind = _check_save_type(save_type)
    qgraph, fusions = _quantized_graph(graph)
    return _emit(qgraph, kind, str(save_path), fusions)


def convert_model(model_file: str, weights_file: str, scale_offset_record_file: str,
                  save_path: str) -> dict:
    """Fake-quant + deploy + quant.json from a user-written record (no calibration).

    The quantized layers are the record's keys (post-fusion names); a key with
    ``skip_fusion: true`` is not fused.  Weights use the record's scale_w when
    given, else ARQ.
    """
    graph = _load(model_file, weights_file)
    _reject_quantized(graph, model_file)
    record_file = os.path.abspath(str(scale_offset_record_file))
    record = read_record(record_file)
    if not record:
        raise RecordError(f"{scale_offset_record_file}: the record is empty; it must list the "
                          "layers to quantize")
    ctx = PassContext(config=None, record=record, record_path=record_file,
                      quant_layers=list(record),
                      skip_fusion_layers=[k for k, r in record.items() if r.skip_fusion],
                      weights_from_record=True)
    pipeline("convert").copy().run(graph, ctx)
    return _emit(graph, "Both", str(save_path), ctx.fusions)


# ------------------------------------------------------------- convenience
@attrs.frozen
class LayerFactors:
    """The factors of one quantized layer (from the record)."""

    scale_d: float
    offset_d: int
    scale_w: np.ndarray | None


@attrs.frozen
class QuantizeResult:
    """What ``quantize`` produced: file paths, the record and per-layer factors."""

    config_file: str
    record_file: str
    modified_model_file: str
    modified_weights_file: str
    outputs: dict[str, str]
    record: dict[str, LayerRecord]
    layers: dict[str, LayerFactors]
    #: layer -> per-channel shift subtracted from its bias (empty without bias correction)
    bias_shifts: dict[str, np.ndarray] = attrs.field(factory=dict)
    #: layer -> what GPTQ weight rounding did (empty with weight_rounding="nearest")
    rounding: dict[str, Any] = attrs.field(factory=dict)


def _feeds(batch: Any, inputs: list[str], i: int,
           declared: Mapping[str, tuple] | None = None) -> dict[str, np.ndarray]:
    if isinstance(batch, Mapping):
        unknown = sorted(set(batch) - set(inputs))
        if unknown:
            raise DataError(f"batch {i}: {unknown} are not net inputs (inputs: {inputs})")
        feeds = {k: np.asarray(v, np.float32) for k, v in batch.items()}
    elif len(inputs) != 1:
        raise DataError(f"batch {i}: the net has inputs {inputs}; give each batch as a dict")
    else:
        feeds = {inputs[0]: np.asarray(batch, np.float32)}
    for name, x in feeds.items():
        # Rank and channels must match the declaration; N and the spatial
        # size may differ (fully convolutional nets run on any image size).
        want = (declared or {}).get(name)
        if want and (x.ndim != len(want) or (x.ndim > 1 and x.shape[1] != want[1])):
            raise DataError(f"batch {i}: input '{name}' has shape {tuple(x.shape)}, but the model "
                            f"declares {tuple(want)} (N, C, ... must match in rank and channels)")
    return feeds


def quantize(model_file: str, weights_file: str, batches: Iterable[Any], save_path: str,
             config: str | None = None, *, skip_layers: Sequence[str] | None = None,
             batch_num: int | None = None, algo: str = "ifmr", save_type: str = "Both",
             work_dir: str | None = None, bias_correction: bool = True,
             weight_rounding: str = "gptq") -> QuantizeResult:
    """The whole PTQ flow on ``batches`` (arrays for single-input nets, or dicts name->array).

    ``config``: None (defaults + ``skip_layers``/``algo``), a JSON config or a
    simplified ``.cfg``.  ``batch_num``: batches to calibrate on (default: the
    config's for a JSON config, else all given).  ``work_dir`` (default
    ``save_path + "_work"``) receives config.json, record.txt and the modified model.
    ``bias_correction``: after calibration, remove the mean error quantization
    adds to each layer's output, measured on the calibration batches
    (``amct.bias_correction``, docs/bias_correction.md); False gives the biases
    of AMCT's flow (SPEC §4.5).  ``weight_rounding``: "gptq" re-chooses the
    int8 weights on ARQ's grid for each layer's output error on the calibration
    batches (``amct.weight_rounding``, docs/weight_rounding.md); "nearest"
    keeps ARQ's rounding.  Both off give AMCT's flow exactly: the files
    ``convert_model`` writes from the same record.
    """
    from amct.runtime import Net
    from amct.weight_rounding import METHODS

    kind = _check_save_type(save_type)
    if algo not in ALGO_PRESETS:
        raise ConfigError(f"algo must be one of {', '.join(ALGO_PRESETS)}, got {algo!r}")
    if weight_rounding not in METHODS:
        raise ConfigError(f"weight_rounding must be one of {', '.join(METHODS)}, "
                          f"got {weight_rounding!r}")
    save_path = str(save_path)
    work = str(work_dir) if work_dir is not None else save_path + "_work"
    os.makedirs(work, exist_ok=True)
    paths = {k: os.path.join(work, f) for k, f in (
        ("config", "config.json"), ("record", "record.txt"),
        ("model", "modified_model.prototxt"), ("weights", "modified_weights.caffemodel"))}
    data = list(batches) if batch_num is None else _take(batches, batch_num)
    graph = _load(model_file, weights_file)
    if config is not None and str(config).endswith(".json"):
        cfg = read_config(str(config), graph)
    elif config is not None:
        cfg = read_simple_config(str(config), graph)
    else:
        cfg = build_default_config(graph, skip_layers, max(len(data), 1), act_algo=algo)
    if batch_num is not None:
        cfg.batch_num = int(batch_num)
    elif config is None or not str(config).endswith(".json"):
        cfg.batch_num = max(len(data), 1)
    if len(data) < cfg.batch_num:
        raise DataError(f"calibration needs {cfg.batch_num} batches, got {len(data)}")
    declared = graph.input_shapes()
    feeds = [_feeds(b, graph.inputs, i, declared) for i, b in enumerate(data[:cfg.batch_num])]
    check_against_graph(cfg, graph, paths["config"])
    write_config(cfg, paths["config"])
    g = init(paths["config"], model_file, weights_file, paths["record"])
    quantize_model(g, paths["model"], paths["weights"])
    net = Net(paths["model"], paths["weights"])
    for feed in feeds:
        net.forward(**feed)
    rounding = {}
    if weight_rounding == "gptq":
        from amct.weight_rounding import round_weights

        rounding = {r.layer: r for r in round_weights(g, feeds)}
    shifts = {}
    if bias_correction:
        from amct.bias_correction import correct_bias

        shifts = {s.layer: s.shift for s in correct_bias(g, feeds)}
    outputs = save_model(g, kind, save_path)
    record = read_record(paths["record"])
    layers = {k: LayerFactors(float(r.scale_d), int(r.offset_d), r.scale_w)
              for k, r in record.items() if r.has_activation}
    return QuantizeResult(paths["config"], paths["record"], paths["model"], paths["weights"],
                          dict(outputs or {}), record, layers, shifts, rounding)


def _take(batches: Iterable[Any], n: int) -> list[Any]:
    out = []
    for b in batches:
        if len(out) == n:
            break
        out.append(b)
    return out


def layer_table(model_file: str, weights_file: str, save_path: str, batches: Iterable[Any],
                *, deploy: bool = True) -> list[dict]:
    """Per-layer quantization table of a saved model, measured on ``batches``.

    Reads ``save_path``'s fake-quant (and, with ``deploy``, deploy) model and
    runs them beside the float model (same fusions) on ``batches`` (arrays for
    single-input nets, or dicts name->array).  One dict per quantized layer:
    ``layer, type, scale_d, offset_d, scale_w_min, scale_w_max, channel_wise,
    quant_layer, dequant_layer, clip_ratio`` (fraction of the layer's float
    input outside its quantization range), ``clip_reach`` (the span that input
    needed, in units of the range's width) and ``fake_quant`` / ``deploy``
    statistics of the layer's output against float (``cosine``, ``sqnr_db``,
    ``max_abs_error``...).  The same table the CLI writes to ``_report.json``.
    """
    from amct.frontends.caffe import load_caffe
    from amct.report.compare import compare_models
    from amct.report.write import build_report

    float_graph = load_caffe(model_file, weights_file)
    fake = load_caffe(save_path + "_fake_quant_model.prototxt",
                      save_path + "_fake_quant_weights.caffemodel")
    dep = (load_caffe(save_path + "_deploy_model.prototxt", save_path + "_deploy_weights.caffemodel")
           if deploy else None)
    inputs = list(float_graph.inputs)
    feeds = ((_feeds(b, inputs, i), None) for i, b in enumerate(batches))
    cmp = compare_models(float_graph, fake, dep, feeds)
    return build_report(cmp, kind="layer_table", models={}, data="")["layers"]
