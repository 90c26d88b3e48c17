"""The README's Python examples run as written (from the repository root)."""
from __future__ import annotations

import os
import re

import numpy as np

from conftest import REPO


def _blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_amct_flow_block_runs(tmp_path, monkeypatch):
    flow = _blocks()[0]
    assert "amct.save_model" in flow
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(flow, "README.md", "exec"), ns)
    for suffix in ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel",
                   "_deploy_model.prototxt", "_deploy_weights.caffemodel", "_quant.json"):
        assert os.path.getsize(tmp_path / "out" / f"lenet{suffix}") > 0
    # The library one-liner, on the same batches.
    ns["batches"] = [ns["images"][i * 50:(i + 1) * 50, None] / 256.0 for i in range(2)]
    exec(compile(_blocks()[1], "README.md", "exec"), ns)
    assert [row["layer"] for row in ns["table"]] == ["conv1", "conv2", "ip1", "ip2"]
    assert min(row["fake_quant"]["cosine"] for row in ns["table"]) > 0.999


def test_compat_module_reaches_everything():
    import amct
    import amct_caffe

    assert amct_caffe.runtime is amct.runtime
    assert amct_caffe.create_quant_config is amct.create_quant_config
    assert np.all([hasattr(amct_caffe, n) for n in amct.__all__])
