"""docs/api.md's flow example runs as written."""
from __future__ import annotations

import os
import re
from pathlib import Path

from conftest import shared_or_skip

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_doc_example_runs(tmp_path, capsys):
    d = shared_or_skip("models", "lenet_mnist")
    m = re.search(r"<!-- example:flow -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/api.md lost its flow example"
    ns = {"MODEL": str(d / "mnist_deploy.prototxt"), "WEIGHTS": str(d / "lenet_iter_10000.caffemodel"),
          "OUT": str(tmp_path)}
    exec(compile(m.group(1), str(DOC), "exec"), ns)
    assert sorted(ns["written"]) == ["deploy_model", "deploy_weights", "fake_model",
                                     "fake_weights", "quant_json"]
    assert all(os.path.getsize(p) > 0 for p in ns["written"].values())
    assert "quant_json" in capsys.readouterr().out
