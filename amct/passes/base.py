"""What a pass is: a named graph transformation with declared dependencies.

A pass is one small class (one file in ``amct/passes/``) with

* ``name`` - public vocabulary: used by ``PassManager(disabled=...)``, in logs,
  in reports and in the ``requires``/``runs_after`` lists of other passes;
* ``requires`` - passes that must have run before it (earlier in the same
  pipeline, or on the same graph in an earlier pipeline: ``ctx.applied``);
* ``runs_after`` - soft ordering: when one of these is in the pipeline it must
  come earlier, but it may be absent or disabled;
* ``run(graph, ctx) -> PassResult`` - mutates ``graph`` in place and says
  whether it changed anything, with a few counters for the log.

The context object is typed: every pass reads the same ``PassContext``
(config, record, fusions...) rather than a bag of keyword arguments.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import attrs

from amct.ir import Graph, Layer


@attrs.frozen
class PassResult:
    """What a pass did: ``changed`` and counters (``{"fused": 3}``) for the log."""

    changed: bool
    stats: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Fusion:
    """One fusion: ``merged`` layer names folded into ``target`` (kept name)."""

    kind: str            # "conv_bn_scale" | "bn_scale_conv"
    target: str
    merged: tuple[str, ...]


@attrs.define
class PassContext:
    """Everything the passes of one pipeline share.

    ``config``  - the typed quantization config (``amct.config.QuantConfig``), or
                  None when the flow has no config (convert_model).
    ``record``  - layer name -> ``amct.quant.record.LayerRecord``; passes update
                  it in memory, the API reads/writes the record file around them.
    ``record_path`` - absolute path written into calibration layers.
    ``quant_layers`` - names of the layers to quantize, in the order given; set
                  by the API from the config (or the record keys).
    ``skip_fusion_layers`` / ``do_fusion`` - fusion controls.
    ``fusions`` - filled by the fusion passes, consumed by quant.json.
    ``weights_from_record`` - quantize weights with the record's scale_w
                  (convert_model) instead of computing them by ARQ.
    ``applied`` - names of passes already run on this graph (earlier pipelines);
                  the manager appends each pass it runs.
    """

    config: Any = None
    record: dict[str, Any] = attrs.field(factory=dict)
    record_path: str | None = None
    quant_layers: list[str] = attrs.field(factory=list)
    do_fusion: bool = True
    skip_fusion_layers: list[str] = attrs.field(factory=list)
    fusions: list[Fusion] = attrs.field(factory=list)
    weights_from_record: bool = False
    applied: list[str] = attrs.field(factory=list)

    def record_fusion(self, kind: str, target: Layer, merged: Sequence[Layer]) -> None:
        """Note that ``merged`` were folded into ``target`` (for quant.json and the
        target's ``meta["fused_from"]``: its own name first, then every merged layer)."""
        names = tuple(x.name for x in merged)
        target.meta["fused_from"] = list(target.meta.get("fused_from", [target.name])) + list(names)
        self.fusions.append(Fusion(kind, target.name, names))


class Pass:
    """Base class of every pass.  Subclass, set ``name``, implement ``run``."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    runs_after: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class FunctionPass(Pass):
    """A pass made from a plain function ``fn(graph, ctx) -> PassResult | bool``."""

    def __init__(self, fn, name: str, requires: tuple[str, ...] = (),
                 runs_after: tuple[str, ...] = ()) -> None:
        self._fn = fn
        # Instance attributes shadow the ClassVar defaults on purpose.
        self.name = name  # type: ignore[misc]
        self.requires = tuple(requires)  # type: ignore[misc]
        self.runs_after = tuple(runs_after)  # type: ignore[misc]
        self.__doc__ = fn.__doc__

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        out = self._fn(graph, ctx)
        if isinstance(out, PassResult):
            return out
        return PassResult(bool(out))
