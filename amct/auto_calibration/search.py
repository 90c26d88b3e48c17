"""The driver of accuracy-based automatic calibration."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import attrs

from amct.auto_calibration.evaluator import AutoCalibrationEvaluatorBase
from amct.auto_calibration.sensitivity import get_sensitivity
from amct.auto_calibration.strategy import get_strategy
from amct.errors import CalibrationError
from amct.fileio import atomic_write_text

log = logging.getLogger("amct.auto_calibration")


@attrs.define
class AutoCalibrationResult:
    """What the search found (also written to ``save_dir``)."""

    original_metric: Any
    final_metric: Any
    fallback_layers: list[str]
    ranking: list[tuple[str, float]]
    evaluations: int
    save_prefix: str
    history_file: str
    ranking_file: str


def _jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        return repr(x)


def accuracy_based_auto_calibration(model_file: str, weights_file: str,
                                    model_evaluator: AutoCalibrationEvaluatorBase,
                                    config_file: str, record_file: str, save_dir: str,
                                    strategy="BinarySearch",
                                    sensitivity="CosineSimilarity") -> AutoCalibrationResult:
    """Quantize ``model_file`` keeping just enough layers in float for
    ``model_evaluator.metric_eval`` to accept the result.

    ``config_file`` is the JSON quantization config to start from (as written
    by ``create_quant_config``); ``record_file`` receives the calibration of
    every layer it enables.  ``save_dir`` receives, with prefix ``<name>`` (the
    model file's base name): the five save_model outputs, the final config
    (``_quant_config.json``, fallback layers ``quant_enable: false``), the final
    record (``_record.txt``), the ranking (``_sensitivity.json``) and the
    history of every trial (``_fallback_history.json``).
    """
    from amct import api, runtime
    from amct.quant import record as rec

    strat = get_strategy(strategy)
    sens = get_sensitivity(sensitivity)
    os.makedirs(save_dir, exist_ok=True)
    base = os.path.splitext(os.path.basename(model_file))[0]
    prefix = os.path.join(save_dir, base)
    work = os.path.join(save_dir, f".{base}_auto_calibration")
    os.makedirs(work, exist_ok=True)
    history: list[dict] = []
    t0 = time.perf_counter()

    def note(step: str, **kw):
        entry = {"step": step, "seconds": round(time.perf_counter() - t0, 3),
                 **{k: _jsonable(v) for k, v in kw.items()}}
        history.append(entry)
        log.info("auto-calibration %s: %s", step, {k: v for k, v in kw.items() if k != "config"})

    # 1. The float metric.
    original = model_evaluator.evaluate(model_file, weights_file)
    note("float", metric=original, explain="metric of the float model: the reference")

    # 2. Calibrate every quantizable layer once.  Activation factors are
    # collected on the float (modified) model, so they do not depend on which
    # other layers end up quantized: every later trial reuses this record.
    graph = api.init(config_file, model_file, weights_file, record_file)
    mod_model = os.path.join(work, "modified.prototxt")
    mod_weights = os.path.join(work, "modified.caffemodel")
    api.quantize_model(graph, mod_model, mod_weights)
    with runtime.capture_inputs() as captured:
        model_evaluator.calibration(mod_model, mod_weights)
    full = rec.read_record(record_file)
    quantized = sorted(full)
    if not quantized:
        raise CalibrationError(f"{model_file}: no layer is quantized by {config_file}")

    def build(keys: list[str], save_path: str) -> None:
        sub = os.path.join(work, "record_trial.txt")
        rec.write_record(sub, {k: full[k] for k in keys})
        api.convert_model(model_file, weights_file, sub, save_path)

    # 3. All layers quantized.
    trial_prefix = os.path.join(work, "trial")
    build(quantized, trial_prefix)
    fq = (trial_prefix + "_fake_quant_model.prototxt", trial_prefix + "_fake_quant_weights.caffemodel")
    metric = model_evaluator.evaluate(*fq)
    ok, loss = model_evaluator.metric_eval(original, metric)
    evaluations = 2
    note("all_quantized", fallback=[], metric=metric, loss=loss, ok=bool(ok),
         explain=("every quantizable layer in INT8 " + ("meets the metric: no fallback needed"
                  if ok else "fails the metric: rank layers and search for a fallback set")))

    # 4. Sensitivity on the calibration inputs: fused float graph vs fake-quant.
    from amct.frontends.caffe import load_caffe
    float_graph = graph.copy()
    for x in float_graph.layers:
        if x.type in ("IFMR", "HFMG", "SearchN"):
            float_graph.remove_layer(x)
    fake_graph = load_caffe(*fq)
    scores = sens.measure(float_graph, fake_graph, quantized, captured)
    ranking = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))
    ranking_file = prefix + "_sensitivity.json"
    atomic_write_text(ranking_file, json.dumps(
        {"sensitivity": sens.name or type(sens).__name__,
         "note": "ascending similarity: the first layers are the most sensitive",
         "ranking": [{"layer": k, "similarity": v} for k, v in ranking]}, indent=2) + "\n")
    note("sensitivity", ranking=[[k, round(v, 8)] for k, v in ranking],
         explain=f"{sens.name or type(sens).__name__} of each layer's float vs fake-quant output "
                 "on the calibration inputs; the least similar layers fall back first")

    fallback: list[str] = []
    final_metric = metric
    if not ok:
        order = [k for k, _ in ranking]
        results: dict[int, tuple[bool, Any, float]] = {}

        def trial(k: int) -> bool:
            nonlocal evaluations
            if k in results:
                return results[k][0]
            keep = sorted(order[k:])
            build(keep, trial_prefix)
            m = model_evaluator.evaluate(*fq)
            good, lo = model_evaluator.metric_eval(original, m)
            evaluations += 1
            results[k] = (bool(good), m, lo)
            note("trial", fallback_count=k, fallback=order[:k], metric=m, loss=lo, ok=bool(good),
                 explain=(f"{k} least similar layer(s) in float: metric "
                          + ("accepted, try fewer" if good else "rejected, try more")))
            return bool(good)

        k = strat.search(len(order), trial)
        if k is None:
            _write_history(prefix, history, original, None, None, evaluations)
            raise CalibrationError(
                f"{model_file}: no fallback set meets the metric (tried up to "
                f"{len(order) - 1} of {len(order)} layers in float); the model cannot be "
                "quantized within this tolerance")
        fallback = order[:k]
        final_metric = results[k][1] if k in results else final_metric

    # 5. Final outputs: config, record, the five files.
    keep = [k for k in quantized if k not in fallback]
    final_config = prefix + "_quant_config.json"
    _write_final_config(config_file, fallback, final_config)
    final_record = prefix + "_record.txt"
    rec.write_record(final_record, {k: full[k] for k in keep})
    api.convert_model(model_file, weights_file, final_record, prefix)
    note("final", fallback=fallback, metric=final_metric,
         explain=f"smallest accepted fallback set: {len(fallback)} of {len(quantized)} layers in float")
    history_file = _write_history(prefix, history, original, final_metric, fallback, evaluations)
    return AutoCalibrationResult(original, final_metric, fallback, ranking, evaluations, prefix,
                                 history_file, ranking_file)


def _write_final_config(config_file: str, fallback: list[str], out: str) -> None:
    """The starting JSON config with ``quant_enable: false`` for fallback layers
    (same key order and layout as create_quant_config writes)."""
    with open(config_file, encoding="utf-8") as f:
        cfg = json.load(f)
    for name in fallback:
        entry = cfg.get(name)
        if isinstance(entry, dict):
            entry["quant_enable"] = False
    atomic_write_text(out, json.dumps(cfg, indent=4, separators=(",", ":")) + "\n")


def _write_history(prefix, history, original, final, fallback, evaluations) -> str:
    path = prefix + "_fallback_history.json"
    atomic_write_text(path, json.dumps({
        "original_metric": _jsonable(original), "final_metric": _jsonable(final),
        "fallback_layers": fallback, "evaluations": evaluations, "steps": history},
        indent=2) + "\n")
    return path
