"""Plan optimisation: folding, activation fusion and in-place execution.

The optimizer never edits the user's ``Graph`` or weights and never changes
what a caller can see; it only changes *how* a compiled plan runs:

* **Folding.**  A chain ``P -> [BatchNorm] [Scale] [Bias] -> [activation]``
  where ``P`` is a float Convolution, Deconvolution or InnerProduct and every
  intermediate value has exactly one reader (the next layer of the chain)
  runs as one kernel: the affine layers are folded into ``P``'s weights and
  bias (computed in float64 at build time, stored float32) and the
  activation (ReLU, ReLU6, Clip, PReLU, Sigmoid, TanH, AbsVal) is applied in
  place to each output block while it is still in cache.  The result differs
  from the unfused chain by float rounding only.
* **In-place execution.**  A kernel that declares it can write into an
  input (``_common.inplace``) is told to do so when that input's buffer is
  dead after the step: nothing later reads it or a value sharing its memory
  (views, identity layers), and it is not fed by the caller, kept, returned
  or observed.

Per run, ``plan_run`` decides what is folded: a chain is cut before the
first of its layers whose output an observer watches or the caller keeps
(that layer and the rest of the chain run unfused), and not folded at all
when the run's ``start``/``end`` range does not contain the whole chain.
``keep=True`` runs, and an observer watching every layer (the golden tests),
therefore run the plain plan.
"""
from __future__ import annotations

from typing import Callable, Sequence

import attrs
import numpy as np

from amct.ir.registry import Kernel

#: Producers whose float weights can absorb a following per-channel affine map.
FOLD_PRODUCERS = frozenset({"Convolution", "Deconvolution", "InnerProduct"})
#: Per-channel affine layers that fold into a producer.
AFFINE_TYPES = frozenset({"BatchNorm", "Scale", "Bias"})
#: Activations applied as an in-place epilogue of the producer's output blocks
#: (shape-preserving, elementwise or per-channel, in-place capable kernels).
EPILOGUE_TYPES = frozenset({"ReLU", "ReLU6", "Clip", "PReLU", "Sigmoid", "TanH", "AbsVal"})
#: Types whose built-in kernels always return freshly allocated outputs (never
#: a view of an input).  Any other type (views: Reshape, Flatten, Slice, Crop;
#: identity: Split, Dropout; user-registered types) is assumed to alias its
#: outputs with its inputs, which only makes in-place execution rarer.
FRESH_TYPES = frozenset({
    "Convolution", "Deconvolution", "InnerProduct", "Pooling", "BatchNorm", "Scale", "Bias",
    "ReLU", "ReLU6", "PReLU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL",
    "ELU", "Threshold", "Clip", "Swish", "Eltwise", "Concat"})


@attrs.define(eq=False)
class FoldChain:
    """Consecutive-by-dataflow steps ``producer, affine..., [activation]``."""

    steps: list                      # executor Steps
    ldef: object                     # the producer's LayerDef (has build_with)

    def hidden(self, n: int) -> list[tuple[object, str]]:
        """(step, value id) of the intermediates a fusion of the first ``n``
        steps does not materialise."""
        return [(s, s.out_vids[0]) for s in self.steps[:n - 1]]


# ------------------------------------------------------------------ analysis
def _readers(steps) -> dict[str, int]:
    n: dict[str, int] = {}
    for s in steps:
        for v in s.in_vids:
            n[v] = n.get(v, 0) + 1
    return n


def _one_in_one_out(step) -> bool:
    return len(step.in_vids) == 1 and len(step.out_vids) == 1


def _producer_axis_ok(step) -> bool:
    """Folding scales output channel axis 1; the producer must put its
    channels there and carry float weights."""
    layer = step.layer
    if not layer.blobs or np.asarray(layer.blobs[0]).dtype.kind != "f":
        return False
    if layer.type == "InnerProduct":
        ax = layer.param("inner_product_param").axis
        nd = len(step.in_shapes[0])
        return (ax + nd if ax < 0 else ax) == 1 and len(step.out_shapes[0]) == 2
    ax = layer.param("convolution_param").axis
    nd = len(step.in_shapes[0])
    return (ax + nd if ax < 0 else ax) == 1


def _affine_ok(step, channels: int) -> bool:
    layer = step.layer
    shape = step.in_shapes[0]
    if layer.type == "BatchNorm":
        p = layer.param("batch_norm_param")
        if p.HasField("use_global_stats") and not p.use_global_stats:
            return False
        return len(layer.blobs) >= 3 and np.asarray(layer.blobs[0]).size == channels
    p = layer.param("scale_param" if layer.type == "Scale" else "bias_param")
    ax = p.axis + len(shape) if p.axis < 0 else p.axis
    need = 1 if layer.type == "Bias" or not p.bias_term else 2
    return (ax == 1 and p.num_axes == 1 and len(layer.blobs) >= need
            and all(np.asarray(b).size == channels for b in layer.blobs[:need]))


