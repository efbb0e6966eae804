"""The fused ops' entropy output (``entropy=True``: ``H_i = -sum_j p_ij log p_ij`` from the same pass) and its
gradient, both families, against an independent float64 formula on un-centred inputs, with masks and
positional terms; gradcheck, opcheck, empty rows, errors."""

from __future__ import annotations

import pytest
import torch

import attnzoo
import attnzoo.ops as ops
from attnzoo.ops import reference as ref

pytestmark = pytest.mark.skipif(not ops.EXTENSION, reason="attnzoo._C is not built")


def rnd(*shape, seed=0, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset


def formula(s, v, valid):
    """out and H of the softmax of scores ``s`` over ``valid`` keys, written with log_softmax (float64)."""
    s = s.masked_fill(~valid, float("-inf"))
    live = valid.any(-1, keepdim=True)
    logp = torch.log_softmax(torch.where(live, s, 0.0), -1)
    p = logp.exp() * valid
    return p @ v, -(p * torch.where(valid & (p > 0), logp, 0.0)).sum(-1)


def _masks(kind, B, Nq, Nk):
    """(kwargs of the op wrappers, valid (B, Nq, Nk), bias (B, Nq, Nk) or None, alibi (B,) or None)."""
    i, j = torch.arange(Nq).view(-1, 1), torch.arange(Nk).view(1, -1)
    valid = torch.ones(B, Nq, Nk, dtype=torch.bool)
    kw, bias, alibi = {}, None, None
    if kind == "lengths":
        lens = torch.tensor([Nk, 3])[:B].view(B, 1).expand(B, Nq).contiguous()
        lens[0, 1] = 0  # a row with no key
        kw["valid_lens"], valid = lens, valid & (j < lens.unsqueeze(-1))
    elif kind == "mask_causal_window":
        m = rnd(B, Nq, Nk, seed=9) > -0.8
        kw.update(mask=m, causal=True, window=40)
        valid = valid & m & (j <= i) & ((i - j).abs() <= 40)
    elif kind == "bias_alibi":
        bias = rnd(B, Nq, Nk, seed=10, scale=2.0, offset=1e3)
        bias[0, 2, ::3] = float("-inf")
        alibi = torch.tensor([0.05, 0.3], dtype=torch.float64)[:B]
        kw.update(bias=bias, alibi=alibi)
    return kw, valid, bias, alibi


def _family(family, B, Nq, Nk, seed=0):
    """Inputs of one family (un-centred, parameters far from 1) and its score formula in float64."""
    if family == "bilinear":
        q, k = rnd(B, Nq, 16, seed=seed, offset=2.0), rnd(B, Nk, 16, seed=seed + 1, offset=-1.5)
        kb = rnd(B, Nk, seed=seed + 2, scale=3.0, offset=500.0)
        scale = 0.4
        call = lambda q, k, v, **kw: ops.bilinear_attention(q, k, v, kb.to(q.dtype), scale, **kw)  # noqa: E731
        scores = lambda q, k: scale * q @ k.transpose(-1, -2) + kb.unsqueeze(-2)  # noqa: E731
        return (q, k), call, scores
    a, b = rnd(B, Nq, 8, seed=seed, offset=1e3), rnd(B, Nk, 8, seed=seed + 1, offset=1e3)
    w = -(rnd(8, seed=seed + 2).abs() + 0.5) / 4  # Gaussian Nadaraya-Watson: s = -sum_h |w_h| (a - b)^2
    call = lambda a, b, v, **kw: ops.elementwise_attention(a, b, w.to(a.dtype), v, term="sq_diff",  # noqa: E731
                                                            **kw)
    scores = lambda a, b: (a.unsqueeze(-2) - b.unsqueeze(-3)).square() @ w  # noqa: E731
    return (a, b), call, scores


def _with_positions(s, bias, alibi):
    if bias is not None:
        s = s + bias
    if alibi is not None:
        i, j = torch.arange(s.shape[-2]).view(-1, 1), torch.arange(s.shape[-1]).view(1, -1)
        s = s - alibi.view(-1, 1, 1) * (i - j).abs()
    return s


@pytest.mark.parametrize("kind", ["none", "lengths", "mask_causal_window", "bias_alibi"])
@pytest.mark.parametrize("family", ["bilinear", "elementwise"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_entropy_and_gradients_against_formula(family, kind, dtype):
    B, Nq, Nk = 2, 70, 300  # several key blocks
    (x, y), call, scores = _family(family, B, Nq, Nk)
    v = rnd(B, Nk, 3, seed=5, offset=10.0)
    kw, valid, bias, alibi = _masks(kind, B, Nq, Nk)
    xs = [t.clone().to(dtype).requires_grad_() for t in (x, y, v)]
    kwd = {k: (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for k, t in kw.items()}
    out, lse, _, ent = call(*xs, entropy=True, **kwd)
    assert ent.shape == (B, Nq) and ent.dtype == ref.acc_dtype(dtype)
    x64 = [t.clone().requires_grad_() for t in (x, y, v)]
    want_out, want_ent = formula(_with_positions(scores(x64[0], x64[1]), bias, alibi), x64[2], valid)
    assert float(want_ent.detach().max()) > 0.5  # spread rows: the check is not about near-one-hot weights
    tol = 1e-9 if dtype == torch.float64 else 2e-3  # float32 scores near 1e3 round to ~6e-5
    torch.testing.assert_close(ent.double(), want_ent.detach(), atol=tol, rtol=0)
    torch.testing.assert_close(out.double(), want_out.detach(), atol=tol * 20, rtol=0)
    g_out, g_ent = rnd(*out.shape, seed=11), rnd(B, Nq, seed=12)
    got = torch.autograd.grad((out * g_out.to(dtype)).sum() + (ent * g_ent.to(ent.dtype)).sum(), xs)
    want = torch.autograd.grad((want_out * g_out).sum() + (want_ent * g_ent).sum(), x64)
    for name, gx, gw in zip(("x", "y", "v"), got, want, strict=True):
        scale = max(1.0, float(gw.abs().max()))
        torch.testing.assert_close(gx.double(), gw, atol=(1e-8 if dtype == torch.float64 else 5e-3) * scale,
                                   rtol=0, msg=name)


@pytest.mark.parametrize("family", ["bilinear", "elementwise"])
def test_gradcheck_and_opcheck(family):
    B, Nq, Nk = 2, 3, 5
    if family == "bilinear":
        args = [rnd(B, Nq, 4, seed=1), rnd(B, Nk, 4, seed=2), rnd(B, Nk, 2, seed=3), rnd(B, Nk, seed=4), 0.7]
        fwd, bwd = torch.ops.attnzoo.bilinear_fwd, torch.ops.attnzoo.bilinear_bwd
    else:
        args = [rnd(B, Nq, 3, seed=1), rnd(B, Nk, 3, seed=2), rnd(3, seed=3), rnd(B, Nk, 2, seed=4), 0, 0]
        fwd, bwd = torch.ops.attnzoo.elementwise_fwd, torch.ops.attnzoo.elementwise_bwd
    lens = torch.tensor([[5, 2, 0], [5, 5, 1]])
    margs = (lens, None, rnd(B, Nq, Nk, seed=6), None, 0, False, -1)
    n = 4
    tensors = [a.clone().requires_grad_() for a in args[:n]]

    def fn(*ts):
        res = fwd(*ts, *args[n:], *margs, True)
        return res[0], res[4]

    assert torch.autograd.gradcheck(fn, tensors)
    torch.library.opcheck(fwd.default, (*tensors, *args[n:], *margs, True))
    saved = fwd(*args, *margs, True)
    g, ge = rnd(*saved[0].shape, seed=7), rnd(B, Nq, seed=8)
    torch.library.opcheck(bwd.default, (g, None, *args, *margs, False, *saved[:4]),
                          kwargs=dict(grad_entropy=ge, saved_entropy=saved[4]))


def test_empty_rows_and_nan_free():
    q, k, v = rnd(2, 4, 3).requires_grad_(), rnd(2, 6, 3).requires_grad_(), rnd(2, 6, 2).requires_grad_()
    lens = torch.tensor([[0, 6, 1, 0], [6, 6, 6, 6]])
    out, _, _, ent = ops.bilinear_attention(q, k, v, valid_lens=lens, entropy=True)
    assert ent[0, 0] == 0 and ent[0, 2] == 0 and ent[0, 3] == 0 and (ent[1] > 0).all()
    (out.sum() + ent.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, 0] == 0).all()


def test_module_uses_the_kernel_and_matches_the_blockwise_pass(monkeypatch):
    torch.manual_seed(0)
    attn = attnzoo.create("additive", query_dim=8, key_dim=8, hidden_dim=16)
    q, k, v = rnd(2, 300, 8).float(), rnd(2, 400, 8, seed=1).float(), rnd(2, 400, 3, seed=2).float()
    calls = []
    real = ops.elementwise_attention
    monkeypatch.setattr(ops, "elementwise_attention", lambda *a, **kw: calls.append(kw["entropy"]) or real(*a, **kw))
    out, ent = attn(q, k, v, valid_lens=torch.tensor([400, 17]), return_entropy=True)
    assert calls == [True]
    blockwise = attnzoo.create("additive", query_dim=8, key_dim=8, hidden_dim=16, backend="blockwise")
    blockwise.load_state_dict(attn.state_dict())
    out_b, ent_b = blockwise(q, k, v, valid_lens=torch.tensor([400, 17]), return_entropy=True)
    torch.testing.assert_close(ent, ent_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, out_b, atol=1e-5, rtol=0)


def test_errors_name_the_argument():
    q, k, v = rnd(1, 2, 3), rnd(1, 4, 3), rnd(1, 4, 2)
    with pytest.raises(RuntimeError, match="entropy"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, 1, False, -1, True)
    saved = torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, 0, False, -1, True)
    with pytest.raises(RuntimeError, match="saved_entropy"):
        torch.ops.attnzoo.bilinear_bwd(rnd(1, 2, 2), None, q, k, v, None, 1.0, None, None, None, None, 0, False, -1,
                                       False, *saved[:4], grad_entropy=rnd(1, 2))
    with pytest.raises(RuntimeError, match="grad_entropy"):
        torch.ops.attnzoo.bilinear_bwd(rnd(1, 2, 2), None, q, k, v, None, 1.0, None, None, None, None, 0, False, -1,
                                       False, *saved[:4], grad_entropy=rnd(1, 3), saved_entropy=saved[4])
