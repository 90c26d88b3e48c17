"""Head layers: quantized layers whose output reaches a net output unquantized.

Not a pass: a graph query used by the default config builder (the "head
rule", docs/api.md).  A quantized layer L is a *head* when some path from L's
output to a net output passes through no other quantized layer, i.e. L's
int8 error reaches an output without being re-quantized on the way.  Such a
layer's activation range is not searched below the calibration maximum:
clipping there cuts exactly the rare large responses (a detected face, the
winning class) that the output is about, and no later layer can hide it.
"""
from __future__ import annotations

from typing import Iterable

from amct.ir import Graph


def head_layers(graph: Graph, quantized: Iterable[str]) -> list[str]:
    """Names of the head layers among ``quantized``, in execution order.

    ``quantized``: the names of the layers that are quantized.  A layer
    reaches an output when one of its output values is a net output or is
    read by an unquantized layer that reaches an output (Caffe in-place
    writes are separate values, so an in-place ReLU after L is followed).
    """
    flow = graph.dataflow()
    qset = set(quantized)
    outputs = {flow.final[b] for b in graph.outputs}
    free: dict[int, bool] = {}           # id(layer) -> an unquantized path to an output

    def value_free(vid: str) -> bool:
        if vid in outputs:
            return True
        return any(c.name not in qset and layer_free(c) for c, _ in flow.consumers.get(vid, ()))

    def layer_free(layer) -> bool:
        key = id(layer)
        if key not in free:
            free[key] = False            # a cycle cannot happen in Caffe order; guard anyway
            free[key] = any(value_free(v) for v in flow.outputs[key])
        return free[key]

    # Walk in reverse execution order so the recursion depth stays small.
    for layer in reversed(graph.layers):
        layer_free(layer)
    return [x.name for x in graph.layers if x.name in qset and free[id(x)]]
