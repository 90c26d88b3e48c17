"""What GPTQ weight rounding costs: time and peak memory of ``amct.quantize`` with and without it.

Usage::

    python bench/weight_rounding.py [--model ultraface|det3|cifar10|resnet50] [--images 4]
                                    [--work bench/_work/weight_rounding]

The comparison of ``bench/bias_correction.py``, for the other post-calibration
step: ``amct.quantize`` with ``weight_rounding="nearest"`` (the reference:
AMCT's flow) and with ``"gptq"``, both without bias correction, each in a
fresh subprocess.  Printed: wall time and peak RSS (VmHWM) of each, the ratios
with/without, and the cosine of every output against fp32 on the evaluation
images.  ``resnet50`` (seeded random weights, 32 real crops) shows the cost on
a large net.
"""
from __future__ import annotations

import sys

import bias_correction  # bench/ is on sys.path when run as a script

if __name__ == "__main__":
    sys.exit(bias_correction.main(step="weight_rounding", doc=__doc__, script=__file__))
