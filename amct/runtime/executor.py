"""Compile a ``Graph`` into an execution plan and run it on numpy arrays.

A ``Program`` is the graph lowered for one set of input shapes: one ``Step``
per layer, in execution order, each holding the layer's built kernel and the
value ids (SSA versions of Caffe blobs, see ``amct.ir.graph``) it reads and
writes.  Running the plan keeps a dict ``value id -> array``; a value is
dropped right after its last reader has run unless the caller asked to keep
it, so a forward pass over a deep net holds only the live activations.

Observers let other code (calibration, sensitivity analysis, the golden
tests) look at every output the moment it is produced, without the executor
keeping a copy of each activation.
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import attrs
import numpy as np

from amct.errors import AmctError, DataError, GraphError, ShapeError, UnsupportedLayerError
from amct.ir.graph import INPUT_TYPES, Graph, blob_of
from amct.ir.layer import Layer
from amct.ir.registry import Kernel, LayerDef, Shape, require_layer_def
from amct.layers._deferred import deferred_scope
from amct.layers._im2col import adapt_threads, single_blas
from amct.runtime import optimize as opt

log = logging.getLogger("amct.runtime")

#: ``fn(layer, top_index, blob_name, value_id, array)``; its return value is ignored.
Observer = Callable[[Layer, int, str, str, np.ndarray], None]

# How many compiled plans (one per distinct set of input shapes) a Program
# caches; forward_all alternates between a full and a last partial batch.
_PLAN_CACHE_SIZE = 4
# Run schedules cached per plan (one per distinct range / kept set / observers).
_SCHEDULE_CACHE_SIZE = 8


class ExecutionError(AmctError, RuntimeError):
    """A layer's kernel failed or returned outputs that break its contract."""


@attrs.define(eq=False)
class Step:
    """One layer of a compiled plan."""

    index: int
    layer: Layer
    ldef: LayerDef | None            # None for Input layers (fed from outside)
    kernel: Kernel | None
    in_vids: list[str]
    out_vids: list[str]
    in_shapes: list[Shape]
    out_shapes: list[Shape]
    #: For a step made by the optimizer: the layers it runs as one kernel
    #: (``layer`` is the last of them, the producer of its output).
    fused: tuple[Layer, ...] = ()
    #: Fixed at compile time (the inner loop of a run tests it per step).
    is_input: bool = attrs.field(init=False)

    def __attrs_post_init__(self):
        self.is_input = self.layer.type in INPUT_TYPES

    @property
    def dynamic(self) -> bool:
        """The output shapes are only Caffe's setup shapes (LayerDef.data_dependent_shapes)."""
        return self.ldef is not None and self.ldef.data_dependent_shapes


@attrs.define(eq=False)
class _ObserverEntry:
    fn: Observer
    blobs: frozenset[str] | None     # blob names or value ids; None: all
    layers: frozenset[str] | None    # layer names; None: all

    def wants(self, layer: Layer, blob: str, vid: str) -> bool:
        if self.layers is not None and layer.name not in self.layers:
            return False
        return self.blobs is None or blob in self.blobs or vid in self.blobs


@attrs.define(eq=False)
class _Plan:
    shapes_key: tuple
    steps: list[Step]
    value_shapes: dict[str, Shape]
    chains: list = attrs.Factory(list)                  # optimize.FoldChain
    fused: dict = attrs.Factory(dict)                   # (chain id, n) -> Step
    schedules: OrderedDict = attrs.Factory(OrderedDict)  # run key -> optimize.Schedule
    input_dims: dict = attrs.Factory(dict)              # input blob -> shape (fast check)
    runs: OrderedDict = attrs.Factory(OrderedDict)       # run() outputs -> (Schedule, pairs)

    def __attrs_post_init__(self):
        self.input_dims = {k: tuple(v) for k, v in self.shapes_key}

    def forget_built(self) -> None:
        """Drop fused kernels and schedules (after kernels were rebuilt)."""
        self.fused.clear()
        self.schedules.clear()
        self.runs.clear()