def find_chains(steps: Sequence) -> list[FoldChain]:
    """The fold chains of a plan (each step belongs to at most one)."""
    readers = _readers(steps)
    reader_of: dict[str, object] = {}
    for s in steps:
        for v in s.in_vids:
            reader_of[v] = s
    chains = []
    for s in steps:
        if s.ldef is None or s.layer.type not in FOLD_PRODUCERS or not _one_in_one_out(s):
            continue
        if not hasattr(s.ldef, "build_with") or not _producer_axis_ok(s):
            continue
        channels = int(s.out_shapes[0][1])
        members = [s]
        while True:
            v = members[-1].out_vids[0]
            nxt = reader_of.get(v)
            if readers.get(v) != 1 or nxt is None or nxt.ldef is None or not _one_in_one_out(nxt):
                break
            t = nxt.layer.type
            if t in AFFINE_TYPES and members[-1].layer.type not in EPILOGUE_TYPES \
                    and _affine_ok(nxt, channels):
                members.append(nxt)
            elif t in EPILOGUE_TYPES and getattr(nxt.kernel, "inplace", ()):
                members.append(nxt)
                break
            else:
                break
        if len(members) > 1:
            chains.append(FoldChain(members, s.ldef))
    return chains


# ------------------------------------------------------------------- folding
def _affine_of(step) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` in float64 with ``layer(y) == y * a + b`` per channel."""
    layer = step.layer
    blobs = [np.asarray(b, np.float64).reshape(-1) for b in layer.blobs]
    if layer.type == "BatchNorm":
        eps = float(np.float32(layer.param("batch_norm_param").eps))
        s = blobs[2][0]
        factor = 0.0 if s == 0 else 1.0 / s
        mean, var = blobs[0] * factor, blobs[1] * factor
        a = 1.0 / np.sqrt(var + eps)
        return a, -mean * a
    if layer.type == "Scale":
        bias_term = layer.param("scale_param").bias_term
        return blobs[0], (blobs[1] if bias_term else np.zeros_like(blobs[0]))
    return np.ones_like(blobs[0]), blobs[0]                      # Bias


def _scale_out_channels(layer, weight: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``weight`` (the layer's blob layout) with each output channel times ``a``."""
    w = np.asarray(weight, np.float64)
    if layer.type == "Convolution":
        return w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    if layer.type == "InnerProduct":
        w = w.reshape(a.size, -1) if not layer.param("inner_product_param").transpose \
            else w.reshape(-1, a.size)
        return w * (a[:, None] if not layer.param("inner_product_param").transpose else a[None, :])
    # Deconvolution: (Cin, Cout/g, k...) and output channel = group * Cout/g + j.
    g = int(layer.param("convolution_param").group)
    cin, coutg = w.shape[0], w.shape[1]
    wg = w.reshape(g, cin // g, coutg, -1) * a.reshape(g, 1, coutg, 1)
    return wg.reshape(w.shape)


def build_fused(chain: FoldChain, n: int) -> Kernel:
    """One kernel running the first ``n`` (>= 2) steps of ``chain``."""
    prod, rest = chain.steps[0], chain.steps[1:n]
    layer = prod.layer
    cout = int(prod.out_shapes[0][1])
    a = np.ones(cout)
    b = np.zeros(cout)
    act = None
    for s in rest:
        if s.layer.type in AFFINE_TYPES:
            sa, sb = _affine_of(s)
            a, b = a * sa, b * sa + sb
        else:
            act = s
    weight = np.asarray(layer.blobs[0])
    bias = None
    if len(layer.blobs) > 1 and _has_bias(layer):
        bias = np.asarray(layer.blobs[1], np.float64).reshape(-1)
    folded = any(s.layer.type in AFFINE_TYPES for s in rest)
    if folded:
        weight = _scale_out_channels(layer, weight, a).astype(np.float32)
        bias = ((bias * a if bias is not None else 0.0) + b).astype(np.float32)
    elif bias is not None:
        bias = np.asarray(layer.blobs[1]).reshape(-1)
    epilogue = None if act is None else _epilogue(act.kernel)
    return chain.ldef.build_with(layer, list(prod.in_shapes), weight, bias, epilogue)


def _epilogue(act_kernel: Kernel) -> Callable[[np.ndarray], None]:
    """The activation's in-place kernel as ``fn(block)`` (any block shape
    that broadcasts against its parameters: whole images or batch chunks)."""
    def epilogue(block):
        act_kernel([block], reuse=0)
    return epilogue


def _has_bias(layer) -> bool:
    if layer.type == "InnerProduct":
        return layer.param("inner_product_param").bias_term
    return layer.param("convolution_param").bias_term


# ------------------------------------------------------------ run schedules
@attrs.define(eq=False)
class Schedule:
    """What one kind of run executes: steps (some fused), per step the input
    index its kernel may overwrite (or None) and the values to free after it."""

    steps: list
    reuse: list
    free_after: list


class _Aliases:
    """Union-find over value ids whose arrays may share memory."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, v: str) -> str:
        p = self.parent.setdefault(v, v)
        while p != v:
            gp = self.parent.setdefault(p, p)
            self.parent[v] = gp
            v, p = p, gp
        return v

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def _fresh(step) -> bool:
    if step.fused:
        return True
    t = step.layer.type
    # Only the built-in definitions are known to allocate (a user may
    # re-register "ReLU" with a kernel returning a view).
    builtin = type(step.ldef).__module__.startswith("amct.layers.")
    return builtin and t in FRESH_TYPES and not (t == "Concat" and len(step.in_vids) < 2)


def plan_run(steps: Sequence, chains: Sequence[FoldChain], i0: int, i1: int,
             hidden_wanted: Callable[[object, str], bool], kept: set[str], keep_all: bool,
             pinned: set[str], fused_step: Callable[[FoldChain, int], object] | None) -> Schedule:
    """Lower the plan range ``steps[i0..i1]`` to a run schedule.

    ``hidden_wanted(step, vid)`` says whether a step's output is observed; ``kept`` are the value ids the caller wants back; ``pinned``
    the values whose buffers belong to the caller or are watched (never
    overwritten); ``fused_step(chain, n)`` makes the Step running the first
    ``n`` steps of ``chain`` (None: no folding)."""
    rng = steps[i0:i1 + 1]
    replace: dict[int, tuple[object, int]] = {}         # first member index -> (chain, n)
    skip: set[int] = set()
    if fused_step is not None and not keep_all:
        for ch in chains:
            idx = [s.index for s in ch.steps]
            if idx[0] < i0 or max(idx) > i1:
                continue
            # A watched or kept layer is never folded: the chain is cut
            # before it, so it runs as written on an exactly computed input
            # when nothing before it folds.
            n = len(ch.steps)
            for k, s in enumerate(ch.steps):
                v = s.out_vids[0]
                if v in kept or hidden_wanted(s, v):
                    n = k
                    break
            if n >= 2:
                replace[idx[0]] = (ch, n)
                skip.update(idx[1:n])
    sched = []
    for s in rng:
        if s.index in skip:
            continue
        if s.index in replace:
            sched.append(fused_step(*replace[s.index]))
        else:
            sched.append(s)

    last_use: dict[str, int] = {}
    for pos, s in enumerate(sched):
        for v in s.in_vids:
            last_use[v] = pos
    free_after: list[list[str]] = [[] for _ in sched]
    if not keep_all:
        for v, pos in last_use.items():
            if v not in kept:
                free_after[pos].append(v)
        for pos, s in enumerate(sched):
            free_after[pos].extend(v for v in s.out_vids if v not in last_use and v not in kept)

    reuse: list[int | None] = [None] * len(sched)
    if fused_step is None or keep_all:
        return Schedule(sched, reuse, free_after)
    al = _Aliases()
    for s in sched:
        if not _fresh(s):
            for o in s.out_vids:
                for v in s.in_vids:
                    al.union(o, v)
    cls_last: dict[str, int] = {}
    cls_pinned: set[str] = set()

    def refresh():
        cls_last.clear()
        cls_pinned.clear()
        for v, pos in last_use.items():
            r = al.find(v)
            cls_last[r] = max(cls_last.get(r, -1), pos)
        for v in pinned | kept:
            cls_pinned.add(al.find(v))

    refresh()
    for pos, s in enumerate(sched):
        cand = getattr(s.kernel, "inplace", ()) if s.kernel is not None else ()
        if not cand or len(s.out_vids) != 1:
            continue
        roots = [al.find(v) for v in s.in_vids]
        for k in cand:
            if k >= len(s.in_vids):
                continue
            v, r = s.in_vids[k], roots[k]
            if (roots.count(r) == 1 and r not in cls_pinned and cls_last.get(r, -1) <= pos
                    and tuple(s.in_shapes[k]) == tuple(s.out_shapes[0])):
                reuse[pos] = k
                # The output now lives in that buffer: one class from here on.
                al.union(s.out_vids[0], v)
                refresh()
                break
    return Schedule(sched, reuse, free_after)


# ------------------------------------------------------------------- malloc
_MALLOC_TUNED = False
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Make glibc keep freed activation memory for reuse (once per process).

    Every layer allocates its output; with glibc's defaults, arrays of a few
    MB are mmap'ed and unmapped again, so each pass page-faults all of its
    activations afresh (measured: up to 40 % of a small net's forward time,
    e.g. MTCNN det3 at batch 8).  Raising the mmap threshold to 64 MiB and
    the trim threshold to 256 MiB lets those blocks be reused from the heap
    instead; the cost is that the process keeps up to that much freed memory.
    Skipped when ``AMCT_MALLOC_TUNE=0``, when the user set glibc's own
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, or off glibc.
    Returns whether the settings were applied by this call."""
    global _MALLOC_TUNED
    import os
    import sys

    if _MALLOC_TUNED:
        return False
    _MALLOC_TUNED = True
    if (os.environ.get("AMCT_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux")
            or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20) == 1 and ok
        return ok
    except (OSError, AttributeError):      # not glibc (musl, macOS ...)
        return False
