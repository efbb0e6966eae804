"""Sparse poolings (``attnzoo.sparse``): sparsemax and 1.5-entmax, dense and blockwise.

The dense functions against the ``entmax`` package and an independent float64 bisection for the threshold,
with masks, un-centred scores, -inf / NaN scores, empty rows and gradcheck; the blockwise ``sparse_attend``
against the dense functions across several blocks (outputs and the gradients of query, key, value, the score's
parameters and a bias), in float32 and float64, and keeping no ``Nq x Nk`` tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo import blockwise, sparse
from attnzoo.masks import MaskSpec

from .probes import LargestOutput

POOLINGS = {2.0: sparse.sparsemax, 1.5: sparse.entmax15}
NO_CHECK = lambda s, q, k: None  # noqa: E731


def rnd(*shape, seed=0, scale=1.0, offset=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


def bisection(scores: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """Independent float64 weights: tau of ``sum_j [z_j - tau]_+^p = 1`` by 200 bisection steps on
    ``[max z - 1, max z]``, ``z = (alpha - 1) s`` (no shift, no sort, no closed form)."""
    z = ((alpha - 1) * scores.double()).masked_fill(~valid, float("-inf"))
    top = z.amax(-1, keepdim=True).clamp_min(-1e300)  # an empty row: any finite bracket
    lo, hi = top - 1, top
    p = 1 / (alpha - 1)
    for _ in range(200):
        mid = (lo + hi) / 2
        big = ((z - mid).clamp_min(0) ** p).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    return ((z - (lo + hi) / 2).clamp_min(0) ** p) * valid.any(-1, keepdim=True)


# --- dense --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [2.0, 1.5])
@pytest.mark.parametrize("scale", [0.05, 1.0, 10.0])
def test_dense_matches_entmax_package(alpha, scale):
    entmax = pytest.importorskip("entmax")
    theirs = {2.0: entmax.sparsemax, 1.5: entmax.entmax15}[alpha]
    s = rnd(3, 5, 300, seed=1, scale=scale)  # flat rows (large supports) to near one-hot ones
    g = rnd(3, 5, 300, seed=2)
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    w = POOLINGS[alpha](s1, torch.ones(300, dtype=torch.bool))
    want = theirs(s2, dim=-1)
    torch.testing.assert_close(w, want, rtol=0, atol=1e-13)
    assert torch.equal(w > 0, want > 0)  # the same support: exact zeros where theirs has them
    (w * g).sum().backward()
    (want * g).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=1e-12)
    sizes = (w > 0).sum(-1)
    assert sizes.max() < 300 and (scale > 0.1 or sizes.min() > 20)  # zeros in every row; large supports


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_dense_matches_bisection_with_masks(alpha):
    s = rnd(4, 6, 200, seed=3, scale=2.0, offset=-5.0)
    valid = rnd(4, 6, 200, seed=4) > -0.3
    valid[0, 0] = False  # an empty row
    valid[1, 1] = False
    valid[1, 1, 17] = True  # a single key: weight 1
    w = POOLINGS[alpha](s, valid)
    want = bisection(s, valid, alpha)
    torch.testing.assert_close(w, want, rtol=0, atol=1e-12)
    assert (w[~valid] == 0).all() and (w[0, 0] == 0).all() and w[1, 1, 17] == 1
    sums = w.sum(-1)
    torch.testing.assert_close(sums[valid.any(-1)], torch.ones_like(sums[valid.any(-1)]), rtol=0, atol=1e-14)
    assert ((w == 0) & valid).any(-1)[valid.sum(-1) > 5].all()  # exact zeros inside the valid keys


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_mask_equals_the_valid_subset(alpha):
    s = rnd(5, 40, seed=5, scale=0.7)
    valid = rnd(5, 40, seed=6) > 0.2
    w = POOLINGS[alpha](s, valid)
    for r in range(5):
        alone = POOLINGS[alpha](s[r, valid[r]], torch.tensor(True))
        torch.testing.assert_close(w[r, valid[r]], alone, rtol=0, atol=1e-15)
    # valid broadcasts: one mask for every row
    keys = rnd(40, seed=7) > 0
    torch.testing.assert_close(POOLINGS[alpha](s, keys), POOLINGS[alpha](s, keys.expand(5, 40)), rtol=0, atol=0)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_uncentred_float32_and_half_dtypes(alpha):
    s64 = rnd(4, 500, seed=8, scale=0.1, offset=1e3)
    s32 = s64.float()
    valid = torch.ones(500, dtype=torch.bool)
    w32 = POOLINGS[alpha](s32, valid)
    assert w32.dtype == torch.float32
    want = POOLINGS[alpha](s32.double(), valid)  # the same (rounded) scores, in float64
    assert (want > 0).sum(-1).min() > 20
    torch.testing.assert_close(w32.double(), want, rtol=0, atol=2e-7)
    for dtype in (torch.bfloat16, torch.float16):
        s16 = s32.to(dtype)
        w16 = POOLINGS[alpha](s16.requires_grad_(), valid)
        assert w16.dtype == dtype
        assert torch.equal(w16, POOLINGS[alpha](s16.detach().float(), valid).to(dtype))  # float32, cast back
        w16.float().square().sum().backward()
        assert s16.grad.dtype == dtype and torch.isfinite(s16.grad).all()


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_empty_rows_neg_inf_and_nan(alpha):
    s = rnd(4, 9, seed=9)
    s[1, 3] = float("-inf")  # a valid key scoring -inf: as if masked
    s[2, :] = float("-inf")  # only -inf: an empty row
    valid = torch.ones(4, 9, dtype=torch.bool)
    valid[0] = False  # no valid key
    x = s.clone().requires_grad_()
    w = POOLINGS[alpha](x, valid)
    assert (w[0] == 0).all() and (w[2] == 0).all() and w[1, 3] == 0
    masked = valid.clone()
    masked[1, 3] = False
    torch.testing.assert_close(w[1], POOLINGS[alpha](s[1], masked[1]), rtol=0, atol=0)
    (w * rnd(4, 9, seed=10)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[0] == 0).all() and (x.grad[2] == 0).all() and x.grad[1, 3] == 0
    s[3, 4] = float("nan")
    w = POOLINGS[alpha](s, valid)
    assert w[3].isnan().all() and torch.isfinite(w[:3]).all()


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_gradcheck(alpha):
    s = rnd(3, 12, seed=11, scale=0.6).requires_grad_()
    valid = rnd(3, 12, seed=12) > -0.8
    valid[2] = False
    assert torch.autograd.gradcheck(lambda x: POOLINGS[alpha](x, valid), (s,))


def test_argument_errors():
    s = rnd(2, 5)
    with pytest.raises(TypeError, match="scores"):
        sparse.sparsemax(torch.ones(2, 5, dtype=torch.long), torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid"):
        sparse.entmax15(s, torch.ones(2, 5))
    with pytest.raises(ValueError, match="valid"):
        sparse.sparsemax(s, torch.ones(3, 5, dtype=torch.bool))
    spec = MaskSpec((2,), 5, 5)
    for alpha in (1.0, 1.2, True, "sparsemax"):
        with pytest.raises(ValueError, match="alpha"):
            sparse.sparse_attend(Dot(), NO_CHECK, alpha, s.unsqueeze(-1), s.unsqueeze(-1), s.unsqueeze(-1), spec)


# --- blockwise ----------------------------------------------------------------------------------------------


class Dot(nn.Module):
    """``s = scale * q . k``, a score with a parameter."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float64))

    def forward(self, query, key):
        return self.scale.to(query.dtype) * (query @ key.transpose(-1, -2))


