"""Graph passes: the pass framework and the built-in PTQ passes.

Pipelines (lists of pass names, in order) used by the API:

* ``CALIBRATION_PIPELINE`` (quantize_model): fuse, select layers, ARQ weights,
  insert calibration layers -> the modified model.
* ``QUANTIZE_PIPELINE`` (save_model, on a copy of that graph): drop the
  calibration layers, combine record + weight factors, int32 bias, insert
  Quant/DeQuant -> the quantized graph the emitters write.
* ``CONVERT_PIPELINE`` (convert_model): both without calibration.

``pipeline(kind)`` returns the editable template the API runs (copied per
run).  See docs/passes.md for writing and registering a pass.
"""
from amct.passes.base import Fusion, FunctionPass, Pass, PassContext, PassResult
from amct.passes.manager import PassManager, PassReport, PassRun
from amct.passes.registry import get_pass, register_pass, registered_passes, unregister_pass

# Importing the pass modules registers the built-in passes.
from amct.passes import (fuse_conv_bn_scale, fold_bn_scale_into_next_conv,  # noqa: E402,F401
                         mark_quant_layers, quantize_weights, insert_calibration,
                         remove_calibration, build_layer_quant, quantize_bias, insert_quant,
                         insert_dequant)

from amct.passes.pipelines import (CALIBRATION_PIPELINE, CONVERT_PIPELINE,  # noqa: E402
                                  FUSION_PIPELINE, QUANTIZE_PIPELINE, disabled_passes,
                                  pipeline, reset_pipelines)

__all__ = ["Pass", "PassResult", "PassContext", "Fusion", "FunctionPass", "PassManager",
           "PassReport", "PassRun", "register_pass", "unregister_pass", "get_pass",
           "registered_passes", "FUSION_PIPELINE", "CALIBRATION_PIPELINE", "QUANTIZE_PIPELINE",
           "CONVERT_PIPELINE", "pipeline", "reset_pipelines", "disabled_passes"]