def _identity_kernel(n_out: int) -> Kernel:
    # Layers flagged ``identity`` (Split, Dropout in TEST) pass their first
    # input through; a kernel never writes into inputs, so sharing is safe.
    return lambda xs: [xs[0]] * n_out


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view, so an observer cannot corrupt a value still in use."""
    if not isinstance(a, np.ndarray) or not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v


def _as_float32(name: str, x) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"input '{name}': cannot convert to a float32 array: {e}") from e


class Program:
    """A ``Graph`` compiled for execution.

    Build it with ``compile(graph)``.  The program follows the graph: if the
    layer list changes (layers added, removed or rewired) it re-compiles on
    the next run; if a layer's weights or parameters are edited in place,
    call ``rebuild(layers)`` so its kernel is built again.
    """

    def __init__(self, graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 batch_size: int | None = None, optimize: bool = True):
        self.graph = graph
        #: Fold/fuse layers and run elementwise layers in place where no caller
        #: can tell (see ``amct.runtime.optimize``); False runs the plain plan.
        self.optimize = bool(optimize)
        if self.optimize:
            opt.tune_malloc()
        self._observers: list[_ObserverEntry] = []
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._structure = self._fingerprint()
        self._plan = self._compile(self._resolve_inputs(input_shapes, batch_size))
        self._facts = self._graph_facts()

    # ----------------------------------------------------------- compilation
    def _fingerprint(self) -> tuple:
        return tuple((id(x), x.name, x.type, tuple(x.bottoms), tuple(x.tops))
                     for x in self.graph.layers)

    def _graph_facts(self) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]:
        """(inputs, outputs, final value id of each blob) of the graph as it is
        now; recomputed only when the structure changes (``run`` needs them on
        every call and the graph derives them by walking all layers)."""
        g = self.graph
        return tuple(g.inputs), tuple(g.outputs), dict(g.dataflow().final)

    def _resolve_inputs(self, given: Mapping[str, Sequence[int]] | None = None,
                        batch_size: int | None = None) -> dict[str, Shape]:
        """Input shapes: declared ones (batch axis replaced by ``batch_size``)
        overridden by ``given``; only blobs that are inputs of the graph now."""
        names = self.graph.inputs
        shapes = {k: tuple(v) for k, v in self.graph.input_shapes().items() if k in names}
        if batch_size is not None:
            shapes = {k: (int(batch_size),) + v[1:] if v else v for k, v in shapes.items()}
        for k, v in (given or {}).items():
            if k not in names:
                raise DataError(f"net '{self.graph.name}' ({self.graph.source}): '{k}' is not an "
                                f"input blob (inputs: {names})")
            shapes[k] = tuple(int(d) for d in v)
        return shapes

    def _compile(self, input_shapes: dict[str, Shape]) -> _Plan:
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        g = self.graph
        vshapes = g.infer_value_shapes(input_shapes)
        steps = []
        for i, layer in enumerate(g.layers):
            ins, outs = g.input_values(layer), g.output_values(layer)
            step = Step(i, layer, None, None, ins, outs, [vshapes[v] for v in ins],
                        [vshapes[v] for v in outs])
            if not step.is_input:
                step.ldef = require_layer_def(layer)
                step.kernel = self._build(step)
            steps.append(step)
        plan = _Plan(key, steps, vshapes)
        if self.optimize:
            plan.chains = opt.find_chains(steps)
        self._plans[key] = plan
        while len(self._plans) > _PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        log.debug("compiled '%s' for inputs %s (%d layers)", g.name, dict(key), len(steps))
        return plan

    def _build(self, step: Step) -> Kernel:
        layer, ldef = step.layer, step.ldef
        ldef.bind(layer, self.graph)
        try:
            return ldef.build(layer, list(step.in_shapes))
        except UnsupportedLayerError:
            if ldef.identity:
                return _identity_kernel(len(layer.tops))
            raise

    def recompile(self, input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        """Re-resolve the graph and re-build every kernel (for the current
        input shapes unless new ones are given).  Clears cached plans."""
        current = {k: v for k, v in self.input_shapes.items() if k in self.graph.inputs}
        current.update(input_shapes or {})
        self._plans.clear()
        self._structure = self._fingerprint()
        self._plan = self._compile(self._resolve_inputs(current))
        self._facts = self._graph_facts()

    def rebuild(self, layers: Iterable[Layer | str] | None = None) -> None:
        """Build the kernels of ``layers`` (all when None) again, e.g. after
        their weights were changed in place.  Other cached plans are dropped."""
        if self._fingerprint() != self._structure:
            self.recompile()
            return
        if layers is None:
            self.recompile()
            return
        wanted = {x if isinstance(x, str) else id(x) for x in layers}
        for key in list(self._plans):
            if key != self._plan.shapes_key:
                del self._plans[key]
        for step in self._plan.steps:
            if step.kernel is not None and (id(step.layer) in wanted or step.layer.name in wanted):
                step.kernel = self._build(step)
        self._plan.forget_built()
        if self.optimize:
            self._plan.chains = opt.find_chains(self._plan.steps)

    def _ensure(self, input_shapes: dict[str, Shape]) -> None:
        """Make the current plan match the graph structure and input shapes."""
        if self._fingerprint() != self._structure:
            self.recompile(input_shapes)
            return
        if all(self.input_shapes.get(k) == v for k, v in input_shapes.items()):
            return
        merged = dict(self.input_shapes)
        merged.update(input_shapes)
        try:
            self._plan = self._compile(self._resolve_inputs(merged))
        except ShapeError as e:
            changed = {k: v for k, v in input_shapes.items() if self.input_shapes.get(k) != v}
            raise DataError(f"net '{self.graph.name}' ({self.graph.source}): input shapes "
                            f"{changed} do not fit the net: {e}") from e

    # ------------------------------------------------------------ inspection
    @property
    def steps(self) -> list[Step]:
        return list(self._plan.steps)

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return dict(self._plan.shapes_key)

    @property
    def value_shapes(self) -> dict[str, Shape]:
        """Shape of every value id under the current input shapes."""
        return dict(self._plan.value_shapes)

    @property
    def blob_shapes(self) -> dict[str, Shape]:
        """Shape of every Caffe blob (its final version)."""
        final = self.graph.dataflow().final
        return {b: self._plan.value_shapes[v] for b, v in final.items()}

    def step_index(self, layer: str | int | Layer) -> int:
        """Position of a layer (by name, index or object) in the plan."""
        if isinstance(layer, int):
            if not -len(self._plan.steps) <= layer < len(self._plan.steps):
                raise GraphError(f"net '{self.graph.name}': layer index {layer} out of range")
            return layer % len(self._plan.steps)
        if isinstance(layer, Layer):
            return self.graph.index(layer)
        return self.graph.index(self.graph.layer(layer))

    # -------------------------------------------------------------- observers
    def add_observer(self, fn: Observer, blobs: Iterable[str] | None = None,
                     layers: Iterable[str] | None = None) -> Observer:
        """Call ``fn(layer, top_index, blob_name, value_id, array)`` right after
        a layer produces each of its outputs (restricted to ``blobs`` — Caffe
        names or value ids — and/or ``layers`` when given).  ``array`` is a
        read-only view of the live value, valid until the observer returns;
        copy it to keep it.  Returns ``fn`` (a handle for ``remove_observer``)."""
        self._observers.append(_make_entry(fn, blobs, layers))
        return fn

    def remove_observer(self, fn: Observer) -> None:
        self._observers = [e for e in self._observers if e.fn is not fn]

    # -------------------------------------------------------------- execution
    def run(self, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
            keep: bool | Iterable[str] = False,
            observers: Iterable[Observer | tuple] | None = None) -> dict[str, np.ndarray]:
        """Run the whole net on ``inputs`` (Caffe input blob name -> array).

        Returns ``{blob name: array}`` for ``outputs`` (default: the net
        outputs); with ``keep=True`` every blob's final value is returned too,
        and ``keep`` may also list extra blob names to return.  Arrays are
        float32 (cast if needed); any input shape is accepted that the net's
        layers can take (the kernels are re-built on a change).
        """
        if self._fingerprint() != self._structure:
            self._ensure({})
        names, net_outputs, final = self._facts
        if len(inputs) != len(names) or any(n not in inputs for n in names):
            missing = [n for n in names if n not in inputs]
            unknown = [n for n in inputs if n not in names]
            raise DataError(f"net '{self.graph.name}' ({self.graph.source}): inputs are "
                            f"{list(names)}; "
                            + (f"missing {missing}" if missing else "")
                            + ("; " if missing and unknown else "")
                            + (f"not inputs: {unknown}" if unknown else ""))
        want = list(net_outputs if outputs is None else outputs)
        if keep is True:
            # Only the final version of each blob is kept (in-place chains
            # are freed as they go), like Caffe's own blob memory.
            want += [b for b in final if b not in want]
        elif keep:
            want += [b for b in keep if b not in want]
        if observers is None and not self._observers:
            fast = self._fast_run(inputs, want)
            if fast is not None:
                return fast
        return self.forward(inputs, outputs=want, observers=observers)

    def _fast_run(self, inputs: Mapping[str, np.ndarray], want: list[str]
                  ) -> dict[str, np.ndarray] | None:
        """``forward(inputs, outputs=want)`` over the whole net without
        observers, when the inputs fit the current plan: the per-call work is
        one cached lookup, a tuple compare per input and the step loop (the
        general path re-derives ranges, feeds and schedules on every call,
        which costs as much as the layers of a small net).  None: take the
        general path (shape change, unusual graph)."""
        plan = self._plan
        fed = {t: _as_float32(t, inputs[t]) for t in self._facts[0]}
        shapes = plan.input_dims
        for t, a in fed.items():
            if a.shape != shapes.get(t):
                return None
        key = tuple(want)
        entry = plan.runs.get(key)
        if entry is None:
            entry = self._fast_entry(want)
            if entry is None:
                return None
            plan.runs[key] = entry
            while len(plan.runs) > _SCHEDULE_CACHE_SIZE:
                plan.runs.popitem(last=False)
        sched, pairs = entry
        if _INPUT_TAPS:
            for tap in list(_INPUT_TAPS):
                tap(self.graph, fed)
        values: dict[str, np.ndarray] = {}
        adapt_threads()
        with single_blas():
            self._execute(sched, values, fed, [])
        return {k: values[v] for k, v in pairs}

    def _fast_entry(self, want: list[str]):
        """(schedule, [(key, value id)]) of a whole-net run returning ``want``,
        or None when the general path must decide (e.g. an unknown name)."""
        steps = self._plan.steps
        latest: dict[str, str] = {}
        for step in steps:
            for v in step.out_vids:
                latest[blob_of(v)] = v
        produced = set(latest.values()) | {v for st in steps for v in st.out_vids}
        if any(v not in produced for st in steps for v in st.in_vids):
            return None
        pairs = [(k, latest.get(k, k)) for k in want]
        if any(v not in produced for _, v in pairs):
            return None
        sched = self._schedule(0, len(steps) - 1, [], {v for _, v in pairs}, False, set())
        return sched, pairs

    def forward(self, feeds: Mapping[str, np.ndarray], *, start: str | int | Layer | None = None,
                end: str | int | Layer | None = None, outputs: Iterable[str] | None = None,
                keep: bool | Iterable[str] = False, by_blob: bool = False,
                observers: Iterable[Observer | tuple] | None = None) -> dict[str, np.ndarray]:
        """Run the layers ``start`` .. ``end`` (inclusive; names, indices or
        Layer objects; default: the whole net).

        ``feeds`` supplies what the range reads but does not produce: keys are
        value ids (``"conv1@1"``) or Caffe blob names (then: the value the
        blob holds when the range starts).  Input layers in the range take
        their blob from ``feeds``.

        Returns ``{key: array}`` for each key of ``outputs`` (default: the net
        outputs, or the tops of ``end`` when given) and of ``keep``; a blob
        name means its latest version written in the range.  Values are
        freed after their last reader unless kept: ``keep=True`` keeps every
        value and returns them all too — keyed by value id, or with
        ``by_blob=True`` by blob name (latest version of each blob).
        """
        if self._fingerprint() != self._structure:
            self._ensure({})
        i0 = 0 if start is None else self.step_index(start)
        i1 = len(self._plan.steps) - 1 if end is None else self.step_index(end)
        if i1 < i0:
            raise GraphError(f"net '{self.graph.name}': end layer (#{i1}) comes before the "
                             f"start layer (#{i0})")
        # Input shapes: fed net inputs decide the plan.
        fed_inputs: dict[str, np.ndarray] = {}
        for step in self._plan.steps[i0:i1 + 1]:
            if step.is_input:
                for t, vid in zip(step.layer.tops, step.out_vids):
                    key = vid if vid in feeds else t
                    if key not in feeds:
                        raise DataError(f"net '{self.graph.name}': input blob '{t}' is not fed")
                    fed_inputs[t] = _as_float32(t, feeds[key])
        if _INPUT_TAPS and i0 == 0:
            for tap in list(_INPUT_TAPS):
                tap(self.graph, fed_inputs)
        shape_change = {t: tuple(a.shape) for t, a in fed_inputs.items()}
        for t, s in shape_change.items():
            declared = self.input_shapes.get(t)
            if declared is not None and len(s) != len(declared):
                raise DataError(f"net '{self.graph.name}': input '{t}' has shape {s}, the net "
                                f"expects {len(declared)} axes like {declared}")
        self._ensure(shape_change)
        steps = self._plan.steps[i0:i1 + 1]

        if outputs is not None:
            want_out = list(outputs)
        elif end is not None:
            want_out = list(steps[-1].layer.tops)
        else:
            want_out = list(self.graph.outputs)
        keep_all = keep is True
        keep_keys = set() if isinstance(keep, bool) else set(keep)

        # Latest version of each blob within the range, to resolve blob names.
        latest: dict[str, str] = {}
        for step in steps:
            for v in step.out_vids:
                latest[blob_of(v)] = v
        kept_vids: set[str] = set()
        for k in list(keep_keys) + want_out:
            kept_vids.add(latest.get(k, k))
        entries = list(self._observers) + [
            o if isinstance(o, _ObserverEntry) else _make_entry(*(o if isinstance(o, tuple) else (o,)))
            for o in (observers or ())]

        values: dict[str, np.ndarray] = {}
        produced = {v for step in steps for v in step.out_vids}
        for step in steps:
            for v, t, want in zip(step.in_vids, step.layer.bottoms, step.in_shapes):
                if v in produced or v in values:
                    continue
                # A plain blob name stands for the value the blob holds when
                # the range starts, i.e. the version its first reader sees.
                key = v if v in feeds else t if t in feeds else None
                if key is None:
                    raise DataError(f"net '{self.graph.name}': layer '{step.layer.name}' reads "
                                    f"'{t}' (value {v}) which is produced before the start "
                                    "layer; feed it")
                values[v] = np.asarray(feeds[key])
                # The plan was built for the last net input shapes; a range that
                # starts after the Input layers cannot re-plan from its feeds.
                # (Values of data-dependent layers only have setup shapes.)
                if tuple(values[v].shape) != tuple(want) and v not in self._dynamic_vids():
                    raise DataError(f"net '{self.graph.name}': layer '{step.layer.name}' reads "
                                    f"'{t}' (value {v}) fed with shape "
                                    f"{tuple(values[v].shape)}, but the plan for the current "
                                    f"input shapes {dict(self.input_shapes)} expects "
                                    f"{tuple(want)}; compile a program for those input shapes")

        sched = self._schedule(i0, i1, entries, kept_vids, keep_all, set(values))
        adapt_threads()
        with single_blas():
            self._execute(sched, values, fed_inputs, entries)

        result: dict[str, np.ndarray] = {}
        if keep_all and by_blob:
            result.update((b, values[v]) for b, v in latest.items())
        elif keep_all:
            result.update(values)
        for k in want_out + sorted(keep_keys):
            v = latest.get(k, k)
            if v in values:
                result[k] = values[v]
            elif v in feeds:
                result[k] = np.asarray(feeds[v])
            else:
                raise GraphError(f"net '{self.graph.name}': '{k}' is not a blob or value id "
                                 f"produced between layers #{i0} and #{i1}")
        return result

    def _dynamic_vids(self) -> set[str]:
        return {v for st in self._plan.steps if st.dynamic for v in st.out_vids}

    def _execute(self, sched: "opt.Schedule", values: dict[str, np.ndarray],
                 fed_inputs: dict[str, np.ndarray], entries: list[_ObserverEntry]) -> None:
        """Run a schedule, filling ``values`` (value id -> array)."""
        with deferred_scope():
            self._execute_steps(sched, values, fed_inputs, entries)

    def _execute_steps(self, sched: "opt.Schedule", values: dict[str, np.ndarray],
                       fed_inputs: dict[str, np.ndarray], entries: list[_ObserverEntry]) -> None:
        call = self._call
        for step, reuse, free in zip(sched.steps, sched.reuse, sched.free_after):
            layer = step.layer
            if step.is_input:
                outs = [fed_inputs[t] for t in layer.tops]
            else:
                outs = call(step, [values[v] for v in step.in_vids], reuse)
            if entries:
                for j, (v, a) in enumerate(zip(step.out_vids, outs)):
                    values[v] = a
                    b = layer.tops[j]
                    view = None
                    for e in entries:
                        if e.wants(layer, b, v):
                            if view is None:
                                view = _readonly(a)
                            e.fn(layer, j, b, v, view)
            else:
                values.update(zip(step.out_vids, outs))
            for v in free:
                values.pop(v, None)

    def _schedule(self, i0: int, i1: int, entries: list[_ObserverEntry], kept_vids: set[str],
                  keep_all: bool, fed: set[str]) -> opt.Schedule:
        """The run schedule of steps ``i0..i1`` for these observers and kept
        values (cached: a pass with the same request reuses it)."""
        plan = self._plan
        key = (i0, i1, keep_all, frozenset(kept_vids), frozenset(fed),
               tuple((e.blobs, e.layers) for e in entries))
        hit = plan.schedules.get(key)
        if hit is not None:
            plan.schedules.move_to_end(key)
            return hit
        steps = plan.steps
        watched: set[str] = set()
        pinned = set(fed)
        for step in steps[i0:i1 + 1]:
            for j, v in enumerate(step.out_vids):
                b = step.layer.tops[j]
                if step.is_input or any(e.wants(step.layer, b, v) for e in entries):
                    pinned.add(v)
                if any(e.wants(step.layer, b, v) for e in entries):
                    watched.add(v)
        sched = opt.plan_run(steps, plan.chains, i0, i1, lambda st, v: v in watched, kept_vids,
                             keep_all, pinned, self._fused_step if self.optimize else None)
        plan.schedules[key] = sched
        while len(plan.schedules) > _SCHEDULE_CACHE_SIZE:
            plan.schedules.popitem(last=False)
        return sched

    def _fused_step(self, chain: opt.FoldChain, n: int) -> Step:
        """The Step running the first ``n`` steps of ``chain`` as one kernel."""
        plan = self._plan
        key = (id(chain), n)
        if key not in plan.fused:
            first, last = chain.steps[0], chain.steps[n - 1]
            try:
                kernel = opt.build_fused(chain, n)
            except AmctError as e:
                raise ExecutionError(f"layer '{first.layer.name}': building the kernel fused with "
                                     f"{[x.layer.name for x in chain.steps[1:n]]} failed: {e}") from e
            plan.fused[key] = Step(first.index, last.layer, None, kernel, list(first.in_vids),
                                   list(last.out_vids), list(first.in_shapes),
                                   list(last.out_shapes),
                                   tuple(x.layer for x in chain.steps[:n]))
        return plan.fused[key]

    def _call(self, step: Step, ins: list[np.ndarray], reuse: int | None = None
              ) -> list[np.ndarray]:
        layer = step.layer
        if reuse is not None:
            x = ins[reuse]
            # The plan proved the value dead; the array must also be one the
            # kernel can overwrite with its float32 result.
            if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable):
                reuse = None
        try:
            outs = step.kernel(ins) if reuse is None else step.kernel(ins, reuse=reuse)
        except AmctError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the layer named
            what = (f"layers {[x.name for x in step.fused]} (fused)" if step.fused
                    else f"layer '{layer.name}' ({layer.type})")
            raise ExecutionError(f"{what} failed on inputs "
                                 f"{[tuple(np.shape(x)) for x in ins]}: "
                                 f"{type(e).__name__}: {e}") from e
        if type(outs) is not list:
            outs = list(outs) if outs is not None else []
        shapes = step.out_shapes
        if len(outs) != len(shapes):
            raise ExecutionError(f"layer '{layer.name}' ({layer.type}): kernel returned "
                                 f"{len(outs)} outputs for {len(layer.tops)} tops")
        for j, a in enumerate(outs):
            # One tuple compare per output: the contract check stays, cheaply.
            if not isinstance(a, np.ndarray):
                outs[j] = a = np.asarray(a)
            if a.shape != shapes[j] and not (step.dynamic and a.ndim == len(shapes[j])):
                raise ExecutionError(f"layer '{layer.name}' ({layer.type}): top {j} "
                                     f"'{layer.tops[j]}' has shape {a.shape}, shape inference "
                                     f"says {shapes[j]}")
        return outs


# Callbacks ``fn(graph, inputs)`` seeing the inputs of every whole-net forward
# in this process (see ``capture_inputs``).
_INPUT_TAPS: list = []


@contextlib.contextmanager
def capture_inputs() -> Iterator[list[dict[str, np.ndarray]]]:
    """Record (copies of) the inputs of every full forward pass run inside the
    block, by any Program or Net.  Automatic calibration uses it to replay the
    user's calibration batches without knowing how the user feeds them."""
    seen: list[dict[str, np.ndarray]] = []

    def tap(graph, inputs):
        seen.append({k: np.array(v, copy=True) for k, v in inputs.items()})

    _INPUT_TAPS.append(tap)
    try:
        yield seen
    finally:
        _INPUT_TAPS.remove(tap)


