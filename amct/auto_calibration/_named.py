"""Resolve a strategy/sensitivity given by name or as an instance."""
from __future__ import annotations

from amct.errors import CalibrationError


def resolve(spec, base: type, by_name: dict[str, type], what: str):
    """``spec`` itself if it is a ``base`` instance, else the class named ``spec``, instantiated."""
    if isinstance(spec, base):
        return spec
    if isinstance(spec, str) and spec in by_name:
        return by_name[spec]()
    raise CalibrationError(f"unknown {what} {spec!r}; use one of {sorted(by_name)} "
                           f"or a {base.__name__} instance")
