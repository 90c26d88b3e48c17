"""Reports: model inspection, per-layer quantization statistics, report files and plots."""
