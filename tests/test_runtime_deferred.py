"""Work deferred to the end of a forward pass (amct.layers._deferred)."""
from __future__ import annotations

import pytest

from amct.layers._deferred import after_forward, deferred_scope


def test_outside_a_pass_work_runs_at_once() -> None:
    seen = []
    after_forward(lambda: seen.append("now"))
    assert seen == ["now"]


def test_work_runs_at_the_end_then_final_work_once_per_key() -> None:
    seen = []
    with deferred_scope():
        after_forward(lambda: seen.append("a"))
        after_forward(lambda: seen.append("flush-1"), final_key="rec")
        after_forward(lambda: seen.append("b"))
        after_forward(lambda: seen.append("flush-2"), final_key="rec")   # same key: ignored
        with deferred_scope():                                              # a nested pass
            after_forward(lambda: seen.append("inner"))
        assert seen == ["inner"]
    assert seen == ["inner", "a", "b", "flush-1"]


def test_a_failed_pass_still_runs_its_work_and_raises_its_own_error() -> None:
    seen = []

    def broken():
        raise RuntimeError("deferred work failed")

    with pytest.raises(ValueError, match="the pass failed"):
        with deferred_scope():
            after_forward(lambda: seen.append("done"))
            after_forward(broken)
            raise ValueError("the pass failed")
    assert seen == ["done"]
    # A successful pass propagates the work's own error, after running the rest.
    seen.clear()
    with pytest.raises(RuntimeError, match="deferred work failed"):
        with deferred_scope():
            after_forward(broken)
            after_forward(lambda: seen.append("other"))
            after_forward(lambda: seen.append("flush"), final_key="rec")
    assert seen == ["other", "flush"]
