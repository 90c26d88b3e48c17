"""bench/accuracy.py split_case / split_work (the --split of the benches): held-out divisions."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("PIL")

from conftest import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from accuracy import split_case, split_work  # noqa: E402


def _case() -> dict:
    # Two calibration batches of 4 and 3 inputs, one evaluation batch of 2;
    # each input is filled with its own id so the division can be read back.
    calib = [np.arange(0, 4).reshape(4, 1), np.arange(4, 7).reshape(3, 1)]
    evals = [np.arange(10, 12).reshape(2, 1), np.arange(20, 21).reshape(1, 1)]
    return {"model": "m", "weights": "w", "calib": calib, "eval": evals}


def _ids(batches) -> list[list[int]]:
    return [b.ravel().tolist() for b in batches]


def test_bench_split_keeps_the_batches() -> None:
    c = _case()
    s = split_case(c, "bench")
    assert _ids(s["calib"]) == _ids(c["calib"]) and _ids(s["eval"]) == _ids(c["eval"])
    assert s["model"] == "m" and s["weights"] == "w"


def test_swap_exchanges_calibration_and_evaluation() -> None:
    s = split_case(_case(), "swap")
    assert _ids(s["calib"]) == [[10, 11], [20]]
    assert _ids(s["eval"]) == [[0, 1, 2, 3], [4, 5, 6]]
    assert s["model"] == "m"


def test_mixed_gives_each_batch_first_half_to_calibration() -> None:
    s = split_case(_case(), "mixed")
    # A single-input batch cannot be divided and is left out of both sides.
    assert _ids(s["calib"]) == [[0, 1], [4], [10]]
    assert _ids(s["eval"]) == [[2, 3], [5, 6], [11]]
    flat = sum(_ids(s["calib"]) + _ids(s["eval"]), [])
    assert sorted(flat) == [0, 1, 2, 3, 4, 5, 6, 10, 11]


def test_covered_calibrates_on_both_and_evaluates_on_the_evaluation_batches() -> None:
    s = split_case(_case(), "covered")
    assert _ids(s["calib"]) == [[0, 1, 2, 3], [4, 5, 6], [10, 11], [20]]
    assert _ids(s["eval"]) == [[10, 11], [20]]


def test_zoom_views_go_to_calibration_with_their_images() -> None:
    c = dict(_case(), zoom={"calib": [np.array([[100]]), np.array([[101]])],
                            "eval": [np.array([[110]]), np.array([[120]])]})
    bench = split_case(c, "bench")
    assert _ids(bench["calib"]) == [[0, 1, 2, 3, 100], [4, 5, 6, 101]]
    assert _ids(bench["eval"]) == [[10, 11], [20]] and "zoom" not in bench
    assert _ids(split_case(c, "swap")["calib"]) == [[10, 11, 110], [20, 120]]
    assert _ids(split_case(c, "swap")["eval"]) == [[0, 1, 2, 3], [4, 5, 6]]
    # mixed leaves the single-input batch [20] out, and its zoom view with it
    assert _ids(split_case(c, "mixed")["calib"]) == [[0, 1, 100], [4, 101], [10, 110]]
    assert _ids(split_case(c, "mixed")["eval"]) == [[2, 3], [5, 6], [11]]
    assert _ids(split_case(c, "covered")["calib"]) == [[0, 1, 2, 3, 100], [4, 5, 6, 101],
                                                       [10, 11, 110], [20, 120]]
    assert "zoom" in c                                        # the case itself is not changed


def test_split_work_folders_and_models(tmp_path) -> None:
    models = ["lenet", "det1"]
    assert split_work(tmp_path, "bench", models) == (tmp_path, models)
    assert split_work(tmp_path, "swap", models) == (tmp_path / "split_swap", ["det1"])
