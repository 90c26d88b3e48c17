"""SSD fork layers: PriorBox (anchor generation) and DetectionOutput
(box decoding + per-class NMS), with the semantics of weiliu89/caffe (ssd).

PriorBox depends only on the input *shapes*, so its whole output is computed
once at build time and the kernel returns that array.
"""
from __future__ import annotations

import math

import numpy as np

from amct.ir.registry import LayerDef, register_layer
from amct.layers._common import need_inputs, shape_error
from amct.proto import caffe_pb2

_Code = caffe_pb2.PriorBoxParameter


# --------------------------------------------------------------------------- PriorBox
def _prior_config(layer):
    """(min sizes, max sizes, aspect ratios incl. 1 and flips, variances)."""
    p = layer.param("prior_box_param")
    mins = [float(v) for v in p.min_size]
    maxs = [float(v) for v in p.max_size]
    if not mins:
        raise shape_error(layer, "prior_box_param needs at least one min_size")
    if any(v <= 0 for v in mins):
        raise shape_error(layer, f"min_size must be positive, got {mins}")
    if maxs and len(maxs) != len(mins):
        raise shape_error(layer, f"{len(maxs)} max_size for {len(mins)} min_size")
    if any(b <= a for a, b in zip(mins, maxs)):
        raise shape_error(layer, "every max_size must be greater than its min_size")
    ars = [1.0]
    for r in p.aspect_ratio:
        r = float(r)
        if any(abs(r - a) < 1e-6 for a in ars):
            continue
        ars.append(r)
        if p.flip:
            ars.append(1.0 / r)
    var = [float(v) for v in p.variance]
    if len(var) > 1 and len(var) != 4:
        raise shape_error(layer, f"variance needs 1 or 4 values, got {len(var)}")
    if any(v <= 0 for v in var):
        raise shape_error(layer, f"variances must be positive, got {var}")
    if not var:
        var = [0.1]
    return mins, maxs, ars, var


def _num_priors(layer) -> int:
    mins, maxs, ars, _ = _prior_config(layer)
    return len(ars) * len(mins) + len(maxs)


@register_layer
class PriorBoxDef(LayerDef):
    """Bottoms: feature map (N,C,H,W), image (N,C,IH,IW).  Output
    (1, 2, H*W*num_priors*4): channel 0 the [xmin, ymin, xmax, ymax] boxes
    normalised by the image size, channel 1 their variances.

    Per cell (h, w), centre ((w+offset)*step_w, (h+offset)*step_h); per
    min_size s: the s x s box, then sqrt(s*max) square box if max_size is
    given, then s*sqrt(r) x s/sqrt(r) for every aspect ratio r != 1 (ratios
    in the order given, each followed by 1/r when flip).  step defaults to
    image size / feature size; img_size/img_h/img_w override the image size.
    """

    type = "PriorBox"
    param_field = "prior_box_param"

    def infer_shapes(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 2)
        f = tuple(in_shapes[0])
        if len(f) != 4 or len(in_shapes[1]) != 4:
            raise shape_error(layer, f"needs 4-D bottoms, got {f} and {tuple(in_shapes[1])}")
        return [(1, 2, f[2] * f[3] * _num_priors(layer) * 4)]

    def build(self, layer, in_shapes):
        shape = self.infer_shapes(layer, in_shapes)[0]
        out = prior_boxes(layer, tuple(in_shapes[0]), tuple(in_shapes[1])).reshape(shape)
        out.flags.writeable = False     # shared by every forward pass
        return lambda xs: [out]


def prior_boxes(layer, fshape, ishape) -> np.ndarray:
    """The (2, H*W*num_priors*4) PriorBox output for these bottom shapes."""
    p = layer.param("prior_box_param")
    mins, maxs, ars, var = _prior_config(layer)
    lh, lw = fshape[2], fshape[3]
    if p.HasField("img_size"):
        ih = iw = float(p.img_size)
    else:
        ih = float(p.img_h) if p.HasField("img_h") else float(ishape[2])
        iw = float(p.img_w) if p.HasField("img_w") else float(ishape[3])
    if p.HasField("step"):
        sh = sw = float(p.step)
    else:
        sh = float(p.step_h) if p.HasField("step_h") else ih / lh
        sw = float(p.step_w) if p.HasField("step_w") else iw / lw
    # Box sizes per prior, in the SSD order.
    sizes = []
    for i, s in enumerate(mins):
        sizes.append((s, s))
        if maxs:
            m = math.sqrt(s * maxs[i])
            sizes.append((m, m))
        for r in ars:
            if abs(r - 1.0) < 1e-6:
                continue
            sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
    bw = np.array([w for w, _ in sizes], dtype=np.float64)
    bh = np.array([h for _, h in sizes], dtype=np.float64)
    cy = (np.arange(lh, dtype=np.float64) + p.offset) * sh
    cx = (np.arange(lw, dtype=np.float64) + p.offset) * sw
    cy, cx = cy[:, None, None], cx[None, :, None]                     # (H,1,1), (1,W,1)
    boxes = np.empty((lh, lw, len(sizes), 4), dtype=np.float64)
    boxes[..., 0] = (cx - bw / 2) / iw
    boxes[..., 1] = (cy - bh / 2) / ih
    boxes[..., 2] = (cx + bw / 2) / iw
    boxes[..., 3] = (cy + bh / 2) / ih
    boxes = boxes.astype(np.float32).reshape(-1)
    if p.clip:
        np.clip(boxes, 0, 1, out=boxes)
    variances = np.empty_like(boxes).reshape(-1, 4)
    variances[:] = np.asarray(var if len(var) == 4 else var * 4, dtype=np.float32)
    return np.stack([boxes, variances.reshape(-1)])


