"""Layer-by-layer check of a deploy model against its fake-quant model.

The deploy model (int8 weights, int32 bias, packed deq_scale) runs in the
runtime's integer simulation; for every quantized layer its output should
equal the fake-quant model's within one output LSB (the layer's deq_scale,
per channel) plus float rounding.  Whole-net outputs cannot be held to that
bound on deep nets: float rounding in the fake model moves a few values
across a rounding boundary of the next Quant, and that one-code difference
travels on.  So each Quant .. DeQuant segment is run in both models on the
*same* input, the fake model's own values.
"""
from __future__ import annotations

from typing import Mapping

import attrs
import numpy as np

from amct.errors import GraphError
from amct.ir import Graph

#: Float rounding allowed on top of one LSB, relative to the layer's largest output.
FLOAT_ROUNDING = 1e-5


@attrs.frozen
class SegmentCheck:
    """One quantized layer: how far deploy is from fake-quant."""

    layer: str
    #: max |deploy - fake| in units of the layer's output LSB (per channel).
    max_diff_lsb: float
    #: every value within 1 LSB + FLOAT_ROUNDING * max |fake output|.
    within_bound: bool


def check_deploy_layers(fake: Graph, deploy: Graph,
                        feeds: Mapping[str, np.ndarray]) -> list[SegmentCheck]:
    """Run every Quant .. DeQuant segment of ``fake`` and ``deploy`` on the
    fake model's values for ``feeds``; one entry per quantized layer, in
    execution order.  Raises ``GraphError`` if the two models do not pair up."""
    from amct.runtime import compile as compile_graph

    shapes = {k: np.shape(v) for k, v in feeds.items()}
    fp, dp = compile_graph(fake, shapes), compile_graph(deploy, shapes)
    values = fp.forward(dict(feeds), keep=True)
    checks = []
    for dq in fake.layers:
        if dq.type != "DeQuant":
            continue
        obj_name = dq.params.dequant_param.object_layer
        obj = fake.find(obj_name)
        src = fake.producer(obj, 0) if obj is not None else None
        if src is None or src[0].type != "Quant":
            raise GraphError(f"{fake.source}: DeQuant '{dq.name}' does not follow a Quant -> "
                             f"'{obj_name}' segment")
        if deploy.find(src[0].name) is None or deploy.find(dq.name) is None:
            raise GraphError(f"{deploy.source}: no segment '{src[0].name}' .. '{dq.name}' "
                             "(not the deploy model of this fake-quant model?)")
        out = fake.output_values(dq)[0]
        a = fp.forward(values, start=src[0].name, end=dq.name, outputs=[out])[out]
        b = dp.forward(values, start=src[0].name, end=dq.name, outputs=[out])[out]
        deq = np.asarray(dq.blobs[0], np.float64).ravel()
        lsb = deq.reshape((1, -1) + (1,) * (a.ndim - 2)) if deq.size > 1 else deq[0]
        diff = np.abs(a.astype(np.float64) - b)
        bound = lsb + FLOAT_ROUNDING * float(np.abs(a).max(initial=0.0))
        checks.append(SegmentCheck(obj_name, float((diff / lsb).max(initial=0.0)),
                                   bool((diff <= bound).all())))
    return checks
