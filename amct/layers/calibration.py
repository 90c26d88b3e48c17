"""Calibration layers of the modified model: IFMR, HFMG and SearchN (SPEC §6.1).

They have no tops.  Each feeds its input to a collector for exactly
``batch_num`` forward passes, then computes the activation factors once,
merges them into the record file (for every ``object_layer``) and ignores
every later forward.

The collector is created by ``build()`` and kept in ``layer.meta`` rather than
only in the kernel closure: the runtime builds a new kernel whenever the input
shapes change (e.g. a smaller last batch) or a plan is rebuilt, and the
statistics of the earlier batches must survive that.  A freshly loaded model
has fresh layers, hence fresh state.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from amct.errors import CalibrationError
from amct.ir.registry import Kernel, LayerDef, Shape, register_layer
from amct.layers._common import need_inputs
from amct.layers._deferred import after_forward
from amct.quant.hfmg import HfmgCollector
from amct.quant.ifmr import IfmrCollector
from amct.quant.record import merge_record, merge_records

_STATE = "calibration_state"

# AMCT's defaults, used for fields the layer leaves unset.
IFMR_DEFAULTS = {"with_offset": True, "search_range_start": 0.7, "search_range_end": 1.3,
                 "search_step": 0.01, "max_percentile": 0.999999, "min_percentile": 0.999999}


def input_geometry(shape: Shape) -> dict[str, int]:
    """channels/height/width of an (N, C[, H[, W]]) input for the record."""
    dims = list(shape[1:]) + [1, 1, 1]
    return {"channels": int(dims[0]), "height": int(dims[1]), "width": int(dims[2])}


class _Calibration:
    """The per-layer state: a collector and what to do when it is full."""

    def __init__(self, layer, collector, on_done: Callable[["_Calibration", Shape], None]):
        self.layer = layer
        self.collector = collector
        self.on_done = on_done
        self.finished = False

    def feed(self, x: np.ndarray) -> None:
        if self.finished:
            return
        self.collector.update(x)
        if self.collector.done:
            self.finished = True
            self.on_done(self, tuple(x.shape))


def _record_path(layer, param) -> str:
    path = param.record_file_path
    if not path:
        raise CalibrationError(f"layer '{layer.name}' ({layer.type}): record_file_path is empty")
    return os.path.abspath(path)


def _batch_num(layer, param) -> int:
    n = int(param.batch_num)
    if n < 1:
        raise CalibrationError(f"layer '{layer.name}' ({layer.type}): batch_num must be >= 1, "
                               f"got {n}")
    return n


def _objects(layer, names) -> list[str]:
    objs = [str(x) for x in names]
    if not objs:
        raise CalibrationError(f"layer '{layer.name}' ({layer.type}): no object_layer given")
    return objs


# record path -> key -> fields, for the layers that finished in this pass.
_PENDING: dict[str, dict[str, dict]] = {}


def _flush(path: str) -> None:
    updates = _PENDING.pop(path, {})
    if updates:
        merge_records(path, updates)


def _write_activation(path: str, objects: list[str]):
    def done(state: _Calibration, shape: Shape) -> None:
        def finish() -> None:
            scale_d, offset_d = state.collector.compute()
            for key in objects:
                _PENDING.setdefault(path, {})[key] = dict(
                    scale_d=scale_d, offset_d=offset_d, **input_geometry(shape))
        # At the end of this forward pass: by then the background sort of
        # the last batch (IFMR) has run beside the later layers, and every
        # layer that finished in the pass goes into one write of the record.
        after_forward(finish)
        after_forward(lambda: _flush(path), final_key=("record", path))
    return done


def _state(layer, make: Callable[[], _Calibration]) -> _Calibration:
    st = layer.meta.get(_STATE)
    if st is None or st.layer is not layer:
        st = layer.meta[_STATE] = make()
    return st


def _sink_kernel(state: _Calibration) -> Kernel:
    def run(xs):
        state.feed(xs[0])
        return []
    return run


class _SinkLayer(LayerDef):
    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        need_inputs(layer, in_shapes, 1)
        return []


@register_layer
class IFMRLayer(_SinkLayer):
    """Collects every value of its input, then runs IFMR (SPEC §4.3)."""

    type = "IFMR"
    param_field = "ifmr_param"

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        p = layer.params.ifmr_param
        opt = {k: (getattr(p, k) if p.HasField(k) else v) for k, v in IFMR_DEFAULTS.items()}

        def make() -> _Calibration:
            coll = IfmrCollector(_batch_num(layer, p), bool(opt["with_offset"]),
                                 (float(opt["search_range_start"]), float(opt["search_range_end"])),
                                 float(opt["search_step"]), float(opt["max_percentile"]),
                                 float(opt["min_percentile"]), name=f"layer '{layer.name}' (IFMR)")
            return _Calibration(layer, coll, _write_activation(
                _record_path(layer, p), _objects(layer, p.object_layer)))
        return _sink_kernel(_state(layer, make))


@register_layer
class HFMGLayer(_SinkLayer):
    """Streams its input into a histogram, then runs the HFMG search (SPEC §4.4)."""

    type = "HFMG"
    param_field = "hfmg_param"

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        p = layer.params.hfmg_param
        with_offset = bool(p.with_offset) if p.HasField("with_offset") else True
        clip_floor = float(p.clip_floor) if p.HasField("clip_floor") else None

        def make() -> _Calibration:
            coll = HfmgCollector(_batch_num(layer, p), with_offset, int(p.num_of_bins),
                                 name=f"layer '{layer.name}' (HFMG)", clip_floor=clip_floor)
            return _Calibration(layer, coll, _write_activation(
                _record_path(layer, p), _objects(layer, p.object_layer)))
        return _sink_kernel(_state(layer, make))


class _CountingCollector:
    """Counts batches only: SearchN needs no statistics here (see SearchNLayer)."""

    def __init__(self, batch_num: int):
        self.batch_num, self.batches = batch_num, 0

    @property
    def done(self) -> bool:
        return self.batches >= self.batch_num

    def update(self, x: np.ndarray) -> None:
        self.batches += 1


@register_layer
class SearchNLayer(_SinkLayer):
    """Accepted for AMCT compatibility; always settles on shift N = 0.

    AMCT's SearchN searches a per-channel right shift of the int32
    accumulator.  This toolkit never shifts (the deploy deq_scale carries the
    whole factor), so after ``batch_num`` forwards the layer writes
    ``shift_bit = 0`` for every channel of its input into the record of each
    ``layer_name`` and does nothing else.
    """

    type = "SearchN"
    param_field = "search_n_param"

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        p = layer.params.search_n_param

        def make() -> _Calibration:
            path, objects = _record_path(layer, p), _objects(layer, p.layer_name)

            def done(state: _Calibration, shape: Shape) -> None:
                zeros = np.zeros(input_geometry(shape)["channels"], dtype=np.uint32)
                for key in objects:
                    merge_record(path, key, shift_bit=zeros)
            return _Calibration(layer, _CountingCollector(_batch_num(layer, p)), done)
        return _sink_kernel(_state(layer, make))
