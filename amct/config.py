"""Quantization configs: the JSON config (SPEC §3.1) and the simplified .cfg (§3.2).

Both formats produce the same typed ``QuantConfig``; the JSON writer is the
only way a config reaches disk, so every file the toolkit writes has one
layout: global keys first, then layers sorted by name,
``json.dump(indent=4, separators=(',', ':'))``.  Every rule is checked on
read and reported as a ``ConfigError`` naming the file, the layer and the key.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import attrs
import numpy as np

from amct.errors import ConfigError
from amct.fileio import atomic_write_text
from amct.ir import Graph
from amct.passes.depthwise_inputs import depthwise_fed_layers
from amct.passes.heads import head_layers
from amct.passes.quantizable import (CHANNEL_WISE_TYPES, QUANTIZABLE_TYPES,
                                     not_quantizable_reason)
from amct.proto import amct_config_pb2
from amct.proto.text import parse_text

GLOBAL_KEYS = ("version", "batch_num", "activation_offset", "do_fusion", "skip_fusion_layers")
LAYER_KEYS = ("quant_enable", "activation_quant_params", "weight_quant_params")
IFMR_KEYS = ("max_percentile", "min_percentile", "search_range", "search_step")
HFMG_KEYS = ("num_of_bins", "clip_floor")
ACT_KEYS = IFMR_KEYS + ("act_algo",) + HFMG_KEYS + ("asymmetric",)
WEIGHT_KEYS = ("channel_wise", "wts_algo")
ACT_ALGOS = ("ifmr", "hfmg")
NUM_OF_BINS = (1024, 2048, 4096, 8192)


@attrs.define
class LayerQuantConfig:
    """How one layer is quantized (defaults are AMCT's)."""

    quant_enable: bool = True
    #: None only between parsing a JSON file and ``check_against_graph`` (the
    #: default depends on the layer type, which the file does not carry).
    channel_wise: bool | None = True
    act_algo: str = "ifmr"
    max_percentile: float = 0.999999
    min_percentile: float = 0.999999
    search_range: tuple[float, float] = (0.7, 1.3)
    search_step: float = 0.01
    num_of_bins: int = 4096
    #: HFMG only: keep at least this share of the observed extremes (None: plain HFMG).
    clip_floor: float | None = None
    #: Per-layer override of the global activation_offset (None: use the global).
    asymmetric: bool | None = None


@attrs.define
class QuantConfig:
    """A whole quantization config; ``layers`` is keyed by post-fusion layer name."""

    version: int = 1
    batch_num: int = 1
    activation_offset: bool = True
    do_fusion: bool = True
    skip_fusion_layers: list[str] = attrs.field(factory=list)
    layers: dict[str, LayerQuantConfig] = attrs.field(factory=dict)

    def enabled_layers(self) -> list[str]:
        """Names of the layers to quantize (sorted by name, as in the file)."""
        return sorted(n for n, c in self.layers.items() if c.quant_enable)

    def with_offset(self, name: str) -> bool:
        """Whether ``name``'s activations are asymmetric (offset_d may be != 0)."""
        a = self.layers[name].asymmetric
        return self.activation_offset if a is None else a


def default_layer_config(layer_type: str) -> LayerQuantConfig:
    return LayerQuantConfig(channel_wise=layer_type in CHANNEL_WISE_TYPES)


#: The default clip rules (docs/api.md, "Head layers" and "Depthwise-fed
#: layers"): IFMR candidates start at the percentile maximum instead of 0.7 of it.
RULE_SEARCH_START = 1.0
RULE_CLIP_FLOOR = 1.0


#: Calibration presets a user can ask for by name (``--algo`` / ``algo=``).
#: "minmax" is not an algorithm of its own: it is an IFMR config whose only
#: candidate is the observed range itself (percentiles 1.0, search range
#: [1.0, 1.01) with step 0.01), i.e. MinMax calibration written as a config
#: AMCT accepts.
ALGO_PRESETS = ("ifmr", "hfmg", "minmax")


def apply_algo_preset(c: LayerQuantConfig, algo: str) -> None:
    """Set ``c``'s activation calibration to preset ``algo`` (see ALGO_PRESETS)."""
    if algo not in ALGO_PRESETS:
        raise ConfigError(f"algo must be one of {', '.join(ALGO_PRESETS)}, got {algo!r}")
    if algo == "minmax":
        c.act_algo = "ifmr"
        c.max_percentile = c.min_percentile = 1.0
        c.search_range = (1.0, 1.01)
        c.search_step = 0.01
    else:
        c.act_algo = algo


def _raise_search_start(c: LayerQuantConfig) -> bool:
    """Start IFMR's search at the percentile maximum; False (and ``c``
    unchanged) when the range ends at or below 1.0 + step, which can only be
    an explicit request to clip."""
    start, end = c.search_range
    if end - RULE_SEARCH_START < c.search_step:
        return False
    if start < RULE_SEARCH_START:
        c.search_range = (RULE_SEARCH_START, end)
    return True


def apply_head_rule(c: LayerQuantConfig) -> None:
    """Make ``c`` (a head layer's config) keep its calibration range.

    IFMR: percentiles 1.0 and a search range from 1.0 (default [1.0, 1.3]),
    so no calibration value is clipped; HFMG: ``clip_floor`` 1.0.
    """
    if c.act_algo == "hfmg":
        c.clip_floor = RULE_CLIP_FLOOR
    elif _raise_search_start(c):
        c.max_percentile = c.min_percentile = 1.0


def apply_depthwise_rule(c: LayerQuantConfig) -> None:
    """Make ``c`` (a depthwise-fed layer's config) not clip below its range.

    IFMR: the search range starts at 1.0 (the percentiles still drop the
    rarest values); HFMG: ``clip_floor`` 1.0.
    """
    if c.act_algo == "hfmg":
        c.clip_floor = RULE_CLIP_FLOOR
    else:
        _raise_search_start(c)


def apply_head_rules(cfg: "QuantConfig", graph: Graph, keep: Iterable[str] = ()) -> list[str]:
    """Apply the default clip rules to ``cfg``'s enabled layers (except those
    in ``keep``): the head rule to head layers, the depthwise rule to the
    other depthwise-fed layers.  Returns the head layer names."""
    enabled = cfg.enabled_layers()
    heads = head_layers(graph, enabled)
    kept = set(keep)
    for name in heads:
        if name not in kept:
            apply_head_rule(cfg.layers[name])
    for name in depthwise_fed_layers(graph, enabled):
        if name not in kept and name not in heads:
            apply_depthwise_rule(cfg.layers[name])
    return heads


# ------------------------------------------------------------------ writing
def _clean_float(v: float) -> float:
    """Shortest decimal of a float32 value (0.999999, not 0.99999898672...)."""
    return float(str(np.float32(v)))


def layer_to_dict(c: LayerQuantConfig) -> dict[str, Any]:
    act: dict[str, Any] = {}
    if c.act_algo == "hfmg":
        act["act_algo"] = "hfmg"
        act["num_of_bins"] = int(c.num_of_bins)
        if c.clip_floor is not None:
            act["clip_floor"] = c.clip_floor
    else:
        act["max_percentile"] = c.max_percentile
        act["min_percentile"] = c.min_percentile
        act["search_range"] = [c.search_range[0], c.search_range[1]]
        act["search_step"] = c.search_step
    if c.asymmetric is not None:
        act["asymmetric"] = bool(c.asymmetric)
    return {"quant_enable": bool(c.quant_enable), "activation_quant_params": act,
            "weight_quant_params": {"channel_wise": bool(c.channel_wise)}}


def config_to_dict(cfg: QuantConfig) -> dict[str, Any]:
    d: dict[str, Any] = {"version": cfg.version, "batch_num": cfg.batch_num,
                         "activation_offset": cfg.activation_offset, "do_fusion": cfg.do_fusion,
                         "skip_fusion_layers": list(cfg.skip_fusion_layers)}
    for name in sorted(cfg.layers):
        d[name] = layer_to_dict(cfg.layers[name])
    return d


def config_json(cfg: QuantConfig) -> str:
    return json.dumps(config_to_dict(cfg), indent=4, separators=(",", ":"))


def write_config(cfg: QuantConfig, path: str) -> None:
    """Write ``cfg`` as the JSON config (atomically; overwrites)."""
    atomic_write_text(path, config_json(cfg))


# ------------------------------------------------------------------ reading
def _read_text(path: str) -> str:
    """A config file's text; unreadable or non-UTF-8 files are ConfigErrors."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{path}:{line}:{col}: not UTF-8 text (byte offset {e.start}: "
                          f"0x{data[e.start]:02x})") from None


class _Checker:
    """Type checks that name the file and the key path in their errors."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {msg}")

    def bool(self, v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(where, f"expected true/false, got {json.dumps(v)}")
        return v

    def int(self, v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(where, f"expected an integer, got {json.dumps(v)}")
        return v

    def number(self, v: Any, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise self.fail(where, f"expected a number, got {json.dumps(v)}")
        return float(v)

    def obj(self, v: Any, where: str) -> dict:
        if not isinstance(v, dict):
            raise self.fail(where, f"expected an object, got {json.dumps(v)}")
        return v

    def keys(self, d: dict, allowed: Iterable[str], where: str) -> None:
        extra = [k for k in d if k not in allowed]
        if extra:
            raise self.fail(where, f"unknown key '{extra[0]}' (allowed: {', '.join(allowed)})")


def check_layer_values(c: LayerQuantConfig, where: str, chk: _Checker) -> None:
    """The value rules shared by the JSON and .cfg readers."""
    if c.act_algo not in ACT_ALGOS:
        raise chk.fail(f"{where}.act_algo", f"must be one of {', '.join(ACT_ALGOS)}, got '{c.act_algo}'")
    for key in ("max_percentile", "min_percentile"):
        v = getattr(c, key)
        if not 0.5 < v <= 1.0:
            raise chk.fail(f"{where}.{key}", f"must be in (0.5, 1.0], got {v}")
    lo, hi = c.search_range
    if not 0 < lo < hi:
        raise chk.fail(f"{where}.search_range", f"must satisfy 0 < start < end, got [{lo}, {hi}]")
    if not 0 < c.search_step <= (hi - lo) * (1 + 1e-6):
        raise chk.fail(f"{where}.search_step",
                       f"must satisfy 0 < step <= end - start ({hi - lo:g}), got {c.search_step}")
    if c.num_of_bins not in NUM_OF_BINS:
        raise chk.fail(f"{where}.num_of_bins",
                       f"must be one of {', '.join(map(str, NUM_OF_BINS))}, got {c.num_of_bins}")
    if c.clip_floor is not None and not 0.0 < c.clip_floor <= 1.0:
        raise chk.fail(f"{where}.clip_floor", f"must be in (0, 1], got {c.clip_floor}")


def _parse_layer(name: str, d: dict, chk: _Checker) -> LayerQuantConfig:
    where = f"layer '{name}'"
    chk.keys(d, LAYER_KEYS, where)
    c = LayerQuantConfig()
    if "quant_enable" in d:
        c.quant_enable = chk.bool(d["quant_enable"], f"{where}.quant_enable")
    act = chk.obj(d.get("activation_quant_params", {}), f"{where}.activation_quant_params")
    aw = f"{where}.activation_quant_params"
    chk.keys(act, ACT_KEYS, aw)
    if "act_algo" in act:
        if act["act_algo"] not in ACT_ALGOS:
            raise chk.fail(f"{aw}.act_algo", f"must be one of {', '.join(ACT_ALGOS)}, "
                           f"got {json.dumps(act['act_algo'])}")
        c.act_algo = act["act_algo"]
    if c.act_algo == "hfmg":
        ifmr_given = [k for k in IFMR_KEYS if k in act]
        if ifmr_given:
            raise chk.fail(f"{aw}.{ifmr_given[0]}", "is an IFMR parameter but act_algo is 'hfmg'")
    else:
        hfmg_given = [k for k in HFMG_KEYS if k in act]
        if hfmg_given:
            raise chk.fail(f"{aw}.{hfmg_given[0]}", "is an HFMG parameter; set \"act_algo\": \"hfmg\"")
    if "num_of_bins" in act:
        c.num_of_bins = chk.int(act["num_of_bins"], f"{aw}.num_of_bins")
    if "clip_floor" in act:
        c.clip_floor = chk.number(act["clip_floor"], f"{aw}.clip_floor")
    for key in ("max_percentile", "min_percentile", "search_step"):
        if key in act:
            setattr(c, key, chk.number(act[key], f"{aw}.{key}"))
    if "search_range" in act:
        sr = act["search_range"]
        if not isinstance(sr, list) or len(sr) != 2:
            raise chk.fail(f"{aw}.search_range", f"expected [start, end], got {json.dumps(sr)}")
        c.search_range = (chk.number(sr[0], f"{aw}.search_range[0]"),
                          chk.number(sr[1], f"{aw}.search_range[1]"))
    if "asymmetric" in act:
        c.asymmetric = chk.bool(act["asymmetric"], f"{aw}.asymmetric")
    check_layer_values(c, aw, chk)
    wq = chk.obj(d.get("weight_quant_params", {}), f"{where}.weight_quant_params")
    chk.keys(wq, WEIGHT_KEYS, f"{where}.weight_quant_params")
    if "wts_algo" in wq and wq["wts_algo"] != "arq_quantize":
        raise chk.fail(f"{where}.weight_quant_params.wts_algo",
                       f"only 'arq_quantize' is supported, got {json.dumps(wq['wts_algo'])}")
    # Without the graph the type is unknown; ``check_against_graph`` sets the
    # type default when the key is absent and enforces the per-type rule.
    c.channel_wise = (chk.bool(wq["channel_wise"], f"{where}.weight_quant_params.channel_wise")
                      if "channel_wise" in wq else None)  # type: ignore[assignment]
    return c


def parse_config_text(text: str, path: str = "<config>") -> QuantConfig:
    """Parse and validate JSON config text (no graph checks)."""
    chk = _Checker(path)

    def no_duplicates(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise ConfigError(f"{path}: duplicate key '{k}'")
            seen.add(k)
        return dict(pairs)

    try:
        raw = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    raw = chk.obj(raw, "top level")
    cfg = QuantConfig()
    for key, v in raw.items():
        if key in GLOBAL_KEYS:
            continue
        if not isinstance(v, dict):
            raise chk.fail(f"key '{key}'", "unknown global key (a layer entry must be an object; "
                           f"global keys: {', '.join(GLOBAL_KEYS)})")
        cfg.layers[key] = _parse_layer(key, v, chk)
    if "version" in raw:
        cfg.version = chk.int(raw["version"], "version")
        if cfg.version != 1:
            raise chk.fail("version", f"must be 1, got {cfg.version}")
    if "batch_num" in raw:
        cfg.batch_num = chk.int(raw["batch_num"], "batch_num")
        if cfg.batch_num < 1:
            raise chk.fail("batch_num", f"must be a positive integer, got {cfg.batch_num}")
    for key in ("activation_offset", "do_fusion"):
        if key in raw:
            setattr(cfg, key, chk.bool(raw[key], key))
    if "skip_fusion_layers" in raw:
        sf = raw["skip_fusion_layers"]
        if not isinstance(sf, list) or not all(isinstance(s, str) for s in sf):
            raise chk.fail("skip_fusion_layers", f"expected a list of layer names, got {json.dumps(sf)}")
        cfg.skip_fusion_layers = list(sf)
    return cfg


def check_against_graph(cfg: QuantConfig, graph: Graph, path: str = "<config>") -> QuantConfig:
    """Check the layer entries against the (unfused) graph and fill type defaults.

    Every configured layer must exist and be quantizable; channel_wise may be
    true only for Convolution/Deconvolution (it defaults to true for them).
    """
    chk = _Checker(path)
    for name, c in cfg.layers.items():
        layer = graph.find(name)
        if layer is None:
            raise chk.fail(f"layer '{name}'", "no such layer in the model")
        reason = not_quantizable_reason(layer)
        if reason is not None:
            raise chk.fail(f"layer '{name}'", f"cannot be quantized: {reason}")
        if c.channel_wise is None:
            c.channel_wise = layer.type in CHANNEL_WISE_TYPES
        elif c.channel_wise and layer.type not in CHANNEL_WISE_TYPES:
            raise chk.fail(f"layer '{name}'.weight_quant_params.channel_wise",
                           f"must be false for {layer.type}")
    for name in cfg.skip_fusion_layers:
        if name not in graph:
            raise chk.fail("skip_fusion_layers", f"no layer named '{name}' in the model")
    return cfg


def read_config(path: str, graph: Graph | None = None) -> QuantConfig:
    """Read and validate a JSON config (and check it against ``graph`` if given)."""
    text = _read_text(path)
    cfg = parse_config_text(text, path)
    if graph is not None:
        check_against_graph(cfg, graph, path)
    return cfg


# ------------------------------------------------------- simplified config
def parse_simple_config(path: str) -> amct_config_pb2.AMCTConfig:
    """Parse a .cfg (protobuf text AMCTConfig); syntax errors give line:col."""
    text = _read_text(path)
    msg = parse_text(text, amct_config_pb2.AMCTConfig(), path, ConfigError)
    return msg


def _apply_calibration(c: LayerQuantConfig, cc: amct_config_pb2.CalibrationConfig,
                       layer_type: str, explicit: bool) -> None:
    if cc.HasField("arq_quantize") and cc.arq_quantize.HasField("channel_wise"):
        # common_config's channel_wise is meant for the layers that support it;
        # InnerProduct/Pooling keep per-tensor unless an override insists
        # (which is then reported as an error).
        if explicit or layer_type in CHANNEL_WISE_TYPES:
            c.channel_wise = cc.arq_quantize.channel_wise
    algo = cc.WhichOneof("acts_quant_algo")
    if algo == "ifmr_quantize":
        q = cc.ifmr_quantize
        c.act_algo = "ifmr"
        c.search_range = (_clean_float(q.search_range_start), _clean_float(q.search_range_end))
        c.search_step = _clean_float(q.search_step)
        c.max_percentile = _clean_float(q.max_percentile)
        c.min_percentile = _clean_float(q.min_percentile)
    elif algo == "hfmg_quantize":
        c.act_algo = "hfmg"
        c.num_of_bins = int(cc.hfmg_quantize.num_of_bins)


def simple_config_to_quant_config(msg: amct_config_pb2.AMCTConfig, graph: Graph,
                                  path: str = "<cfg>") -> QuantConfig:
    """Resolve a simplified config against ``graph``.

    Precedence per setting: override_layer_configs > override_layer_types >
    common_config > defaults; an override replaces only the algorithms it sets
    (its arq_quantize and/or its activation algorithm).  Then the head and
    depthwise rules (``apply_head_rules``), except where an
    override_layer_configs entry sets the activation algorithm.
    """
    chk = _Checker(path)
    if msg.batch_num < 1:
        raise chk.fail("batch_num", f"must be a positive integer, got {msg.batch_num}")
    if msg.joint_quant:
        raise chk.fail("joint_quant", "joint (Eltwise) quantization is not supported")
    quantizable = {x.name: x for x in graph.layers if not_quantizable_reason(x) is None}

    def known_layer(name: str, where: str) -> None:
        x = graph.find(name)
        if x is None:
            raise chk.fail(where, f"no layer named '{name}' in the model")
        if name not in quantizable:
            raise chk.fail(where, f"layer '{name}' cannot be quantized: {not_quantizable_reason(x)}")

    for n in msg.skip_layers:
        known_layer(n, "skip_layers")
    for t in msg.skip_layer_types:
        if t not in QUANTIZABLE_TYPES:
            raise chk.fail("skip_layer_types", f"'{t}' is not a quantizable type")
    by_type: dict[str, Any] = {}
    for o in msg.override_layer_types:
        if o.layer_type not in QUANTIZABLE_TYPES:
            raise chk.fail("override_layer_types", f"'{o.layer_type}' is not a quantizable type")
        if o.layer_type in by_type:
            raise chk.fail("override_layer_types", f"layer_type '{o.layer_type}' given twice")
        by_type[o.layer_type] = o.calibration_config
    by_name: dict[str, Any] = {}
    for o in msg.override_layer_configs:
        known_layer(o.layer_name, "override_layer_configs")
        if o.layer_name in by_name:
            raise chk.fail("override_layer_configs", f"layer_name '{o.layer_name}' given twice")
        by_name[o.layer_name] = o.calibration_config
    for n in msg.skip_fusion_layers:
        if n not in graph:
            raise chk.fail("skip_fusion_layers", f"no layer named '{n}' in the model")
    cfg = QuantConfig(batch_num=int(msg.batch_num), activation_offset=bool(msg.activation_offset),
                      do_fusion=bool(msg.do_fusion), skip_fusion_layers=list(msg.skip_fusion_layers))
    skip_names, skip_types = set(msg.skip_layers), set(msg.skip_layer_types)
    for name, layer in quantizable.items():
        c = default_layer_config(layer.type)
        if msg.HasField("common_config"):
            _apply_calibration(c, msg.common_config, layer.type, explicit=False)
        if layer.type in by_type:
            _apply_calibration(c, by_type[layer.type], layer.type, explicit=True)
        if name in by_name:
            _apply_calibration(c, by_name[name], layer.type, explicit=True)
        c.quant_enable = name not in skip_names and layer.type not in skip_types
        where = f"layer '{name}'"
        if c.channel_wise and layer.type not in CHANNEL_WISE_TYPES:
            raise chk.fail(f"{where}: arq_quantize.channel_wise", f"must be false for {layer.type}")
        check_layer_values(c, where, chk)
        cfg.layers[name] = c
    # The rules are part of the defaults: they apply on top of
    # common_config / override_layer_types, but a layer whose
    # override_layer_configs entry sets an activation algorithm gets exactly
    # what that entry says.
    explicit = [n for n, cc in by_name.items() if cc.WhichOneof("acts_quant_algo")]
    apply_head_rules(cfg, graph, keep=explicit)
    return cfg


def read_simple_config(path: str, graph: Graph) -> QuantConfig:
    """Read a simplified .cfg and resolve it against ``graph``."""
    return simple_config_to_quant_config(parse_simple_config(path), graph, path)
