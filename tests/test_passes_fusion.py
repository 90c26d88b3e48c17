"""fuse_conv_bn_scale and fold_bn_scale_into_next_conv on hand-built graphs."""
from __future__ import annotations

import numpy as np
import pytest

from amct.passes import PassContext, get_pass
from test_passes_graphs import (B2, B2_FUSED, BETA2, BN2, GAMMA2, W2, W2_FUSED, bn, conv,
                                conv_bn_scale, f32, graph, inp, ip, relu, run, scale)

FUSE = get_pass("fuse_conv_bn_scale")
FOLD = get_pass("fold_bn_scale_into_next_conv")
X = np.random.default_rng(0).normal(size=(1, 2, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("in_place", [False, True])
def test_conv_bn_scale_hand_computed(in_place):
    g = conv_bn_scale(in_place)
    want = run(g, data=X)
    ctx = PassContext()
    res = FUSE.run(g, ctx)
    assert res.changed and res.stats == {"fused": 1}
    assert [x.type for x in g.layers] == ["Input", "Convolution", "ReLU"]
    c = g.layer("conv")
    np.testing.assert_array_equal(c.blobs[0], f32(W2_FUSED))
    np.testing.assert_array_equal(c.blobs[1], f32(B2_FUSED))
    assert c.meta["fused_from"] == ["conv", "bn", "sc"]
    assert ctx.fusions[0].target == "conv" and ctx.fusions[0].merged == ("bn", "sc")
    # The rest of the net still reads the chain's last blob name.
    assert c.tops == (["c"] if in_place else ["s"])
    got = run(g, data=X)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_conv_without_bias_gains_one():
    g = graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2),
              bn("bn", "c", "c", *BN2, eps=1.0))
    FUSE.run(g, PassContext())
    c = g.layer("conv")
    assert c.params.convolution_param.bias_term
    # no Scale: a = 1/sqrt(var+eps) = [1/2, 1/3]; b' = -mean·a = [-1/2, -2/3]
    np.testing.assert_allclose(c.blobs[1], [-0.5, -2 / 3], rtol=1e-6)
    np.testing.assert_allclose(c.blobs[0][:, :, 0, 0], [[0.5, 1.0], [1.0, 4 / 3]], rtol=1e-6)


def test_scale_alone_and_bn_scale_factor_zero():
    g = graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2),
              scale("sc", "c", "c", GAMMA2))
    FUSE.run(g, PassContext())
    np.testing.assert_array_equal(g.layer("conv").blobs[1], f32([2.0, -3.0]))   # b·γ
    # f = 0: Caffe uses mean = var = 0, so only 1/sqrt(eps) scales.
    g = graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2),
              bn("bn", "c", "c", [5.0, 5.0], [7.0, 7.0], 0.0, eps=0.25))
    FUSE.run(g, PassContext())
    np.testing.assert_allclose(g.layer("conv").blobs[1], [1.0, -2.0])


def test_not_fused_when_intermediate_blob_has_another_reader():
    layers = [inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2),
              bn("bn", "c", "b", *BN2, eps=1.0), scale("sc", "b", "s", GAMMA2, BETA2),
              relu("side", "c", "side")]
    g = graph(*layers)
    assert not FUSE.run(g, PassContext()).changed
    assert len(g) == 5
    # BN's output read twice: conv+BN still fuses, BN+Scale does not.
    g = graph(inp("data", [1, 2, 3, 3]), conv("conv", "data", "c", W2, B2),
              bn("bn", "c", "b", *BN2, eps=1.0), scale("sc", "b", "s", GAMMA2, BETA2),
              relu("side", "b", "side"))
    FUSE.run(g, PassContext())
    assert [x.name for x in g.layers] == ["data", "conv", "sc", "side"]
    assert g.layer("conv").tops == ["b"] and g.layer("conv").meta["fused_from"] == ["conv", "bn"]


