"""amct: INT8 post-training quantization of Caffe models for Ascend NPUs.

The public entry points are re-exported here (and by the compatibility module
``amct_caffe``).  Submodules are imported lazily so ``import amct`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "load_caffe": "amct.frontends.caffe",
    "save_caffe": "amct.frontends.caffe",
    "random_weights": "amct.ir.random",
    "Graph": "amct.ir",
    "Layer": "amct.ir",
    "LayerDef": "amct.ir",
    "register_layer": "amct.ir",
    "register_function_layer": "amct.ir",
    # AMCT-compatible PTQ flow (amct/api.py)
    "create_quant_config": "amct.api",
    "init": "amct.api",
    "quantize_model": "amct.api",
    "save_model": "amct.api",
    "convert_model": "amct.api",
    "quantize": "amct.api",
    "correct_bias": "amct.bias_correction",
    "round_weights": "amct.weight_rounding",
    "accuracy_based_auto_calibration": "amct.auto_calibration",
    "ModelEvaluator": "amct.auto_calibration",
    # pass framework (amct/passes)
    "QuantizeResult": "amct.api",
    "quantized_graph": "amct.api",
    "QuantConfig": "amct.config",
    "capture_inputs": "amct.runtime",
    "AutoCalibrationEvaluatorBase": "amct.auto_calibration",
    # pass framework (amct/passes)
    "register_pass": "amct.passes",
    "PassManager": "amct.passes",
    "pipeline": "amct.passes",
    "PassContext": "amct.passes",
    "Pass": "amct.passes",
    "PassResult": "amct.passes",
}
_SUBMODULES = {"runtime", "ir", "passes", "layers", "errors", "proto", "frontends", "backends",
               "quant", "data", "cli", "report", "config", "api", "auto_calibration",
               "bias_correction", "weight_rounding"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"amct.{name}")
    raise AttributeError(f"module 'amct' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
