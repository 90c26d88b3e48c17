"""The pipelines the API runs, as editable ``PassManager`` templates.

``pipeline("calibration")`` (quantize_model), ``pipeline("quantize")``
(save_model) and ``pipeline("convert")`` (convert_model) return the managers
the API copies before every run, so a user customises the AMCT-compatible
flow without touching its signatures::

    amct.passes.pipeline("calibration").insert_before("fuse_conv_bn_scale", MyPass())
    amct.passes.pipeline("calibration").disable("fold_bn_scale_into_next_conv")

``reset_pipelines()`` restores the built-in lists.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from amct.errors import PassError
from amct.passes.manager import PassManager

FUSION_PIPELINE = ("fuse_conv_bn_scale", "fold_bn_scale_into_next_conv")
CALIBRATION_PIPELINE = FUSION_PIPELINE + ("mark_quant_layers", "quantize_weights",
                                          "insert_calibration")
QUANTIZE_PIPELINE = ("remove_calibration", "build_layer_quant", "quantize_bias", "insert_quant",
                     "insert_dequant")
CONVERT_PIPELINE = FUSION_PIPELINE + ("mark_quant_layers", "quantize_weights") + QUANTIZE_PIPELINE

_BUILTIN = {"calibration": CALIBRATION_PIPELINE, "quantize": QUANTIZE_PIPELINE,
            "convert": CONVERT_PIPELINE}
_TEMPLATES: dict[str, PassManager] = {}


def pipeline(kind: str) -> PassManager:
    """The (mutable) template of pipeline ``kind``: calibration, quantize or convert."""
    if kind not in _BUILTIN:
        raise PassError(f"unknown pipeline '{kind}' (known: {', '.join(_BUILTIN)})")
    if kind not in _TEMPLATES:
        _TEMPLATES[kind] = PassManager(_BUILTIN[kind])
    return _TEMPLATES[kind]


def reset_pipelines() -> None:
    """Forget every customisation of the pipeline templates."""
    _TEMPLATES.clear()


@contextlib.contextmanager
def disabled_passes(names: Iterable[str]) -> Iterator[None]:
    """Disable passes by name in every built-in pipeline for the duration of
    the block (``--disable-pass`` of the CLI).  A name no pipeline contains is
    an error, so a typo does not silently quantize differently."""
    names = [n for n in names if n]
    known = {n for p in _BUILTIN.values() for n in p}
    for kind in _BUILTIN:
        known.update(pipeline(kind).names)
    unknown = sorted(set(names) - known)
    if unknown:
        raise PassError(f"cannot disable unknown pass(es) {', '.join(unknown)}; "
                        f"passes: {', '.join(sorted(known))}")
    saved = {kind: set(pipeline(kind).disabled) for kind in _BUILTIN}
    try:
        for kind in _BUILTIN:
            present = [n for n in names if n in pipeline(kind).names]
            pipeline(kind).disable(*present)
        yield
    finally:
        for kind, before in saved.items():
            pipeline(kind).disabled = before
