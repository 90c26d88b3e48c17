"""Seeded random weights for any net (benchmarks and tests of untrained nets)."""
from __future__ import annotations

import numpy as np

from amct.ir.graph import Graph
from amct.ir.registry import require_layer_def


def random_weights(graph: Graph, seed: int = 0, input_shapes=None) -> Graph:
    """Fill every learned blob of ``graph`` in place and return it.

    Values are drawn from a seeded generator, per layer in execution order, so
    the same net and seed give bit-identical weights.  Weights use a
    fan-in-scaled normal (keeps activations in a sane range through deep nets);
    biases and BatchNorm/Scale statistics get small, well-conditioned values.
    """
    rng = np.random.default_rng(seed)
    shapes = graph.infer_value_shapes(input_shapes)
    for layer in graph.layers:
        ldef = require_layer_def(layer)
        ins = [shapes[v] for v in graph.input_values(layer)]
        want = [tuple(s) for s in ldef.param_shapes(layer, ins)]
        blobs = []
        for i, s in enumerate(want):
            blobs.append(_draw(rng, layer.type, i, s))
        layer.blobs = blobs
    return graph


def _draw(rng: np.random.Generator, ltype: str, i: int, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    if ltype == "BatchNorm":
        if i == 0:
            return rng.normal(0.0, 0.1, shape).astype(np.float32)
        if i == 1:
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return np.ones(shape, np.float32)
    if ltype in ("Scale", "Normalize") and i == 0:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if ltype == "PReLU":
        return rng.uniform(0.05, 0.3, shape).astype(np.float32)
    if i == 0 and len(shape) >= 2:
        fan_in = n // shape[0]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    return rng.normal(0.0, 0.05, shape).astype(np.float32)
