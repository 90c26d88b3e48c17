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
