"""The evaluator contract users implement for automatic calibration."""
from __future__ import annotations

import abc
from typing import Any


class AutoCalibrationEvaluatorBase(abc.ABC):
    """What ``accuracy_based_auto_calibration`` needs from the user.

    ``calibration`` runs the calibration forwards (batch_num of them) of the
    given *modified* model with the toolkit's runtime, exactly as in the manual
    flow; ``evaluate`` returns the metric of a model on the user's evaluation
    data; ``metric_eval`` says whether a quantized metric is acceptable compared
    with the float one, and by how much it lost.
    """

    @abc.abstractmethod
    def calibration(self, model_file: str, weights_file: str) -> None:
        """Run batch_num forward passes of the modified model."""

    @abc.abstractmethod
    def evaluate(self, model_file: str, weights_file: str) -> Any:
        """Return the metric (any value ``metric_eval`` understands)."""

    @abc.abstractmethod
    def metric_eval(self, original_metric: Any, new_metric: Any) -> tuple[bool, float]:
        """Return (acceptable, loss) for a quantized model's metric."""


#: The name the toolkit's own docs use.
ModelEvaluator = AutoCalibrationEvaluatorBase