def dense_attend(score, alpha, q, k, v, spec):
    s = spec.add_positions(score(q, k))
    return POOLINGS[alpha](s, spec.dense(q.device)) @ v


def _grads(fn, score, q, k, v, bias=None):
    qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
    out = fn(qq, kk, vv)
    (out * torch.cos(out)).sum().backward()
    params = [p.grad.clone() for p in score.parameters()]
    score.zero_grad()
    extra = [bias.grad.clone()] if bias is not None else []
    if bias is not None:
        bias.grad = None
    return [out, qq.grad, kk.grad, vv.grad, *params, *extra]


def _spec(masks, B, Nq, Nk, seed=20):
    g = torch.Generator().manual_seed(seed)
    if masks == "mask":
        return MaskSpec((B,), Nq, Nk, mask=torch.rand(B, Nq, Nk, generator=g) > 0.4)
    if masks == "valid_lens":
        vl = torch.randint(0, Nk + 1, (B, Nq), generator=g)
        vl[0, :3] = 0  # empty rows
        vl[1, 3:6] = 1  # one key
        return MaskSpec((B,), Nq, Nk, valid_lens=vl)
    if masks == "causal_bias_alibi":
        bias = (torch.randn(Nq, Nk, generator=g, dtype=torch.float64) * 0.02).requires_grad_()
        return MaskSpec((B,), Nq, Nk, causal=True, bias=bias, alibi=torch.tensor(1e-3, dtype=torch.float64))
    return MaskSpec((B,), Nq, Nk)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
