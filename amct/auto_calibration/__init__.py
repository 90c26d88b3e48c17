"""Accuracy-based automatic calibration (AMCT's ``accuracy_based_auto_calibration``).

Quantize everything, and if the user's metric is not good enough, rank the
quantized layers by how much quantization changes their output and search for
the smallest number of the least similar layers that must stay in float.
"""
from amct.auto_calibration.evaluator import AutoCalibrationEvaluatorBase, ModelEvaluator
from amct.auto_calibration.search import (AutoCalibrationResult, accuracy_based_auto_calibration)
from amct.auto_calibration.sensitivity import CosineSimilarity, Sensitivity, get_sensitivity
from amct.auto_calibration.strategy import BinarySearch, SearchStrategy, get_strategy

__all__ = ["accuracy_based_auto_calibration", "AutoCalibrationEvaluatorBase", "ModelEvaluator",
           "Sensitivity", "CosineSimilarity", "SearchStrategy", "BinarySearch",
           "AutoCalibrationResult", "get_sensitivity", "get_strategy"]
