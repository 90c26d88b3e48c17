"""Remove the calibration layers (IFMR/HFMG/SearchN) before building the quantized model."""
from __future__ import annotations

from amct.ir import Graph
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.registry import register_pass

REMOVED_TYPES = ("IFMR", "HFMG", "SearchN")


@register_pass
class RemoveCalibration(Pass):
    """Drop every calibration sink layer (they have no tops, so nothing reads them)."""

    name = "remove_calibration"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        gone = [x for x in graph.layers if x.type in REMOVED_TYPES]
        for x in gone:
            graph.remove_layer(x)
        return PassResult(bool(gone), {"removed": len(gone)})


def without_calibration(graph: Graph) -> Graph:
    """A copy of the calibrated ``graph`` without its calibration layers: the
    fused float model whose activations calibration saw."""
    out = graph.copy()
    for x in [x for x in out.layers if x.type in REMOVED_TYPES]:
        out.remove_layer(x)
    return out
