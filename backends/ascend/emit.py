"""save_model's file writer: the five output files, all or nothing (SPEC §2 save_model)."""
from __future__ import annotations

from typing import IO, Any, Iterable

from amct.errors import ConfigError
from amct.fileio import AtomicGroup
from amct.frontends.caffe import wire
from amct.frontends.caffe.writer import net_header, prototxt_text
from amct.ir import Graph
from amct.backends.ascend.deploy import build_deploy
from amct.backends.ascend.fake_quant import build_fake_quant
from amct.backends.ascend.quant_json import quant_json_text

SUFFIXES = {
    "fake_model": "_fake_quant_model.prototxt",
    "fake_weights": "_fake_quant_weights.caffemodel",
    "deploy_model": "_deploy_model.prototxt",
    "deploy_weights": "_deploy_weights.caffemodel",
    "quant_json": "_quant.json",
}
_SAVE_TYPES = {"fakequant": ("fake",), "deploy": ("deploy",), "both": ("fake", "deploy")}


def parse_save_type(save_type: str) -> tuple[str, ...]:
    """"Fakequant"/"Fake_Quant"/"Deploy"/"Both" (any case) -> the models to write."""
    key = str(save_type).lower().replace("_", "")
    if key not in _SAVE_TYPES:
        raise ConfigError(f"save_type '{save_type}' is not one of 'Fakequant', 'Deploy', 'Both'")
    return _SAVE_TYPES[key]


def output_paths(save_path: str) -> dict[str, str]:
    """The output files of ``save_path`` (plain concatenation prefix + suffix)."""
    return {k: save_path + s for k, s in SUFFIXES.items()}


def _write_caffemodel(graph: Graph, f: IO[bytes]) -> None:
    head = net_header(graph, False).SerializeToString(deterministic=True)
    items = [(x.to_proto(with_blobs=False).SerializeToString(deterministic=True), x.blobs)
             for x in graph.layers]
    wire.write_net(f, head, items)


def save_outputs(qgraph: Graph, save_type: str, save_path: str,
                 fusions: Iterable[Any] = ()) -> dict[str, str]:
    """Write the fake-quant and/or deploy model and quant.json; returns kind -> path.

    Every model is built in memory before the first byte is written, and the
    files go through one ``AtomicGroup``: a failure leaves all previous outputs
    untouched.  ``qgraph`` is not modified.
    """
    kinds = parse_save_type(save_type)
    paths = output_paths(save_path)
    graphs = {}
    if "fake" in kinds:
        graphs["fake"] = build_fake_quant(qgraph)
    if "deploy" in kinds:
        graphs["deploy"] = build_deploy(qgraph)
    info = quant_json_text(qgraph, fusions)
    written: dict[str, str] = {}
    with AtomicGroup() as grp:
        for kind, g in graphs.items():
            with grp.open(paths[f"{kind}_model"], "w") as f:
                f.write(prototxt_text(g))
            with grp.open(paths[f"{kind}_weights"], "wb") as f:
                _write_caffemodel(g, f)
            written[f"{kind}_model"] = paths[f"{kind}_model"]
            written[f"{kind}_weights"] = paths[f"{kind}_weights"]
        with grp.open(paths["quant_json"], "w") as f:
            f.write(info)
        written["quant_json"] = paths["quant_json"]
    return written
