"""PassManager: run an ordered pipeline of passes with checked ordering and invariants.

Usage::

    pm = PassManager(["fuse_conv_bn_scale", "mark_quant_layers", MyPass()],
                     disabled=["fold_bn_scale_into_next_conv"])
    pm.insert_after("fuse_conv_bn_scale", OtherPass())
    report = pm.run(graph, ctx)

Before running, every ``requires`` entry must be satisfied by an enabled pass
earlier in the pipeline or by a pass already applied to this graph
(``ctx.applied``), and every ``runs_after`` entry present in the pipeline must
come earlier; otherwise ``PassError`` names both passes.  After each pass (when
``check``) the graph must stay well formed and its shapes inferable; a failure
names the pass and the passes that ran before it.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Sequence

import attrs

from amct.errors import AmctError, PassError
from amct.ir import Graph
from amct.passes.base import Pass, PassContext, PassResult
from amct.passes.registry import get_pass

log = logging.getLogger("amct")


@attrs.frozen
class PassRun:
    """One line of a report: a pass that ran (or was disabled)."""

    name: str
    ran: bool
    changed: bool = False
    seconds: float = 0.0
    stats: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class PassReport:
    """What a pipeline did, pass by pass, in order."""

    runs: tuple[PassRun, ...]

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.runs)

    def __getitem__(self, name: str) -> PassRun:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    def summary(self) -> str:
        lines = []
        for r in self.runs:
            if not r.ran:
                lines.append(f"{r.name:<32} disabled")
                continue
            stats = " ".join(f"{k}={v}" for k, v in r.stats.items())
            lines.append(f"{r.name:<32} {r.seconds * 1e3:8.1f} ms  "
                         f"{'changed' if r.changed else 'unchanged':<9} {stats}".rstrip())
        return "\n".join(lines)


def _as_pass(p: Pass | str) -> Pass:
    if isinstance(p, str):
        return get_pass(p)
    if isinstance(p, Pass):
        return p
    if isinstance(p, type) and issubclass(p, Pass):
        return p()
    raise PassError(f"pipeline entry {p!r} is neither a Pass nor a registered pass name")


class PassManager:
    """An ordered pipeline of passes (instances or registered names)."""

    def __init__(self, passes: Sequence[Pass | str] = (), disabled: Iterable[str] = (),
                 check: bool = True) -> None:
        self._passes: list[Pass] = []
        for p in passes:
            self.append(p)
        self.disabled: set[str] = set(disabled)
        self.check = check

    # ---------------------------------------------------------- composition
    @property
    def names(self) -> list[str]:
        return [p.name for p in self._passes]

    @property
    def passes(self) -> list[Pass]:
        return list(self._passes)

    def _index(self, name: str) -> int:
        for i, p in enumerate(self._passes):
            if p.name == name:
                return i
        raise PassError(f"pass '{name}' is not in the pipeline ({', '.join(self.names)})")

    def _new(self, p: Pass | str) -> Pass:
        inst = _as_pass(p)
        if inst.name in self.names:
            raise PassError(f"pass '{inst.name}' is already in the pipeline")
        return inst

    def append(self, p: Pass | str) -> "PassManager":
        self._passes.append(self._new(p))
        return self

    def insert_after(self, name: str, p: Pass | str) -> "PassManager":
        """Put ``p`` right after the pass called ``name``."""
        inst = self._new(p)
        self._passes.insert(self._index(name) + 1, inst)
        return self

    def insert_before(self, name: str, p: Pass | str) -> "PassManager":
        """Put ``p`` right before the pass called ``name``."""
        inst = self._new(p)
        self._passes.insert(self._index(name), inst)
        return self

    def remove(self, name: str) -> "PassManager":
        del self._passes[self._index(name)]
        return self

    def disable(self, *names: str) -> "PassManager":
        self.disabled.update(names)
        return self

    def copy(self) -> "PassManager":
        """An independent manager with the same passes, disabled set and check flag."""
        return PassManager(self._passes, self.disabled, self.check)

    # ------------------------------------------------------------- checking
    def validate(self, applied: Iterable[str] = ()) -> None:
        """Raise ``PassError`` unless every ordering constraint holds."""
        unknown = sorted(self.disabled - set(self.names) - set(_registered_names()))
        if unknown:
            raise PassError(f"cannot disable unknown pass(es): {', '.join(unknown)}")
        done = set(applied)
        enabled = [p for p in self._passes if p.name not in self.disabled]
        names = [p.name for p in enabled]
        for i, p in enumerate(enabled):
            earlier, later = set(names[:i]), names[i + 1:]
            for r in p.requires:
                if r in earlier or r in done:
                    continue
                if r in later:
                    raise PassError(f"pass '{p.name}' requires pass '{r}', which comes after it "
                                    "in the pipeline")
                if r in self.disabled:
                    raise PassError(f"pass '{p.name}' requires pass '{r}', which is disabled")
                raise PassError(f"pass '{p.name}' requires pass '{r}', which is not in the "
                                f"pipeline ({', '.join(names)})")
            for r in p.runs_after:
                if r in later:
                    raise PassError(f"pass '{p.name}' must run after pass '{r}', but '{r}' comes "
                                    "later in the pipeline")

    # -------------------------------------------------------------- running
    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassReport:
        """Run the enabled passes in order on ``graph`` (mutated in place)."""
        ctx = ctx if ctx is not None else PassContext()
        self.validate(ctx.applied)
        runs: list[PassRun] = []
        before: list[str] = []
        for p in self._passes:
            if p.name in self.disabled:
                log.info("pass %s: disabled", p.name)
                runs.append(PassRun(p.name, ran=False))
                continue
            t0 = time.perf_counter()
            try:
                res = p.run(graph, ctx)
            except AmctError:
                raise
            except Exception as e:  # a bug in a pass: say which pass
                raise PassError(f"pass '{p.name}' failed: {type(e).__name__}: {e}") from e
            if not isinstance(res, PassResult):
                raise PassError(f"pass '{p.name}' returned {type(res).__name__}, expected PassResult")
            dt = time.perf_counter() - t0
            if self.check:
                self._check_invariants(graph, p.name, before)
            before.append(p.name)
            ctx.applied.append(p.name)
            runs.append(PassRun(p.name, True, res.changed, dt, dict(res.stats)))
            log.info("pass %s: %.1f ms, %s%s", p.name, dt * 1e3,
                     "changed" if res.changed else "unchanged",
                     "".join(f", {k}={v}" for k, v in res.stats.items()))
        return PassReport(tuple(runs))

    @staticmethod
    def _check_invariants(graph: Graph, name: str, before: list[str]) -> None:
        try:
            graph.check()
            graph.infer_value_shapes()
        except AmctError as e:
            prior = ", ".join(before) if before else "none"
            raise PassError(f"graph invariant broken after pass '{name}' (passes run before it: "
                            f"{prior}): {e}") from e


def _registered_names() -> list[str]:
    from amct.passes.registry import registered_passes
    return registered_passes()