def _make_entry(fn: Observer, blobs: Iterable[str] | None = None,
                layers: Iterable[str] | None = None) -> _ObserverEntry:
    if not callable(fn):
        raise TypeError(f"observer {fn!r} is not callable")
    return _ObserverEntry(fn, None if blobs is None else frozenset(blobs),
                          None if layers is None else frozenset(layers))


def compile(graph: Graph, input_shapes: Mapping[str, Sequence[int]] | None = None,
            batch_size: int | None = None, optimize: bool = True) -> Program:  # noqa: A001
    """Compile ``graph`` for the declared input shapes (overridden by
    ``input_shapes``, or the batch axis by ``batch_size``).  ``optimize``
    folds BatchNorm/Scale/Bias and activations into the preceding
    Convolution/Deconvolution/InnerProduct and runs elementwise layers in
    place whenever no observer, kept value or partial run can tell (results
    then differ by float rounding only); False runs every layer as written."""
    return Program(graph, input_shapes, batch_size, optimize)


def run(graph: Graph, inputs: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None,
        keep: bool | Iterable[str] = False,
        observers: Iterable[Observer | tuple] | None = None) -> dict[str, np.ndarray]:
    """Compile ``graph`` for the shapes of ``inputs`` and run it once."""
    shapes = {k: np.shape(v) for k, v in inputs.items()}
    prog = Program(graph, {k: s for k, s in shapes.items() if k in graph.inputs})
    return prog.run(inputs, outputs=outputs, keep=keep, observers=observers)