@pytest.mark.parametrize("masks", ["none", "mask", "valid_lens", "causal_bias_alibi"])
def test_blockwise_matches_dense_additive(alpha, masks):
    B, Nq, Nk = 2, 300, 600  # 2 x 3 blocks of 256
    q, k, v = rnd(B, Nq, 3, seed=21), rnd(B, Nk, 4, seed=22), rnd(B, Nk, 5, seed=23, offset=10.0)
    torch.manual_seed(0)
    score = attnzoo.create("additive", query_dim=3, key_dim=4, hidden_dim=6).score.double()
    with torch.no_grad():
        # sparsemax supports of 20 to 60 keys (TOP = 32), entmax15 of hundreds (causal rows have fewer keys)
        score.w_v.weight.mul_(0.25 if masks == "causal_bias_alibi" else 0.5)
    spec = _spec(masks, B, Nq, Nk)
    passes = sparse._forward(score, NO_CHECK, alpha, q, k, v, spec)[-1]
    sizes = (POOLINGS[alpha](spec.add_positions(score(q, k)).detach(), spec.dense()) > 0).sum(-1)
    assert sizes.max() > sparse.TOP and max(passes) >= 1  # the bracketing passes ran
    bias = spec.bias
    want = _grads(lambda a, b, c: dense_attend(score, alpha, a, b, c, spec), score, q, k, v, bias)
    got = _grads(lambda a, b, c: sparse.sparse_attend(score, NO_CHECK, alpha, a, b, c, spec), score, q, k, v, bias)
    names = ["out", "dq", "dk", "dv", "dW_q", "dW_k", "dw_v"] + (["dbias"] if bias is not None else [])
    for name, x, y in zip(names, got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10 * float(y.detach().abs().max()), msg=name)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
@pytest.mark.parametrize("sharp", [0.03, 1.0, 6.0])
def test_blockwise_float32_and_float64_across_sharpness(alpha, sharp):
    B, Nq, Nk, D = 1, 260, 700, 16
    q, k, v = rnd(B, Nq, D, seed=31), rnd(B, Nk, D, seed=32), rnd(B, Nk, 3, seed=33)
    spec = _spec("mask", B, Nq, Nk, seed=34)
    names = ["out", "dq", "dk", "dv", "dscale"]

    def run(blockwise, dtype):
        score = Dot(sharp / D**0.5)
        fn = (lambda a, b, c: sparse.sparse_attend(score, NO_CHECK, alpha, a, b, c, spec)) if blockwise else (
            lambda a, b, c: dense_attend(score, alpha, a, b, c, spec))
        return _grads(fn, score, q.to(dtype), k.to(dtype), v.to(dtype))

    want = run(False, torch.float64)
    for name, x, y in zip(names, run(True, torch.float64), want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10 * float(y.detach().abs().max()), msg=name)
    # float32: as close to float64 as the dense float32 reference is (dscale sums terms of both signs)
    for name, x, ref, y in zip(names, run(True, torch.float32), run(False, torch.float32), want, strict=True):
        assert x.dtype == (torch.float64 if name == "dscale" else torch.float32)
        err, ref_err = (float((t.detach().double() - y.detach()).abs().max()) for t in (x, ref))
        assert err <= 4 * ref_err + 1e-6 * float(y.detach().abs().max()), (name, err, ref_err)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_blockwise_from_the_widest_bracket_and_ties(alpha, monkeypatch):
    """No top-``TOP`` shortcut: the bracket starts at ``[-1, -(1/n)^(alpha-1)]``; scores on a grid of 1/8 tie
    across the keys of a support."""
    monkeypatch.setattr(sparse, "TOP", 0)
    B, Nq, Nk, D = 2, 70, 530, 8
    q, k, v = rnd(B, Nq, D, seed=41), rnd(B, Nk, D, seed=42), rnd(B, Nk, 3, seed=43)
    for sharp in (0.2, 2.0):
        score = lambda a, b, sharp=sharp: torch.round(a @ b.transpose(-1, -2) * sharp * 8) / 8  # noqa: E731
        spec = _spec("valid_lens", B, Nq, Nk, seed=44)
        out, m, tau, _, _, passes = sparse._forward(score, NO_CHECK, alpha, q, k, v, spec)
        assert min(passes) >= 1
        w = POOLINGS[alpha](spec.add_positions(score(q, k)), spec.dense())
        assert any(len(r[r > 0].unique()) < int((r > 0).sum()) for r in w.reshape(-1, Nk))  # ties
        torch.testing.assert_close(out, w @ v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_blockwise_empty_rows_nan_and_no_grad(alpha):
    q, k, v = rnd(1, 5, 2, seed=51), rnd(1, 300, 2, seed=52), rnd(1, 300, 3, seed=53)
    spec = MaskSpec((1,), 5, 300, valid_lens=torch.tensor([[2, 0, 300, 300, 1]]))
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    out = sparse.sparse_attend(Dot(), NO_CHECK, alpha, qq, kk, v, spec)
    assert (out[0, 1] == 0).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 4], v[0, 0])  # one key: weight 1
    out.sum().backward()
    assert torch.isfinite(qq.grad).all() and (qq.grad[0, 1] == 0).all() and (qq.grad[0, 4] == 0).all()
    assert (kk.grad[0, 2:] != 0).any() and torch.isfinite(kk.grad).all()
    with torch.no_grad():
        again = sparse.sparse_attend(Dot(), NO_CHECK, alpha, q, k, v, spec)
    assert torch.equal(again, out.detach())
    k[0, 2, 0] = float("nan")  # reaches the rows that may attend key 2
    out = sparse.sparse_attend(Dot(), NO_CHECK, alpha, q, k, v, spec)
    assert out[0, :2].isfinite().all() and out[0, 4].isfinite().all() and out[0, 2:4].isnan().all()
    assert (out[0, 1] == 0).all()


