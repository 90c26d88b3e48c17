"""The layer-type registry: one definition per Caffe layer type.

A ``LayerDef`` holds everything the toolkit knows about one layer type: which
``*_param`` field configures it, how to infer its output shapes, the shapes of
its learned blobs, and how to build a numpy kernel for the runtime.  The
definitions live in ``amct.layers`` (one module per layer family) and register
themselves with ``@register_layer``; users add their own types the same way.

Kernel contract: ``build(layer, in_shapes)`` returns a callable taking the list
of input arrays (float32, shapes ``in_shapes``) and returning the list of output
arrays.  A kernel never writes into its inputs; it may keep state prepared at
build time (reshaped weights, index tables).  ``build`` runs once per shape.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import numpy as np

from amct.errors import AmctError, UnsupportedLayerError

Shape = tuple[int, ...]
Kernel = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class LayerDef:
    """Semantics of one layer type.  Subclass and decorate with ``@register_layer``."""

    #: Caffe type string, e.g. "Convolution".
    type: ClassVar[str] = ""
    #: Name of the ``LayerParameter`` field carrying this type's parameters.
    param_field: ClassVar[str | None] = None
    #: Minimum number of learned blobs a loaded layer must carry (0: none needed).
    min_blobs: ClassVar[int] = 0
    #: True for layers that have no computation at inference (Dropout, Split...).
    identity: ClassVar[bool] = False
    #: True when the output shape depends on the input *values*
    #: (DetectionOutput: one row per detection).  ``infer_shapes`` then gives
    #: Caffe's setup shape, and the executor accepts any shape at run time.
    data_dependent_shapes: ClassVar[bool] = False

    def infer_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        raise NotImplementedError

    def param_shapes(self, layer, in_shapes: list[Shape]) -> list[Shape]:
        """Shapes of the learned blobs (used to check loaded weights and to
        make random ones).  Empty for parameter-free layers."""
        return []

    def bind(self, layer, graph) -> None:
        """Called by the runtime before ``build`` with the whole graph, for the
        few layer types whose behaviour depends on their neighbours (e.g. a
        Quant layer in a deploy model emits integers because its object layer
        carries int8 weights).  May set ``layer.meta`` entries; default: nothing."""

    def build(self, layer, in_shapes: list[Shape]) -> Kernel:
        raise UnsupportedLayerError(
            f"layer '{layer.name}': type '{self.type}' has no runtime kernel")


_REGISTRY: dict[str, LayerDef] = {}


class RegistryError(AmctError, ValueError):
    """A layer type was registered twice without ``replace=True``."""


def register_layer(cls_or_type=None, *, replace: bool = False):
    """Register a ``LayerDef`` subclass (used as a class decorator).

    ``@register_layer`` uses the class's ``type``; registering a type that
    already exists raises ``RegistryError`` unless ``replace=True``.
    """

    def deco(cls):
        inst = cls() if isinstance(cls, type) else cls
        name = inst.type
        if not name:
            raise RegistryError(f"{cls!r} has no 'type'")
        if name in _REGISTRY and not replace:
            raise RegistryError(f"layer type '{name}' is already registered "
                                f"(by {type(_REGISTRY[name]).__module__}); pass replace=True")
        _REGISTRY[name] = inst
        return cls

    if cls_or_type is None:
        return deco
    return deco(cls_or_type)


def register_function_layer(type_name: str, infer_shapes: Callable, forward: Callable | None = None,
                            param_shapes: Callable | None = None, param_field: str | None = None,
                            min_blobs: int = 0, replace: bool = False) -> LayerDef:
    """Register a layer type from plain functions.

    ``infer_shapes(layer, in_shapes) -> out_shapes``;
    ``forward(layer, inputs) -> outputs`` (called every forward pass);
    ``param_shapes(layer, in_shapes) -> blob shapes`` (optional).
    """
    attrs_ = {"type": type_name, "param_field": param_field, "min_blobs": min_blobs,
              "infer_shapes": lambda self, layer, s: [tuple(x) for x in infer_shapes(layer, s)]}
    if param_shapes is not None:
        attrs_["param_shapes"] = lambda self, layer, s: param_shapes(layer, s)
    if forward is not None:
        attrs_["build"] = lambda self, layer, s: (lambda xs: list(forward(layer, xs)))
    cls = type(f"{type_name}Def", (LayerDef,), attrs_)
    register_layer(cls, replace=replace)
    return _REGISTRY[type_name]


def unregister_layer(type_name: str) -> None:
    _REGISTRY.pop(type_name, None)


def _ensure_builtin() -> None:
    import amct.layers  # noqa: F401  (importing registers the built-in types)


def get_layer_def(type_name: str) -> LayerDef | None:
    _ensure_builtin()
    return _REGISTRY.get(type_name)


def require_layer_def(layer) -> LayerDef:
    d = get_layer_def(layer.type)
    if d is None:
        raise UnsupportedLayerError(
            f"layer '{layer.name}': unknown layer type '{layer.type}' "
            "(register it with amct.register_layer to give it semantics)")
    return d


def registered_types() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)
