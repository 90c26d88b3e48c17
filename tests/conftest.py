"""Shared test fixtures: where the real models and golden data are."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
# ../shared next to the checkout (CI lays it out so); override with AMCT_SHARED.
SHARED = Path(os.environ.get("AMCT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
MODELS = SHARED / "models"


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (the shared/ folder is laid beside the checkout in CI)")
    return p


def bench_accuracy():
    """bench/accuracy.py as a module (its real-image cases), or a skip when
    Pillow or shared/'s images are missing."""
    import sys

    pytest.importorskip("PIL")
    shared_or_skip("models", "images")
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    import accuracy

    return accuracy


def fake_quant_cosines(case: dict, calib: list, evals: list, prefix: str, **options) -> dict:
    """Cosine of every output, fake-quant against fp32 on ``evals``, after
    ``amct.quantize`` of ``case``'s model on ``calib`` with ``options``."""
    import amct

    acc = bench_accuracy()
    model, weights = str(case["model"]), str(case["weights"])
    ref = acc._run_all(amct.load_caffe(model, weights), evals)
    res = amct.quantize(model, weights, calib, prefix, save_type="Fakequant", **options)
    got = acc._run_all(amct.load_caffe(res.outputs["fake_model"], res.outputs["fake_weights"]),
                       evals)
    return {k: acc.cosine(ref[k], got[k]) for k in ref}


@pytest.fixture
def golden_dir():
    return shared_or_skip("golden")


@pytest.fixture
def models_dir():
    return shared_or_skip("models")


@pytest.fixture(autouse=True)
def restore_amct_logger():
    """``amct.cli.main()`` installs console/file handlers on the "amct" logger and
    stops propagation; undo that after every test so later tests (caplog) still
    see the toolkit's records."""
    import logging

    logger = logging.getLogger("amct")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for h in list(logger.handlers):
        if h not in saved[0]:
            logger.removeHandler(h)
            h.close()
    logger.propagate, logger.level = saved[1], saved[2]
