"""The pass registry: pass names are public vocabulary, so they are unique.

``@register_pass`` registers a ``Pass`` subclass (its ``name``), or a plain
function (``@register_pass(name="my_pass", requires=(...))``).  Registering a
name twice raises ``PassError`` unless ``replace=True``.
"""
from __future__ import annotations


from amct.errors import PassError
from amct.passes.base import FunctionPass, Pass

_PASSES: dict[str, Pass] = {}


def register_pass(obj=None, *, name: str | None = None, requires: tuple[str, ...] = (),
                  runs_after: tuple[str, ...] = (), replace: bool = False):
    """Register a pass class, instance or function; returns it unchanged.

    Usable bare (``@register_pass`` on a ``Pass`` subclass) or with arguments
    (``@register_pass(name="x", requires=("fuse_conv_bn_scale",))`` on a
    function ``fn(graph, ctx) -> PassResult | bool``).
    """

    def deco(target):
        if isinstance(target, type) and issubclass(target, Pass):
            inst = target()
        elif isinstance(target, Pass):
            inst = target
        elif callable(target):
            inst = FunctionPass(target, name or target.__name__, requires, runs_after)
        else:
            raise PassError(f"register_pass: {target!r} is neither a Pass nor a function")
        if not inst.name:
            raise PassError(f"register_pass: {target!r} has no name")
        if inst.name in _PASSES and not replace:
            raise PassError(f"pass '{inst.name}' is already registered "
                            f"(by {type(_PASSES[inst.name]).__module__}); pass replace=True")
        _PASSES[inst.name] = inst
        return target

    if obj is None:
        return deco
    return deco(obj)


def unregister_pass(name: str) -> None:
    """Forget a registered pass (no error when absent)."""
    _PASSES.pop(name, None)


def get_pass(name: str) -> Pass:
    """The registered pass called ``name``."""
    _ensure_builtin()
    try:
        return _PASSES[name]
    except KeyError:
        raise PassError(f"unknown pass '{name}' (registered: {', '.join(sorted(_PASSES))})") from None


def registered_passes() -> list[str]:
    _ensure_builtin()
    return sorted(_PASSES)


def _ensure_builtin() -> None:
    import amct.passes  # noqa: F401  (importing the package registers the built-ins)


