"""Insert one IFMR/HFMG calibration layer per distinct quantized input (SPEC §6.1).

Layers that read the same value (same blob version) with the same activation
settings share one calibration layer, named after the first of them, whose
``object_layer`` lists them all; it is placed right before that first layer so
it sees exactly the value they read.  Calibration layers have no tops.  The
record path is written absolute so the modified model runs from anywhere.
"""
from __future__ import annotations

import os

from amct.errors import PassError
from amct.ir import Graph, Layer
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.registry import register_pass

CALIBRATION_TYPES = ("IFMR", "HFMG")


def _settings(layer: Layer) -> tuple:
    c = layer.meta["quant_config"]
    if c.act_algo == "hfmg":
        return ("hfmg", bool(c.asymmetric), int(c.num_of_bins), c.clip_floor)
    return ("ifmr", bool(c.asymmetric), tuple(c.search_range), c.search_step,
            c.max_percentile, c.min_percentile)


def _calibration_layer(first: Layer, members: list[Layer], batch_num: int, record_path: str) -> Layer:
    c = first.meta["quant_config"]
    algo = c.act_algo
    layer = Layer(f"{first.name}_{algo}_layer", algo.upper(), [first.bottoms[0]], [])
    if algo == "hfmg":
        p = layer.params.hfmg_param
        p.num_of_bins = int(c.num_of_bins)
        if c.clip_floor is not None:
            p.clip_floor = c.clip_floor
    else:
        p = layer.params.ifmr_param
        p.search_range_start, p.search_range_end = c.search_range
        p.search_step = c.search_step
        p.max_percentile = c.max_percentile
        p.min_percentile = c.min_percentile
    p.batch_num = batch_num
    p.with_offset = bool(c.asymmetric)
    p.object_layer.extend(m.name for m in members)
    p.record_file_path = record_path
    return layer


@register_pass
class InsertCalibration(Pass):
    """One sink layer per (input value, activation settings) of the marked layers."""

    name = "insert_calibration"
    requires = ("mark_quant_layers",)
    runs_after = ("quantize_weights",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.record_path is None:
            raise PassError("insert_calibration: no record file path in the context")
        record_path = os.path.abspath(ctx.record_path)
        batch_num = int(ctx.config.batch_num) if ctx.config is not None else 1
        groups: dict[tuple, list[Layer]] = {}
        for layer in graph.layers:
            if "quant_config" in layer.meta:
                key = (graph.input_values(layer)[0], _settings(layer))
                groups.setdefault(key, []).append(layer)
        for members in groups.values():
            cal = _calibration_layer(members[0], members, batch_num, record_path)
            if cal.name in graph:
                raise PassError(f"insert_calibration: a layer named '{cal.name}' already exists")
            graph.add_layer(cal, before=members[0])
        return PassResult(bool(groups), {"calibration_layers": len(groups)})
