"""The CPU kernels on decoder steps and small problems (the elementwise row path, csrc/cpu/row_forward.h, the
bilinear family's few-rows scores for Nq <= 4 and its GEMM blocks) against the float64 oracle: realistic inputs
(un-centred, large and small scales), every mask and positional term, grouped keys, and the gradients of the
backward that reads their lse."""

from __future__ import annotations

import pytest
import torch

from attnzoo import ops
from attnzoo.ops import reference

pytestmark = pytest.mark.skipif(not ops.EXTENSION, reason="fused ops not compiled")


def _inputs(family, dtype, B, Bk, nq, nk, F, scale, centre, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (centre + scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    x, y = r(B, nq, F), r(Bk, nk, F)
    v = (1000 + torch.randn(Bk, nk, 5, generator=g, dtype=torch.float64)).to(dtype)
    return x, y, v


CASES = [  # (B, Bk, nq, nk): decoder steps, a small square problem, grouped keys
    (64, 64, 1, 10), (3, 3, 2, 50), (2, 2, 16, 16), (6, 2, 1, 33), (4, 4, 3, 1),
]
MASKS = ["none", "valid_lens", "mask", "causal", "window", "alibi", "bias"]


def _mask_kw(kind, B, nq, nk, dtype):
    g = torch.Generator().manual_seed(1)
    if kind == "valid_lens":
        return dict(valid_lens=torch.randint(0, nk + 1, (B, nq), generator=g))
    if kind == "mask":
        return dict(mask=torch.rand(B, nq, nk, generator=g) > 0.3)
    if kind == "causal":
        return dict(causal=True, q_offset=nk - nq)
    if kind == "window":
        return dict(window=2, q_offset=max(0, nk - nq))
    if kind == "alibi":
        return dict(alibi=torch.linspace(0.1, 1.0, B, dtype=dtype), q_offset=nk - nq)
    if kind == "bias":
        b = 50 * torch.randn(B, nq, nk, generator=g, dtype=torch.float64)
        b[0, 0, : nk // 2] = float("-inf")
        return dict(bias=b.to(dtype))
    return {}


def _oracle(family, x, y, w, v, kw):
    x, y, v = x.double(), y.double(), v.double()
    masks = (kw.get("valid_lens"), kw.get("mask"), None if kw.get("bias") is None else kw["bias"].double(),
             None if kw.get("alibi") is None else kw["alibi"].double(), 0, kw.get("causal", False),
             kw.get("window", -1) if kw.get("window") is not None else -1)
    if family == "bilinear":
        return reference.bilinear_fwd(x, y, v, None, 0.3, *masks, q_offset=kw.get("q_offset", 0))
    return reference.elementwise_fwd(x, y, w.double(), v, 0, 0, *masks, q_offset=kw.get("q_offset", 0))


def _ours(family, x, y, w, v, kw):
    if family == "bilinear":
        return ops.bilinear_attention(x, y, v, None, 0.3, **kw)
    return ops.additive_attention(x, y, w, v, **kw)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", ["bilinear", "additive"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_path_outputs_and_gradients(family, case, kind, dtype):
    B, Bk, nq, nk = case
    F = 37 if family == "bilinear" else 19  # not a multiple of the vector width: the tails
    scale, centre = (0.05, 1.0) if family == "additive" else (1.0, 3.0)  # un-centred features
    x, y, v = _inputs(family, dtype, B, Bk, nq, nk, F, scale, centre)
    gen = torch.Generator().manual_seed(2)
    w = (4 * torch.randn(F, generator=gen, dtype=torch.float64)).to(dtype)  # a learned scorer far from its init
    kw = _mask_kw(kind, B, nq, nk, dtype)
    leaves = [t.requires_grad_() for t in ((x, y, v) if family == "bilinear" else (x, y, v, w))]
    out, lse, _ = _ours(family, x, y, w, v, kw)
    want_out, want_lse = _oracle(family, x, y, w, v, kw)[:2]
    f32 = dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=2e-5 if f32 else 1e-10, atol=0.05 if f32 else 1e-9)
    finite = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse.double()[finite], want_lse[finite], rtol=1e-5 if f32 else 1e-10,
                               atol=1e-3 if f32 else 1e-9)
    assert (out[~finite] == 0).all()  # rows with no key: zeros
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(reference_out(family, x, y, w, v, kw), leaves, g)
    # float32 outputs near 1e3 carry a rounding of ~6e-5, which enters every score gradient through
    # D_i = dO_i . o_i: ~3e-3 of the gradient's scale at most over 100 seeds of these inputs.
    for a, b in zip(got, want, strict=True):
        s = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a.double() / s, b.double() / s, rtol=0, atol=5e-3 if f32 else 1e-9)
    if nk == 1:  # one key: dS = 0 exactly, whatever the values' offset (the backward centres them)
        assert all(bool((a == 0).all()) for a in (got[:2] + got[3:]))


def reference_out(family, x, y, w, v, kw):
    """The oracle's output, differentiable (eager float64 ops through autograd)."""
    return _oracle(family, x, y, w, v, kw)[0]


@pytest.mark.parametrize("family", ["bilinear", "additive"])
def test_row_path_nan_and_inf(family):
    """A NaN score makes its row NaN; -inf biases take keys out (all of them: zeros, lse -inf), as the oracle."""
    x, y, v = _inputs(family, torch.float32, 2, 2, 1, 6, 8, 0.1, 0.0)
    w = torch.randn(8)
    bias = torch.zeros(2, 1, 6)
    bias[0, 0, 2] = float("nan")
    bias[1] = float("-inf")
    out, lse, _ = _ours(family, x, y, w, v, dict(bias=bias))
    assert torch.isnan(out[0]).all() and torch.isnan(lse[0]).all()
    assert (out[1] == 0).all() and lse[1].item() == float("-inf")


def test_row_path_bf16_is_computed_in_float32():
    x, y, v = _inputs("bilinear", torch.float64, 4, 4, 1, 20, 16, 1.0, 0.0)
    got = ops.bilinear_attention(x.bfloat16(), y.bfloat16(), v.bfloat16(), None, 0.3)[0]
    want = reference.bilinear_fwd(x.bfloat16().double(), y.bfloat16().double(), v.bfloat16().double(), None, 0.3,
                                  None, None, None, None, 0, False, -1)[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1.0)
