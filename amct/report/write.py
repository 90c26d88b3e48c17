"""The report files: ``<prefix>_report.json``, ``<prefix>_report.md`` and ``<prefix>_report.png``.

The JSON is the complete record (schema in docs/cli.md); the Markdown is
the same table for people; the PNG plots per-layer cosine and SQNR (needs the
optional ``plot`` extra, matplotlib).  All three go through ``amct.fileio``.
"""
from __future__ import annotations

import json
import logging
import math

from amct.fileio import AtomicGroup
from amct.report.compare import Comparison
from amct.report.stats import _finite

log = logging.getLogger("amct.report")

PLOT_HINT = "pip install 'amct[plot]'"


def build_report(cmp: Comparison, *, kind: str, models: dict[str, str | None], data: str,
                 extra: dict | None = None) -> dict:
    """The report as a JSON-ready dict."""
    from amct import __version__

    layers = []
    for r in cmp.layers:
        i = r.info
        weighted = i.has_weights
        layers.append({
            "layer": i.name, "type": i.type,
            "scale_d": i.scale_d, "offset_d": i.offset_d,
            "scale_w_min": float(i.scale_w.min()) if weighted else None,
            "scale_w_max": float(i.scale_w.max()) if weighted else None,
            "channel_wise": bool(weighted and i.scale_w.size > 1),
            "quant_layer": i.quant_layer, "dequant_layer": i.dequant_layer,
            "clip_ratio": r.clip.ratio,
            "clip_reach": r.clip.reach,
            "fake_quant": r.fake.to_json(),
            "deploy": r.deploy.to_json() if r.deploy is not None else None,
        })
    outputs = []
    for o in cmp.outputs:
        outputs.append({
            "blob": o.name, "classifier": o.classifier, "stands_for": o.stands_for,
            "fake_quant": o.fake.to_json(),
            "deploy": o.deploy.to_json() if o.deploy is not None else None,
            "top1_agreement": ({"fake_quant": o.agree_fake.ratio,
                                "deploy": o.agree_deploy.ratio if o.agree_deploy else None}
                               if o.classifier else None),
            "accuracy": ({m: o.accuracy(m) for m in o.hits} if o.labelled else None),
            "labelled_samples": o.labelled,
        })
    return {
        "tool": "amct", "version": __version__, "kind": kind,
        "models": models,
        "data": {"source": data, "samples": cmp.samples, "batches": cmp.batches},
        "layers": layers, "outputs": outputs, **(extra or {}),
    }


def _f(v, fmt: str = "{:.4f}") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return fmt.format(v)


