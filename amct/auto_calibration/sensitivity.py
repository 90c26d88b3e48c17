"""Per-layer sensitivity: how much quantization changes each layer's output."""
from __future__ import annotations

import abc
from typing import Iterable, Mapping

import numpy as np

from amct.auto_calibration._named import resolve
from amct.errors import CalibrationError
from amct.ir import Graph, Layer


class Sensitivity(abc.ABC):
    """Scores every quantized layer; a LOWER score means MORE sensitive.

    ``measure`` gets the fused float graph, the fake-quant graph, the names of
    the quantized layers and the input batches; it must stream over the batches
    and keep no more than one batch of activations at a time.
    """

    name: str = ""

    @abc.abstractmethod
    def measure(self, float_graph: Graph, fake_graph: Graph, layers: list[str],
                batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
        ...


def _dequant_of(fake_graph: Graph) -> dict[str, str]:
    """Quantized layer name -> name of the DeQuant layer that ends it."""
    out = {}
    for x in fake_graph.layers:
        if x.type == "DeQuant":
            obj = x.params.dequant_param.object_layer
            out[obj or x.name.removesuffix("_dequant_layer")] = x.name
    return out


class CosineSimilarity(Sensitivity):
    """0.5 + 0.5·cos(float output, fake-quant output) per layer, over all batches.

    Dot products and norms are accumulated in float64 across batches, so the
    score is the cosine of the concatenated outputs, not a mean of per-batch
    cosines.
    """

    name = "CosineSimilarity"

    def measure(self, float_graph, fake_graph, layers, batches):
        from amct import runtime

        deq = _dequant_of(fake_graph)
        missing = [name for name in layers if name not in deq]
        if missing:
            raise CalibrationError(f"fake-quant model has no DeQuant layer for {missing}")
        want_float = set(layers)
        want_fake = {deq[name]: name for name in layers}
        dot = dict.fromkeys(layers, 0.0)
        nf = dict.fromkeys(layers, 0.0)
        nq = dict.fromkeys(layers, 0.0)
        held: dict[str, np.ndarray] = {}

        def on_float(layer: Layer, j, blob, vid, arr):
            if j == 0 and layer.name in want_float:
                held[layer.name] = np.array(arr, dtype=np.float64, copy=True).reshape(-1)

        def on_fake(layer: Layer, j, blob, vid, arr):
            name = want_fake.get(layer.name)
            if name is None or j != 0:
                return
            a = held.pop(name)
            b = np.asarray(arr, dtype=np.float64).reshape(-1)
            dot[name] += float(a @ b)
            nf[name] += float(a @ a)
            nq[name] += float(b @ b)

        fprog = runtime.compile(float_graph)
        qprog = runtime.compile(fake_graph)
        fprog.add_observer(on_float)
        qprog.add_observer(on_fake)
        n = 0
        for batch in batches:
            fprog.run(dict(batch))
            qprog.run(dict(batch))
            held.clear()
            n += 1
        if n == 0:
            raise CalibrationError("sensitivity analysis got no input batches")
        scores = {}
        for name in layers:
            denom = np.sqrt(nf[name] * nq[name])
            cos = dot[name] / denom if denom > 0 else (1.0 if nf[name] == nq[name] else 0.0)
            scores[name] = 0.5 + 0.5 * float(np.clip(cos, -1.0, 1.0))
        return scores


_SENSITIVITIES = {"CosineSimilarity": CosineSimilarity}


def get_sensitivity(spec) -> Sensitivity:
    return resolve(spec, Sensitivity, _SENSITIVITIES, "sensitivity")