# --------------------------------------------------------------------------- DetectionOutput
def decode_boxes(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code_type: int,
                 variance_encoded_in_target: bool) -> np.ndarray:
    """SSD's DecodeBBox for arrays of boxes (..., 4) [xmin, ymin, xmax, ymax].
    No clipping (DetectionOutput decodes with clip_bbox false)."""
    if variance_encoded_in_target:
        var = np.ones_like(var)
    if code_type == _Code.CORNER:
        return prior + var * loc
    pw = prior[..., 2] - prior[..., 0]
    ph = prior[..., 3] - prior[..., 1]
    if code_type == _Code.CORNER_SIZE:
        size = np.stack([pw, ph, pw, ph], axis=-1)
        return prior + var * loc * size
    if code_type != _Code.CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    pcx = (prior[..., 0] + prior[..., 2]) / 2
    pcy = (prior[..., 1] + prior[..., 3]) / 2
    cx = var[..., 0] * loc[..., 0] * pw + pcx
    cy = var[..., 1] * loc[..., 1] * ph + pcy
    w = np.exp(var[..., 2] * loc[..., 2]) * pw
    h = np.exp(var[..., 3] * loc[..., 3]) * ph
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _box_size(b: np.ndarray) -> np.ndarray:
    """Normalised box area, 0 for an inverted box (SSD's BBoxSize)."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), 0, w * h)


def pairwise_iou(b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``b`` (M, 4), SSD's JaccardOverlap: 0 unless the
    boxes overlap with positive width and height; inverted boxes have area 0."""
    x1, y1, x2, y2 = (np.ascontiguousarray(c) for c in b.T)
    area = _box_size(b)
    iw = np.minimum.outer(x2, x2) - np.maximum.outer(x1, x1)
    ih = np.minimum.outer(y2, y2) - np.maximum.outer(y1, y1)
    np.maximum(iw, 0, out=iw)
    np.maximum(ih, 0, out=ih)
    inter = iw * ih
    union = np.add.outer(area, area) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def nms_fast(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
             eta: float, top_k: int) -> np.ndarray:
    """SSD's ApplyNMSFast: candidates with score > threshold in descending
    score order (stable: ties keep index order), at most top_k; a candidate is
    kept when its IoU with every kept box is <= the adaptive threshold (which
    shrinks by eta after each keep while above 0.5)."""
    cand = np.flatnonzero(scores > score_threshold)
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    if top_k > -1:
        cand = cand[:top_k]
    if cand.size <= 1:
        return cand.astype(np.intp)
    b = boxes[cand]
    # Pairwise IoU of the candidates once (M x M, M <= top_k in practice)
    # instead of one small numpy call per candidate.
    iou = pairwise_iou(b)
    kept: list[int] = []
    if eta >= 1:
        # Only kept boxes suppress and the threshold is fixed, so marking the
        # boxes each kept one suppresses gives the same result.
        # Rows as Python-int bitmasks: the greedy loop then costs a few
        # integer operations per candidate instead of numpy calls.
        rows = np.packbits(iou > nms_threshold, axis=1, bitorder="little")
        masks = [int.from_bytes(r.tobytes(), "little") for r in rows]
        suppressed = 0
        for i in range(cand.size):
            if not (suppressed >> i) & 1:
                kept.append(i)
                suppressed |= masks[i]
        return cand[kept]
    thr = nms_threshold
    for i in range(cand.size):
        if not kept or np.all(iou[i, kept] <= thr):
            kept.append(i)
            if thr > 0.5:
                thr *= eta
    return cand[kept]


