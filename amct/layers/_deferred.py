"""Work a kernel hands to the end of the current forward pass.

A calibration layer that has seen its last batch has to compute its factors
and write the record.  Doing that at once stalls the forward pass on the
sort of the batch it has just been given (IFMR sorts in a background
thread); at the end of the pass, the later layers have given that thread the
time to finish.  The executor opens a scope around every run of its steps
(``deferred_scope``); kernels call ``after_forward``.  Outside a scope (a
kernel called directly) the work runs at once.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Iterator

log = logging.getLogger("amct.runtime")

_LOCAL = threading.local()


class _Scope:
    def __init__(self) -> None:
        self.work: list[Callable[[], None]] = []
        self.final: dict[object, Callable[[], None]] = {}

    def run(self) -> None:
        # Every piece runs even if an earlier one fails (a failed layer must
        # not keep the others' factors out of the record); the first error
        # is raised at the end.
        first: Exception | None = None
        for fn in [*self.work, *self.final.values()]:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - re-raised below
                first = first or e
        if first is not None:
            raise first


def after_forward(fn: Callable[[], None], *, final_key: object = None) -> None:
    """Run ``fn`` when the current forward pass has run all its steps.

    With ``final_key``, ``fn`` runs after all the other work, once per key
    and pass (the first registration counts): e.g. one record write for all
    the calibration layers that finished in the pass.
    """
    stack = getattr(_LOCAL, "stack", None)
    if not stack:
        fn()
    elif final_key is None:
        stack[-1].work.append(fn)
    else:
        stack[-1].final.setdefault(final_key, fn)


@contextlib.contextmanager
def deferred_scope() -> Iterator[None]:
    """Collect ``after_forward`` work while the body runs, then run it in order.

    If the body fails, the collected work still runs (the layers it belongs
    to did finish) and the body's exception is the one raised; a failure of
    the work itself is then only logged.
    """
    stack = _LOCAL.__dict__.setdefault("stack", [])
    stack.append(_Scope())
    try:
        yield
    except BaseException:
        try:
            stack.pop().run()
        except Exception:  # noqa: BLE001 - the forward pass's own error wins
            log.exception("deferred work failed after a failed forward pass")
        raise
    stack.pop().run()