def test_skip_fusion_layers_and_do_fusion():
    for skip in (["conv"], ["bn"]):
        g = conv_bn_scale(False)
        FUSE.run(g, PassContext(skip_fusion_layers=skip))
        assert "bn" in g if skip == ["conv"] else "bn" in g and "sc" in g
    g = conv_bn_scale(False)
    FUSE.run(g, PassContext(skip_fusion_layers=["sc"]))          # BN fuses, Scale stays
    assert "bn" not in g and "sc" in g
    g = conv_bn_scale(True)
    assert not FUSE.run(g, PassContext(do_fusion=False)).changed and len(g) == 5


def test_innerproduct_and_grouped_deconvolution():
    w = f32(np.arange(6).reshape(2, 3) + 1)
    g = graph(inp("data", [2, 3]), ip("fc", "data", "f", w, [1.0, 1.0]),
              bn("bn", "f", "f", *BN2, eps=1.0), scale("sc", "f", "f", GAMMA2, BETA2))
    FUSE.run(g, PassContext())
    np.testing.assert_array_equal(g.layer("fc").blobs[0], w * f32([[2.0], [1.0]]))
    np.testing.assert_array_equal(g.layer("fc").blobs[1], f32([1.0, -3.0]))  # (1-1)·2+1, (1-2)·1-2
    # Deconvolution, 2 groups: weights [Cin=2, Cout/g=2, 1, 1]; output channel
    # gi*2+j is w[gi, j].  Per-output-channel factors [1,2,3,4] scale w[gi, j].
    wd = f32(np.ones((2, 2, 1, 1)))
    g = graph(inp("data", [1, 2, 3, 3]), conv("up", "data", "u", wd, [0, 0, 0, 0],
                                               kind="Deconvolution", group=2),
              scale("sc", "u", "u", [1.0, 2.0, 3.0, 4.0]))
    want = run(g, data=X)
    FUSE.run(g, PassContext())
    np.testing.assert_array_equal(g.layer("up").blobs[0][:, :, 0, 0], [[1, 2], [3, 4]])
    np.testing.assert_allclose(run(g, data=X)["u"], want["u"], rtol=1e-6)


def test_fold_bn_scale_into_next_conv_hand_computed():
    # BN+Scale (a = [2, 1], add = β - mean·a = [-1, -4]) feeding a 1x1 conv.
    w = f32([[[[1.0]], [[1.0]]]])                       # one output channel, sums the inputs
    g = graph(inp("data", [1, 2, 3, 3]), bn("bn", "data", "b", *BN2, eps=1.0),
              scale("sc", "b", "s", GAMMA2, BETA2), conv("conv", "s", "c", w, [0.5]))
    want = run(g, data=X)
    ctx = PassContext()
    assert FOLD.run(g, ctx).changed
    assert [x.name for x in g.layers] == ["data", "conv"] and g.layer("conv").bottoms == ["data"]
    np.testing.assert_array_equal(g.layer("conv").blobs[0][0, :, 0, 0], [2.0, 1.0])
    np.testing.assert_array_equal(g.layer("conv").blobs[1], [0.5 - 1 - 4])
    assert ctx.fusions[0].kind == "bn_scale_conv"
    np.testing.assert_allclose(run(g, data=X)["c"], want["c"], rtol=1e-5, atol=1e-5)


def test_fold_refused_with_padding_or_second_reader():
    w = f32(np.ones((1, 2, 3, 3)))
    g = graph(inp("data", [1, 2, 5, 5]), bn("bn", "data", "b", *BN2, eps=1.0),
              conv("conv", "b", "c", w, [0.0], pad=1))
    assert not FOLD.run(g, PassContext()).changed
    g = graph(inp("data", [1, 2, 5, 5]), bn("bn", "data", "b", *BN2, eps=1.0),
              conv("conv", "b", "c", w, [0.0]), relu("side", "b", "side"))
    assert not FOLD.run(g, PassContext()).changed