def test_double_backward_raises():
    q, k, v = rnd(1, 4, 2).requires_grad_(), rnd(1, 6, 2), rnd(1, 6, 2)
    out = sparse.sparse_attend(Dot(), NO_CHECK, 1.5, q, k, v, MaskSpec((1,), 4, 6))
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=False)
    assert torch.isfinite(g).all()
    out = sparse.sparse_attend(Dot(), NO_CHECK, 1.5, q, k, v, MaskSpec((1,), 4, 6))
    with pytest.raises(NotImplementedError, match="second derivatives"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_blockwise_keeps_no_nq_by_nk_tensor(alpha):
    N, D = 1024, 4  # 4 x 4 blocks: a block pair's scores have N^2 / 16 elements, a row of blocks N^2 / 4
    per_pair = blockwise.BLOCK**2
    q, k, v = (rnd(1, N, D, seed=s, dtype=torch.float32).requires_grad_() for s in (61, 62, 63))
    score = Dot(0.5)
    spec = MaskSpec((1,), N, N, causal=True)
    saved = []

    def pack(t):
        saved.append(t.numel() if t.is_floating_point() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), LargestOutput(floating_only=True) as seen:
        out = sparse.sparse_attend(score, NO_CHECK, alpha, q, k, v, spec)
        out.square().sum().backward()
    # at most a block pair's scores (the backward's recomputation saves them), the forward's top-TOP merge
    assert saved and max(saved) <= per_pair and seen.largest <= 2 * per_pair < N * N // 4, (max(saved), seen.largest)
    assert torch.isfinite(q.grad).all() and torch.isfinite(score.scale.grad).all()


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_blockwise_batch_dims_and_empty_sizes(alpha):
    q, k, v = rnd(2, 3, 40, 4, seed=71), rnd(2, 3, 300, 4, seed=72), rnd(2, 3, 300, 2, seed=73)
    score = Dot(0.3)
    spec = MaskSpec((2, 3), 40, 300, valid_lens=torch.tensor([7, 300]).view(2, 1, 1))
    want = _grads(lambda a, b, c: dense_attend(score, alpha, a, b, c, spec), score, q, k, v)
    got = _grads(lambda a, b, c: sparse.sparse_attend(score, NO_CHECK, alpha, a, b, c, spec), score, q, k, v)
    for name, x, y in zip(["out", "dq", "dk", "dv", "dscale"], got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10 * float(y.detach().abs().max()), msg=name)
    for nq, nk in ((0, 5), (4, 0)):
        qq = rnd(2, nq, 4).requires_grad_()
        out = sparse.sparse_attend(score, NO_CHECK, alpha, qq, rnd(2, nk, 4), rnd(2, nk, 3), MaskSpec((2,), nq, nk))
        assert out.shape == (2, nq, 3) and (out == 0).all()
        out.sum().backward()
        assert (qq.grad == 0).all()
