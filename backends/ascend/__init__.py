"""Ascend backend: fake-quant and deploy Caffe models plus quant.json from a quantized graph."""
from amct.backends.ascend.deploy import build_deploy
from amct.backends.ascend.emit import output_paths, parse_save_type, save_outputs
from amct.backends.ascend.fake_quant import build_fake_quant
from amct.backends.ascend.quant_json import quant_info, quant_json_text

__all__ = ["build_fake_quant", "build_deploy", "quant_info", "quant_json_text", "save_outputs",
           "output_paths", "parse_save_type"]