@register_layer
class DetectionOutputDef(LayerDef):
    """SSD detection head (TEST).  Bottoms: loc (N, P*L*4), conf (N, P*classes)
    (already softmax-ed by the net), priors (1, 2, P*4); L = 1 when
    share_location else num_classes.

    Output (1, 1, D, 7) rows [image, label, score, xmin, ymin, xmax, ymax],
    grouped per image, then by label ascending, then by descending score.
    When nothing is detected Caffe outputs one row per image
    [image, -1, -1, -1, -1, -1, -1]; so do we.  D depends on the data: the
    inferred shape is Caffe's setup shape (1, 1, 1, 7).
    """

    type = "DetectionOutput"
    param_field = "detection_output_param"
    data_dependent_shapes = True

    def _geometry(self, layer, in_shapes):
        need_inputs(layer, in_shapes, 3)
        p = layer.param("detection_output_param")
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise shape_error(layer, "detection_output_param.num_classes must be set")
        prior = tuple(in_shapes[2])
        if len(prior) < 3 or prior[1] != 2 or prior[2] % 4:
            raise shape_error(layer, f"prior bottom must be (1, 2, P*4), got {prior}")
        num_p = prior[2] // 4
        n_loc = 1 if p.share_location else p.num_classes
        n = in_shapes[0][0]
        if in_shapes[0][0] != in_shapes[1][0]:
            raise shape_error(layer, f"loc and conf batch sizes differ: {in_shapes[0]} vs {in_shapes[1]}")
        loc_count = int(np.prod(in_shapes[0][1:]))
        conf_count = int(np.prod(in_shapes[1][1:]))
        if loc_count != num_p * n_loc * 4:
            raise shape_error(layer, f"loc has {loc_count} values per image, expected "
                                     f"{num_p}*{n_loc}*4 for {num_p} priors")
        if conf_count != num_p * p.num_classes:
            raise shape_error(layer, f"conf has {conf_count} values per image, expected "
                                     f"{num_p}*{p.num_classes}")
        return n, num_p, n_loc

    def infer_shapes(self, layer, in_shapes):
        self._geometry(layer, in_shapes)
        return [(1, 1, 1, 7)]

    def build(self, layer, in_shapes):
        n, num_p, n_loc = self._geometry(layer, in_shapes)
        p = layer.param("detection_output_param")
        ncls, bg = int(p.num_classes), int(p.background_label_id)
        nms = p.nms_param
        nms_thr, eta = float(nms.nms_threshold), float(nms.eta)
        top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        keep_top_k = int(p.keep_top_k)
        conf_thr = float(p.confidence_threshold) if p.HasField("confidence_threshold") \
            else -float(np.finfo(np.float32).max)
        code, enc = int(p.code_type), bool(p.variance_encoded_in_target)
        if code not in (_Code.CORNER, _Code.CENTER_SIZE, _Code.CORNER_SIZE):
            raise shape_error(layer, f"unknown code_type {code}")

        def detect(xs):
            loc, conf, prior = xs
            pb = prior.reshape(2, num_p, 4)
            boxes = decode_boxes(pb[0][:, None, :], pb[1][:, None, :],
                                 loc.reshape(n, num_p, n_loc, 4), code, enc)  # (N,P,L,4)
            scores = conf.reshape(n, num_p, ncls)
            rows = []
            for i in range(n):
                per = []                           # (label, kept indices)
                for c in range(ncls):
                    if c == bg:
                        continue
                    b = boxes[i, :, 0 if n_loc == 1 else c]
                    kept = nms_fast(b, scores[i, :, c], conf_thr, nms_thr, eta, top_k)
                    if kept.size:
                        per.append((c, kept))
                total = sum(k.size for _, k in per)
                if keep_top_k > -1 and total > keep_top_k:
                    labels = np.concatenate([np.full(k.size, c) for c, k in per])
                    idx = np.concatenate([k for _, k in per])
                    sc = scores[i, idx, labels]
                    best = np.argsort(-sc, kind="stable")[:keep_top_k]
                    labels, idx = labels[best], idx[best]
                    per = [(c, idx[labels == c]) for c in np.unique(labels)]
                for c, k in per:
                    b = boxes[i, k, 0 if n_loc == 1 else c]
                    r = np.empty((k.size, 7), dtype=np.float32)
                    r[:, 0], r[:, 1], r[:, 2] = i, c, scores[i, k, c]
                    r[:, 3:] = b
                    rows.append(r)
            if not rows:
                out = np.full((n, 7), -1, dtype=np.float32)
                out[:, 0] = np.arange(n)
                return [out.reshape(1, 1, n, 7)]
            out = np.concatenate(rows)
            return [out.reshape(1, 1, -1, 7)]
        return detect