def markdown(report: dict) -> str:
    """The report as a Markdown document."""
    m = report["models"]
    d = report["data"]
    has_dep = any(x["deploy"] for x in report["layers"])
    lines = [f"# Quantization report ({report['kind']})", "",
             f"- float model: `{m.get('float_model')}` + `{m.get('float_weights')}`",
             f"- fake-quant model: `{m.get('fake_quant_model')}`"]
    if m.get("deploy_model"):
        lines.append(f"- deploy model: `{m.get('deploy_model')}`")
    lines += [f"- data: `{d['source']}`, {d['samples']} samples in {d['batches']} batches",
              f"- amct {report['version']}", "",
              "## Quantized layers", "",
              "scale_d/offset_d: activation factors of the layer's input; scale_w: weight scale "
              "range over output channels; clip ratio: fraction of the input values outside the "
              "INT8 range (float pass); reach: the span the input values needed, in units of the "
              "range's width (at most 1 when nothing is clipped); cosine/SQNR/max error: the "
              "layer's output in the fake-quant model against the float model"
              + (" (and the deploy simulation)" if has_dep else "") + ".", ""]
    head = ["layer", "type", "scale_d", "offset_d", "scale_w min", "scale_w max", "clip ratio",
            "reach", "cosine", "SQNR dB", "max error"]
    if has_dep:
        head += ["deploy cosine", "deploy SQNR dB"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in report["layers"]:
        fq = x["fake_quant"]
        row = [f"`{x['layer']}`", x["type"], _f(x["scale_d"], "{:.6g}"), str(x["offset_d"]),
               _f(x["scale_w_min"], "{:.4g}"), _f(x["scale_w_max"], "{:.4g}"),
               _f(None if x["clip_ratio"] is None else 100 * x["clip_ratio"], "{:.4f} %"),
               _f(x.get("clip_reach"), "{:.2f}"),
               _f(fq["cosine"], "{:.6f}"), _f(fq["sqnr_db"], "{:.2f}"), _f(fq["max_abs_error"], "{:.4g}")]
        if has_dep:
            dp = x["deploy"] or {}
            row += [_f(dp.get("cosine"), "{:.6f}"), _f(dp.get("sqnr_db"), "{:.2f}")]
        lines.append("| " + " | ".join(row) + " |")
    beyond = uncovered_layers(report)
    if beyond:
        if report["kind"] == "calibrate":
            why = ("on the calibration data themselves: calibration chose to clip rare values far "
                   "from the rest (IFMR's percentiles, HFMG's histogram). Check those layers' "
                   "accuracy; `skip_layers` or a wider range in the config keeps them.")
        else:
            why = ("far more than IFMR's deliberate clipping; the calibration data do not "
                   "represent this data there. Add data like it to the calibration set (a "
                   "detector: its objects at every scale it will see, e.g. zoomed-out copies of "
                   "the calibration images; docs/cli.md, `compare`).")
        lines += ["", "## Data beyond the calibrated ranges", "",
                  f"The inputs of these layers reached more than {COVERAGE_REACH:g} times their "
                  f"quantization range's width, {why}", ""]
        lines += [f"- `{x['layer']}`: reach {x['clip_reach']:.2f}, "
                  f"{100 * x['clip_ratio']:.4f} % of the values clipped" for x in beyond]
    lines += ["", "## Network outputs", "",
              "| output | cosine | SQNR dB | max error | top-1 agreement | accuracy (float / fake-quant"
              + (" / deploy" if has_dep else "") + ") |", "|---|---|---|---|---|---|"]
    for o in report["outputs"]:
        fq, dp = o["fake_quant"], o["deploy"]
        agree = "-"
        if o["top1_agreement"]:
            a = o["top1_agreement"]
            agree = f"{100 * a['fake_quant']:.2f} % fake-quant" + (
                f", {100 * a['deploy']:.2f} % deploy" if a.get("deploy") is not None else "")
        acc = "-"
        if o["accuracy"]:
            acc = " / ".join(f"{100 * o['accuracy'][k]:.2f} %" for k in ("float", "fake_quant", "deploy")
                             if k in o["accuracy"])
        cos = _f(fq["cosine"], "{:.6f}") + (f" (deploy {_f(dp['cosine'], '{:.6f}')})" if dp else "")
        sq = _f(fq["sqnr_db"], "{:.2f}") + (f" (deploy {_f(dp['sqnr_db'], '{:.2f}')})" if dp else "")
        blob = f"`{o['blob']}`" + (f" (input of `{o['stands_for']}`)" if o.get("stands_for") else "")
        lines.append(f"| {blob} | {cos} | {sq} | {_f(fq['max_abs_error'], '{:.4g}')} | {agree} | {acc} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, prefix: str, plot: bool = True) -> tuple[list[str], str | None]:
    """Write the report files; returns (paths written, a note when the plot was skipped)."""
    paths = [f"{prefix}_report.json", f"{prefix}_report.md"]
    png = None
    note = None
    if plot:
        from amct.report.plot import plot_available, render_png

        if plot_available():
            png = render_png(report)
        else:
            note = f"matplotlib is not installed, so {prefix}_report.png was not drawn; {PLOT_HINT}"
    with AtomicGroup() as grp:
        with grp.open(paths[0], "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
            f.write("\n")
        with grp.open(paths[1], "w") as f:
            f.write(markdown(report))
        if png is not None:
            paths.append(f"{prefix}_report.png")
            with grp.open(paths[2], "wb") as f:
                f.write(png)
    return paths, note


#: A reach above this flags a layer whose data calibration did not cover.
#: IFMR's search clips down to 0.7 of the percentile maximum, a reach of
#: about 1.43 on the calibration data; twice the range is well beyond it.
COVERAGE_REACH = 2.0


def uncovered_layers(report: dict) -> list[dict]:
    """The report's layers whose input reached beyond ``COVERAGE_REACH``, farthest first."""
    beyond = [x for x in report["layers"]
              if x.get("clip_reach") is not None and x["clip_reach"] > COVERAGE_REACH]
    return sorted(beyond, key=lambda x: (-x["clip_reach"], x["layer"]))


def summary_lines(report: dict) -> list[str]:
    """A few lines for the console: worst layer and output agreement."""
    out = []
    layers = [x for x in report["layers"] if x["fake_quant"]["cosine"] is not None]
    if layers:
        worst = min(layers, key=lambda x: x["fake_quant"]["cosine"])
        out.append(f"{len(layers)} quantized layers; lowest cosine {worst['fake_quant']['cosine']:.6f} "
                   f"at '{worst['layer']}' (SQNR {_f(worst['fake_quant']['sqnr_db'], '{:.2f}')} dB)")
    beyond = uncovered_layers(report)
    if beyond:
        names = ", ".join(f"'{x['layer']}' ({x['clip_reach']:.2f})" for x in beyond[:5])
        more = f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""
        if report["kind"] == "calibrate":
            out.append(f"note: calibration clipped rare values beyond {COVERAGE_REACH:g}x the "
                       f"range at {names}{more}")
        else:
            out.append(f"warning: the data reach beyond {COVERAGE_REACH:g}x the calibrated range "
                       f"at {names}{more}: calibrate on data like this")
    for o in report["outputs"]:
        via = f" (input of '{o['stands_for']}')" if o.get("stands_for") else ""
        s = f"output '{o['blob']}'{via}: cosine {_f(o['fake_quant']['cosine'], '{:.6f}')}"
        if o["top1_agreement"]:
            a = o["top1_agreement"]
            s += f", top-1 agreement with float {100 * a['fake_quant']:.2f} % (fake-quant)"
            if a.get("deploy") is not None:
                s += f", {100 * a['deploy']:.2f} % (deploy)"
        out.append(s)
        if o["accuracy"]:
            out.append("  top-1 accuracy: " + ", ".join(
                f"{k.replace('_', '-')} {100 * v:.2f} %" for k, v in o["accuracy"].items())
                + f" ({o['labelled_samples']} labelled samples)")
    return out


__all__ = ["build_report", "markdown", "write_report", "summary_lines", "uncovered_layers",
           "COVERAGE_REACH", "PLOT_HINT", "_finite"]
