"""The report plot: per-layer cosine similarity and SQNR, one row per quantized layer.

Horizontal bars with the layer names on the y axis stay legible for deep
nets (the figure grows with the layer count).  matplotlib is an optional
dependency (``pip install 'amct[plot]'``); it is imported only here.
"""
from __future__ import annotations

import io
import math


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _num(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        return math.inf if v == "inf" else -math.inf
    return float(v)


def render_png(report: dict) -> bytes:
    """The plot as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layers = report["layers"]
    names = [f"{x['layer']} ({x['type']})" for x in layers]
    n = max(len(layers), 1)
    cos_f = [_num(x["fake_quant"]["cosine"]) for x in layers]
    sq_f = [_num(x["fake_quant"]["sqnr_db"]) for x in layers]
    has_dep = any(x["deploy"] for x in layers)
    cos_d = [_num((x["deploy"] or {}).get("cosine")) for x in layers]
    sq_d = [_num((x["deploy"] or {}).get("sqnr_db")) for x in layers]

    height = 2.0 + 0.38 * n * (1.6 if has_dep else 1.0)
    fig, (ax1, ax2) = plt.subplots(1, 2, sharey=True, figsize=(12, max(height, 3.2)))
    ys = list(range(n))
    bh = 0.38 if has_dep else 0.7
    off = bh / 2 if has_dep else 0.0

    def bars(ax, vals, shift, color, label):
        finite = [v if math.isfinite(v) else 0.0 for v in vals]
        ax.barh([y - shift for y in ys], finite, height=bh, color=color, label=label)
        return finite

    bars(ax1, cos_f, off, "#1f77b4", "fake-quant vs float")
    if has_dep:
        bars(ax1, cos_d, -off, "#ff7f0e", "deploy simulation vs float")
    # Cosines of a good quantization all sit near 1: zoom the axis onto the
    # observed range so differences between layers are visible.
    lo = min([v for v in cos_f + (cos_d if has_dep else []) if math.isfinite(v)] or [1.0])
    span = max(1.0 - lo, 1e-5)
    ax1.set_xlim(lo - 0.6 * span, 1.0 + 0.05 * span)
    ax1.xaxis.set_major_locator(plt.MaxNLocator(5))
    ax1.ticklabel_format(axis="x", useOffset=False)
    ax1.set_xlabel("cosine similarity of the layer output (1 = identical)")
    ax1.set_title("Cosine similarity (axis zoomed)")
    _labels(ax1, ys, cos_f, cos_d if has_dep else None, off, "{:.6f}")

    bars(ax2, sq_f, off, "#1f77b4", "fake-quant vs float")
    if has_dep:
        bars(ax2, sq_d, -off, "#ff7f0e", "deploy simulation vs float")
    ax2.set_xlabel("SQNR of the layer output (dB, higher is better)")
    ax2.set_title("Signal-to-quantization-noise ratio")
    top = max([v for v in sq_f + (sq_d if has_dep else []) if math.isfinite(v)] or [1.0])
    ax2.set_xlim(0, max(top, 1.0) * 1.05)
    _labels(ax2, ys, sq_f, sq_d if has_dep else None, off, "{:.1f} dB")

    ax1.set_yticks(ys)
    ax1.set_yticklabels(names, fontsize=9)
    ax1.invert_yaxis()                     # first layer at the top, like the network
    ax1.set_ylabel("quantized layer (execution order)")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    if has_dep:
        h, lab = ax1.get_legend_handles_labels()
        fig.legend(h, lab, loc="lower center", ncol=2, fontsize=9, frameon=False)
    model = report["models"].get("float_model") or ""
    d = report["data"]
    fig.suptitle(f"Per-layer INT8 quantization error: {model.rsplit('/', 1)[-1]}  "
                 f"({d['samples']} samples)", fontsize=12)
    fig.tight_layout(rect=(0, 0.05 if has_dep else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _labels(ax, ys, vals, dep_vals, off, fmt: str) -> None:
    """Write each value inside the end of its bar (stays inside the axes)."""
    for y, v in zip(ys, vals):
        if math.isfinite(v):
            ax.text(v, y - off, fmt.format(v) + " ", va="center", ha="right", fontsize=8, color="white")
    for y, v in zip(ys, dep_vals or ()):
        if math.isfinite(v):
            ax.text(v, y + off, fmt.format(v) + " ", va="center", ha="right", fontsize=8, color="black")
