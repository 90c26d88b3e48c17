"""The pass framework: registry, ordering, disabling, invariants, report, the doc example."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

import amct
from amct.errors import PassError, QuantizationError
from amct.ir import Layer
from amct.passes import (Pass, PassContext, PassManager, PassResult, get_pass, pipeline,
                         register_pass, registered_passes, reset_pipelines, unregister_pass)
from test_passes_graphs import W2, B2, BN2, bn, conv, conv_bn_scale, graph, inp, relu

DOC = Path(__file__).resolve().parent.parent / "docs" / "passes.md"


def make_pass(name, requires=(), runs_after=(), fn=None):
    """A throwaway Pass class (not registered)."""
    def run(self, g, ctx):
        return fn(g, ctx) if fn else PassResult(False)
    return type(name, (Pass,), {"name": name, "requires": tuple(requires),
                                "runs_after": tuple(runs_after), "run": run})()


@pytest.fixture(autouse=True)
def _clean():
    yield
    for n in ("t_dup", "t_fn", "drop_dropout"):
        unregister_pass(n)
    reset_pipelines()


def test_registry_refuses_duplicates_and_accepts_functions():
    register_pass(make_pass("t_dup"))
    with pytest.raises(PassError, match="'t_dup' is already registered"):
        register_pass(make_pass("t_dup"))
    register_pass(make_pass("t_dup"), replace=True)
    with pytest.raises(PassError, match="'fuse_conv_bn_scale' is already registered"):
        register_pass(make_pass("fuse_conv_bn_scale"))

    @register_pass(name="t_fn", requires=("fuse_conv_bn_scale",))
    def t_fn(g, ctx):
        return True
    p = get_pass("t_fn")
    assert p.requires == ("fuse_conv_bn_scale",) and "t_fn" in registered_passes()
    assert p.run(conv_bn_scale(False), PassContext()) == PassResult(True)
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        get_pass("nope")


def test_ordering_constraints_name_both_passes():
    a, b = make_pass("a"), make_pass("b", requires=("a",))
    PassManager([a, b]).validate()
    with pytest.raises(PassError, match="pass 'b' requires pass 'a', which comes after it"):
        PassManager([b, a]).validate()
    with pytest.raises(PassError, match="pass 'b' requires pass 'a', which is not in the pipeline"):
        PassManager([b]).validate()
    with pytest.raises(PassError, match="pass 'b' requires pass 'a', which is disabled"):
        PassManager([a, b], disabled=["a"]).validate()
    PassManager([b]).validate(applied=["a"])          # ran in an earlier pipeline
    c = make_pass("c", runs_after=("a",))
    PassManager([c]).validate()                       # soft: absent is fine
    with pytest.raises(PassError, match="pass 'c' must run after pass 'a'"):
        PassManager([c, a]).validate()
    with pytest.raises(PassError, match="unknown pass"):
        PassManager([a], disabled=["zzz"]).validate()
    with pytest.raises(PassError, match="already in the pipeline"):
        PassManager([a, "fuse_conv_bn_scale"]).append("fuse_conv_bn_scale")


def test_disable_insert_and_report(caplog):
    g = conv_bn_scale(False)
    pm = PassManager(["fuse_conv_bn_scale"])
    seen = []
    pm.insert_before("fuse_conv_bn_scale", make_pass("first", fn=lambda g, c: seen.append(1) or PassResult(False)))
    pm.insert_after("first", make_pass("second", fn=lambda g, c: PassResult(True, {"n": 7})))
    assert pm.names == ["first", "second", "fuse_conv_bn_scale"]
    pm.disable("first")
    with caplog.at_level(logging.INFO, logger="amct"):
        report = pm.run(g, PassContext())
    assert seen == [] and not report["first"].ran
    assert report["second"].stats == {"n": 7} and report["fuse_conv_bn_scale"].stats == {"fused": 1}
    assert report.changed and "bn" not in g
    assert "pass fuse_conv_bn_scale:" in caplog.text and "fused=1" in caplog.text
    assert "disabled" in report.summary()


def test_invariant_failure_names_pass_and_predecessors():
    def breaker(g, ctx):
        g.add_layer(Layer("bad", "ReLU", ["no_such_blob"], ["y"]))
        return PassResult(True)
    pm = PassManager([make_pass("ok"), make_pass("breaker", fn=breaker)])
    with pytest.raises(PassError, match=r"after pass 'breaker' \(passes run before it: ok\).*no_such_blob"):
        pm.run(conv_bn_scale(False), PassContext())
    # Shapes are checked too: a 5x5 kernel on a 3x3 input has no output.
    def bad_shape(g, ctx):
        g.layer("conv").params.convolution_param.kernel_size[0] = 5
        return PassResult(True)
    pm = PassManager([make_pass("bad_shape", fn=bad_shape)])
    with pytest.raises(PassError, match="after pass 'bad_shape'"):
        pm.run(conv_bn_scale(False), PassContext())
    PassManager([make_pass("bad_shape", fn=bad_shape)], check=False).run(conv_bn_scale(False))


def test_pass_errors_propagate_or_get_the_pass_name():
    def amct_err(g, ctx):
        raise QuantizationError("layer 'conv': boom")
    with pytest.raises(QuantizationError, match="layer 'conv': boom"):
        PassManager([make_pass("x", fn=amct_err)]).run(conv_bn_scale(False))
    with pytest.raises(PassError, match="pass 'y' failed: ZeroDivisionError"):
        PassManager([make_pass("y", fn=lambda g, c: 1 / 0)]).run(conv_bn_scale(False))


def doc_example() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- example:custom-pass -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/passes.md lost its worked example"
    return m.group(1)


def test_doc_example_custom_pass():
    code = doc_example()
    assert len(code.strip().splitlines()) < 30
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    assert pipeline("calibration").names[:2] == ["drop_dropout", "fuse_conv_bn_scale"]
    drop = Layer("drop", "Dropout", ["c"], ["c"])
    g = graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2), drop,
              bn("bn", "c", "c", *BN2, eps=1.0), relu("relu", "c", "c"))
    report = ns["pm"].run(g, PassContext())
    assert report["drop_dropout"].stats == {"removed": 1}
    assert [x.type for x in g.layers] == ["Input", "Convolution", "ReLU"]   # BN fused after drop
    np.testing.assert_allclose(g.layer("conv").blobs[1], [-0.25, -1.0], rtol=1e-6)   # (b-mean)/sqrt(var+eps)
    assert isinstance(amct.PassManager, type)
